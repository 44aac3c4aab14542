/*
 * xen/clock.c: the clock part on the xen platform (replaces libos/clock.c
 * there; edgeagent.buildplan picks it). Same API, Xen's time sources:
 *
 *  - monotonic: Xen system time from shared_info's vcpu_time_info (TSC
 *    scaled by Xen's tsc_to_system_mul and tsc_shift, version protocol), in
 *    ns since the host booted; never goes backwards;
 *  - wall: shared_info's wall clock (wc_sec, wc_nsec) plus system time;
 *  - TSC frequency: derived from Xen's scaling factors;
 *  - yield and sleep: SCHEDOP_poll with a timeout (the vCPU is blocked in Xen,
 *    so an idle guest costs no CPU).
 *
 * It keeps no time zones and takes no timer interrupts. Without Xen (QEMU's
 * plain PVH boot) the monotonic clock aborts with a clear message.
 */
#include "internal.h"
#include "xen.h"

uint64_t libos_tsc_hz(void)
{
    uint64_t hz = plat_tsc_hz();
    if (hz == 0)
        LIBOS_ABORT("clock: TSC frequency unknown (no Xen time info)");
    return hz;
}

uint64_t libos_clock_monotonic(void)
{
    return xen_system_time_ns();
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
