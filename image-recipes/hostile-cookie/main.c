/*
 * hostile-cookie: a hostile guest for the tender's exit-status contract.
 * It does HALT with a cookie pointer outside guest memory.
 * Expected edge-tender exit status: 242 (guest ABI violation: bad cookie).
 * It prints what it is about to do first. hvt only.
 */
#include "libos.h"
#include "hvt/hypercall.h"

int app_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("HOSTILE cookie: about to do HALT with a cookie pointer outside guest memory\n");
    volatile struct hvt_hc_halt a = {.cookie = libos_mem_size() + 0x1000u, .exit_status = 7};
    hvt_hypercall(HVT_HYPERCALL_HALT, &a);
    printf("HOSTILE %s: still running, which is wrong\n", "cookie");
    return 99;
}
