/*
 * libos.h: the public API of the edgeagent library OS, for apps.
 *
 * An app defines `int app_main(int argc, char **argv)`; the library OS starts
 * it with argv[0] = the recipe name and argv[1..] = the command line split on
 * spaces (or the recipe's default `args` when the command line is empty), and
 * exits with its return value.
 *
 * The API is split into parts that are compiled separately; a recipe lists
 * the parts it links (`libos = [...]`). Calling a function of a part the
 * recipe does not list is a link error, which is the point.
 *
 *   core    (always)  exit, abort, string helpers, raw console write
 *   console           printf-lite and friends
 *   clock             monotonic and wall clock, sleep, poll
 *   heap              malloc/calloc/free (simple first-fit)
 *   block   (hvt)     block devices by manifest name
 *   net     (hvt)     network devices by manifest name
 *
 * Everything here is freestanding C11: no SSE, no floating point, no libc.
 */
#ifndef LIBOS_H
#define LIBOS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- core ---------------------------------------------------------------- */

/* The app's entry point; its return value becomes the exit status. */
int app_main(int argc, char **argv);

/* Stop the guest with `status` (0-255 on hvt; see README for qemu). */
_Noreturn void libos_exit(int status);

/* Print "ABORT: file:line: msg" and exit with status 255. */
_Noreturn void libos_abort(const char *file, int line, const char *msg);
#define LIBOS_ABORT(msg) libos_abort(__FILE__, __LINE__, (msg))
#define LIBOS_ASSERT(c)                                                                            \
    do {                                                                                           \
        if (!(c))                                                                                  \
            libos_abort(__FILE__, __LINE__, "assertion failed: " #c);                              \
    } while (0)

/* Write raw bytes to the console (one PUTS hypercall on hvt). */
void libos_write(const char *s, size_t n);

/* Guest RAM size in bytes, and the first free byte after the image (incl. BSS). */
uint64_t libos_mem_size(void);
uint64_t libos_heap_start(void);

/* Freestanding string helpers (the compiler may also emit calls to mem*). */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* Parse an unsigned decimal; returns false on empty input, junk or overflow. */
bool libos_parse_u64(const char *s, uint64_t *out);

/* If arg is "key=value" with the given key, return a pointer to value. */
const char *libos_arg_value(const char *arg, const char *key);

/* ---- console ------------------------------------------------------------- */

/* printf-lite: %s %d %u %x %lu %lx %ld %c %% (and %llu/%llx); no width or flags.
 * Output of one call is written with a single console write (up to 512 bytes
 * per write; longer output is split). Returns the number of bytes formatted. */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
/* Format into buf (always NUL-terminated when size > 0); returns the length
 * the full output would have had. */
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
/* Write s followed by a newline. */
int puts(const char *s);

/* ---- clock --------------------------------------------------------------- */

/* Nanoseconds since an arbitrary point at boot (TSC scaled, integer math). */
uint64_t libos_clock_monotonic(void);
/* Nanoseconds since the Unix epoch (WALLTIME hypercall on hvt, RTC on qemu). */
uint64_t libos_clock_wall(void);
/* TSC frequency in Hz used for the monotonic clock. */
uint64_t libos_tsc_hz(void);
/* Wait until the monotonic clock reaches deadline_ns or a net device becomes
 * readable; returns the ready set (bit i = net device at manifest index i). */
uint64_t libos_yield(uint64_t deadline_ns);
/* Sleep for ns nanoseconds (ignores network readiness). */
void libos_sleep_ns(uint64_t ns);

/* ---- heap ---------------------------------------------------------------- */

void *malloc(size_t n);
void *calloc(size_t nmemb, size_t size);
void free(void *p);

/* ---- block (hvt) ----------------------------------------------------------- */

struct libos_block {
    uint64_t handle;     /* manifest index */
    uint64_t capacity;   /* bytes */
    uint64_t block_size; /* bytes */
};

/* Look up an attached block device by manifest name; false if absent. */
bool libos_block_find(const char *name, struct libos_block *out);
/* Read/write exactly one or more whole blocks at a block-aligned offset.
 * Returns 0 on success or an HVT_R_* result code. */
int libos_block_read(const struct libos_block *b, uint64_t offset, void *buf, size_t len);
int libos_block_write(const struct libos_block *b, uint64_t offset, const void *buf, size_t len);

/* ---- net (hvt) --------------------------------------------------------------- */

struct libos_net {
    uint64_t handle; /* manifest index */
    uint8_t mac[6];
    uint16_t mtu;
};

bool libos_net_find(const char *name, struct libos_net *out);
/* Read one frame into buf (size *len); sets *len. Returns 0, or HVT_R_AGAIN
 * when nothing is pending, or another HVT_R_* code. */
int libos_net_read(const struct libos_net *n, void *buf, size_t *len);
int libos_net_write(const struct libos_net *n, const void *buf, size_t len);

#endif /* LIBOS_H */
