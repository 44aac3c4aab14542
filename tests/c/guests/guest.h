/*
 * guest.h: a freestanding helper for edge-tender's minimal test guests.
 *
 * Hypercall wrappers (outl to 0x500+nr with the argument's address), the
 * ABI1 note, a manifest-note macro and a few string helpers. These guests
 * are the tender's own regression images, not a library OS (that lives in
 * image-recipes/). Keep them tiny: guest code runs emulated here.
 */
#ifndef GUEST_H
#define GUEST_H

#include <stddef.h>
#include <stdint.h>

#include "hvt_abi.h"

static inline void hypercall(unsigned nr, volatile void *arg)
{
    __asm__ __volatile__("outl %0, %1"
                         :
                         : "a"((uint32_t)(uintptr_t)arg),
                           "d"((uint16_t)HVT_HYPERCALL_PIO(nr))
                         : "memory");
}

static inline size_t g_strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static inline int g_streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

static inline void g_putsn(const char *s, size_t n)
{
    volatile struct hvt_hc_puts a = {(uint64_t)(uintptr_t)s, n};
    hypercall(HVT_HYPERCALL_PUTS, &a);
}

static inline void g_puts(const char *s)
{
    g_putsn(s, g_strlen(s));
}

__attribute__((noreturn)) static inline void g_halt(int status)
{
    volatile struct hvt_hc_halt a = {0, status};
    hypercall(HVT_HYPERCALL_HALT, &a);
    for (;;)
        ;
}

static inline void g_putu(uint64_t v)
{
    char buf[24];
    int i = 23;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    g_puts(&buf[i]);
}

/* The ABI1 note: Solo5 hvt, target 1, version 2. */
#define GUEST_ABI1_NOTE                                                      \
    __attribute__((section(".note.solo5.abi"), aligned(4), used))           \
    static const struct {                                                    \
        uint32_t namesz, descsz, type;                                       \
        char name[8];                                                        \
        struct hvt_abi1_info info;                                           \
    } guest_abi1_note = {6, 16, HVT_NOTE_TYPE_ABI1, "Solo5",                 \
                         {HVT_ABI_TARGET, HVT_ABI_VERSION, 0, 0}}

/* The MFT1 note with N entries (entry 0 reserved), entries given after. */
#define GUEST_MFT1_NOTE(N, ...)                                              \
    __attribute__((section(".note.solo5.manifest"), aligned(8), used))      \
    static const struct {                                                    \
        uint32_t namesz, descsz, type;                                       \
        char name[8];                                                        \
        uint32_t pad;                                                        \
        uint32_t version, entries;                                           \
        struct mft_entry e[N];                                               \
    } guest_mft1_note = {6,                                                  \
                         4 + 8 + (N) * 104,                                  \
                         HVT_NOTE_TYPE_MFT1,                                 \
                         "Solo5",                                            \
                         0,                                                  \
                         MFT_VERSION,                                        \
                         (N),                                                \
                         {{.type = MFT_RESERVED_FIRST}, __VA_ARGS__}}

#define GUEST_NO_DEVICES GUEST_MFT1_NOTE(1)

#endif
