/*
 * net.c: net device guest (device "service0"). Prints its MAC and MTU,
 * then echoes the first frame it receives back unchanged, and exits 0.
 * With "hostile-len" it asks NET_WRITE to send from past guest memory.
 */
#include "guest.h"

GUEST_ABI1_NOTE;
GUEST_MFT1_NOTE(2, {.name = "service0", .type = MFT_DEV_NET_BASIC});

static uint8_t frame[2048];

static void puthex(uint8_t v)
{
    char b[3] = {"0123456789abcdef"[v >> 4], "0123456789abcdef"[v & 15], 0};
    g_puts(b);
}

__attribute__((section(".text.start"))) void _start(struct hvt_boot_info *bi)
{
    const char *cmd = (const char *)(uintptr_t)bi->cmdline;
    const struct mft *m = (const struct mft *)(uintptr_t)bi->mft;
    const struct mft_entry *e = &m->e[1];

    g_puts("MAC=");
    for (int i = 0; i < 6; i++) {
        puthex(e->u.net_basic.mac[i]);
        if (i < 5)
            g_puts(":");
    }
    g_puts(" MTU=");
    g_putu(e->u.net_basic.mtu);
    g_puts("\n");
    if (g_streq(cmd, "hostile-len")) {
        volatile struct hvt_hc_net_write w = {1, bi->mem_size - 16, 64, -1};
        hypercall(HVT_HYPERCALL_NET_WRITE, &w);
        g_halt(3);
    }
    g_puts("READY\n");
    for (int tries = 0; tries < 100; tries++) {
        volatile struct hvt_hc_poll p = {100000000ull, 0, -1};
        hypercall(HVT_HYPERCALL_POLL, &p);
        if (p.ret <= 0 || !(p.ready_set & 2))
            continue;
        volatile struct hvt_hc_net_read r = {1, (uint64_t)(uintptr_t)frame,
                                             sizeof(frame), -1};
        hypercall(HVT_HYPERCALL_NET_READ, &r);
        if (r.ret != HVT_R_OK)
            continue;
        volatile struct hvt_hc_net_write w = {1, (uint64_t)(uintptr_t)frame,
                                              r.len, -1};
        hypercall(HVT_HYPERCALL_NET_WRITE, &w);
        if (w.ret != HVT_R_OK) {
            g_puts("FAIL: write\n");
            g_halt(1);
        }
        g_puts("SUCCESS\n");
        g_halt(0);
    }
    g_puts("FAIL: no frame\n");
    g_halt(1);
}
