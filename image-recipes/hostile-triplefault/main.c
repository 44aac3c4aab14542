/*
 * hostile-triplefault: a hostile guest for the tender's exit-status contract.
 * It does lidt with an empty IDT, then ud2 (triple fault).
 * Expected edge-tender exit status: 243 (KVM fault: triple fault / shutdown).
 * It prints what it is about to do first. hvt only.
 */
#include "libos.h"
#include "hvt/hypercall.h"

int app_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("HOSTILE triplefault: about to do lidt with an empty IDT, then ud2 (triple fault)\n");
    static const struct __attribute__((packed)) {
        uint16_t limit;
        uint64_t base;
    } empty_idt = {0, 0};
    __asm__ __volatile__("lidt %0; ud2" : : "m"(empty_idt));
    printf("HOSTILE %s: still running, which is wrong\n", "triplefault");
    return 99;
}
