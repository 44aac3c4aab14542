/* hello.c: the smallest useful guest: print a line, exit 0. */
#include "guest.h"

GUEST_ABI1_NOTE;
GUEST_NO_DEVICES;

__attribute__((section(".text.start"))) void _start(struct hvt_boot_info *bi)
{
    (void)bi;
    g_puts("Hello, world\nSUCCESS\n");
    g_halt(0);
}
