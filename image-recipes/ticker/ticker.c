/*
 * ticker: a heartbeat for health checks. Prints "READY", then one line
 *
 *     HEARTBEAT seq=<n> uptime_ms=<ms>
 *
 * every interval_ms milliseconds (seq counts from 1; uptime is measured from
 * app start on the monotonic clock). Arguments: interval_ms=N (default 1000),
 * count=K (stop after K beats with exit 0; default: run until halted).
 * Deadlines are absolute, so beats do not drift with the printing time.
 */
#include "libos.h"

static bool parse_arg(const char *arg, const char *key, uint64_t *out)
{
    const char *v = libos_arg_value(arg, key);
    if (v == NULL)
        return false;
    if (!libos_parse_u64(v, out)) {
        printf("ERROR bad value for %s: %s\n", key, v);
        libos_exit(2);
    }
    return true;
}

int app_main(int argc, char **argv)
{
    uint64_t interval_ms = 1000;
    uint64_t count = 0; /* 0: forever */
    for (int i = 1; i < argc; i++) {
        if (!parse_arg(argv[i], "interval_ms", &interval_ms) &&
            !parse_arg(argv[i], "count", &count)) {
            printf("ERROR unknown argument: %s (expected interval_ms=N or count=K)\n", argv[i]);
            return 2;
        }
    }
    if (interval_ms == 0 || interval_ms > 86400000u) {
        printf("ERROR interval_ms must be 1..86400000\n");
        return 2;
    }

    uint64_t start = libos_clock_monotonic();
    uint64_t interval_ns = interval_ms * 1000000u;
    printf("READY\n");
    for (uint64_t seq = 1; count == 0 || seq <= count; seq++) {
        uint64_t deadline = start + seq * interval_ns;
        while (libos_clock_monotonic() < deadline)
            (void)libos_yield(deadline);
        uint64_t uptime_ms = (libos_clock_monotonic() - start) / 1000000u;
        printf("HEARTBEAT seq=%lu uptime_ms=%lu\n", seq, uptime_ms);
    }
    return 0;
}
