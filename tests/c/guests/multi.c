/*
 * multi.c: one guest, many behaviours, chosen by the first guest argument.
 * Well-behaved cases (hello, args, halt N, walltime, poll, bootinfo, wait,
 * spin, flood) and hostile ones that break the ABI on purpose (pointers
 * and lengths outside guest memory, unknown hypercalls and ports, writes
 * to our own text, triple fault, hlt, bad HALT cookie). The tender's
 * integration tests assert the exit status, message and event for each.
 */
#include "guest.h"

GUEST_ABI1_NOTE;
GUEST_NO_DEVICES;

static struct hvt_boot_info *bi;
static char flood_buf[1024];

static uint64_t walltime(void)
{
    volatile struct hvt_hc_walltime a = {0};
    hypercall(HVT_HYPERCALL_WALLTIME, &a);
    return a.nsecs;
}

static int poll_ns(uint64_t ns, uint64_t *ready)
{
    volatile struct hvt_hc_poll a = {ns, 0, -1};
    hypercall(HVT_HYPERCALL_POLL, &a);
    *ready = a.ready_set;
    return a.ret;
}

static const char *next_word(const char *s)
{
    while (*s && *s != ' ')
        s++;
    while (*s == ' ')
        s++;
    return s;
}

static int word_is(const char *s, const char *w)
{
    while (*w && *s == *w) {
        s++;
        w++;
    }
    return *w == 0 && (*s == 0 || *s == ' ');
}

static int parse_int(const char *s)
{
    int v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return v;
}

static void raw_puts(uint64_t data, uint64_t len)
{
    volatile struct hvt_hc_puts a = {data, len};
    hypercall(HVT_HYPERCALL_PUTS, &a);
}

__attribute__((section(".text.start"))) void _start(struct hvt_boot_info *b)
{
    const char *cmd, *rest;
    uint64_t ready;

    bi = b;
    cmd = (const char *)(uintptr_t)bi->cmdline;
    rest = next_word(cmd);

    if (*cmd == 0 || word_is(cmd, "hello")) {
        g_puts("Hello, world\nSUCCESS\n");
        g_halt(0);
    } else if (word_is(cmd, "args")) {
        g_puts("ARGS:");
        g_puts(cmd);
        g_puts("\n");
        g_halt(0);
    } else if (word_is(cmd, "halt")) {
        g_halt(parse_int(rest));
    } else if (word_is(cmd, "abort")) {
        g_puts("Solo5: ABORT: multi.c: requested\n");
        g_halt(HVT_EXIT_ABORT);
    } else if (word_is(cmd, "walltime")) {
        uint64_t t = walltime();
        /* After 2020-01-01 and before 2100: a real wall clock. */
        if (t > 1577836800ull * 1000000000ull &&
            t < 4102444800ull * 1000000000ull) {
            g_puts("SUCCESS\n");
            g_halt(0);
        }
        g_puts("FAIL: walltime\n");
        g_halt(1);
    } else if (word_is(cmd, "poll")) {
        uint64_t t0 = walltime();
        int n = poll_ns(20000000ull, &ready); /* 20 ms */
        uint64_t dt = walltime() - t0;
        if (n == 0 && ready == 0 && dt >= 19000000ull) {
            g_puts("SUCCESS\n");
            g_halt(0);
        }
        g_puts("FAIL: poll\n");
        g_halt(1);
    } else if (word_is(cmd, "bootinfo")) {
        const struct mft *m = (const struct mft *)(uintptr_t)bi->mft;
        g_puts("mem_size=");
        g_putu(bi->mem_size);
        g_puts(" kernel_end=");
        g_putu(bi->kernel_end);
        g_puts(" tsc_hz=");
        g_putu(bi->cpu_cycle_freq);
        g_puts(" mft=");
        g_putu(bi->mft);
        g_puts(" mft_entries=");
        g_putu(m->entries);
        g_puts(" attached0=");
        g_putu(m->e[0].attached);
        g_puts(" host_features=");
        g_putu(bi->host_features);
        g_puts(" net_ring=");
        g_putu(bi->net_ring);
        g_puts("\nSUCCESS\n");
        g_halt(0);
    } else if (word_is(cmd, "wait")) {
        g_puts("READY\n");
        for (;;)
            poll_ns(1000000000ull, &ready);
    } else if (word_is(cmd, "spin")) {
        g_puts("READY\n");
        for (;;)
            __asm__ __volatile__("" ::: "memory");
    } else if (word_is(cmd, "flood")) {
        for (unsigned i = 0; i < sizeof(flood_buf); i++)
            flood_buf[i] = (i % 64 == 63) ? '\n' : 'x';
        for (int i = 0; i < 2048; i++)
            g_putsn(flood_buf, sizeof(flood_buf));
        g_puts("SUCCESS\n");
        g_halt(0);
    } else if (word_is(cmd, "puts-oob")) {
        raw_puts(bi->mem_size + 0x1000, 16);
    } else if (word_is(cmd, "puts-huge")) {
        raw_puts(0x100000, 1ull << 62);
    } else if (word_is(cmd, "puts-wrap")) {
        raw_puts(0xffffffffffff0000ull, 0x20000);
    } else if (word_is(cmd, "arg-oob")) {
        __asm__ __volatile__("outl %0, %1" ::"a"(0xfffffff0u),
                             "d"((uint16_t)HVT_HYPERCALL_PIO(
                                 HVT_HYPERCALL_PUTS)));
    } else if (word_is(cmd, "hc-unknown")) {
        volatile uint64_t a = 0;
        hypercall(HVT_HYPERCALL_MAX + 20, &a);
    } else if (word_is(cmd, "hc-zero")) {
        volatile uint64_t a = 0;
        hypercall(0, &a);
    } else if (word_is(cmd, "port-unknown")) {
        __asm__ __volatile__("outb %0, %1" ::"a"((uint8_t)'x'),
                             "d"((uint16_t)0x3f8));
    } else if (word_is(cmd, "port-in")) {
        uint32_t v;
        __asm__ __volatile__("inl %1, %0"
                             : "=a"(v)
                             : "d"((uint16_t)HVT_HYPERCALL_PIO(2)));
        (void)v;
    } else if (word_is(cmd, "write-text")) {
        *(volatile uint8_t *)(uintptr_t)&_start = 0xcc;
    } else if (word_is(cmd, "triple-fault")) {
        /* No IDT: #UD -> #GP -> #DF -> shutdown. */
        __asm__ __volatile__("ud2");
    } else if (word_is(cmd, "hlt")) {
        __asm__ __volatile__("cli; hlt");
    } else if (word_is(cmd, "halt-cookie")) {
        volatile struct hvt_hc_halt a = {bi->mem_size - 100, 0};
        hypercall(HVT_HYPERCALL_HALT, &a);
    } else if (word_is(cmd, "blk-nodev")) {
        char buf[512];
        volatile struct hvt_hc_block_read a = {1, 0, (uint64_t)(uintptr_t)buf,
                                               512, -1};
        hypercall(HVT_HYPERCALL_BLOCK_READ, &a);
        if (a.ret == HVT_R_EINVAL) {
            g_puts("SUCCESS\n");
            g_halt(0);
        }
        g_halt(1);
    } else {
        g_puts("unknown command\n");
        g_halt(2);
    }
    g_puts("FAIL: still running after a hostile request\n");
    g_halt(3);
}
