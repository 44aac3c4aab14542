/*
 * hostile-wtext: a hostile guest for the tender's exit-status contract.
 * It does a write into its own text segment (read-only).
 * Expected edge-tender exit status: 243 (KVM fault: write to read-only text, MMIO exit here).
 * It prints what it is about to do first. hvt only.
 */
#include "libos.h"
#include "hvt/hypercall.h"

int app_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("HOSTILE wtext: about to do a write into its own text segment (read-only)\n");
    volatile uint8_t *text = (volatile uint8_t *)(uintptr_t)&app_main;
    *text = 0xcc;
    printf("HOSTILE %s: still running, which is wrong\n", "wtext");
    return 99;
}
