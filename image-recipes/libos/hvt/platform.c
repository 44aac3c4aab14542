/*
 * hvt/platform.c: the hvt platform: the guest entry point and the plat_*
 * hooks over the hvt hypercalls (target 1, version 2; ADR 0002).
 *
 * The tender enters _start in 64-bit long mode with rdi = 0x10000 (the
 * struct hvt_boot_info), a valid stack at the top of RAM and zeroed RAM.
 * _start only copies a few boot-info fields; it never touches the read-only
 * boot-info page except to read it, zeroes nothing and loops over nothing.
 * It does not install a GDT, IDT or TSS: a CPU exception is a triple fault
 * that the tender reports (exit status 243).
 */
#include "internal.h"
#include "hypercall.h"

extern char _end[]; /* linker script: end of BSS, 4 KiB aligned */

_Noreturn void _start(const struct hvt_boot_info *bi);

_Noreturn void _start(const struct hvt_boot_info *bi)
{
    uint64_t heap = bi->kernel_end;
    if ((uint64_t)(uintptr_t)_end > heap)
        heap = (uint64_t)(uintptr_t)_end;
    libos_boot.mem_size = bi->mem_size;
    libos_boot.heap_start = (heap + 15u) & ~(uint64_t)15u;
    libos_boot.heap_end = bi->mem_size > LIBOS_STACK_SIZE ? bi->mem_size - LIBOS_STACK_SIZE : 0;
    libos_boot.tsc_hz = bi->cpu_cycle_freq;
    libos_boot.cmdline = (const char *)(uintptr_t)bi->cmdline;
    libos_boot.mft = (const void *)(uintptr_t)bi->mft;
    libos_main();
}

void plat_puts(const char *s, size_t n)
{
    volatile struct hvt_hc_puts a = {.data = (uint64_t)(uintptr_t)s, .len = n};
    hvt_hypercall(HVT_HYPERCALL_PUTS, &a);
}

_Noreturn void plat_halt(int status, const void *cookie)
{
    volatile struct hvt_hc_halt a = {.cookie = (uint64_t)(uintptr_t)cookie,
                                     .exit_status = status};
    hvt_hypercall(HVT_HYPERCALL_HALT, &a);
    /* Not reached under a correct tender; stop without spinning if it is. */
    for (;;)
        __asm__ __volatile__("cli; hlt");
}

uint64_t plat_walltime_ns(void)
{
    volatile struct hvt_hc_walltime a = {.nsecs = 0};
    hvt_hypercall(HVT_HYPERCALL_WALLTIME, &a);
    return a.nsecs;
}

uint64_t plat_poll(uint64_t timeout_ns)
{
    volatile struct hvt_hc_poll a = {.timeout_nsecs = timeout_ns, .ready_set = 0, .ret = 0};
    hvt_hypercall(HVT_HYPERCALL_POLL, &a);
    return a.ready_set;
}

uint64_t plat_tsc_hz(void)
{
    return libos_boot.tsc_hz;
}
