/*
 * internal.h: the contract between the portable library OS parts and a
 * platform (hvt/ or qemu/). Apps never include this.
 *
 * A platform provides its entry point, fills `libos_boot`, then calls
 * libos_main(); it implements the plat_* hooks below. Parts that only make
 * sense on hvt (block, net) talk to the hypercall layer directly.
 */
#ifndef LIBOS_INTERNAL_H
#define LIBOS_INTERNAL_H

#include "libos.h"

struct libos_boot_state {
    uint64_t mem_size;   /* guest RAM bytes */
    uint64_t heap_start; /* first free byte after the image and its BSS */
    uint64_t heap_end;   /* end of the heap (the stack sits above it) */
    uint64_t tsc_hz;     /* 0 until known (qemu calibrates lazily) */
    const char *cmdline; /* NUL-terminated, read-only, may be NULL */
    const void *mft;     /* hvt: filled-in manifest copy; NULL elsewhere */
};

extern struct libos_boot_state libos_boot;

/* Generated per recipe by `edgeagent build` (gen_recipe.c). */
extern const char libos_app_name[];
extern const char libos_default_cmdline[];

/* Stack reserved at the top of RAM (the heap stops below it). */
#define LIBOS_STACK_SIZE (128u * 1024u)

/* Portable start-up: parse the command line, run app_main, exit. */
_Noreturn void libos_main(void);

/* Platform hooks. */
void plat_puts(const char *s, size_t n);
_Noreturn void plat_halt(int status, const void *cookie);
uint64_t plat_walltime_ns(void);
/* Block for at most timeout_ns or until a net device is readable; returns the
 * ready set. */
uint64_t plat_poll(uint64_t timeout_ns);
/* TSC frequency in Hz (may calibrate on first use). */
uint64_t plat_tsc_hz(void);

static inline uint64_t libos_rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

#endif /* LIBOS_INTERNAL_H */
