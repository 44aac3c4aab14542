/*
 * tnd_core.c: the checked guest-address accessor and hypercall dispatch.
 *
 * A hypercall is "outl %eax, 0x500+nr" with eax the guest-physical address
 * of an argument struct. Each handler copies the struct out of guest RAM
 * through tnd_gpa() (one place for bounds and overflow checks), does the
 * host work, and copies results back. Pointers outside guest RAM stop the
 * VM with status 242; recoverable bad requests get SOLO5 EINVAL.
 *
 * It does not run the vCPU (tnd_kvm_x86_64.c) or open devices
 * (tnd_module_*.c).
 */
#include <errno.h>
#include <linux/kvm.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tnd.h"

volatile sig_atomic_t tnd_signal_pending;
void *volatile tnd_signal_run;

void tnd_on_signal(int sig)
{
    struct kvm_run *run = tnd_signal_run;

    tnd_signal_pending = sig;
    /* Make a KVM_RUN that is about to start return at once (EINTR); one
     * already running is interrupted by the signal itself. */
    if (run != NULL)
        run->immediate_exit = 1;
}

void *tnd_gpa(uint8_t *mem, uint64_t mem_size, uint64_t gpa, uint64_t len)
{
    uint64_t end;

    if (__builtin_add_overflow(gpa, len, &end) || end > mem_size)
        return NULL;
    return mem + gpa;
}

static int hc_walltime(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *st)
{
    struct hvt_hc_walltime a;
    struct timespec ts;
    void *p = tnd_gpa(vm->mem, vm->mem_size, gpa, sizeof(a));

    if (p == NULL)
        return tnd_stop_set(st, TND_EXIT_ABI, "abi",
                            "guest ABI violation: WALLTIME argument at "
                            "0x%llx is outside guest memory",
                            (unsigned long long)gpa);
    clock_gettime(CLOCK_REALTIME, &ts);
    a.nsecs = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    memcpy(p, &a, sizeof(a));
    return 0;
}

static int hc_puts(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *st)
{
    struct hvt_hc_puts a;
    void *p = tnd_gpa(vm->mem, vm->mem_size, gpa, sizeof(a));
    void *data;

    if (p == NULL)
        return tnd_stop_set(st, TND_EXIT_ABI, "abi",
                            "guest ABI violation: PUTS argument at 0x%llx "
                            "is outside guest memory",
                            (unsigned long long)gpa);
    memcpy(&a, p, sizeof(a));
    data = tnd_gpa(vm->mem, vm->mem_size, a.data, a.len);
    if (data == NULL)
        return tnd_stop_set(st, TND_EXIT_ABI, "abi",
                            "guest ABI violation: PUTS buffer 0x%llx+%llu "
                            "is outside guest memory",
                            (unsigned long long)a.data,
                            (unsigned long long)a.len);
    if (!vm->first_output && a.len > 0) {
        vm->first_output = true;
        tnd_event(vm->events_fd, "first_output", ",\"bytes\":%llu",
                  (unsigned long long)a.len);
    }
    /* A closed stdout only loses console output; the guest runs on. */
    (void)tnd_write_all(1, data, (size_t)a.len);
    return 0;
}

static int hc_poll(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *st)
{
    struct hvt_hc_poll a;
    struct pollfd pfd[MFT_MAX_ENTRIES];
    unsigned idx[MFT_MAX_ENTRIES];
    unsigned n = 0;
    struct timespec ts;
    sigset_t term, old;
    int rc;
    void *p = tnd_gpa(vm->mem, vm->mem_size, gpa, sizeof(a));

    if (p == NULL)
        return tnd_stop_set(st, TND_EXIT_ABI, "abi",
                            "guest ABI violation: POLL argument at 0x%llx "
                            "is outside guest memory",
                            (unsigned long long)gpa);
    memcpy(&a, p, sizeof(a));
    for (unsigned i = 1; i < vm->mft.entries; i++) {
        if (vm->dev[i].type == MFT_DEV_NET_BASIC) {
            pfd[n].fd = vm->dev[i].fd;
            pfd[n].events = POLLIN;
            pfd[n].revents = 0;
            idx[n++] = i;
        }
    }
    /* Cap at one day: the guest re-polls, and tv_sec never overflows. */
    if (a.timeout_nsecs > 86400ull * 1000000000ull)
        a.timeout_nsecs = 86400ull * 1000000000ull;
    ts.tv_sec = (time_t)(a.timeout_nsecs / 1000000000ull);
    ts.tv_nsec = (long)(a.timeout_nsecs % 1000000000ull);
    /* Check for a pending termination signal and sleep atomically: the
     * signals stay blocked between the check and ppoll(), which unblocks
     * them while it waits, so none is lost in between. */
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    sigaddset(&term, SIGHUP);
    sigprocmask(SIG_BLOCK, &term, &old);
    if (tnd_signal_pending)
        rc = -1, errno = EINTR;
    else
        rc = ppoll(pfd, n, &ts, &old);
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (rc < 0 && errno != EINTR)
        return tnd_stop_set(st, TND_EXIT_IO, "io", "POLL: ppoll failed: %s",
                            strerror(errno));
    if (tnd_signal_pending)
        return tnd_stop_set(st, TND_EXIT_SIGNAL, "signal",
                            "Exiting on signal %d", tnd_signal_pending);
    a.ready_set = 0;
    a.ret = 0;
    for (unsigned k = 0; rc > 0 && k < n; k++) {
        if (pfd[k].revents & (POLLIN | POLLERR | POLLHUP)) {
            a.ready_set |= 1ull << idx[k];
            a.ret++;
        }
    }
    memcpy(p, &a, sizeof(a));
    return 0;
}

static int hc_halt(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *st)
{
    struct hvt_hc_halt a;
    void *p = tnd_gpa(vm->mem, vm->mem_size, gpa, sizeof(a));

    if (p == NULL)
        return tnd_stop_set(st, TND_EXIT_ABI, "abi",
                            "guest ABI violation: HALT argument at 0x%llx "
                            "is outside guest memory",
                            (unsigned long long)gpa);
    memcpy(&a, p, sizeof(a));
    if (a.cookie != 0 && tnd_gpa(vm->mem, vm->mem_size, a.cookie,
                                 HVT_HALT_COOKIE_MAX) == NULL)
        return tnd_stop_set(st, TND_EXIT_ABI, "abi",
                            "guest ABI violation: HALT cookie 0x%llx is "
                            "outside guest memory",
                            (unsigned long long)a.cookie);
    return tnd_stop_set(st, a.exit_status & 0xff, "halt",
                        "guest halted with status %d", a.exit_status);
}

int tnd_hypercall(struct tnd_vm *vm, unsigned nr, uint64_t gpa,
                  struct tnd_stop *stop)
{
    switch (nr) {
    case HVT_HYPERCALL_WALLTIME:
        return hc_walltime(vm, gpa, stop);
    case HVT_HYPERCALL_PUTS:
        return hc_puts(vm, gpa, stop);
    case HVT_HYPERCALL_POLL:
        return hc_poll(vm, gpa, stop);
    case HVT_HYPERCALL_BLOCK_WRITE:
        return tnd_block_write(vm, gpa, stop);
    case HVT_HYPERCALL_BLOCK_READ:
        return tnd_block_read(vm, gpa, stop);
    case HVT_HYPERCALL_NET_WRITE:
        return tnd_net_write(vm, gpa, stop);
    case HVT_HYPERCALL_NET_READ:
        return tnd_net_read(vm, gpa, stop);
    case HVT_HYPERCALL_HALT:
        return hc_halt(vm, gpa, stop);
    default:
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: Invalid guest hypercall "
                            "nr %u",
                            nr);
    }
}
