/*
 * qemu/platform.c: the qemu platform: the same library OS API on a QEMU
 * `-kernel` multiboot boot (ADR 0002, image-recipes/README.md).
 *
 *  - console: 16550 UART on COM1 (0x3f8), polled, no interrupts, "\n" is
 *    sent as is (no "\r" is added); one "\n" is sent at boot to end the
 *    firmware's last line;
 *  - exit: isa-debug-exit at port 0xf4. QEMU exits with (value << 1) | 1, so
 *    the guest writes `status` for 0..126 and 127 for anything else (abort
 *    255 included); the host maps an odd QEMU exit code c back to (c - 1) / 2,
 *    with 127 meaning "abort or a status above 126". Without the device the
 *    guest stops with cli; hlt;
 *  - clock: TSC, frequency from CPUID 0x15 (crystal ratio) or 0x16 (base MHz)
 *    when present, else measured once against PIT channel 2 over 10 ms, on
 *    first use only (apps without the clock part never pay for it);
 *  - wall clock: the CMOS RTC (second resolution);
 *  - poll: a TSC wait (there are no interrupts and no devices to wait for).
 * Block and net devices are not available on this platform.
 */
#include "internal.h"

#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4
#define PIT_HZ 1193182u
#define PIT_CALIBRATE_TICKS 11932u /* 10 ms */
#define QEMU_MAX_MEM (1ull << 30)  /* boot.S identity-maps the first 1 GiB */

struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower; /* KiB, valid if flags bit 0 */
    uint32_t mem_upper; /* KiB above 1 MiB, valid if flags bit 0 */
    uint32_t boot_device;
    uint32_t cmdline; /* physical address, valid if flags bit 2 */
};

extern char _end[];

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ __volatile__("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ __volatile__("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ __volatile__("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static void uart_init(void)
{
    outb(COM1 + 1, 0x00); /* no interrupts */
    outb(COM1 + 3, 0x80); /* DLAB */
    outb(COM1 + 0, 0x01); /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); /* 8N1 */
    outb(COM1 + 2, 0xc7); /* FIFO on, cleared */
    outb(COM1 + 4, 0x03); /* DTR, RTS */
}

_Noreturn void qemu_start(const struct multiboot_info *mbi);

_Noreturn void qemu_start(const struct multiboot_info *mbi)
{
    uint64_t mem = 0;
    uart_init();
    /* Firmware (SeaBIOS) leaves "Booting from ROM.." without a newline: end its
     * line so the guest's first line stands alone for line-based parsers. */
    plat_puts("\n", 1);
    if (mbi->flags & 1u)
        mem = ((uint64_t)mbi->mem_upper + 1024u) * 1024u;
    if (mem > QEMU_MAX_MEM)
        mem = QEMU_MAX_MEM;
    libos_boot.mem_size = mem;
    libos_boot.heap_start = ((uint64_t)(uintptr_t)_end + 15u) & ~(uint64_t)15u;
    libos_boot.heap_end = mem;
    /* QEMU passes "<kernel path> <-append text>": drop the first word. */
    const char *cmd = NULL;
    if (mbi->flags & 4u) {
        cmd = (const char *)(uintptr_t)mbi->cmdline;
        while (*cmd != '\0' && *cmd != ' ')
            cmd++;
    }
    libos_boot.cmdline = cmd;
    libos_boot.mft = NULL;
    libos_main();
}

void plat_puts(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        while ((inb(COM1 + 5) & 0x20) == 0)
            __asm__ __volatile__("pause");
        outb(COM1, (uint8_t)s[i]);
    }
}

_Noreturn void plat_halt(int status, const void *cookie)
{
    (void)cookie;
    outl(DEBUG_EXIT_PORT, status >= 0 && status <= 126 ? (uint32_t)status : 127u);
    for (;;)
        __asm__ __volatile__("cli; hlt");
}

static uint64_t calibrate_tsc(void)
{
    uint32_t a, b, c, d;
    cpuid(0, &a, &b, &c, &d);
    uint32_t max_leaf = a;
    if (max_leaf >= 0x15) {
        cpuid(0x15, &a, &b, &c, &d);
        if (a != 0 && b != 0 && c != 0)
            return (uint64_t)c * b / a;
    }
    if (max_leaf >= 0x16) {
        cpuid(0x16, &a, &b, &c, &d);
        if ((a & 0xffff) != 0)
            return (uint64_t)(a & 0xffff) * 1000000u;
    }
    /* PIT channel 2 in mode 0: its output (port 0x61 bit 5) rises after the count. */
    uint8_t ctl = inb(0x61);
    outb(0x61, (uint8_t)((ctl & ~0x02u) | 0x01u)); /* gate on, speaker off */
    outb(0x43, 0xb0);                               /* ch2, lo/hi byte, mode 0, binary */
    outb(0x42, PIT_CALIBRATE_TICKS & 0xff);
    outb(0x42, PIT_CALIBRATE_TICKS >> 8);
    uint64_t t0 = libos_rdtsc();
    while ((inb(0x61) & 0x20) == 0)
        ;
    uint64_t t1 = libos_rdtsc();
    outb(0x61, ctl);
    return (t1 - t0) * PIT_HZ / PIT_CALIBRATE_TICKS;
}

uint64_t plat_tsc_hz(void)
{
    if (libos_boot.tsc_hz == 0)
        libos_boot.tsc_hz = calibrate_tsc();
    return libos_boot.tsc_hz;
}

uint64_t plat_poll(uint64_t timeout_ns)
{
    uint64_t hz = plat_tsc_hz();
    /* ns -> ticks without overflow for timeouts up to ~18 s per call at 1 GHz+. */
    uint64_t ticks = (timeout_ns / 1000u) * (hz / 1000u) / 1000u;
    uint64_t start = libos_rdtsc();
    while (libos_rdtsc() - start < ticks)
        __asm__ __volatile__("pause");
    return 0;
}

static uint8_t cmos_read(uint8_t reg)
{
    outb(0x70, reg);
    return inb(0x71);
}

static uint64_t days_from_civil(uint64_t y, unsigned m, unsigned d)
{
    /* Days since 1970-01-01 for a Gregorian date (y >= 1970), integer only. */
    y -= m <= 2;
    uint64_t era = y / 400;
    uint64_t yoe = y - era * 400;
    uint64_t doy = (153u * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    uint64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

uint64_t plat_walltime_ns(void)
{
    while (cmos_read(0x0a) & 0x80) /* update in progress */
        ;
    unsigned v[6];
    static const uint8_t regs[6] = {0x00, 0x02, 0x04, 0x07, 0x08, 0x09};
    for (int i = 0; i < 6; i++)
        v[i] = cmos_read(regs[i]);
    uint8_t status_b = cmos_read(0x0b);
    if ((status_b & 0x04) == 0) { /* BCD */
        for (int i = 0; i < 6; i++)
            v[i] = (v[i] & 0x0f) + ((v[i] & 0x70) >> 4) * 10;
    }
    uint64_t days = days_from_civil(2000u + v[5], v[4], v[3]);
    uint64_t secs = days * 86400u + v[2] * 3600u + v[1] * 60u + v[0];
    return secs * 1000000000ull;
}
