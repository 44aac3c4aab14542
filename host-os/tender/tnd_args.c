/*
 * tnd_args.c: [pure] command-line parsing for edge-tender.
 *
 * Parses the Solo5-compatible options (--mem, --block:, --block-sector-size:,
 * --net:, --net-mac:) plus ours (--events-fd, --version, --help), finds
 * KERNEL and the guest ARGS, and builds the guest command line. It does
 * not open anything, and it does not know the manifest: matching device
 * names against the image happens in tnd_mft.c.
 */
#include <stdio.h>
#include <string.h>

#include "tnd.h"

static int fail(char *err, size_t errlen, const char *msg, const char *arg)
{
    snprintf(err, errlen, "%s: '%s'", msg, arg);
    return -1;
}

int tnd_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (s == NULL || *s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        if (__builtin_mul_overflow(v, 10u, &v) ||
            __builtin_add_overflow(v, (uint64_t)(*s - '0'), &v))
            return -1;
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int tnd_parse_mac(const char *s, uint8_t mac[6])
{
    for (int i = 0; i < 6; i++) {
        int hi = hexval(s[0]);
        int lo = hi < 0 ? -1 : hexval(s[1]);
        if (lo < 0)
            return -1;
        mac[i] = (uint8_t)(hi << 4 | lo);
        s += 2;
        if (i < 5) {
            if (*s != ':')
                return -1;
            s++;
        }
    }
    if (*s != '\0')
        return -1;
    if (mac[0] & 1u)
        return -1; /* multicast */
    return 0;
}

/*
 * Split "NAME=VALUE" (the part after "--kind:") into a device option.
 * NAME must be 1..MFT_NAME_MAX characters and VALUE non-empty.
 */
static int devopt(const char *s, struct tnd_devopt *list, size_t *n,
                  const char *arg, char *err, size_t errlen)
{
    const char *eq = strchr(s, '=');

    if (eq == NULL || eq == s || eq[1] == '\0')
        return fail(err, errlen, "expected NAME=VALUE in option", arg);
    if ((size_t)(eq - s) > MFT_NAME_MAX)
        return fail(err, errlen, "device name longer than 67 characters",
                    arg);
    for (size_t k = 0; k < *n; k++) {
        if (list[k].name_len == (size_t)(eq - s) &&
            memcmp(list[k].name, s, list[k].name_len) == 0)
            return fail(err, errlen, "device given twice", arg);
    }
    if (*n >= MFT_MAX_ENTRIES)
        return fail(err, errlen, "too many device options", arg);
    list[*n].name = s;
    list[*n].name_len = (size_t)(eq - s);
    list[*n].value = eq + 1;
    (*n)++;
    return 0;
}

/* Returns the rest of arg after prefix, or NULL when it does not match. */
static const char *after(const char *arg, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(arg, prefix, n) == 0 ? arg + n : NULL;
}

int tnd_args_parse(int argc, char *const argv[], struct tnd_opts *o,
                   char *err, size_t errlen)
{
    const char *v;
    int i;

    memset(o, 0, sizeof(*o));
    o->mem_mb = TND_DEFAULT_MEM_MB;
    o->events_fd = -1;
    err[0] = '\0';

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[0] != '-' || a[1] != '-')
            break; /* KERNEL */
        if (strcmp(a, "--help") == 0) {
            o->help = true;
        } else if (strcmp(a, "--version") == 0) {
            o->version = true;
        } else if ((v = after(a, "--mem=")) != NULL) {
            if (tnd_parse_u64(v, 4096, &o->mem_mb) != 0 || o->mem_mb < 2)
                return fail(err, errlen,
                            "--mem must be a number of MiB from 2 to 4096",
                            a);
        } else if ((v = after(a, "--events-fd=")) != NULL) {
            uint64_t fd;
            if (tnd_parse_u64(v, 65535, &fd) != 0 || fd < 3)
                return fail(err, errlen,
                            "--events-fd must be a file descriptor >= 3", a);
            o->events_fd = (int)fd;
        } else if ((v = after(a, "--block-sector-size:")) != NULL) {
            if (devopt(v, o->sector, &o->nsector, a, err, errlen) != 0)
                return -1;
        } else if ((v = after(a, "--block:")) != NULL) {
            if (devopt(v, o->block, &o->nblock, a, err, errlen) != 0)
                return -1;
        } else if ((v = after(a, "--net-mac:")) != NULL) {
            if (devopt(v, o->mac, &o->nmac, a, err, errlen) != 0)
                return -1;
        } else if ((v = after(a, "--net:")) != NULL) {
            if (devopt(v, o->net, &o->nnet, a, err, errlen) != 0)
                return -1;
        } else {
            return fail(err, errlen, "unknown option", a);
        }
    }
    if (o->help || o->version)
        return 0;
    if (i >= argc) {
        snprintf(err, errlen, "missing KERNEL (try --help)");
        return -1;
    }
    o->kernel = argv[i];
    o->nargs = argc - i - 1;
    o->args = &argv[i + 1];
    return 0;
}

int tnd_cmdline_build(int nargs, char *const args[], char *buf,
                      size_t bufsize)
{
    size_t pos = 0;

    if (bufsize == 0)
        return -1;
    buf[0] = '\0';
    for (int i = 0; i < nargs; i++) {
        size_t n = strlen(args[i]);
        size_t need = n + (i > 0 ? 1u : 0u);
        if (need >= bufsize - pos)
            return -1;
        if (i > 0)
            buf[pos++] = ' ';
        memcpy(buf + pos, args[i], n);
        pos += n;
        buf[pos] = '\0';
    }
    return 0;
}

int tnd_mem_size(uint64_t mem_mb, uint64_t *bytes, char *err, size_t errlen)
{
    uint64_t b;

    if (__builtin_mul_overflow(mem_mb, (uint64_t)1 << 20, &b)) {
        snprintf(err, errlen, "--mem=%llu is too large",
                 (unsigned long long)mem_mb);
        return -1;
    }
    b &= ~(HVT_MEM_ALIGN - 1);
    if (b < HVT_MEM_ALIGN || b > HVT_GUEST_MAX_MEM) {
        snprintf(err, errlen,
                 "--mem=%llu: guest memory must be from 2 MiB to 4096 MiB",
                 (unsigned long long)mem_mb);
        return -1;
    }
    *bytes = b;
    return 0;
}
