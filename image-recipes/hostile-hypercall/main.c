/*
 * hostile-hypercall: a hostile guest for the tender's exit-status contract.
 * It does outl to port 0x500+42 (an unknown hypercall number).
 * Expected edge-tender exit status: 242 (guest ABI violation: unknown hypercall).
 * It prints what it is about to do first. hvt only.
 */
#include "libos.h"
#include "hvt/hypercall.h"

int app_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("HOSTILE hypercall: about to do outl to port 0x500+42 (an unknown hypercall number)\n");
    volatile struct hvt_hc_walltime a = {.nsecs = 0};
    hvt_hypercall(42, &a);
    printf("HOSTILE %s: still running, which is wrong\n", "hypercall");
    return 99;
}
