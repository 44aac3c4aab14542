/*
 * xen/platform.c: the xen platform: the library OS API as a Xen PVH guest
 * (ADR 0011, image-recipes/README.md "Xen").
 *
 *  - boot: boot.S enters xen_start(start_info) in long mode. xen_start finds
 *    Xen by its CPUID signature, installs the hypercall page through the MSR
 *    CPUID reports, maps shared_info into a BSS frame (XENMEM_add_to_physmap)
 *    and reads the console ring's frame and event channel (HVMOP_get_param);
 *    memory size from the start_info memory map, command line from start_info;
 *  - console: the PV console ring (out ring, producer index, EVTCHNOP_send), so
 *    output lands in xenconsoled's guest log. When the ring is full it blocks in
 *    SCHEDOP_poll on the console event channel (xenconsoled signals it after
 *    draining), with a timeout in case a signal is missed;
 *  - exit: prints `EXIT status=<n> reason=<poweroff|crash>`, waits (bounded)
 *    until xenconsoled has read the ring, then SCHEDOP_shutdown with
 *    SHUTDOWN_poweroff for status 0 and SHUTDOWN_crash for anything else;
 *  - time: Xen system time from vcpu_info[0].time in shared_info (TSC scaled
 *    with tsc_to_system_mul/tsc_shift under the version protocol; rdtsc only,
 *    never rdtscp), wall clock from wc_sec/wc_nsec plus system time; poll is
 *    SCHEDOP_poll with an absolute timeout, so an idle guest is blocked in Xen
 *    and costs no CPU;
 *  - graceful stop: from the first poll on, a xenstore watch on
 *    control/shutdown (xenstore.c); `xl shutdown` wakes a sleeping guest, which
 *    prints `SHUTDOWN requested: poweroff` and exits with status 0.
 *
 * Without Xen (QEMU's -kernel PVH boot, no Xen CPUID leaves) the same image
 * falls back to the qemu platform's devices: COM1 for the console and
 * isa-debug-exit (port 0xf4) for the exit status; the clock is unavailable.
 * It does not drive block or net front-ends, take interrupts or use more than
 * one vCPU.
 */
#include "internal.h"
#include "xen.h"

#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4
#define XEN_DEBUG_PORT 0xe9 /* Xen prints HVM guests' bytes here on its console */
#define MAPPED_LIMIT (4ull << 30) /* boot.S identity-maps the first 4 GiB */
#define PAGE_SIZE 4096u
#define NSEC_PER_MSEC 1000000ull
#define CONSOLE_WAIT_NS (50 * NSEC_PER_MSEC) /* re-check a full ring this often */
#define EXIT_DRAIN_NS (2000 * NSEC_PER_MSEC) /* longest wait for the log at exit */

extern char _end[]; /* linker script: end of BSS, 4 KiB aligned */

static bool on_xen;
static volatile struct shared_info *shared;
static volatile struct xencons_interface *cons;
static uint32_t cons_port;
static uint32_t store_port; /* 0 until xenstore is set up (first poll), or none */
static bool store_started;
static uint64_t last_time_ns;
static uint8_t shared_info_frame[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));

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

static inline void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ __volatile__("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

static inline void barrier(void)
{
    __asm__ __volatile__("" : : : "memory");
}

static void evtchn_mask(uint32_t port)
{
    __asm__ __volatile__("lock btsq %1, %0"
                         : "+m"(shared->evtchn_mask[port / 64])
                         : "r"((uint64_t)(port % 64))
                         : "memory");
}

void xen_evtchn_clear(uint32_t port)
{
    __asm__ __volatile__("lock btrq %1, %0"
                         : "+m"(shared->evtchn_pending[port / 64])
                         : "r"((uint64_t)(port % 64))
                         : "memory");
}

void xen_evtchn_send(uint32_t port)
{
    struct evtchn_send send = {.port = port};
    (void)xen_hypercall2(XEN_HC_event_channel_op, EVTCHNOP_send, (uint64_t)(uintptr_t)&send);
}

/* Before the console works: a message on Xen's own console (port 0xe9, shown
 * with guest_loglvl=all), then a triple fault, which Xen reports as a crash. */
static _Noreturn void early_fail(const char *msg)
{
    for (const char *p = "xen platform: "; *p != '\0'; p++)
        outb(XEN_DEBUG_PORT, (uint8_t)*p);
    for (; *msg != '\0'; msg++)
        outb(XEN_DEBUG_PORT, (uint8_t)*msg);
    outb(XEN_DEBUG_PORT, '\n');
    for (;;)
        __builtin_trap();
}

static void com1_puts(const char *s, size_t n);

static uint32_t find_xen_cpuid_base(void)
{
    for (uint32_t base = XEN_CPUID_FIRST; base < XEN_CPUID_LAST; base += 0x100) {
        uint32_t a, b, c, d;
        cpuid(base, &a, &b, &c, &d);
        if (b == XEN_CPUID_SIGNATURE_EBX && c == XEN_CPUID_SIGNATURE_ECX &&
            d == XEN_CPUID_SIGNATURE_EDX && a >= base + 2)
            return base;
    }
    return 0;
}

/* An HVM parameter of this domain, or 0 when Xen refuses to tell. */
static uint64_t hvm_get_param(uint32_t index)
{
    struct xen_hvm_param p = {.domid = DOMID_SELF, .index = index, .value = 0};
    if (xen_hypercall2(XEN_HC_hvm_op, HVMOP_get_param, (uint64_t)(uintptr_t)&p) != 0)
        return 0;
    return p.value;
}

/* Watch control/shutdown through xenstore, on the first poll only: images
 * that never wait (hello) do not pay for it at boot. Without a xenstore ring
 * the guest simply cannot be stopped gracefully. */
static void store_start(void)
{
    store_started = true;
    uint64_t pfn = hvm_get_param(HVM_PARAM_STORE_PFN);
    uint64_t port = hvm_get_param(HVM_PARAM_STORE_EVTCHN);
    if (pfn == 0 || pfn >= MAPPED_LIMIT / PAGE_SIZE || port == 0 || port >= 64 * 64)
        return;
    store_port = (uint32_t)port;
    evtchn_mask(store_port);
    xs_watch_shutdown((volatile struct xenstore_domain_interface *)(uintptr_t)(pfn * PAGE_SIZE),
                      store_port);
}

static void xen_init(uint32_t base)
{
    uint32_t pages, msr, c, d;
    cpuid(base + 2, &pages, &msr, &c, &d);
    if (pages < 1)
        early_fail("CPUID reports no hypercall page");
    wrmsr(msr, (uint64_t)(uintptr_t)xen_hypercall_page);

    struct xen_add_to_physmap xatp = {
        .domid = DOMID_SELF,
        .space = XENMAPSPACE_shared_info,
        .idx = 0,
        .gpfn = (uint64_t)(uintptr_t)shared_info_frame / PAGE_SIZE,
    };
    if (xen_hypercall2(XEN_HC_memory_op, XENMEM_add_to_physmap, (uint64_t)(uintptr_t)&xatp) != 0)
        early_fail("XENMEM_add_to_physmap(shared_info) failed");
    shared = (volatile struct shared_info *)shared_info_frame;

    uint64_t pfn = hvm_get_param(HVM_PARAM_CONSOLE_PFN);
    uint64_t port = hvm_get_param(HVM_PARAM_CONSOLE_EVTCHN);
    if (pfn == 0 || pfn >= MAPPED_LIMIT / PAGE_SIZE || port == 0 || port >= 64 * 64)
        early_fail("no PV console (HVM_PARAM_CONSOLE_PFN/EVTCHN)");
    cons = (volatile struct xencons_interface *)(uintptr_t)(pfn * PAGE_SIZE);
    cons_port = (uint32_t)port;
    /* No upcalls here: keep the port masked; SCHEDOP_poll still sees it. */
    evtchn_mask(cons_port);
    on_xen = true;
}

static uint64_t round_up16(uint64_t v)
{
    return (v + 15u) & ~(uint64_t)15u;
}

static void read_start_info(const struct hvm_start_info *si)
{
    uint64_t heap = (uint64_t)(uintptr_t)_end;
    uint64_t mem = 0;
    if (si == NULL || si->magic != XEN_HVM_START_MAGIC)
        LIBOS_ABORT("xen: %ebx does not point at an hvm_start_info (bad magic)");
    uint64_t si_end = (uint64_t)(uintptr_t)si + sizeof(*si);
    if (si_end > heap)
        heap = si_end;
    const char *cmd = NULL;
    if (si->cmdline_paddr != 0 && si->cmdline_paddr < MAPPED_LIMIT) {
        cmd = (const char *)(uintptr_t)si->cmdline_paddr;
        uint64_t cmd_end = si->cmdline_paddr + strlen(cmd) + 1;
        if (cmd_end > heap)
            heap = cmd_end;
    }
    if (si->version >= 1 && si->memmap_paddr != 0 && si->memmap_paddr < MAPPED_LIMIT) {
        const struct hvm_memmap_table_entry *e =
            (const struct hvm_memmap_table_entry *)(uintptr_t)si->memmap_paddr;
        uint64_t map_end = si->memmap_paddr + (uint64_t)si->memmap_entries * sizeof(*e);
        if (map_end > heap)
            heap = map_end;
        /* RAM is the RAM entry that holds the image (loaded at 1 MiB). */
        for (uint32_t i = 0; i < si->memmap_entries && i < 128; i++) {
            if (e[i].type == XEN_MEMMAP_RAM && e[i].addr <= 0x100000u &&
                e[i].addr + e[i].size > 0x100000u)
                mem = e[i].addr + e[i].size;
        }
    }
    if (mem > MAPPED_LIMIT)
        mem = MAPPED_LIMIT;
    libos_boot.mem_size = mem;
    libos_boot.heap_start = round_up16(heap);
    /* Without a memory map the heap is empty rather than guessed. */
    libos_boot.heap_end = mem > libos_boot.heap_start ? mem : libos_boot.heap_start;
    libos_boot.cmdline = cmd;
    libos_boot.mft = NULL;
}

_Noreturn void xen_start(const struct hvm_start_info *si);

_Noreturn void xen_start(const struct hvm_start_info *si)
{
    uint32_t base = find_xen_cpuid_base();
    if (base != 0)
        xen_init(base);
    else /* SeaBIOS leaves "Booting from ROM.." without a newline: end its line. */
        com1_puts("\n", 1);
    read_start_info(si);
    libos_main();
}

/* ---- time ---------------------------------------------------------------- */

uint64_t xen_system_time_ns(void)
{
    if (!on_xen)
        LIBOS_ABORT("clock: the xen platform's clock needs Xen (no Xen CPUID leaves)");
    const volatile struct vcpu_time_info *t = &shared->vcpu_info[0].time;
    uint32_t version;
    uint64_t tsc, stamp, system;
    uint32_t mul;
    int8_t shift;
    do {
        version = t->version;
        barrier();
        stamp = t->tsc_timestamp;
        system = t->system_time;
        mul = t->tsc_to_system_mul;
        shift = t->tsc_shift;
        tsc = libos_rdtsc();
        barrier();
    } while ((version & 1u) != 0 || version != t->version);
    uint64_t delta = tsc > stamp ? tsc - stamp : 0;
    if (shift >= 0)
        delta <<= shift;
    else
        delta >>= -shift;
    uint64_t now = system + (uint64_t)(((unsigned __int128)delta * mul) >> 32);
    /* A new record may start a few ns behind the last reading: never go back. */
    if (now < last_time_ns)
        now = last_time_ns;
    last_time_ns = now;
    return now;
}

uint64_t plat_tsc_hz(void)
{
    if (libos_boot.tsc_hz == 0 && on_xen) {
        const volatile struct vcpu_time_info *t = &shared->vcpu_info[0].time;
        uint32_t mul = t->tsc_to_system_mul;
        int8_t shift = t->tsc_shift;
        if (mul != 0) {
            /* ns = ((tsc << shift) * mul) >> 32, so hz = 1e9 * 2^32 / mul >> shift. */
            uint64_t hz = (1000000000ull << 32) / mul;
            libos_boot.tsc_hz = shift >= 0 ? hz >> shift : hz << -shift;
        }
    }
    return libos_boot.tsc_hz;
}

uint64_t plat_walltime_ns(void)
{
    if (!on_xen)
        return 0;
    uint32_t version, sec_lo, sec_hi, nsec;
    do {
        version = shared->wc_version;
        barrier();
        sec_lo = shared->wc_sec;
        sec_hi = shared->wc_sec_hi;
        nsec = shared->wc_nsec;
        barrier();
    } while ((version & 1u) != 0 || version != shared->wc_version);
    uint64_t sec = ((uint64_t)sec_hi << 32) | sec_lo;
    return sec * 1000000000ull + nsec + xen_system_time_ns();
}

/* Block in Xen until `deadline` (system time) or until one of `ports` is
 * signalled. A zero deadline is never passed: Xen reads it as "no timeout". */
static void xen_poll(uint32_t *ports, uint32_t nr_ports, uint64_t deadline)
{
    struct sched_poll p = {
        .ports = (uint64_t)(uintptr_t)ports,
        .nr_ports = nr_ports,
        .timeout = deadline == 0 ? 1 : deadline,
    };
    (void)xen_hypercall2(XEN_HC_sched_op, SCHEDOP_poll, (uint64_t)(uintptr_t)&p);
}

/* `xl shutdown` (xenstore control/shutdown = poweroff or halt): stop as if the
 * app had returned 0. */
static void check_shutdown_request(void)
{
    if (xs_shutdown_requested()) {
        static const char line[] = "SHUTDOWN requested: poweroff\n";
        plat_puts(line, sizeof(line) - 1);
        plat_halt(0, NULL);
    }
}

uint64_t plat_poll(uint64_t timeout_ns)
{
    if (!on_xen)
        return 0;
    if (!store_started)
        store_start();
    check_shutdown_request();
    if (timeout_ns == 0)
        return 0;
    /* Woken by the timeout or by xenstore (a shutdown request). */
    xen_poll(&store_port, store_port != 0 ? 1 : 0, xen_system_time_ns() + timeout_ns);
    check_shutdown_request();
    return 0;
}

/* ---- console ------------------------------------------------------------- */


static uint32_t cons_used(void)
{
    uint32_t used = cons->out_prod - cons->out_cons;
    /* A backend that moved out_cons past out_prod is treated as a full ring. */
    return used > XENCONS_OUT_SIZE ? XENCONS_OUT_SIZE : used;
}

/* Wait until the out ring has room (want_empty: is empty) or `deadline`. The
 * pending bit is cleared before the ring is checked, so a signal from
 * xenconsoled that comes after the check ends the poll at once. */
static bool cons_wait(bool want_empty, uint64_t deadline)
{
    for (;;) {
        xen_evtchn_clear(cons_port);
        uint32_t used = cons_used();
        if (want_empty ? used == 0 : used < XENCONS_OUT_SIZE)
            return true;
        uint64_t now = xen_system_time_ns();
        if (deadline != 0 && now >= deadline)
            return false;
        uint64_t until = now + CONSOLE_WAIT_NS;
        if (deadline != 0 && deadline < until)
            until = deadline;
        xen_poll(&cons_port, 1, until);
    }
}

static void com1_puts(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        while ((inb(COM1 + 5) & 0x20) == 0)
            __asm__ __volatile__("pause");
        outb(COM1, (uint8_t)s[i]);
    }
}

void plat_puts(const char *s, size_t n)
{
    if (!on_xen) {
        com1_puts(s, n);
        return;
    }
    while (n > 0) {
        uint32_t room = XENCONS_OUT_SIZE - cons_used();
        if (room == 0) {
            (void)cons_wait(false, 0);
            continue;
        }
        uint32_t prod = cons->out_prod;
        for (; room > 0 && n > 0; room--, n--)
            cons->out[prod++ & (XENCONS_OUT_SIZE - 1)] = *s++;
        barrier(); /* x86 keeps stores in order: the bytes land before the index */
        cons->out_prod = prod;
        xen_evtchn_send(cons_port);
    }
}

/* ---- exit ---------------------------------------------------------------- */

static size_t format_exit_line(char *buf, int status)
{
    static const char head[] = "EXIT status=";
    char digits[12];
    size_t pos = 0;
    int i = (int)sizeof(digits);
    unsigned v = status < 0 ? (unsigned)-(long)status : (unsigned)status;
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0 && i > 1);
    if (status < 0)
        digits[--i] = '-';
    memcpy(buf, head, sizeof(head) - 1);
    pos = sizeof(head) - 1;
    memcpy(buf + pos, &digits[i], sizeof(digits) - (size_t)i);
    pos += sizeof(digits) - (size_t)i;
    const char *reason = status == 0 ? " reason=poweroff\n" : " reason=crash\n";
    size_t len = strlen(reason);
    memcpy(buf + pos, reason, len);
    return pos + len;
}

_Noreturn void plat_halt(int status, const void *cookie)
{
    (void)cookie;
    char line[48];
    plat_puts(line, format_exit_line(line, status));
    if (!on_xen) {
        outl(DEBUG_EXIT_PORT, status >= 0 && status <= 126 ? (uint32_t)status : 127u);
        for (;;)
            __asm__ __volatile__("cli; hlt");
    }
    /* Let xenconsoled read the last lines before the domain goes away. */
    (void)cons_wait(true, xen_system_time_ns() + EXIT_DRAIN_NS);
    struct sched_shutdown sd = {.reason = status == 0 ? SHUTDOWN_poweroff : SHUTDOWN_crash};
    for (;;) {
        (void)xen_hypercall2(XEN_HC_sched_op, SCHEDOP_shutdown, (uint64_t)(uintptr_t)&sd);
        sd.reason = SHUTDOWN_crash; /* never returns; if it did, that is a crash */
    }
}
