/*
 * tnd_kvm_x86_64.c: KVM setup and the vCPU run loop for x86_64 hvt guests.
 *
 * Allocates zeroed guest RAM (MAP_NORESERVE, so a large --mem costs
 * nothing until touched), creates one VM with one vCPU and registers the
 * RAM as its one memslot, builds the boot GDT and identity page tables,
 * starts the vCPU directly in long mode, and runs it: port I/O on
 * 0x500+nr is a hypercall, everything else stops the VM with a distinct
 * status (242 bad port, 243 KVM fault) and a "fault" event carrying the
 * registers. No irqchip, no interrupts.
 *
 * It does not parse images or decide what a hypercall does (tnd_core.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tnd.h"

#define PTE_P 0x1ull
#define PTE_RW 0x2ull
#define PTE_PS 0x80ull

static void put64(uint8_t *mem, uint64_t gpa, uint64_t v)
{
    memcpy(mem + gpa, &v, sizeof(v));
}

void tnd_x86_setup_memory(uint8_t *mem, uint64_t mem_size)
{
    uint64_t ngib = (mem_size + (1ull << 30) - 1) >> 30;

    put64(mem, HVT_GDT_BASE + 0, 0);
    put64(mem, HVT_GDT_BASE + 8, HVT_X86_GDT_CODE);
    put64(mem, HVT_GDT_BASE + 16, HVT_X86_GDT_DATA);

    put64(mem, HVT_PML4_BASE, HVT_PDPT_BASE | PTE_P | PTE_RW);
    for (uint64_t g = 0; g < ngib; g++)
        put64(mem, HVT_PDPT_BASE + g * 8,
              (HVT_PD_BASE + g * 0x1000) | PTE_P | PTE_RW);
    /* The four PDs are contiguous: entry k maps [k * 2 MiB, +2 MiB). */
    put64(mem, HVT_PD_BASE, HVT_PT0_BASE | PTE_P | PTE_RW);
    for (uint64_t a = HVT_MEM_ALIGN; a < mem_size; a += HVT_MEM_ALIGN)
        put64(mem, HVT_PD_BASE + (a >> 21) * 8, a | PTE_P | PTE_RW | PTE_PS);
    /* PT0: low 64 KiB absent, boot info area read-only, kernel RW. */
    for (uint64_t a = HVT_BOOT_INFO_BASE; a < HVT_MEM_ALIGN; a += 0x1000)
        put64(mem, HVT_PT0_BASE + (a >> 12) * 8,
              a | PTE_P | (a >= HVT_GUEST_MIN_BASE ? PTE_RW : 0));
}

int tnd_guest_mem_alloc(struct tnd_vm *vm, struct tnd_stop *stop)
{
    vm->mem = mmap(NULL, vm->mem_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (vm->mem == MAP_FAILED) {
        vm->mem = NULL;
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "cannot map %llu MiB of guest memory: %s",
                            (unsigned long long)(vm->mem_size >> 20),
                            strerror(errno));
    }
    return 0;
}

int tnd_kvm_init(struct tnd_vm *vm, struct tnd_stop *stop)
{
    struct kvm_userspace_memory_region region;
    int rc;

    vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (vm->kvm_fd < 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "cannot open /dev/kvm: %s (is KVM enabled and "
                            "are you in the kvm group?)",
                            strerror(errno));
    rc = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
    if (rc != KVM_API_VERSION)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM API version %d, expected %d", rc,
                            KVM_API_VERSION);
    if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) != 1)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM lacks KVM_CAP_USER_MEMORY");
    vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
    if (vm->vm_fd < 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM_CREATE_VM failed: %s", strerror(errno));
    memset(&region, 0, sizeof(region));
    region.slot = 0;
    region.guest_phys_addr = 0;
    region.memory_size = vm->mem_size;
    region.userspace_addr = (uint64_t)(uintptr_t)vm->mem;
    if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) != 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM_SET_USER_MEMORY_REGION failed: %s",
                            strerror(errno));
    vm->vcpu_fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, 0);
    if (vm->vcpu_fd < 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM_CREATE_VCPU failed: %s", strerror(errno));
    rc = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (rc < (int)sizeof(struct kvm_run))
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM_GET_VCPU_MMAP_SIZE failed");
    vm->run_size = (size_t)rc;
    vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                   vm->vcpu_fd, 0);
    if (vm->run == MAP_FAILED)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "cannot map kvm_run: %s", strerror(errno));
    return 0;
}

int tnd_kvm_protect(struct tnd_vm *vm, const struct tnd_image *img,
                    struct tnd_stop *stop)
{
    for (size_t i = 0; i < img->nload; i++) {
        const struct tnd_seg *s = &img->load[i];
        if (s->flags & 0x2 /* PF_W */)
            continue;
        if (mprotect(vm->mem + s->prot_start, s->prot_end - s->prot_start,
                     PROT_READ) != 0)
            return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                                "mprotect of guest segment 0x%llx failed: %s",
                                (unsigned long long)s->vaddr,
                                strerror(errno));
    }
    return 0;
}

static void set_seg(struct kvm_segment *s, uint16_t sel, uint8_t type,
                    uint8_t db, uint8_t l)
{
    memset(s, 0, sizeof(*s));
    s->base = 0;
    s->limit = 0xffffffff;
    s->selector = sel;
    s->type = type;
    s->present = 1;
    s->dpl = 0;
    s->db = db;
    s->s = 1;
    s->l = l;
    s->g = 1;
}

int tnd_kvm_vcpu_init(struct tnd_vm *vm, uint64_t entry, uint64_t *tsc_hz,
                      struct tnd_stop *stop)
{
    struct kvm_sregs sr;
    struct kvm_regs r;
    struct {
        struct kvm_cpuid2 c;
        struct kvm_cpuid_entry2 e[256];
    } cpuid;
    int khz;

    memset(&sr, 0, sizeof(sr));
    set_seg(&sr.cs, 0x08, 9, 0, 1);
    set_seg(&sr.ss, 0x10, 3, 1, 0);
    sr.ds = sr.es = sr.fs = sr.gs = sr.ss;
    sr.tr.type = 11;
    sr.tr.present = 1;
    sr.ldt.unusable = 1;
    sr.gdt.base = HVT_GDT_BASE;
    sr.gdt.limit = 23;
    sr.cr0 = HVT_X86_CR0;
    sr.cr3 = HVT_X86_CR3;
    sr.cr4 = HVT_X86_CR4;
    sr.efer = HVT_X86_EFER;
    if (ioctl(vm->vcpu_fd, KVM_SET_SREGS, &sr) != 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM_SET_SREGS failed: %s", strerror(errno));

    memset(&cpuid, 0, sizeof(cpuid));
    cpuid.c.nent = 256;
    if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, &cpuid) != 0 ||
        ioctl(vm->vcpu_fd, KVM_SET_CPUID2, &cpuid) != 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM CPUID setup failed: %s", strerror(errno));

    memset(&r, 0, sizeof(r));
    r.rip = entry;
    r.rflags = 0x2;
    r.rsp = vm->mem_size - 8;
    r.rdi = HVT_BOOT_INFO_BASE;
    if (ioctl(vm->vcpu_fd, KVM_SET_REGS, &r) != 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM_SET_REGS failed: %s", strerror(errno));

    if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_GET_TSC_KHZ) != 1)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM lacks KVM_CAP_GET_TSC_KHZ");
    khz = ioctl(vm->vcpu_fd, KVM_GET_TSC_KHZ, 0);
    if (khz <= 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "KVM_GET_TSC_KHZ failed: %s (host TSC unstable?)",
                            strerror(errno));
    *tsc_hz = (uint64_t)khz * 1000u;

    tnd_signal_run = vm->run;
    return 0;
}

/* Emit a "fault" event with the vCPU registers; fill *stop (243). */
static void fault(struct tnd_vm *vm, struct tnd_stop *stop, const char *what,
                  unsigned long long detail)
{
    char d[32] = "";

    struct kvm_regs r;
    struct kvm_sregs sr;

    memset(&r, 0, sizeof(r));
    memset(&sr, 0, sizeof(sr));
    (void)ioctl(vm->vcpu_fd, KVM_GET_REGS, &r);
    (void)ioctl(vm->vcpu_fd, KVM_GET_SREGS, &sr);
    if (detail != 0)
        snprintf(d, sizeof(d), " 0x%llx", detail);
    tnd_stop_set(stop, TND_EXIT_KVM, "kvm", "KVM: %s%s, rip=0x%llx", what, d,
                 (unsigned long long)r.rip);
    tnd_event(vm->events_fd, "fault",
              ",\"what\":\"%s\",\"detail\":%llu,\"rip\":%llu,\"rsp\":%llu,"
              "\"rflags\":%llu,\"rax\":%llu,\"rbx\":%llu,\"rcx\":%llu,"
              "\"rdx\":%llu,\"rsi\":%llu,\"rdi\":%llu,\"rbp\":%llu,"
              "\"cr0\":%llu,\"cr2\":%llu,\"cr3\":%llu,\"cr4\":%llu",
              what, detail, (unsigned long long)r.rip,
              (unsigned long long)r.rsp, (unsigned long long)r.rflags,
              (unsigned long long)r.rax, (unsigned long long)r.rbx,
              (unsigned long long)r.rcx, (unsigned long long)r.rdx,
              (unsigned long long)r.rsi, (unsigned long long)r.rdi,
              (unsigned long long)r.rbp, (unsigned long long)sr.cr0,
              (unsigned long long)sr.cr2, (unsigned long long)sr.cr3,
              (unsigned long long)sr.cr4);
}

static int on_io(struct tnd_vm *vm, struct kvm_run *run, struct tnd_stop *st)
{
    unsigned port = run->io.port;
    uint32_t gpa;

    if (run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 4 ||
        run->io.count != 1 || port < HVT_HYPERCALL_PIO_BASE ||
        port >= HVT_HYPERCALL_PIO_BASE + 0x100 ||
        run->io.data_offset > vm->run_size - 4)
        return tnd_stop_set(st, TND_EXIT_ABI, "abi",
                            "guest ABI violation: Invalid guest port access: "
                            "%s port 0x%x size %u",
                            run->io.direction == KVM_EXIT_IO_OUT ? "out"
                                                                 : "in",
                            port, run->io.size);
    memcpy(&gpa, (uint8_t *)run + run->io.data_offset, sizeof(gpa));
    return tnd_hypercall(vm, port - HVT_HYPERCALL_PIO_BASE, gpa, st);
}

void tnd_kvm_run(struct tnd_vm *vm, struct tnd_stop *stop)
{
    struct kvm_run *run = vm->run;

    for (;;) {
        if (tnd_signal_pending) {
            tnd_stop_set(stop, TND_EXIT_SIGNAL, "signal",
                         "Exiting on signal %d", tnd_signal_pending);
            return;
        }
        if (ioctl(vm->vcpu_fd, KVM_RUN, 0) != 0) {
            if (errno == EINTR || errno == EAGAIN) {
                run->immediate_exit = 0;
                continue;
            }
            if (errno == EFAULT) {
                fault(vm, stop, "host/guest translation fault", 0);
            } else {
                fault(vm, stop, "KVM_RUN failed", (unsigned long long)errno);
            }
            return;
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            if (on_io(vm, run, stop) != 0)
                return;
            break;
        case KVM_EXIT_INTR:
            break;
        case KVM_EXIT_SHUTDOWN:
            fault(vm, stop, "triple fault (SHUTDOWN)", 0);
            return;
        case KVM_EXIT_HLT:
            fault(vm, stop, "guest executed hlt with interrupts off", 0);
            return;
        case KVM_EXIT_MMIO:
            fault(vm, stop,
                  run->mmio.is_write ? "write to read-only or unmapped "
                                       "guest memory (MMIO) at gpa"
                                     : "read of unmapped guest memory "
                                       "(MMIO) at gpa",
                  (unsigned long long)run->mmio.phys_addr);
            return;
        case KVM_EXIT_FAIL_ENTRY:
            fault(vm, stop, "FAIL_ENTRY, hardware reason",
                  (unsigned long long)
                      run->fail_entry.hardware_entry_failure_reason);
            return;
        case KVM_EXIT_INTERNAL_ERROR:
            fault(vm, stop, "INTERNAL_ERROR, suberror",
                  (unsigned long long)run->internal.suberror);
            return;
        default:
            fault(vm, stop, "unhandled exit, exit_reason",
                  (unsigned long long)run->exit_reason);
            return;
        }
    }
}
