/*
 * console.c: printf-lite over the raw console write.
 *
 * Supported conversions: %s %c %d %u %x %p %% with optional length modifiers
 * l, ll and z. No width, precision or flags, no floating point. Each printf
 * call is written with as few console writes as possible (one per 512 bytes
 * of output), because every write is a hypercall. It does not read input.
 */
#include "internal.h"

#define PRINTF_CHUNK 512

struct sink {
    char *buf;
    size_t cap;   /* bytes available in buf */
    size_t len;   /* bytes currently in buf */
    size_t total; /* bytes produced in all */
    bool flush;   /* true: write to the console when buf fills; false: truncate */
};

static void sink_put(struct sink *s, char c)
{
    s->total++;
    if (s->len == s->cap) {
        if (!s->flush)
            return;
        libos_write(s->buf, s->len);
        s->len = 0;
    }
    s->buf[s->len++] = c;
}

static void sink_str(struct sink *s, const char *p)
{
    if (p == NULL)
        p = "(null)";
    while (*p != '\0')
        sink_put(s, *p++);
}

static void sink_unsigned(struct sink *s, uint64_t v, unsigned base)
{
    char tmp[24];
    int i = 0;
    do {
        unsigned d = (unsigned)(v % base);
        tmp[i++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v != 0);
    while (i > 0)
        sink_put(s, tmp[--i]);
}

static void format(struct sink *s, const char *fmt, va_list ap)
{
    for (; *fmt != '\0'; fmt++) {
        if (*fmt != '%') {
            sink_put(s, *fmt);
            continue;
        }
        fmt++;
        int longs = 0;
        while (*fmt == 'l' || *fmt == 'z') {
            longs = *fmt == 'z' ? 2 : longs + 1;
            fmt++;
        }
        switch (*fmt) {
        case 'd': {
            int64_t v = longs > 0 ? va_arg(ap, int64_t) : va_arg(ap, int);
            uint64_t u = (uint64_t)v;
            if (v < 0) {
                sink_put(s, '-');
                u = 0 - u;
            }
            sink_unsigned(s, u, 10);
            break;
        }
        case 'u':
        case 'x': {
            uint64_t u = longs > 0 ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
            sink_unsigned(s, u, *fmt == 'u' ? 10 : 16);
            break;
        }
        case 'p':
            sink_str(s, "0x");
            sink_unsigned(s, (uint64_t)(uintptr_t)va_arg(ap, void *), 16);
            break;
        case 's':
            sink_str(s, va_arg(ap, const char *));
            break;
        case 'c':
            sink_put(s, (char)va_arg(ap, int));
            break;
        case '%':
            sink_put(s, '%');
            break;
        case '\0':
            return;
        default:
            sink_put(s, '%');
            sink_put(s, *fmt);
            break;
        }
    }
}

int vprintf(const char *fmt, va_list ap)
{
    char buf[PRINTF_CHUNK];
    struct sink s = {.buf = buf, .cap = sizeof(buf), .len = 0, .total = 0, .flush = true};
    format(&s, fmt, ap);
    libos_write(buf, s.len);
    return (int)s.total;
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink s = {.buf = buf, .cap = size > 0 ? size - 1 : 0, .len = 0, .total = 0,
                     .flush = false};
    format(&s, fmt, ap);
    if (size > 0)
        buf[s.len] = '\0';
    return (int)s.total;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int puts(const char *s)
{
    return printf("%s\n", s);
}
