/*
 * tnd_fmt.c: [pure] the two pieces of text formatting the release tender
 * needs without a C library: a vsnprintf subset and strerror's messages.
 *
 * The release build links no libc (tnd_nolibc.c), and its snprintf,
 * vsnprintf and strerror are these. tests/c/test_units.c checks both
 * against glibc's, conversion by conversion and errno by errno.
 *
 * Supported: flags '-' and '0', a width and a precision (digits or '*'),
 * the length modifiers hh h l ll z j t, and the conversions d i u x X c s
 * p %. Anything else is copied out as written. It does no floating point,
 * no locale and no %n.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tnd.h"

struct out {
    char *buf;
    size_t size; /* bytes of buf, including the terminating NUL */
    size_t len;  /* bytes produced so far, also past size */
};

static void put(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void pad(struct out *o, char c, size_t n)
{
    while (n-- > 0)
        put(o, c);
}

/* One field: sign/prefix, zeros to the precision, digits or text, with
 * the width filled by spaces (left or right) or zeros. */
static void field(struct out *o, const char *prefix, const char *body,
                  size_t blen, size_t zeros, size_t width, bool left,
                  bool zero_pad)
{
    size_t plen = 0, total;

    while (prefix[plen] != '\0')
        plen++;
    total = plen + zeros + blen;
    if (!left && !zero_pad && width > total)
        pad(o, ' ', width - total);
    for (size_t i = 0; i < plen; i++)
        put(o, prefix[i]);
    if (!left && zero_pad && width > total)
        pad(o, '0', width - total);
    pad(o, '0', zeros);
    for (size_t i = 0; i < blen; i++)
        put(o, body[i]);
    if (left && width > total)
        pad(o, ' ', width - total);
}

static size_t to_digits(uintmax_t v, unsigned base, bool upper, char *d)
{
    const char *set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    size_t n = 0;

    do {
        tmp[n++] = set[v % base];
        v /= base;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        d[i] = tmp[n - 1 - i];
    return n;
}

int tnd_vformat(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = {buf, size, 0};

    while (*fmt != '\0') {
        const char *start = fmt;
        bool left = false, zero = false, has_prec = false;
        size_t width = 0, prec = 0;
        int len = 0; /* 0 int, 1 long, 2 long long, -1 short, -2 char */
        char c;

        if (*fmt != '%') {
            put(&o, *fmt++);
            continue;
        }
        fmt++;
        for (;; fmt++) {
            if (*fmt == '-')
                left = true;
            else if (*fmt == '0')
                zero = true;
            else
                break;
        }
        if (*fmt == '*') {
            int w = va_arg(ap, int);
            if (w < 0) {
                left = true;
                w = -w;
            }
            width = (size_t)w;
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (size_t)(*fmt++ - '0');
        if (*fmt == '.') {
            has_prec = true;
            fmt++;
            if (*fmt == '*') {
                int p = va_arg(ap, int);
                has_prec = p >= 0;
                prec = p >= 0 ? (size_t)p : 0;
                fmt++;
            }
            while (*fmt >= '0' && *fmt <= '9')
                prec = prec * 10 + (size_t)(*fmt++ - '0');
        }
        for (;; fmt++) {
            if (*fmt == 'l')
                len = len == 1 ? 2 : 1;
            else if (*fmt == 'h')
                len = len == -1 ? -2 : -1;
            else if (*fmt == 'z' || *fmt == 'j' || *fmt == 't')
                len = 2; /* all 64-bit on x86_64 */
            else
                break;
        }
        c = *fmt;
        if (c == '\0')
            break;
        fmt++;
        switch (c) {
        case '%':
            put(&o, '%');
            break;
        case 'c': {
            char ch = (char)va_arg(ap, int);
            field(&o, "", &ch, 1, 0, width, left, false);
            break;
        }
        case 's': {
            const char *s = va_arg(ap, const char *);
            size_t n = 0;
            if (s == NULL)
                s = "(null)";
            while ((!has_prec || n < prec) && s[n] != '\0')
                n++;
            field(&o, "", s, n, 0, width, left, false);
            break;
        }
        case 'd':
        case 'i':
        case 'u':
        case 'x':
        case 'X':
        case 'p': {
            uintmax_t v;
            const char *prefix = "";
            char d[24];
            size_t n;
            if (c == 'p') {
                v = (uintptr_t)va_arg(ap, void *);
                prefix = "0x";
            } else if (c == 'd' || c == 'i') {
                intmax_t s = len >= 2   ? va_arg(ap, long long)
                             : len == 1 ? va_arg(ap, long)
                                        : va_arg(ap, int);
                if (len == -1)
                    s = (short)s;
                else if (len == -2)
                    s = (signed char)s;
                prefix = s < 0 ? "-" : "";
                v = s < 0 ? (uintmax_t)0 - (uintmax_t)s : (uintmax_t)s;
            } else {
                v = len >= 2   ? va_arg(ap, unsigned long long)
                    : len == 1 ? va_arg(ap, unsigned long)
                               : va_arg(ap, unsigned);
                if (len == -1)
                    v = (unsigned short)v;
                else if (len == -2)
                    v = (unsigned char)v;
            }
            n = (has_prec && prec == 0 && v == 0)
                    ? 0
                    : to_digits(v, c == 'd' || c == 'i' || c == 'u' ? 10 : 16,
                                c == 'X', d);
            field(&o, prefix, d, n, has_prec && prec > n ? prec - n : 0,
                  width, left, zero && !has_prec);
            break;
        }
        default:
            /* Unknown conversion: copy it out unchanged. */
            while (start < fmt)
                put(&o, *start++);
            break;
        }
    }
    if (size > 0)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return o.len > INT32_MAX ? -1 : (int)o.len;
}

/* glibc's messages for the errors a tender can meet at setup. */
static const char *const messages[] = {
    [1] = "Operation not permitted",
    [2] = "No such file or directory",
    [3] = "No such process",
    [4] = "Interrupted system call",
    [5] = "Input/output error",
    [6] = "No such device or address",
    [7] = "Argument list too long",
    [8] = "Exec format error",
    [9] = "Bad file descriptor",
    [10] = "No child processes",
    [11] = "Resource temporarily unavailable",
    [12] = "Cannot allocate memory",
    [13] = "Permission denied",
    [14] = "Bad address",
    [15] = "Block device required",
    [16] = "Device or resource busy",
    [17] = "File exists",
    [18] = "Invalid cross-device link",
    [19] = "No such device",
    [20] = "Not a directory",
    [21] = "Is a directory",
    [22] = "Invalid argument",
    [23] = "Too many open files in system",
    [24] = "Too many open files",
    [25] = "Inappropriate ioctl for device",
    [26] = "Text file busy",
    [27] = "File too large",
    [28] = "No space left on device",
    [29] = "Illegal seek",
    [30] = "Read-only file system",
    [31] = "Too many links",
    [32] = "Broken pipe",
    [33] = "Numerical argument out of domain",
    [34] = "Numerical result out of range",
    [35] = "Resource deadlock avoided",
    [36] = "File name too long",
    [37] = "No locks available",
    [38] = "Function not implemented",
    [39] = "Directory not empty",
    [40] = "Too many levels of symbolic links",
    [75] = "Value too large for defined data type",
    [95] = "Operation not supported",
    [97] = "Address family not supported by protocol",
    [100] = "Network is down",
    [105] = "No buffer space available",
    [110] = "Connection timed out",
    [122] = "Disk quota exceeded",
};

const char *tnd_strerror_text(int err, char *buf, size_t size)
{
    if (err > 0 && (size_t)err < sizeof(messages) / sizeof(messages[0]) &&
        messages[err] != NULL)
        return messages[err];
    tnd_format(buf, size, "Unknown error %d", err);
    return buf;
}

int tnd_format(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = tnd_vformat(buf, size, fmt, ap);
    va_end(ap);
    return n;
}
