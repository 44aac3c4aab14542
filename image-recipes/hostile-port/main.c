/*
 * hostile-port: a hostile guest for the tender's exit-status contract.
 * It does inl from port 0x3f8 (a port the tender does not implement).
 * Expected edge-tender exit status: 242 (guest ABI violation: unknown port).
 * It prints what it is about to do first. hvt only.
 */
#include "libos.h"
#include "hvt/hypercall.h"

int app_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("HOSTILE port: about to do inl from port 0x3f8 (a port the tender does not implement)\n");
    uint32_t v;
    __asm__ __volatile__("inl %1, %0" : "=a"(v) : "Nd"((uint16_t)0x3f8));
    printf("read %u from port 0x3f8\n", v);
    printf("HOSTILE %s: still running, which is wrong\n", "port");
    return 99;
}
