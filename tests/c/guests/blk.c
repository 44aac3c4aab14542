/*
 * blk.c: block device guest (device "storage").
 *   rw            write/read back sector 1, check EINVAL cases -> SUCCESS
 *   put TEXT      write TEXT into sector 0;  get: print sector 0
 *   read-to-text  BLOCK_READ into our own (read-only) text -> ABI violation
 *   buf-oob       BLOCK_WRITE from a buffer outside guest memory
 */
#include "guest.h"

GUEST_ABI1_NOTE;
GUEST_MFT1_NOTE(2, {.name = "storage", .type = MFT_DEV_BLOCK_BASIC});

static uint8_t sec[4096], back[4096];

static int blk_write(uint64_t h, uint64_t off, const void *d, uint64_t len)
{
    volatile struct hvt_hc_block_write a = {h, off, (uint64_t)(uintptr_t)d,
                                            len, -1};
    hypercall(HVT_HYPERCALL_BLOCK_WRITE, &a);
    return a.ret;
}

static int blk_read(uint64_t h, uint64_t off, void *d, uint64_t len)
{
    volatile struct hvt_hc_block_read a = {h, off, (uint64_t)(uintptr_t)d,
                                           len, -1};
    hypercall(HVT_HYPERCALL_BLOCK_READ, &a);
    return a.ret;
}

static int starts(const char *s, const char *w)
{
    while (*w && *s == *w) {
        s++;
        w++;
    }
    return *w == 0;
}

static void fail(const char *m)
{
    g_puts("FAIL: ");
    g_puts(m);
    g_puts("\n");
    g_halt(1);
}

__attribute__((section(".text.start"))) void _start(struct hvt_boot_info *bi)
{
    const char *cmd = (const char *)(uintptr_t)bi->cmdline;
    const struct mft *m = (const struct mft *)(uintptr_t)bi->mft;
    const struct mft_entry *e = &m->e[1];
    uint64_t bs = e->u.block_basic.block_size;
    uint64_t cap = e->u.block_basic.capacity;

    if (!e->attached || bs == 0 || bs > sizeof(sec))
        fail("device not attached");
    if (*cmd == 0 || starts(cmd, "rw")) {
        for (uint64_t i = 0; i < bs; i++)
            sec[i] = (uint8_t)(i * 7 + 3);
        if (blk_write(1, bs, sec, bs) != HVT_R_OK)
            fail("write");
        if (blk_read(1, bs, back, bs) != HVT_R_OK)
            fail("read");
        for (uint64_t i = 0; i < bs; i++)
            if (back[i] != sec[i])
                fail("data mismatch");
        if (blk_read(1, cap, back, bs) != HVT_R_EINVAL)
            fail("offset == capacity accepted");
        if (blk_read(1, cap - bs, back, 2 * bs) != HVT_R_EINVAL)
            fail("read past the end accepted");
        if (blk_write(1, ~0ull - 10, sec, bs) != HVT_R_EINVAL)
            fail("wrapping offset accepted");
        if (blk_write(0, 0, sec, bs) != HVT_R_EINVAL)
            fail("handle 0 accepted");
        if (blk_write(9, 0, sec, bs) != HVT_R_EINVAL)
            fail("unknown handle accepted");
        g_puts("capacity=");
        g_putu(cap);
        g_puts(" block_size=");
        g_putu(bs);
        g_puts("\nSUCCESS\n");
        g_halt(0);
    } else if (starts(cmd, "put ")) {
        size_t n = g_strlen(cmd + 4);
        for (size_t i = 0; i < bs; i++)
            sec[i] = i < n ? (uint8_t)cmd[4 + i] : 0;
        if (blk_write(1, 0, sec, bs) != HVT_R_OK)
            fail("write");
        g_puts("SUCCESS\n");
        g_halt(0);
    } else if (starts(cmd, "get")) {
        if (blk_read(1, 0, back, bs) != HVT_R_OK)
            fail("read");
        back[bs - 1] = 0;
        g_puts("GOT:");
        g_puts((const char *)back);
        g_puts("\n");
        g_halt(0);
    } else if (starts(cmd, "read-to-text")) {
        blk_read(1, 0, (void *)(uintptr_t)&_start, bs);
    } else if (starts(cmd, "buf-oob")) {
        blk_write(1, 0, (const void *)(uintptr_t)(bi->mem_size - 8), bs);
    }
    fail("still running");
}
