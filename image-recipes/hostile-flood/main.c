/*
 * hostile-flood: a hostile guest for the tender's exit-status contract.
 * It does a console flood of 1 MiB (256 PUTS of 4 KiB), then exit 0.
 * Expected edge-tender exit status: 0 (the tender must survive the flood).
 * It prints what it is about to do first. hvt and xen (on xen it floods the console ring
 * that xenconsoled drains into the guest log the agent tails).
 */
#include "libos.h"

int app_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("HOSTILE flood: about to do a console flood of 1 MiB (256 PUTS of 4 KiB), then exit 0\n");
    static char line[4096];
    for (size_t i = 0; i < sizeof(line); i += 64) {
        memset(&line[i], 'F', 63);
        line[i + 63] = '\n';
    }
    for (int i = 0; i < 256; i++)
        libos_write(line, sizeof(line));
    printf("FLOOD DONE\n");
    return 0;
}
