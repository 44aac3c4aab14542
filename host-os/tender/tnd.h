/*
 * tnd.h: the one internal header of edge-tender, a KVM monitor for Solo5
 * "hvt" unikernels (guest ABI target 1, version 2, x86_64).
 *
 * Every prototype carries a contract comment: what it needs, what it
 * returns, and which side effects it has. Functions marked [pure] do no
 * I/O and touch only the memory they are handed; they are unit-tested in
 * tests/c/ and fuzzed. Everything else is the thin host shell around them.
 *
 * The ABI itself (structs, constants) lives in abi/hvt_abi.h, shared with
 * the guest side in image-recipes/.
 */
#ifndef TND_H
#define TND_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hvt_abi.h"

#define TND_VERSION "0.1.0"
#define TND_ABI_STRING "hvt abi 1.2"

/*
 * Exit statuses reserved for the tender (README.md has the full table).
 * Any other status is the guest's HALT status & 0xff.
 */
enum tnd_exit {
    TND_EXIT_USAGE = 240,  /* bad option, bad image, device mismatch */
    TND_EXIT_SETUP = 241,  /* host setup failure (KVM, mmap, open) */
    TND_EXIT_ABI = 242,    /* guest ABI violation */
    TND_EXIT_KVM = 243,    /* KVM fault: triple fault, MMIO, internal */
    TND_EXIT_SIGNAL = 244, /* SIGTERM, SIGINT or SIGHUP */
    TND_EXIT_IO = 245,     /* host I/O error on a device */
};

/* Length of every error message buffer handed to the pure functions. */
#define TND_ERR_LEN 256

/* ------------------------------------------------------------------ */
/* Command line (tnd_args.c) [pure]                                     */
/* ------------------------------------------------------------------ */

#define TND_DEFAULT_MEM_MB 512u

/* One "--kind:NAME=VALUE" option; name points into argv, not terminated. */
struct tnd_devopt {
    const char *name;
    size_t name_len;
    const char *value;
};

struct tnd_opts {
    uint64_t mem_mb;   /* --mem, default TND_DEFAULT_MEM_MB */
    int events_fd;     /* --events-fd, -1 when absent */
    bool help;         /* --help was given */
    bool version;      /* --version was given */
    const char *kernel; /* KERNEL path, NULL only with --help/--version */
    int nargs;          /* guest ARGS after KERNEL */
    char *const *args;
    size_t nblock, nsector, nnet, nmac;
    struct tnd_devopt block[MFT_MAX_ENTRIES];
    struct tnd_devopt sector[MFT_MAX_ENTRIES];
    struct tnd_devopt net[MFT_MAX_ENTRIES];
    struct tnd_devopt mac[MFT_MAX_ENTRIES];
};

/*
 * [pure] Parse argv (argv[0] is the program name) into *o. Options come
 * before KERNEL (or before "--"); everything after KERNEL is guest ARGS.
 * Returns 0, or -1 with a one-line reason in err (errlen bytes). Does not
 * check that an events fd is open or that files exist.
 */
int tnd_args_parse(int argc, char *const argv[], struct tnd_opts *o,
                   char *err, size_t errlen);

/*
 * [pure] Parse a decimal number in [0, max] with no sign, no spaces and no
 * trailing characters. Returns 0 and sets *out, or -1.
 */
int tnd_parse_u64(const char *s, uint64_t max, uint64_t *out);

/*
 * [pure] Parse "xx:xx:xx:xx:xx:xx" (hex, case-insensitive). Rejects
 * multicast addresses (bit 0 of the first octet). Returns 0 or -1.
 */
int tnd_parse_mac(const char *s, uint8_t mac[6]);

/*
 * [pure] Join args with single spaces into buf (bufsize bytes, NUL
 * terminated). Returns 0, or -1 when the result does not fit.
 */
int tnd_cmdline_build(int nargs, char *const args[], char *buf,
                      size_t bufsize);

/*
 * [pure] Convert --mem (MiB) to a guest RAM size in bytes: rounded down to
 * 2 MiB, at least 2 MiB, at most 4 GiB. Returns 0 or -1 with err.
 */
int tnd_mem_size(uint64_t mem_mb, uint64_t *bytes, char *err, size_t errlen);

/* ------------------------------------------------------------------ */
/* ELF image (tnd_elf.c)                                                */
/* ------------------------------------------------------------------ */

#define TND_MAX_LOAD 16

struct tnd_seg {
    uint64_t offset; /* file offset of the bytes */
    uint64_t vaddr;  /* == guest-physical address */
    uint64_t filesz;
    uint64_t memsz;
    uint32_t flags; /* PF_R/PF_W/PF_X */
    uint64_t prot_start, prot_end; /* 4 KiB-aligned range to mprotect */
};

struct tnd_image {
    uint64_t entry;
    uint64_t kernel_end; /* highest aligned end of the loaded segments */
    size_t nload;
    struct tnd_seg load[TND_MAX_LOAD];
    size_t abi_off, abi_len; /* ABI1 note content (file offset, length) */
    size_t mft_off, mft_len; /* MFT1 note content (file offset, length) */
};

/*
 * [pure] Validate an ELF64 x86_64 executable of len bytes at p for a guest
 * with mem_size bytes of RAM: header, PT_LOAD segments (only filesz != 0
 * ones are loaded), no W+X segment, ABI1 note for target 1 / version 2 and
 * the MFT1 note (validated with tnd_mft_validate). Fills *img and returns
 * 0, or returns -1 with the reason in err. Never reads outside [p, p+len).
 */
int tnd_elf_validate(const void *p, size_t len, uint64_t mem_size,
                     struct tnd_image *img, char *err, size_t errlen);

/*
 * [pure] Copy the loadable segments of a validated image (file bytes at p)
 * into guest memory mem (mem_size bytes, zeroed). The bytes past filesz
 * stay zero. Needs a prior successful tnd_elf_validate with the same
 * arguments.
 */
void tnd_elf_load(const void *p, const struct tnd_image *img, uint8_t *mem);

/* ------------------------------------------------------------------ */
/* Manifest (tnd_mft.c) [pure]                                         */
/* ------------------------------------------------------------------ */

/* An aligned, fixed-size home for a manifest copy. */
struct tnd_mft {
    uint32_t version;
    uint32_t entries;
    struct mft_entry e[MFT_MAX_ENTRIES];
};

/*
 * [pure] Validate MFT1 note content (len bytes at p, any alignment):
 * version 1, 1..64 entries, len == 8 + entries * 104 exactly, entry 0 is
 * the reserved empty-named entry, every other entry is BLOCK_BASIC or
 * NET_BASIC with a non-empty, NUL-terminated, unique name, and nothing is
 * marked attached. Returns 0, or -1 with err.
 */
int tnd_mft_validate(const void *p, size_t len, char *err, size_t errlen);

/* Host-side configuration of one manifest entry, from the options. */
struct tnd_devcfg {
    const char *target; /* block PATH, net IFACE or "@FD"; NULL = entry 0 */
    uint16_t block_size;
    bool have_mac;
    uint8_t mac[6];
};

/*
 * [pure] Copy MFT1 content into *m, validate the copy (so what is used is
 * what was checked) and match the device options in *o against it:
 * every --block/--net/--block-sector-size/--net-mac must name a declared
 * device of the right kind, at most once, and every declared device must
 * be given. Fills cfg[i] for each entry i. Returns 0,
 * or -1 with err naming the device.
 */
int tnd_mft_resolve(const void *p, size_t len, const struct tnd_opts *o,
                    struct tnd_mft *m, struct tnd_devcfg cfg[MFT_MAX_ENTRIES],
                    char *err, size_t errlen);

/* ------------------------------------------------------------------ */
/* The VM and hypercall dispatch (tnd_core.c)                           */
/* ------------------------------------------------------------------ */

/* Host state of one attached device (index = manifest entry index). */
struct tnd_dev {
    uint32_t type; /* 0 for entry 0 */
    int fd;
    uint64_t capacity;   /* block: bytes */
    uint16_t block_size; /* block */
};

struct tnd_vm {
    uint8_t *mem;      /* guest RAM, mem_size bytes, host mapping */
    uint64_t mem_size; /* bytes, multiple of 2 MiB */
    struct tnd_mft mft;
    struct tnd_dev dev[MFT_MAX_ENTRIES];
    int events_fd; /* -1 when absent */
    bool first_output;
    int kvm_fd, vm_fd, vcpu_fd;
    void *run;        /* struct kvm_run */
    size_t run_size;
};

/* Why the VM stopped; filled by the dispatcher or the run loop. */
struct tnd_stop {
    int status;         /* process exit status */
    const char *reason; /* "halt", "abi", "kvm", "io", "signal", "setup" */
    char message[TND_ERR_LEN];
};

/*
 * [pure] THE checked guest-address accessor. Returns the host pointer for
 * guest-physical [gpa, gpa + len) when the whole range lies inside guest
 * RAM (bounds and overflow checked), else NULL. len 0 is valid for
 * gpa <= mem_size. Every guest-supplied address goes through here.
 */
void *tnd_gpa(uint8_t *mem, uint64_t mem_size, uint64_t gpa, uint64_t len);

/*
 * Handle one hypercall: nr from the port, gpa from eax. Reads the
 * argument struct through tnd_gpa, does the host work (console, clock,
 * poll, block, net) and writes results back. Returns 0 to resume the
 * vCPU, or 1 with *stop filled when the VM must end (HALT, ABI violation,
 * host I/O error). May block in POLL; returns 1 with reason "signal" when
 * a termination signal arrives there.
 */
int tnd_hypercall(struct tnd_vm *vm, unsigned nr, uint64_t gpa,
                  struct tnd_stop *stop);

/*
 * Fill *stop with status, reason and a printf-style message. Returns 1 so
 * callers can write "return tnd_stop_set(...)".
 */
int tnd_stop_set(struct tnd_stop *stop, int status, const char *reason,
                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Set by the signal handler; read by the run loop and POLL. */
extern volatile sig_atomic_t tnd_signal_pending;
/* The vCPU's kvm_run, so the handler can set immediate_exit; or NULL. */
extern void *volatile tnd_signal_run;

/*
 * Handler for SIGTERM/SIGINT/SIGHUP: records the signal and makes the
 * next (or current) KVM_RUN return EINTR. Async-signal-safe.
 */
void tnd_on_signal(int sig);

/* ------------------------------------------------------------------ */
/* Events and messages (tnd_events.c)                                   */
/* ------------------------------------------------------------------ */

/*
 * Write one JSON line {"event":NAME,"t_ns":MONOTONIC,<fields>} to fd
 * (nothing when fd < 0). fields is a printf format producing the rest of
 * the object, starting with ',' (or "" for none). Errors are ignored: the
 * events channel must never stop a guest.
 */
void tnd_event(int fd, const char *name, const char *fields, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * [pure] Escape s as a JSON string body (without quotes) into out (outlen
 * bytes, always NUL terminated, truncated if needed).
 */
void tnd_json_escape(const char *s, char *out, size_t outlen);

/* Print "edge-tender: <msg>\n" to stderr with one write(). */
void tnd_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Report *stop (stderr line unless a clean halt, exit event on fd) and
 * exit the process with stop->status. Does not return.
 */
_Noreturn void tnd_finish(int events_fd, const struct tnd_stop *stop);

/*
 * Write all len bytes of buf to fd, retrying on EINTR and short writes
 * and waiting on EAGAIN. Returns 0, or -1 when the fd is gone (EPIPE,
 * EBADF...); callers decide whether that matters.
 */
int tnd_write_all(int fd, const void *buf, size_t len);

/* ------------------------------------------------------------------ */
/* KVM x86_64 (tnd_kvm_x86_64.c)                                        */
/* ------------------------------------------------------------------ */

/*
 * Allocate zeroed guest RAM of vm->mem_size bytes (MAP_NORESERVE) at
 * vm->mem. Returns 0, or 1 with *stop (status 241).
 */
int tnd_guest_mem_alloc(struct tnd_vm *vm, struct tnd_stop *stop);

/*
 * Open /dev/kvm, check the API version and capabilities, create the VM,
 * register vm->mem (from tnd_guest_mem_alloc) as memslot 0, create the
 * vCPU and map kvm_run. Returns 0, or 1 with *stop (status 241).
 */
int tnd_kvm_init(struct tnd_vm *vm, struct tnd_stop *stop);

/*
 * Write-protect the host mapping of read-only segments (text, rodata) so
 * guest writes to them fault. Returns 0, or 1 with *stop (241).
 */
int tnd_kvm_protect(struct tnd_vm *vm, const struct tnd_image *img,
                    struct tnd_stop *stop);

/*
 * [pure] Build the boot GDT and page tables in guest memory (mem, mem_size
 * bytes, multiple of 2 MiB, at most 4 GiB) as the ABI says.
 */
void tnd_x86_setup_memory(uint8_t *mem, uint64_t mem_size);

/*
 * Set the initial vCPU state (long mode, CPUID, registers with rip=entry,
 * rdi=boot info, rsp=mem_size-8), read the TSC frequency into *tsc_hz and
 * publish kvm_run to the signal handler.
 * Returns 0, or 1 with *stop (241).
 */
int tnd_kvm_vcpu_init(struct tnd_vm *vm, uint64_t entry, uint64_t *tsc_hz,
                      struct tnd_stop *stop);

/*
 * Run the vCPU until the VM stops; fills *stop (never returns with the VM
 * still running). Emits a "fault" event with registers on KVM faults.
 */
void tnd_kvm_run(struct tnd_vm *vm, struct tnd_stop *stop);

/* ------------------------------------------------------------------ */
/* Devices (tnd_module_block.c, tnd_module_net.c)                       */
/* ------------------------------------------------------------------ */

/*
 * Open the block device file for entry i, check its size (a multiple of
 * block_size, at least one block) and fill vm->dev[i] and the manifest
 * entry (capacity, block_size). Returns 0, or 1 with *stop (241 for host
 * failures, 240 for a file whose size does not fit).
 */
int tnd_block_attach(struct tnd_vm *vm, unsigned i, const struct tnd_devcfg *c,
                     struct tnd_stop *stop);

/*
 * Open the TAP interface (by name, must exist and be up) or take the
 * inherited fd "@N" for entry i, make it non-blocking, and fill the
 * manifest entry (MAC: given or random locally administered; MTU: from the
 * interface, 1500 for @FD). Returns 0, or 1 with *stop (241 or 240).
 */
int tnd_net_attach(struct tnd_vm *vm, unsigned i, const struct tnd_devcfg *c,
                   struct tnd_stop *stop);

/* BLOCK_WRITE/BLOCK_READ/NET_WRITE/NET_READ handlers; see tnd_hypercall. */
int tnd_block_write(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *stop);
int tnd_block_read(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *stop);
int tnd_net_write(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *stop);
int tnd_net_read(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *stop);

/* ------------------------------------------------------------------ */
/* Sandbox (tnd_seccomp.c)                                              */
/* ------------------------------------------------------------------ */

/* Room for the allowlist: 10 fixed rules plus 2 per device, each at most
 * 11 instructions, well below the kernel's BPF_MAXINSNS (4096). */
#define TND_SECCOMP_MAX_INSNS 2048u

struct sock_filter;

/*
 * [pure] Write the seccomp allowlist for vm (its vCPU, events and device
 * fds) as classic BPF into f (cap instructions). Returns the number of
 * instructions, or 0 if they do not fit. Every rule has one comment in
 * tnd_seccomp.c; anything not allowed returns SECCOMP_RET_KILL_PROCESS.
 */
size_t tnd_seccomp_build(const struct tnd_vm *vm, struct sock_filter *f,
                         size_t cap);

/*
 * Install the seccomp allowlist for the run loop: only the syscalls (and,
 * where possible, the fds and ioctls) the run loop needs. Sets
 * no_new_privs first. A no-op in the -debug build (TND_NO_SANDBOX).
 * Returns 0, or 1 with *stop (241).
 */
int tnd_sandbox(const struct tnd_vm *vm, struct tnd_stop *stop);

/* ------------------------------------------------------------------ */
/* Text formatting without a C library (tnd_fmt.c) [pure]               */
/* ------------------------------------------------------------------ */

#include <stdarg.h>

/*
 * [pure] vsnprintf for the conversions the tender uses (flags - 0, width,
 * precision, hh h l ll z j t, d i u x X c s p %): writes at most size
 * bytes including the NUL to buf and returns the full length, as C's
 * vsnprintf. The release build's snprintf/vsnprintf (tnd_nolibc.c).
 */
int tnd_vformat(char *buf, size_t size, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
int tnd_format(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * [pure] glibc's strerror() text for err, or "Unknown error N" written to
 * buf (size bytes) for errors outside its table. The release build's
 * strerror (tnd_nolibc.c).
 */
const char *tnd_strerror_text(int err, char *buf, size_t size);


#endif /* TND_H */
