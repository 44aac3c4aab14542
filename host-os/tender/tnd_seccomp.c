/*
 * tnd_seccomp.c: the seccomp allowlist installed just before the run loop.
 *
 * After setup the tender only needs to run the vCPU, move bytes between
 * guest memory and the fds it already holds, sleep, read clocks and exit.
 * Each rule below is pinned to the fd (and for ioctl the request) it is
 * for, so a compromised tender cannot open files, create sockets, map
 * executable memory or touch other fds. Anything else kills the process
 * (SIGSYS). The -debug build (TND_NO_SANDBOX) installs nothing.
 *
 * libseccomp sets no_new_privs for us before loading the filter.
 */
#include <errno.h>
#include <linux/kvm.h>
#include <string.h>

#include "tnd.h"

#ifdef TND_NO_SANDBOX

int tnd_sandbox(const struct tnd_vm *vm, struct tnd_stop *stop)
{
    (void)vm;
    (void)stop;
    return 0;
}

#else

#include <seccomp.h>

#define ALLOW(nr, ...)                                                       \
    do {                                                                     \
        if (rc == 0)                                                         \
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(nr),         \
                                  __VA_ARGS__);                              \
    } while (0)

int tnd_sandbox(const struct tnd_vm *vm, struct tnd_stop *stop)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    int rc = 0;

    if (ctx == NULL)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "seccomp_init failed");
    /* KVM_RUN on our vCPU: the run loop itself. */
    ALLOW(ioctl, 2, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)vm->vcpu_fd),
          SCMP_A1(SCMP_CMP_EQ, KVM_RUN));
    /* KVM_GET_REGS/KVM_GET_SREGS: registers for the "fault" event. */
    ALLOW(ioctl, 2, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)vm->vcpu_fd),
          SCMP_A1(SCMP_CMP_EQ, KVM_GET_REGS));
    ALLOW(ioctl, 2, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)vm->vcpu_fd),
          SCMP_A1(SCMP_CMP_EQ, KVM_GET_SREGS));
    /* write to stdout: the guest console (PUTS). */
    ALLOW(write, 1, SCMP_A0(SCMP_CMP_EQ, 1));
    /* write to stderr: the one-line exit message. */
    ALLOW(write, 1, SCMP_A0(SCMP_CMP_EQ, 2));
    /* write to the events fd: JSON lifecycle events. */
    if (vm->events_fd >= 0)
        ALLOW(write, 1,
              SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)vm->events_fd));
    for (uint32_t i = 1; i < vm->mft.entries; i++) {
        scmp_datum_t fd = (scmp_datum_t)vm->dev[i].fd;
        if (vm->dev[i].type == MFT_DEV_BLOCK_BASIC) {
            /* pread64 on a block device file: BLOCK_READ. */
            ALLOW(pread64, 1, SCMP_A0(SCMP_CMP_EQ, fd));
            /* pwrite64 on a block device file: BLOCK_WRITE. */
            ALLOW(pwrite64, 1, SCMP_A0(SCMP_CMP_EQ, fd));
        } else if (vm->dev[i].type == MFT_DEV_NET_BASIC) {
            /* read on a TAP fd: NET_READ. */
            ALLOW(read, 1, SCMP_A0(SCMP_CMP_EQ, fd));
            /* write on a TAP fd: NET_WRITE. */
            ALLOW(write, 1, SCMP_A0(SCMP_CMP_EQ, fd));
        }
    }
    /* ppoll: POLL with a timeout, and waiting for a full stdout. */
    ALLOW(ppoll, 0);
    /* clock_gettime: WALLTIME and event timestamps (vDSO fallback). */
    ALLOW(clock_gettime, 0);
    /* rt_sigreturn: return from the termination-signal handler. */
    ALLOW(rt_sigreturn, 0);
    /* rt_sigprocmask: POLL blocks termination signals around its check. */
    ALLOW(rt_sigprocmask, 0);
    /* restart_syscall: the kernel may restart an interrupted ppoll. */
    ALLOW(restart_syscall, 0);
    /* exit_group: _exit() at the end of the run. */
    ALLOW(exit_group, 0);

    if (rc == 0)
        rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc != 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "installing the seccomp allowlist failed: %s",
                            strerror(-rc));
    return 0;
}

#endif
