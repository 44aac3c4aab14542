/*
 * tnd_main.c: edge-tender entry point and the fixed setup order.
 *
 *   parse argv -> validate the image (ELF, ABI1, MFT1) and match devices
 *   -> allocate guest RAM, load the image, write-protect text/rodata,
 *   build page tables -> create the KVM VM and vCPU, attach devices
 *   -> vCPU state and boot info -> install the seccomp allowlist -> run
 *   the vCPU -> exit.
 *
 * Every way out goes through tnd_finish(), which prints one stderr line,
 * writes the "exit" event and exits with the status table in README.md.
 * It does not implement hypercalls or devices itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tnd.h"

static const char usage_text[] =
    "usage: edge-tender [OPTIONS] [--] KERNEL [ARGS...]\n"
    "\n"
    "Boot a Solo5 hvt unikernel (ABI target 1, version 2) under KVM.\n"
    "\n"
    "Options (Solo5-compatible):\n"
    "  --mem=MB                    guest memory in MiB (default 512; rounded\n"
    "                              down to 2 MiB; 2..4096)\n"
    "  --block:NAME=PATH           attach file PATH as block device NAME\n"
    "  --block-sector-size:NAME=N  block size of NAME (power of two >= 512;\n"
    "                              default 512)\n"
    "  --net:NAME=IFACE|@FD        attach TAP interface IFACE (must be up) or\n"
    "                              the inherited fd FD as net device NAME\n"
    "  --net-mac:NAME=HWADDR       MAC of NAME (default: random)\n"
    "Options (edge-tender):\n"
    "  --events-fd=N               write JSON-lines lifecycle events to fd N\n"
    "  --version                   print the version and exit\n"
    "  --help                      print this help and exit\n"
    "\n"
    "Exit status: the guest's HALT status (0-255; 255 = guest abort), or\n"
    "240 usage/bad image, 241 host setup, 242 guest ABI violation,\n"
    "243 KVM fault, 244 signal, 245 device I/O error (see README.md).\n";

/* Route the termination signals to tnd_on_signal (no SA_RESTART). */
static void setup_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = tnd_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

/* Write boot info, the filled-in manifest and the command line. */
static void write_boot_info(struct tnd_vm *vm, const struct tnd_image *img,
                            uint64_t tsc_hz, const char *cmdline)
{
    struct hvt_boot_info bi;
    uint64_t mft_gpa = HVT_BOOT_INFO_BASE + sizeof(bi);
    size_t mft_len = 8 + (size_t)vm->mft.entries * sizeof(struct mft_entry);
    uint64_t cmd_gpa = mft_gpa + mft_len;

    memset(&bi, 0, sizeof(bi));
    bi.mem_size = vm->mem_size;
    bi.kernel_end = img->kernel_end;
    bi.cpu_cycle_freq = tsc_hz;
    bi.cmdline = cmd_gpa;
    bi.mft = mft_gpa;
    memcpy(vm->mem + HVT_BOOT_INFO_BASE, &bi, sizeof(bi));
    memcpy(vm->mem + mft_gpa, &vm->mft, mft_len);
    memcpy(vm->mem + cmd_gpa, cmdline, strlen(cmdline) + 1);
}

/* Map the kernel file read-only; 0 or 1 with *stop. */
static int map_kernel(const char *path, const void **p, size_t *len,
                      struct tnd_stop *stop)
{
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return tnd_stop_set(stop, TND_EXIT_USAGE, "setup",
                            "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size <= 0) {
        close(fd);
        return tnd_stop_set(stop, TND_EXIT_USAGE, "setup",
                            "%s: not a regular, non-empty file", path);
    }
    *len = (size_t)sb.st_size;
    *p = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (*p == MAP_FAILED)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "%s: cannot map: %s", path, strerror(errno));
    return 0;
}

int main(int argc, char *argv[])
{
    static struct tnd_opts opts;
    static struct tnd_vm vm;
    static struct tnd_image img;
    static struct tnd_devcfg cfg[MFT_MAX_ENTRIES];
    static char cmdline[HVT_CMDLINE_SIZE];
    struct tnd_stop stop;
    char err[TND_ERR_LEN];
    const void *image = NULL;
    size_t image_len = 0;
    uint64_t tsc_hz;
    int pid;

    memset(&stop, 0, sizeof(stop));
    vm.events_fd = -1;
    /* Make sure fds 0-2 are open, so no KVM or device fd becomes "stdout". */
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) < 0 &&
            open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd)
            return TND_EXIT_SETUP;
    }
    if (tnd_args_parse(argc, argv, &opts, err, sizeof(err)) != 0) {
        tnd_stop_set(&stop, TND_EXIT_USAGE, "setup", "%s", err);
        tnd_finish(fcntl(opts.events_fd, F_GETFD) >= 0 ? opts.events_fd : -1,
                   &stop);
    }
    if (opts.help) {
        (void)tnd_write_all(1, usage_text, sizeof(usage_text) - 1);
        return 0;
    }
    if (opts.version) {
        static const char v[] =
            "edge-tender " TND_VERSION " (" TND_ABI_STRING ")\n";
        (void)tnd_write_all(1, v, sizeof(v) - 1);
        return 0;
    }
    if (opts.events_fd >= 0) {
        if (fcntl(opts.events_fd, F_GETFD) < 0) {
            tnd_stop_set(&stop, TND_EXIT_USAGE, "setup",
                         "--events-fd=%d: fd is not open", opts.events_fd);
            tnd_finish(-1, &stop);
        }
        vm.events_fd = opts.events_fd;
    }
    setup_signals();
    if (personality(0xffffffff) & READ_IMPLIES_EXEC) {
        tnd_stop_set(&stop, TND_EXIT_SETUP, "setup",
                     "refusing to run with the READ_IMPLIES_EXEC "
                     "personality");
        tnd_finish(vm.events_fd, &stop);
    }

    /* Validate everything that can be checked before allocating. */
    if (tnd_mem_size(opts.mem_mb, &vm.mem_size, err, sizeof(err)) != 0) {
        tnd_stop_set(&stop, TND_EXIT_USAGE, "setup", "%s", err);
        tnd_finish(vm.events_fd, &stop);
    }
    if (tnd_cmdline_build(opts.nargs, opts.args, cmdline, sizeof(cmdline)) !=
        0) {
        tnd_stop_set(&stop, TND_EXIT_USAGE, "setup",
                     "guest arguments are longer than %u bytes",
                     HVT_CMDLINE_SIZE - 1);
        tnd_finish(vm.events_fd, &stop);
    }
    if (map_kernel(opts.kernel, &image, &image_len, &stop) != 0)
        tnd_finish(vm.events_fd, &stop);
    if (tnd_elf_validate(image, image_len, vm.mem_size, &img, err,
                         sizeof(err)) != 0 ||
        tnd_mft_resolve((const uint8_t *)image + img.mft_off, img.mft_len,
                        &opts, &vm.mft, cfg, err, sizeof(err)) != 0) {
        tnd_stop_set(&stop, TND_EXIT_USAGE, "setup", "%s: %s", opts.kernel,
                     err);
        tnd_finish(vm.events_fd, &stop);
    }

    /* Guest RAM: load, protect, page tables. This comes before the VM
     * exists: once it does, every mprotect/munmap in this process also
     * runs KVM's MMU notifier. */
    if (tnd_guest_mem_alloc(&vm, &stop) != 0)
        tnd_finish(vm.events_fd, &stop);
    tnd_elf_load(image, &img, vm.mem);
    munmap((void *)(uintptr_t)image, image_len);
    if (tnd_kvm_protect(&vm, &img, &stop) != 0)
        tnd_finish(vm.events_fd, &stop);
    tnd_x86_setup_memory(vm.mem, vm.mem_size);

    /* KVM VM and vCPU, devices, then the boot state. */
    if (tnd_kvm_init(&vm, &stop) != 0)
        tnd_finish(vm.events_fd, &stop);
    for (uint32_t i = 1; i < vm.mft.entries; i++) {
        int rc = vm.mft.e[i].type == MFT_DEV_BLOCK_BASIC
                     ? tnd_block_attach(&vm, i, &cfg[i], &stop)
                     : tnd_net_attach(&vm, i, &cfg[i], &stop);
        if (rc != 0)
            tnd_finish(vm.events_fd, &stop);
    }
    if (tnd_kvm_vcpu_init(&vm, img.entry, &tsc_hz, &stop) != 0)
        tnd_finish(vm.events_fd, &stop);
    write_boot_info(&vm, &img, tsc_hz, cmdline);

    pid = (int)getpid(); /* before the sandbox: getpid is not allowed */
    if (tnd_sandbox(&vm, &stop) != 0)
        tnd_finish(vm.events_fd, &stop);
    tnd_event(vm.events_fd, "started",
              ",\"pid\":%d,\"mem\":%llu,\"entry\":%llu,\"devices\":%u",
              pid, (unsigned long long)vm.mem_size,
              (unsigned long long)img.entry, vm.mft.entries - 1);
    tnd_kvm_run(&vm, &stop);
    tnd_finish(vm.events_fd, &stop);
}
