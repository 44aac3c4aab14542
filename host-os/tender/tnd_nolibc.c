/*
 * tnd_nolibc.c: the C library of edge-tender and edge-tender-debug, which
 * link no libc at all (static PIEs built with -nostdlib).
 *
 * Why: a tender is one short-lived process per guest, and glibc's start-up
 * (the dynamic loader, then CPU feature and cache detection that executes
 * CPUID dozens of times, each a trap on a virtualised host) cost more than
 * all of the tender's own setup. This file is the whole replacement: the
 * process entry point (self-relocation, RELRO, the stack-protector canary),
 * one wrapper per system call the tender makes, the string functions, and
 * snprintf/vsnprintf/strerror on top of tnd_fmt.c. Declarations come from
 * the system headers, so every definition is checked against glibc's
 * prototype; _FORTIFY_SOURCE's checking entry points are provided and fail
 * closed.
 *
 * It is single-threaded (errno is one variable), has no malloc, no stdio,
 * no locale, no atexit and no vDSO (clock_gettime is a system call). The
 * ASan and unit-test builds use glibc instead.
 */
/* This file is the C library: _FORTIFY_SOURCE's inline wrappers apply to
 * the tender's code, not to the functions they wrap (as in glibc). */
#undef _FORTIFY_SOURCE
#include <asm/prctl.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "tnd.h"

/* The string functions below must not be turned back into calls to
 * themselves by the optimiser. */
#pragma GCC optimize("no-tree-loop-distribute-patterns")

#define HIDDEN __attribute__((visibility("hidden")))
#define TND_STR_(x) #x
#define TND_STR(x) TND_STR_(x)
#define NO_SSP __attribute__((no_stack_protector))

/* Entry points the compiler and _FORTIFY_SOURCE's wrappers call. */
void __stack_chk_fail(void);
int __open_2(const char *path, int flags);
int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *timeout,
                const sigset_t *mask, size_t fds_len);
int __vsnprintf_chk(char *restrict buf, size_t size, int flag, size_t buflen,
                    const char *restrict fmt, va_list ap);
int __snprintf_chk(char *restrict buf, size_t size, int flag, size_t buflen,
                   const char *restrict fmt, ...);

/* ---------------------------------------------------------- syscalls */

/* One thread: errno is one variable. */
static int errno_value;

int *__errno_location(void)
{
    return &errno_value;
}

NO_SSP static inline long sys6(long n, long a, long b, long c, long d, long e,
                               long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;

    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8),
                       "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* A raw result: -4095..-1 is -errno. */
static long check(long r)
{
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return -1;
    }
    return r;
}

#define SYS(n, a, b, c, d, e, f)                                             \
    check(sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e),  \
               (long)(f)))

_Noreturn void _exit(int status)
{
    for (;;)
        sys6(SYS_exit_group, status, 0, 0, 0, 0, 0);
}

_Noreturn static void fail_closed(const char *what)
{
    static const char prefix[] = "edge-tender: fatal: ";
    sys6(SYS_write, 2, (long)prefix, sizeof(prefix) - 1, 0, 0, 0);
    sys6(SYS_write, 2, (long)what, (long)strlen(what), 0, 0, 0);
    sys6(SYS_write, 2, (long)"\n", 1, 0, 0, 0);
    /* SIGABRT as glibc's abort(); exit_group in case it is blocked. */
    sys6(SYS_kill, sys6(SYS_getpid, 0, 0, 0, 0, 0, 0), SIGABRT, 0, 0, 0, 0);
    _exit(127);
}

void __stack_chk_fail(void)
{
    fail_closed("stack smashing detected");
}

int open(const char *path, int flags, ...)
{
    mode_t mode = 0;

    if (flags & (O_CREAT | __O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return (int)SYS(SYS_openat, AT_FDCWD, path, flags, mode, 0, 0);
}

int __open_2(const char *path, int flags)
{
    if (flags & (O_CREAT | __O_TMPFILE))
        fail_closed("open: O_CREAT without a mode");
    return open(path, flags);
}

int close(int fd)
{
    return (int)SYS(SYS_close, fd, 0, 0, 0, 0, 0);
}

ssize_t read(int fd, void *buf, size_t n)
{
    return SYS(SYS_read, fd, buf, n, 0, 0, 0);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    return SYS(SYS_write, fd, buf, n, 0, 0, 0);
}

ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
    return SYS(SYS_pread64, fd, buf, n, off, 0, 0);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    return SYS(SYS_pwrite64, fd, buf, n, off, 0, 0);
}

/* glibc's struct stat is the kernel's on x86_64. */
int fstat(int fd, struct stat *st)
{
    return (int)SYS(SYS_fstat, fd, st, 0, 0, 0, 0);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    long r = sys6(SYS_mmap, (long)addr, (long)len, prot, flags, fd, off);
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return MAP_FAILED;
    }
    return (void *)r;
}

int munmap(void *addr, size_t len)
{
    return (int)SYS(SYS_munmap, addr, len, 0, 0, 0, 0);
}

int mprotect(void *addr, size_t len, int prot)
{
    return (int)SYS(SYS_mprotect, addr, len, prot, 0, 0, 0);
}

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    void *arg;

    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);
    return (int)SYS(SYS_ioctl, fd, request, arg, 0, 0, 0);
}

int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    long arg;

    va_start(ap, cmd);
    arg = va_arg(ap, long);
    va_end(ap);
    return (int)SYS(SYS_fcntl, fd, cmd, arg, 0, 0, 0);
}

int socket(int domain, int type, int protocol)
{
    return (int)SYS(SYS_socket, domain, type, protocol, 0, 0, 0);
}

pid_t getpid(void)
{
    return (pid_t)sys6(SYS_getpid, 0, 0, 0, 0, 0, 0);
}

int personality(unsigned long persona)
{
    return (int)SYS(SYS_personality, persona, 0, 0, 0, 0, 0);
}

int prctl(int option, ...)
{
    va_list ap;
    unsigned long a[4];

    va_start(ap, option);
    for (int i = 0; i < 4; i++)
        a[i] = va_arg(ap, unsigned long);
    va_end(ap);
    return (int)SYS(SYS_prctl, option, a[0], a[1], a[2], a[3], 0);
}

ssize_t getrandom(void *buf, size_t n, unsigned flags)
{
    return SYS(SYS_getrandom, buf, n, flags, 0, 0, 0);
}

int clock_gettime(clockid_t clock, struct timespec *ts)
{
    return (int)SYS(SYS_clock_gettime, clock, ts, 0, 0, 0, 0);
}

/* The kernel's signal set is 64 bits; glibc's sigset_t is larger, and
 * only its first word is used. */
#define KSIGSET_SIZE 8

int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *timeout,
          const sigset_t *mask)
{
    /* The kernel may update the timeout it is given: pass a copy. */
    struct timespec t;

    if (timeout != NULL)
        t = *timeout;
    return (int)SYS(SYS_ppoll, fds, n, timeout != NULL ? &t : NULL, mask,
                    KSIGSET_SIZE, 0);
}

int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *timeout,
                const sigset_t *mask, size_t fds_len)
{
    if (fds_len / sizeof(*fds) < n)
        fail_closed("ppoll: buffer overflow");
    return ppoll(fds, n, timeout, mask);
}

int sigemptyset(sigset_t *set)
{
    memset(set, 0, sizeof(*set));
    return 0;
}

int sigaddset(sigset_t *set, int sig)
{
    if (sig < 1 || sig > 64) {
        errno = EINVAL;
        return -1;
    }
    set->__val[0] |= 1ul << (sig - 1);
    return 0;
}

int sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
    return (int)SYS(SYS_rt_sigprocmask, how, set, old, KSIGSET_SIZE, 0, 0);
}

/* Return from a signal handler: the kernel's sigreturn. */
HIDDEN void tnd_sigreturn(void);
__asm__(".text\n"
        ".type tnd_sigreturn,@function\n"
        "tnd_sigreturn:\n"
        "    mov $" TND_STR(SYS_rt_sigreturn) ", %eax\n"
        "    syscall\n"
        "    hlt\n");

struct ksigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    unsigned long mask;
};

#define KSA_RESTORER 0x04000000ul

int sigaction(int sig, const struct sigaction *sa, struct sigaction *old)
{
    struct ksigaction k, ko;
    int rc;

    if (sa != NULL) {
        k.handler = sa->sa_handler;
        k.flags = (unsigned long)sa->sa_flags | KSA_RESTORER;
        k.restorer = tnd_sigreturn;
        k.mask = sa->sa_mask.__val[0];
    }
    rc = (int)SYS(SYS_rt_sigaction, sig, sa != NULL ? &k : NULL,
                  old != NULL ? &ko : NULL, KSIGSET_SIZE, 0, 0);
    if (rc == 0 && old != NULL) {
        memset(old, 0, sizeof(*old));
        old->sa_handler = ko.handler;
        old->sa_flags = (int)(ko.flags & ~KSA_RESTORER);
        old->sa_mask.__val[0] = ko.mask;
    }
    return rc;
}

/* ----------------------------------------------------------- strings */

void *memcpy(void *restrict d, const void *restrict s, size_t n)
{
    void *p = d;

    __asm__ volatile("rep movsb" : "+D"(p), "+S"(s), "+c"(n) : : "memory");
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;

    if (dp == sp || n == 0)
        return d;
    if (dp < sp) {
        for (size_t i = 0; i < n; i++)
            dp[i] = sp[i];
    } else {
        for (size_t i = n; i > 0; i--)
            dp[i - 1] = sp[i - 1];
    }
    return d;
}

void *memset(void *d, int c, size_t n)
{
    void *p = d;

    __asm__ volatile("rep stosb" : "+D"(p), "+c"(n) : "a"(c) : "memory");
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;

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
    for (; n > 0; n--, a++, b++) {
        if (*a != *b || *a == '\0')
            return (unsigned char)*a - (unsigned char)*b;
    }
    return 0;
}

char *strchr(const char *s, int c)
{
    for (;; s++) {
        if (*s == (char)c)
            return (char *)(uintptr_t)s;
        if (*s == '\0')
            return NULL;
    }
}

char *strncpy(char *restrict d, const char *restrict s, size_t n)
{
    size_t i = 0;

    for (; i < n && s[i] != '\0'; i++)
        d[i] = s[i];
    for (; i < n; i++)
        d[i] = '\0';
    return d;
}

char *strerror(int err)
{
    static char unknown[32];

    return (char *)(uintptr_t)tnd_strerror_text(err, unknown,
                                                sizeof(unknown));
}

int vsnprintf(char *restrict buf, size_t size, const char *restrict fmt,
              va_list ap)
{
    return tnd_vformat(buf, size, fmt, ap);
}

int snprintf(char *restrict buf, size_t size, const char *restrict fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = tnd_vformat(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int __vsnprintf_chk(char *restrict buf, size_t size, int flag, size_t buflen,
                    const char *restrict fmt, va_list ap)
{
    (void)flag;
    if (buflen < size)
        fail_closed("vsnprintf: buffer overflow");
    return tnd_vformat(buf, size, fmt, ap);
}

int __snprintf_chk(char *restrict buf, size_t size, int flag, size_t buflen,
                   const char *restrict fmt, ...)
{
    va_list ap;
    int n;

    (void)flag;
    if (buflen < size)
        fail_closed("snprintf: buffer overflow");
    va_start(ap, fmt);
    n = tnd_vformat(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

/* ------------------------------------------------------- process entry */

extern const Elf64_Dyn _DYNAMIC[] HIDDEN;
extern const Elf64_Ehdr __ehdr_start HIDDEN;

int main(int argc, char *argv[]);

/* The thread control block %fs points to: the stack-protector canary is
 * read from %fs:0x28, as in glibc's x86_64 TCB. */
static struct {
    void *self;
    uint64_t unused[4];
    uint64_t canary; /* offset 0x28 */
} main_tcb __attribute__((aligned(64)));

_Static_assert(offsetof(__typeof__(main_tcb), canary) == 0x28,
               "the canary is at %fs:0x28");

/* Apply our own R_X86_64_RELATIVE relocations: nothing that holds a
 * pointer may be used before this. Returns 0, or -1 for a relocation of
 * another type (the link went wrong: refuse to run). */
NO_SSP static int relocate(uintptr_t base)
{
    const Elf64_Rela *rela = NULL;
    size_t relasz = 0;

    for (const Elf64_Dyn *d = _DYNAMIC; d->d_tag != DT_NULL; d++) {
        if (d->d_tag == DT_RELA)
            rela = (const Elf64_Rela *)(base + d->d_un.d_ptr);
        else if (d->d_tag == DT_RELASZ)
            relasz = d->d_un.d_val;
        else if (d->d_tag == DT_REL || d->d_tag == DT_JMPREL ||
                 d->d_tag == DT_RELR)
            return -1;
    }
    for (size_t i = 0; rela != NULL && i < relasz / sizeof(*rela); i++) {
        if (ELF64_R_TYPE(rela[i].r_info) != R_X86_64_RELATIVE)
            return -1;
        *(uint64_t *)(base + rela[i].r_offset) =
            base + (uint64_t)rela[i].r_addend;
    }
    return 0;
}

/* Make the RELRO segment (GOT, .data.rel.ro) read-only, as ld.so does. */
static int protect_relro(uintptr_t base)
{
    const Elf64_Phdr *ph =
        (const Elf64_Phdr *)(base + __ehdr_start.e_phoff);

    for (uint16_t i = 0; i < __ehdr_start.e_phnum; i++) {
        if (ph[i].p_type == PT_GNU_RELRO) {
            uintptr_t start = (base + ph[i].p_vaddr) & ~(uintptr_t)4095;
            uintptr_t end =
                (base + ph[i].p_vaddr + ph[i].p_memsz) & ~(uintptr_t)4095;
            if (end > start &&
                mprotect((void *)start, end - start, PROT_READ) != 0)
                return -1;
        }
    }
    return 0;
}

/* Called by _start with the initial stack: argc, argv, envp, auxv. */
NO_SSP HIDDEN _Noreturn void tnd_start(uintptr_t *sp);
NO_SSP _Noreturn void tnd_start(uintptr_t *sp)
{
    uintptr_t base = (uintptr_t)&__ehdr_start;
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    uintptr_t *p = sp + 1 + argc + 1;
    uint64_t canary = 0;

    if (relocate(base) != 0)
        sys6(SYS_exit_group, 127, 0, 0, 0, 0, 0);
    while (*p != 0) /* environment */
        p++;
    for (p++; p[0] != AT_NULL; p += 2) {
        if (p[0] == AT_RANDOM)
            memcpy(&canary, (const void *)p[1], sizeof(canary));
    }
    main_tcb.self = &main_tcb;
    main_tcb.canary = canary & ~(uint64_t)0xff; /* a NUL byte, as glibc */
    if (sys6(SYS_arch_prctl, ARCH_SET_FS, (long)&main_tcb, 0, 0, 0, 0) != 0)
        sys6(SYS_exit_group, 127, 0, 0, 0, 0, 0);
    if (protect_relro(base) != 0)
        fail_closed("cannot protect RELRO");
    _exit(main(argc, argv));
}

__asm__(".text\n"
        ".global _start\n"
        ".type _start,@function\n"
        "_start:\n"
        "    xor %ebp, %ebp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call tnd_start\n"
        "    hlt\n");
