/*
 * solo5like.c: a guest laid out like a Solo5 hvt image (see solo5like.lds)
 * with a 2 MiB BSS. It checks what such images rely on: the BSS-only
 * segment is not counted in kernel_end, BSS reads as zero and is writable,
 * data was loaded, and the boot info and manifest are where the ABI says.
 */
#include "guest.h"

GUEST_ABI1_NOTE;
GUEST_NO_DEVICES;

__attribute__((section(".interp"), used)) static const char interp[] =
    "/nonexistent/solo5/";

__attribute__((section(".note.not-openbsd"), aligned(4), used))
static const struct {
    uint32_t namesz, descsz, type;
    char name[8];
    uint32_t desc;
} openbsd_note = {8, 4, 1, "OpenBSD", 0};

static __thread int tls_slot;
static char big_bss[2 << 20];
static volatile uint64_t data_word = 0x5eed5eed5eedull;

static void fail(const char *m)
{
    g_puts("FAIL: ");
    g_puts(m);
    g_puts("\n");
    g_halt(1);
}

__attribute__((section(".text.start"))) void _start(struct hvt_boot_info *bi)
{
    uint64_t bss = (uint64_t)(uintptr_t)big_bss;

    (void)&tls_slot;
    if (data_word != 0x5eed5eed5eedull)
        fail("data segment not loaded");
    if (bi->kernel_end > bss)
        fail("kernel_end counts the BSS-only segment");
    if (bi->mft != HVT_BOOT_INFO_BASE + sizeof(struct hvt_boot_info))
        fail("manifest not right after the boot info");
    if (big_bss[0] != 0 || big_bss[sizeof(big_bss) - 1] != 0)
        fail("BSS is not zero");
    big_bss[sizeof(big_bss) - 1] = 1;
    if (big_bss[sizeof(big_bss) - 1] != 1)
        fail("BSS is not writable");
    g_puts("SUCCESS\n");
    g_halt(0);
}
