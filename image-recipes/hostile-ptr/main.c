/*
 * hostile-ptr: a hostile guest for the tender's exit-status contract.
 * It does PUTS with a data pointer past the end of guest memory.
 * Expected edge-tender exit status: 242 (guest ABI violation: bad pointer).
 * It prints what it is about to do first. hvt only.
 */
#include "libos.h"
#include "hvt/hypercall.h"

int app_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("HOSTILE ptr: about to do PUTS with a data pointer past the end of guest memory\n");
    volatile struct hvt_hc_puts a = {.data = libos_mem_size() + 0x10000u, .len = 16};
    hvt_hypercall(HVT_HYPERCALL_PUTS, &a);
    printf("HOSTILE %s: still running, which is wrong\n", "ptr");
    return 99;
}
