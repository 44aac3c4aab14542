/*
 * hello: prints a greeting and its arguments, then "SUCCESS", and exits 0.
 * The smallest useful image: it links only the core and console parts.
 *
 * Two arguments exist for testing exit paths: `exit=N` exits with status N
 * after printing SUCCESS, and `abort` aborts (status 255, "ABORT: ..." line)
 * instead of printing SUCCESS.
 */
#include "libos.h"

int app_main(int argc, char **argv)
{
    uint64_t status = 0;
    bool abort_requested = false;
    printf("Hello, world from edgeagent hello\n");
    for (int i = 1; i < argc; i++) {
        printf("arg[%d]=%s\n", i, argv[i]);
        const char *v = libos_arg_value(argv[i], "exit");
        if (v != NULL && (!libos_parse_u64(v, &status) || status > 255))
            LIBOS_ABORT("exit=N needs N in 0..255");
        if (strcmp(argv[i], "abort") == 0)
            abort_requested = true;
    }
    if (abort_requested)
        LIBOS_ABORT("abort requested");
    printf("SUCCESS\n");
    return (int)status;
}
