/*
 * core.c: the part every image links: portable start-up (command line ->
 * argc/argv -> app_main -> exit), exit and abort, raw console writes, and the
 * freestanding string helpers the compiler may call.
 *
 * It does not know how the guest was booted (that is the platform's job) and
 * does no formatting beyond what abort needs (printf lives in console.c).
 * Start-up is deliberately tiny: guest code is emulated at ~1 us/instruction
 * on our machines, so there are no memsets and no loops over RAM here.
 */
#include "internal.h"

#define MAX_ARGS 64
#define CMDLINE_MAX 8192

struct libos_boot_state libos_boot;

/* A 64-bit word that may alias any object (for the word-at-a-time loops). */
typedef uint64_t __attribute__((may_alias)) word_t;

static char cmdline_copy[CMDLINE_MAX];
static char *argv_store[MAX_ARGS + 1];

/* Copy src (possibly read-only) into cmdline_copy, splitting on spaces into
 * argv_store starting at index `argc`; skip Solo5's `--solo5:` options. */
static int split_args(const char *src, int argc)
{
    size_t pos = 0;
    while (src != NULL && *src != '\0' && argc < MAX_ARGS) {
        while (*src == ' ')
            src++;
        if (*src == '\0')
            break;
        const char *start = src;
        while (*src != '\0' && *src != ' ')
            src++;
        size_t n = (size_t)(src - start);
        if (n >= 8 && memcmp(start, "--solo5:", 8) == 0)
            continue;
        if (pos + n + 1 > CMDLINE_MAX)
            break;
        memcpy(&cmdline_copy[pos], start, n);
        cmdline_copy[pos + n] = '\0';
        argv_store[argc++] = &cmdline_copy[pos];
        pos += n + 1;
    }
    return argc;
}

_Noreturn void libos_main(void)
{
    argv_store[0] = (char *)libos_app_name;
    int argc = split_args(libos_boot.cmdline, 1);
    if (argc == 1)
        argc = split_args(libos_default_cmdline, 1);
    argv_store[argc] = NULL;
    libos_exit(app_main(argc, argv_store));
}

_Noreturn void libos_exit(int status)
{
    plat_halt(status, NULL);
}

void libos_write(const char *s, size_t n)
{
    if (n > 0)
        plat_puts(s, n);
}

static size_t append(char *buf, size_t pos, size_t cap, const char *s)
{
    while (*s != '\0' && pos < cap)
        buf[pos++] = *s++;
    return pos;
}

_Noreturn void libos_abort(const char *file, int line, const char *msg)
{
    char buf[256];
    char num[12];
    size_t pos = 0;
    size_t cap = sizeof(buf) - 1;
    int i = (int)sizeof(num) - 1;
    unsigned v = line < 0 ? 0u : (unsigned)line;

    num[i] = '\0';
    do {
        num[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0 && i > 0);

    pos = append(buf, pos, cap, "ABORT: ");
    pos = append(buf, pos, cap, file);
    pos = append(buf, pos, cap, ":");
    pos = append(buf, pos, cap, &num[i]);
    pos = append(buf, pos, cap, ": ");
    pos = append(buf, pos, cap, msg);
    buf[pos++] = '\n';
    plat_puts(buf, pos);
    plat_halt(255, NULL);
}

uint64_t libos_mem_size(void)
{
    return libos_boot.mem_size;
}

uint64_t libos_heap_start(void)
{
    return libos_boot.heap_start;
}

bool libos_parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (s == NULL || *s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return false;
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

const char *libos_arg_value(const char *arg, const char *key)
{
    size_t n = strlen(key);
    if (strncmp(arg, key, n) == 0 && arg[n] == '=')
        return arg + n + 1;
    return NULL;
}

/* ---- string helpers ------------------------------------------------------ */

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    /* Word copies when both are 8-byte aligned: 8x fewer emulated steps. */
    if ((((uintptr_t)d | (uintptr_t)s) & 7u) == 0) {
        for (; n >= 8; n -= 8, d += 8, s += 8)
            *(word_t *)(void *)d = *(const word_t *)(const void *)s;
    }
    while (n-- > 0)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d == s || n == 0)
        return dst;
    if (d < s || d >= s + n)
        return memcpy(dst, src, n);
    while (n-- > 0)
        d[n] = s[n];
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    if (((uintptr_t)d & 7u) == 0 && n >= 8) {
        uint64_t w = (uint8_t)c * 0x0101010101010101ull;
        for (; n >= 8; n -= 8, d += 8)
            *(word_t *)(void *)d = w;
    }
    while (n-- > 0)
        *d++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a;
    const unsigned char *y = b;
    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0')
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a != '\0' && *a == *b) {
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i] || a[i] == '\0')
            return (unsigned char)a[i] - (unsigned char)b[i];
    }
    return 0;
}
