/*
 * clock.c: monotonic clock (rdtsc scaled by the TSC frequency, integer math
 * only), wall clock, sleep and yield (the platform's poll with a timeout).
 *
 * There are no timer interrupts: waiting is always a poll hypercall (hvt) or
 * a bounded TSC wait (qemu). It does not keep any notion of time zones.
 */
#include "internal.h"

#define NSEC_PER_SEC 1000000000ull

uint64_t libos_tsc_hz(void)
{
    uint64_t hz = plat_tsc_hz();
    if (hz == 0)
        LIBOS_ABORT("clock: TSC frequency unknown (boot info cpu_cycle_freq is 0)");
    return hz;
}

uint64_t libos_clock_monotonic(void)
{
    uint64_t hz = libos_tsc_hz();
    uint64_t tsc = libos_rdtsc();
    /* Split to avoid overflow: (tsc % hz) * 1e9 fits in 64 bits for hz < 18 GHz. */
    return (tsc / hz) * NSEC_PER_SEC + ((tsc % hz) * NSEC_PER_SEC) / hz;
}

uint64_t libos_clock_wall(void)
{
    return plat_walltime_ns();
}

uint64_t libos_yield(uint64_t deadline_ns)
{
    uint64_t now = libos_clock_monotonic();
    return plat_poll(deadline_ns > now ? deadline_ns - now : 0);
}

void libos_sleep_ns(uint64_t ns)
{
    uint64_t deadline = libos_clock_monotonic() + ns;
    for (;;) {
        uint64_t now = libos_clock_monotonic();
        if (now >= deadline)
            return;
        (void)plat_poll(deadline - now);
    }
}
