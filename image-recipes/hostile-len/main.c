/*
 * hostile-len: a hostile guest for the tender's exit-status contract.
 * It does PUTS with a huge length (2^64 - 256) from a valid buffer.
 * Expected edge-tender exit status: 242 (guest ABI violation: bad length).
 * It prints what it is about to do first. hvt only.
 */
#include "libos.h"
#include "hvt/hypercall.h"

int app_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("HOSTILE len: about to do PUTS with a huge length (2^64 - 256) from a valid buffer\n");
    static const char msg[] = "x";
    volatile struct hvt_hc_puts a = {.data = (uint64_t)(uintptr_t)msg, .len = ~(uint64_t)0xff};
    hvt_hypercall(HVT_HYPERCALL_PUTS, &a);
    printf("HOSTILE %s: still running, which is wrong\n", "len");
    return 99;
}
