/*
 * test_units.c: unit tests for edge-tender's pure validators: argument
 * parsing, the checked guest-address accessor, ELF header/segment/note
 * validation, manifest validation and device matching, JSON escaping, the
 * page-table builder, the seccomp allowlist (run on a small classic-BPF
 * interpreter against the syscalls it must allow and refuse), and the
 * release build's snprintf and strerror (tnd_fmt.c), compared with
 * glibc's. Built with ASan + UBSan by `make check`.
 *
 * Images are synthesised in memory (one valid image, then one mutation per
 * rule), and the real regression guests in tests/c/build/ are validated
 * too when present. Prints one summary line; exits 1 on any failure.
 */
#include <elf.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/syscall.h>

#include "tnd.h"

static int n_pass, n_fail;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (cond) {                                                          \
            n_pass++;                                                        \
        } else {                                                             \
            n_fail++;                                                        \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                    \
    } while (0)

#define CHECK_ERR(cond, err, needle)                                         \
    do {                                                                     \
        CHECK(cond);                                                         \
        if (strstr((err), (needle)) == NULL) {                               \
            n_fail++;                                                        \
            fprintf(stderr, "FAIL %s:%d: message '%s' lacks '%s'\n",         \
                    __FILE__, __LINE__, (err), (needle));                    \
        }                                                                    \
    } while (0)

static char err[TND_ERR_LEN];

/* ---------------------------------------------------------------- args */

static int parse(struct tnd_opts *o, const char *line)
{
    static char buf[1024];
    static char *argv[64];
    int argc = 0;
    char *save = NULL;

    strncpy(buf, line, sizeof(buf) - 1);
    static char prog[] = "edge-tender";

    argv[argc++] = prog;
    for (char *t = strtok_r(buf, " ", &save); t != NULL;
         t = strtok_r(NULL, " ", &save))
        argv[argc++] = t;
    argv[argc] = NULL;
    return tnd_args_parse(argc, argv, o, err, sizeof(err));
}

static void test_args(void)
{
    static struct tnd_opts o;

    CHECK(parse(&o, "k.hvt") == 0);
    CHECK(o.mem_mb == 512 && o.events_fd == -1 && o.nargs == 0);
    CHECK(strcmp(o.kernel, "k.hvt") == 0);

    CHECK(parse(&o, "--mem=64 --events-fd=5 --block:storage=/d "
                    "--block-sector-size:storage=4096 --net:service0=tap0 "
                    "--net-mac:service0=02:00:00:00:00:01 k.hvt a --mem=9") ==
          0);
    CHECK(o.mem_mb == 64 && o.events_fd == 5);
    CHECK(o.nblock == 1 && o.block[0].name_len == 7 &&
          strcmp(o.block[0].value, "/d") == 0);
    CHECK(o.nsector == 1 && o.nnet == 1 && o.nmac == 1);
    /* Options after KERNEL belong to the guest. */
    CHECK(o.nargs == 2 && strcmp(o.args[1], "--mem=9") == 0);

    CHECK(parse(&o, "-- --weird-kernel-name x") == 0);
    CHECK(strcmp(o.kernel, "--weird-kernel-name") == 0 && o.nargs == 1);

    CHECK(parse(&o, "--version") == 0 && o.version);
    CHECK(parse(&o, "--help") == 0 && o.help);

    CHECK_ERR(parse(&o, "") != 0, err, "missing KERNEL");
    CHECK_ERR(parse(&o, "--mem=abc k") != 0, err, "--mem");
    CHECK_ERR(parse(&o, "--mem=1 k") != 0, err, "--mem");
    CHECK_ERR(parse(&o, "--mem=4097 k") != 0, err, "--mem");
    CHECK_ERR(parse(&o, "--mem=99999999999999999999999 k") != 0, err,
              "--mem");
    CHECK_ERR(parse(&o, "--mem=-5 k") != 0, err, "--mem");
    CHECK_ERR(parse(&o, "--frobnicate k") != 0, err, "unknown option");
    CHECK_ERR(parse(&o, "--events-fd=2 k") != 0, err, "--events-fd");
    CHECK_ERR(parse(&o, "--block:storage k") != 0, err, "NAME=VALUE");
    CHECK_ERR(parse(&o, "--block:=x k") != 0, err, "NAME=VALUE");
    CHECK_ERR(parse(&o, "--block:a= k") != 0, err, "NAME=VALUE");
    CHECK_ERR(parse(&o, "--block:a=x --block:a=y k") != 0, err, "twice");
    CHECK_ERR(parse(&o,
                    "--block:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                    "aaaaaaaaaaaaaaaaaa=x k") != 0,
              err, "longer than 67");
}

static void test_numbers(void)
{
    uint64_t v;
    uint8_t mac[6];
    char buf[16];
    static char a0[] = "a", a1[] = "bc", a2[] = "d";
    char *args[] = {a0, a1, a2};
    uint64_t bytes;

    CHECK(tnd_parse_u64("0", 10, &v) == 0 && v == 0);
    CHECK(tnd_parse_u64("18446744073709551615", UINT64_MAX, &v) == 0 &&
          v == UINT64_MAX);
    CHECK(tnd_parse_u64("18446744073709551616", UINT64_MAX, &v) != 0);
    CHECK(tnd_parse_u64("11", 10, &v) != 0);
    CHECK(tnd_parse_u64("", 10, &v) != 0);
    CHECK(tnd_parse_u64("1 ", 10, &v) != 0);

    CHECK(tnd_parse_mac("02:aB:cd:EF:00:ff", mac) == 0 && mac[1] == 0xab &&
          mac[5] == 0xff);
    CHECK(tnd_parse_mac("01:00:00:00:00:00", mac) != 0); /* multicast */
    CHECK(tnd_parse_mac("02:00:00:00:00", mac) != 0);
    CHECK(tnd_parse_mac("02:00:00:00:00:00:00", mac) != 0);
    CHECK(tnd_parse_mac("02-00-00-00-00-00", mac) != 0);
    CHECK(tnd_parse_mac("0g:00:00:00:00:00", mac) != 0);
    CHECK(tnd_parse_mac("", mac) != 0);

    CHECK(tnd_cmdline_build(3, args, buf, sizeof(buf)) == 0 &&
          strcmp(buf, "a bc d") == 0);
    CHECK(tnd_cmdline_build(0, args, buf, sizeof(buf)) == 0 && buf[0] == 0);
    CHECK(tnd_cmdline_build(3, args, buf, 6) != 0);
    CHECK(tnd_cmdline_build(3, args, buf, 7) == 0);

    CHECK(tnd_mem_size(512, &bytes, err, sizeof(err)) == 0 &&
          bytes == 512ull << 20);
    CHECK(tnd_mem_size(3, &bytes, err, sizeof(err)) == 0 &&
          bytes == 2ull << 20);
    CHECK(tnd_mem_size(4096, &bytes, err, sizeof(err)) == 0 &&
          bytes == 4096ull << 20);
    CHECK(tnd_mem_size(1, &bytes, err, sizeof(err)) != 0);
    CHECK(tnd_mem_size(4098, &bytes, err, sizeof(err)) != 0);
    CHECK(tnd_mem_size(UINT64_MAX, &bytes, err, sizeof(err)) != 0);
}

/* ----------------------------------------------------------- accessor */

static void test_gpa(void)
{
    static uint8_t mem[4096];
    const uint64_t sz = sizeof(mem);

    CHECK(tnd_gpa(mem, sz, 0, sz) == mem);
    CHECK(tnd_gpa(mem, sz, 100, 10) == mem + 100);
    CHECK(tnd_gpa(mem, sz, sz - 1, 1) == mem + sz - 1);
    CHECK(tnd_gpa(mem, sz, sz - 1, 2) == NULL);
    CHECK(tnd_gpa(mem, sz, sz, 0) == mem + sz);
    CHECK(tnd_gpa(mem, sz, sz + 1, 0) == NULL);
    CHECK(tnd_gpa(mem, sz, 0, sz + 1) == NULL);
    /* Wrap-around: gpa + len overflows 64 bits. */
    CHECK(tnd_gpa(mem, sz, UINT64_MAX, 2) == NULL);
    CHECK(tnd_gpa(mem, sz, 16, UINT64_MAX - 8) == NULL);
    CHECK(tnd_gpa(mem, sz, UINT64_MAX, 0) == NULL);
}

/* ---------------------------------------------------------------- ELF */

#define IMG_SIZE 0x4000
static uint8_t img_buf[IMG_SIZE];
static size_t img_len;

#define PH(i) ((Elf64_Phdr *)(img_buf + 64 + (i) * 56))
#define MFT_OFF 0x2100u /* note header; content at +24 */

static void mft_entry(unsigned i, const char *name, uint32_t type)
{
    struct mft_entry e;
    memset(&e, 0, sizeof(e));
    strcpy(e.name, name);
    e.type = type;
    memcpy(img_buf + MFT_OFF + 24 + 8 + i * 104, &e, sizeof(e));
}

/* A valid image: text, data, a BSS-only segment, ABI1 and MFT1 notes. */
static void make_image(unsigned nentries)
{
    Elf64_Ehdr eh;
    uint32_t nh[3];
    struct hvt_abi1_info abi = {1, 2, 0, 0};
    uint32_t mh[2] = {1, nentries};

    memset(img_buf, 0, sizeof(img_buf));
    memset(&eh, 0, sizeof(eh));
    memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_ident[EI_OSABI] = ELFOSABI_OPENBSD; /* not checked, as Solo5 */
    eh.e_type = ET_EXEC;
    eh.e_machine = EM_X86_64;
    eh.e_version = EV_CURRENT;
    eh.e_entry = 0x100000;
    eh.e_phoff = 64;
    eh.e_ehsize = 64;
    eh.e_phentsize = 56;
    eh.e_phnum = 5;
    memcpy(img_buf, &eh, sizeof(eh));

    *PH(0) = (Elf64_Phdr){PT_LOAD, PF_R | PF_X, 0x1000, 0x100000, 0x100000,
                          0x80, 0x80, 0x1000};
    *PH(1) = (Elf64_Phdr){PT_LOAD, PF_R | PF_W, 0x1800, 0x101800, 0x101800,
                          0x10, 0x200, 0x1000};
    *PH(2) = (Elf64_Phdr){PT_LOAD, PF_R | PF_W, 0, 0x200000, 0x200000, 0,
                          0x100000, 0x1000};
    *PH(3) = (Elf64_Phdr){PT_NOTE, PF_R, 0x2000, 0, 0, 36, 36, 4};
    *PH(4) = (Elf64_Phdr){PT_NOTE, PF_R, MFT_OFF, 0, 0,
                          24 + 8 + 104 * nentries, 24 + 8 + 104 * nentries,
                          8};
    memset(img_buf + 0x1000, 0x90, 0x80);
    memset(img_buf + 0x1800, 0xaa, 0x10);

    nh[0] = 6;
    nh[1] = 16;
    nh[2] = HVT_NOTE_TYPE_ABI1;
    memcpy(img_buf + 0x2000, nh, 12);
    memcpy(img_buf + 0x200c, "Solo5\0\0", 8);
    memcpy(img_buf + 0x2014, &abi, 16);

    nh[1] = 4 + 8 + 104 * nentries;
    nh[2] = HVT_NOTE_TYPE_MFT1;
    memcpy(img_buf + MFT_OFF, nh, 12);
    memcpy(img_buf + MFT_OFF + 12, "Solo5\0\0", 8);
    memcpy(img_buf + MFT_OFF + 24, mh, 8);
    mft_entry(0, "", MFT_RESERVED_FIRST);
    if (nentries > 1)
        mft_entry(1, "storage", MFT_DEV_BLOCK_BASIC);
    if (nentries > 2)
        mft_entry(2, "service0", MFT_DEV_NET_BASIC);
    img_len = MFT_OFF + 24 + 8 + 104 * nentries;
}

static struct tnd_image im;

static int validate(uint64_t mem)
{
    return tnd_elf_validate(img_buf, img_len, mem, &im, err, sizeof(err));
}

static void test_elf_valid(void)
{
    static uint8_t mem[4 << 20];

    make_image(3);
    CHECK(validate(4 << 20) == 0);
    CHECK(im.entry == 0x100000);
    CHECK(im.nload == 2); /* the BSS-only segment is skipped */
    CHECK(im.kernel_end == 0x102000);
    CHECK(im.load[0].prot_start == 0x100000 &&
          im.load[0].prot_end == 0x101000);
    CHECK(im.mft_len == 8 + 3 * 104 && im.abi_len == 16);

    memset(mem, 0, sizeof(mem));
    tnd_elf_load(img_buf, &im, mem);
    CHECK(mem[0x100000] == 0x90 && mem[0x10007f] == 0x90 &&
          mem[0x100080] == 0);
    CHECK(mem[0x101800] == 0xaa && mem[0x101810] == 0);
}

static void test_elf_rejects(void)
{
    make_image(1);
    img_buf[0] = 0;
    CHECK_ERR(validate(4 << 20) != 0, err, "not an ELF");

    make_image(1);
    CHECK_ERR(tnd_elf_validate(img_buf, 40, 4 << 20, &im, err,
                               sizeof(err)) != 0,
              err, "not an ELF");

    make_image(1);
    img_buf[EI_CLASS] = ELFCLASS32;
    CHECK_ERR(validate(4 << 20) != 0, err, "64-bit");

    make_image(1);
    ((Elf64_Ehdr *)img_buf)->e_type = ET_DYN;
    CHECK_ERR(validate(4 << 20) != 0, err, "ET_EXEC");

    make_image(1);
    ((Elf64_Ehdr *)img_buf)->e_machine = EM_AARCH64;
    CHECK_ERR(validate(4 << 20) != 0, err, "x86_64");

    make_image(1);
    ((Elf64_Ehdr *)img_buf)->e_phentsize = 32;
    CHECK_ERR(validate(4 << 20) != 0, err, "e_phentsize");

    make_image(1);
    ((Elf64_Ehdr *)img_buf)->e_phoff = UINT64_MAX - 16;
    CHECK_ERR(validate(4 << 20) != 0, err, "outside the file");

    make_image(1);
    ((Elf64_Ehdr *)img_buf)->e_phnum = 0xffff;
    CHECK_ERR(validate(4 << 20) != 0, err, "outside the file");

    make_image(1);
    ((Elf64_Ehdr *)img_buf)->e_entry = 0xfffff;
    CHECK_ERR(validate(4 << 20) != 0, err, "entry point");

    make_image(1);
    ((Elf64_Ehdr *)img_buf)->e_entry = 4 << 20;
    CHECK_ERR(validate(4 << 20) != 0, err, "entry point");
}

static void test_elf_rejects_segments(void)
{
    make_image(1);
    PH(0)->p_flags = PF_R | PF_W | PF_X;
    CHECK_ERR(validate(4 << 20) != 0, err, "writable and executable");

    make_image(1);
    PH(2)->p_flags = PF_W | PF_X; /* W+X even for BSS-only */
    CHECK_ERR(validate(4 << 20) != 0, err, "writable and executable");

    make_image(1);
    PH(0)->p_vaddr = 0xff000; /* would overwrite boot info */
    CHECK_ERR(validate(4 << 20) != 0, err, "below the 1 MiB");

    make_image(1);
    PH(0)->p_vaddr = 0x100800;
    PH(0)->p_align = 0x200000; /* aligned down below 1 MiB: no */
    CHECK_ERR(validate(4 << 20) != 0, err, "below the 1 MiB");

    make_image(1);
    PH(0)->p_align = 3;
    CHECK_ERR(validate(4 << 20) != 0, err, "power of two");

    make_image(1);
    PH(1)->p_vaddr = 0x100040; /* shares a page with text */
    CHECK_ERR(validate(4 << 20) != 0, err, "overlaps");

    make_image(1);
    PH(1)->p_vaddr = 0x100000 - 0x1000 + 0x100000; /* descending order */
    PH(0)->p_vaddr = 0x1ff000;
    CHECK_ERR(validate(4 << 20) != 0, err, "overlaps");

    make_image(1);
    PH(1)->p_memsz = 4;
    CHECK_ERR(validate(4 << 20) != 0, err, "memsz < filesz");

    make_image(1);
    PH(1)->p_offset = IMG_SIZE * 2;
    CHECK_ERR(validate(4 << 20) != 0, err, "outside the file");

    make_image(1);
    PH(1)->p_offset = UINT64_MAX - 4;
    CHECK_ERR(validate(4 << 20) != 0, err, "outside the file");

    make_image(1);
    PH(1)->p_memsz = 4 << 20;
    CHECK_ERR(validate(4 << 20) != 0, err, "does not fit");

    make_image(1);
    PH(1)->p_memsz = UINT64_MAX - 0x1000;
    CHECK_ERR(validate(4 << 20) != 0, err, "does not fit");

    make_image(1);
    PH(1)->p_vaddr = (2 << 20) - 0x100; /* fits at 4 MiB, not at 2 MiB */
    CHECK(validate(4 << 20) == 0);
    CHECK_ERR(validate(2 << 20) != 0, err, "does not fit");

    make_image(1);
    PH(0)->p_filesz = 0;
    PH(1)->p_filesz = 0;
    CHECK_ERR(validate(4 << 20) != 0, err, "no loadable");
}

static void test_elf_notes(void)
{
    uint32_t v;

    make_image(1);
    PH(3)->p_type = PT_NULL;
    CHECK_ERR(validate(4 << 20) != 0, err, "no ABI1 note");

    make_image(1);
    PH(4)->p_type = PT_NULL;
    CHECK_ERR(validate(4 << 20) != 0, err, "no MFT1 note");

    make_image(1);
    v = 4; /* spt */
    memcpy(img_buf + 0x2014, &v, 4);
    CHECK_ERR(validate(4 << 20) != 0, err, "not for the solo5-hvt target");

    make_image(1);
    v = 3;
    memcpy(img_buf + 0x2018, &v, 4);
    CHECK_ERR(validate(4 << 20) != 0, err, "unsupported ABI version");

    make_image(1);
    memcpy(img_buf + 0x200c, "Solo6", 5); /* foreign note: ignored */
    CHECK_ERR(validate(4 << 20) != 0, err, "no ABI1 note");

    make_image(1);
    v = 64; /* descsz > ABI1 max */
    memcpy(img_buf + 0x2004, &v, 4);
    PH(3)->p_filesz = 20 + 64;
    CHECK_ERR(validate(4 << 20) != 0, err, "invalid size");

    make_image(1);
    PH(3)->p_filesz = 30; /* truncated: note does not fit the segment */
    CHECK_ERR(validate(4 << 20) != 0, err, "no ABI1 note");

    make_image(1);
    PH(3)->p_offset = UINT64_MAX - 8;
    CHECK_ERR(validate(4 << 20) != 0, err, "outside the file");

    make_image(1);
    v = 7000; /* descsz > MFT1 max */
    memcpy(img_buf + MFT_OFF + 4, &v, 4);
    PH(4)->p_filesz = 7100;
    img_len = IMG_SIZE;
    CHECK(validate(4 << 20) != 0);

    /* Several notes in one PT_NOTE: a foreign one first, then ABI1. */
    make_image(1);
    {
        uint32_t fh[3] = {8, 4, 1};
        uint8_t abi_note[36];
        memcpy(abi_note, img_buf + 0x2000, 36);
        memcpy(img_buf + 0x2000, fh, 12);
        memcpy(img_buf + 0x200c, "OpenBSD\0", 8);
        memset(img_buf + 0x2014, 0, 4);
        memcpy(img_buf + 0x2018, abi_note, 36);
        PH(3)->p_filesz = 24 + 36;
    }
    CHECK(validate(4 << 20) == 0);
    CHECK(im.abi_off == 0x2018 + 20 && im.abi_len == 16);

    make_image(1);
    PH(4)->p_offset = 0x2000; /* a second ABI1 note */
    PH(4)->p_filesz = 36;
    CHECK_ERR(validate(4 << 20) != 0, err, "more than one ABI1");
}

/* ----------------------------------------------------------- manifest */

static const uint8_t *mft_content(void)
{
    return img_buf + MFT_OFF + 24;
}

static size_t mft_len(unsigned n)
{
    return 8 + 104 * (size_t)n;
}

static void test_mft(void)
{
    uint32_t v;

    make_image(3);
    CHECK(tnd_mft_validate(mft_content(), mft_len(3), err, sizeof(err)) ==
          0);
    CHECK_ERR(tnd_mft_validate(mft_content(), mft_len(3) - 1, err,
                               sizeof(err)) != 0,
              err, "expected exactly");
    CHECK_ERR(tnd_mft_validate(mft_content(), 4, err, sizeof(err)) != 0, err,
              "too short");

    make_image(3);
    v = 2;
    memcpy(img_buf + MFT_OFF + 24, &v, 4);
    CHECK_ERR(tnd_mft_validate(mft_content(), mft_len(3), err,
                               sizeof(err)) != 0,
              err, "version 2");

    make_image(1);
    v = 0;
    memcpy(img_buf + MFT_OFF + 28, &v, 4);
    CHECK_ERR(tnd_mft_validate(mft_content(), 8, err, sizeof(err)) != 0, err,
              "0 entries");

    make_image(1);
    v = 65;
    memcpy(img_buf + MFT_OFF + 28, &v, 4);
    CHECK_ERR(tnd_mft_validate(mft_content(), mft_len(1), err,
                               sizeof(err)) != 0,
              err, "65 entries");

    make_image(3);
    mft_entry(0, "x", MFT_RESERVED_FIRST);
    CHECK_ERR(tnd_mft_validate(mft_content(), mft_len(3), err,
                               sizeof(err)) != 0,
              err, "entry 0");

    make_image(3);
    mft_entry(0, "", MFT_DEV_BLOCK_BASIC);
    CHECK_ERR(tnd_mft_validate(mft_content(), mft_len(3), err,
                               sizeof(err)) != 0,
              err, "entry 0");

    make_image(3);
    img_buf[MFT_OFF + 24 + 8 + 104 + 96] = 1; /* attached in the file */
    CHECK_ERR(tnd_mft_validate(mft_content(), mft_len(3), err,
                               sizeof(err)) != 0,
              err, "attached");

    make_image(3);
    memset(img_buf + MFT_OFF + 24 + 8 + 104, 'a', 68); /* no NUL */
    CHECK_ERR(tnd_mft_validate(mft_content(), mft_len(3), err,
                               sizeof(err)) != 0,
              err, "NUL");

    make_image(3);
    mft_entry(2, "storage", MFT_DEV_NET_BASIC);
    CHECK_ERR(tnd_mft_validate(mft_content(), mft_len(3), err,
                               sizeof(err)) != 0,
              err, "declared twice");

    make_image(3);
    mft_entry(2, "", MFT_DEV_NET_BASIC);
    CHECK_ERR(tnd_mft_validate(mft_content(), mft_len(3), err,
                               sizeof(err)) != 0,
              err, "empty name");

    make_image(3);
    mft_entry(2, "x", 7);
    CHECK_ERR(tnd_mft_validate(mft_content(), mft_len(3), err,
                               sizeof(err)) != 0,
              err, "unknown device type");

    /* Unaligned content is read safely (UBSan would complain otherwise). */
    {
        static uint8_t shifted[8 + 3 * 104 + 1];
        make_image(3);
        memcpy(shifted + 1, mft_content(), mft_len(3));
        CHECK(tnd_mft_validate(shifted + 1, mft_len(3), err, sizeof(err)) ==
              0);
    }
}

static int resolve(const char *line, unsigned n)
{
    static struct tnd_opts o;
    static struct tnd_mft m;
    static struct tnd_devcfg cfg[MFT_MAX_ENTRIES];

    make_image(n);
    if (parse(&o, line) != 0)
        return -2;
    return tnd_mft_resolve(mft_content(), mft_len(n), &o, &m, cfg, err,
                           sizeof(err));
}

static void test_resolve(void)
{
    static struct tnd_opts o;
    static struct tnd_mft m;
    static struct tnd_devcfg cfg[MFT_MAX_ENTRIES];

    make_image(3);
    CHECK(parse(&o, "--block:storage=/d --block-sector-size:storage=4096 "
                    "--net:service0=@3 --net-mac:service0=02:00:00:00:00:09 "
                    "k") == 0);
    CHECK(tnd_mft_resolve(mft_content(), mft_len(3), &o, &m, cfg, err,
                          sizeof(err)) == 0);
    CHECK(m.entries == 3 && strcmp(m.e[2].name, "service0") == 0);
    CHECK(strcmp(cfg[1].target, "/d") == 0 && cfg[1].block_size == 4096);
    CHECK(strcmp(cfg[2].target, "@3") == 0 && cfg[2].have_mac &&
          cfg[2].mac[5] == 9);

    CHECK(resolve("k", 1) == 0);
    CHECK(resolve("--block:storage=/d k", 2) == 0);
    CHECK_ERR(resolve("k", 2) != 0, err, "no --block:storage= option");
    CHECK_ERR(resolve("--block:other=/d k", 2) != 0, err,
              "no block device named 'other'");
    CHECK_ERR(resolve("--net:storage=tap0 k", 2) != 0, err,
              "no net device named 'storage'");
    CHECK_ERR(resolve("--block:storage=/d --block-sector-size:storage=1000 "
                      "k",
                      2) != 0,
              err, "power of two");
    CHECK_ERR(resolve("--block:storage=/d --block-sector-size:storage=256 k",
                      2) != 0,
              err, "power of two");
    CHECK_ERR(resolve("--block-sector-size:storage=4096 k", 2) != 0, err,
              "without --block");
    CHECK_ERR(resolve("--block:storage=/d --net:service0=tap0 "
                      "--net-mac:service0=ff:ff:ff:ff:ff:ff k",
                      3) != 0,
              err, "unicast MAC");
}

/* --------------------------------------------------------------- misc */

static void test_json(void)
{
    char out[64];

    tnd_json_escape("a\"b\\c\nd\x01", out, sizeof(out));
    CHECK(strcmp(out, "a\\\"b\\\\c\\u000ad\\u0001") == 0);
    tnd_json_escape("abcdef", out, 4);
    CHECK(strcmp(out, "abc") == 0);
    tnd_json_escape("\"\"\"", out, 4); /* never splits an escape */
    CHECK(strcmp(out, "\\\"") == 0);
}

static uint64_t get64(const uint8_t *mem, uint64_t gpa)
{
    uint64_t v;
    memcpy(&v, mem + gpa, 8);
    return v;
}

static void test_page_tables(void)
{
    static uint8_t mem[1 << 20]; /* only the low 1 MiB is written */

    tnd_x86_setup_memory(mem, 3ull << 30);
    CHECK(get64(mem, 0x1008) == HVT_X86_GDT_CODE);
    CHECK(get64(mem, 0x1010) == HVT_X86_GDT_DATA);
    CHECK(get64(mem, 0x2000) == (0x3000 | 3));
    CHECK(get64(mem, 0x3000) == (0x4000 | 3));
    CHECK(get64(mem, 0x3010) == (0x6000 | 3));
    CHECK(get64(mem, 0x3018) == 0); /* only 3 GiB */
    CHECK(get64(mem, 0x4000) == (0x8000 | 3));
    CHECK(get64(mem, 0x4008) == (0x200000 | 0x83));
    CHECK(get64(mem, 0x4000 + 1535 * 8) == ((1535ull << 21) | 0x83));
    CHECK(get64(mem, 0x4000 + 1536 * 8) == 0);
    CHECK(get64(mem, 0x8000) == 0);               /* zero page absent */
    CHECK(get64(mem, 0x8000 + 15 * 8) == 0);      /* page tables absent */
    CHECK(get64(mem, 0x8000 + 16 * 8) == 0x10001); /* boot info: P, RO */
    CHECK(get64(mem, 0x8000 + 255 * 8) == 0xff001);
    CHECK(get64(mem, 0x8000 + 256 * 8) == 0x100003); /* kernel: P|RW */
    CHECK(get64(mem, 0x8000 + 511 * 8) == 0x1ff003);
}

/* ------------------------------------------------------------- seccomp */

/* Run a classic-BPF seccomp program (only the opcodes the builder emits;
 * anything else fails the test) on one syscall; return its verdict. */
static uint32_t bpf_run(const struct sock_filter *f, size_t n,
                        const struct seccomp_data *d)
{
    uint32_t a = 0;

    for (size_t pc = 0; pc < n; pc++) {
        const struct sock_filter *i = &f[pc];
        switch (i->code) {
        case BPF_LD | BPF_W | BPF_ABS:
            if (i->k + 4 > sizeof(*d) || i->k % 4 != 0)
                return 0xdead;
            memcpy(&a, (const uint8_t *)d + i->k, 4);
            break;
        case BPF_JMP | BPF_JEQ | BPF_K:
            pc += a == i->k ? i->jt : i->jf;
            break;
        case BPF_JMP | BPF_JGE | BPF_K:
            pc += a >= i->k ? i->jt : i->jf;
            break;
        case BPF_RET | BPF_K:
            return i->k;
        default:
            return 0xdead;
        }
    }
    return 0xdead; /* fell off the end: the kernel would reject it */
}

static struct sock_filter filt[TND_SECCOMP_MAX_INSNS];
static size_t filt_len;

static uint32_t verdict(uint32_t arch, int nr, uint64_t a0, uint64_t a1)
{
    struct seccomp_data d;

    memset(&d, 0, sizeof(d));
    d.arch = arch;
    d.nr = nr;
    d.args[0] = a0;
    d.args[1] = a1;
    return bpf_run(filt, filt_len, &d);
}

#define ALLOWED(nr, a0, a1)                                                  \
    CHECK(verdict(AUDIT_ARCH_X86_64, (nr), (a0), (a1)) == SECCOMP_RET_ALLOW)
#define KILLED(nr, a0, a1)                                                   \
    CHECK(verdict(AUDIT_ARCH_X86_64, (nr), (a0), (a1)) ==                    \
          SECCOMP_RET_KILL_PROCESS)

static void test_seccomp(void)
{
    static struct tnd_vm vm;

    memset(&vm, 0, sizeof(vm));
    vm.vcpu_fd = 5;
    vm.events_fd = -1;
    vm.mft.entries = 3;
    vm.dev[1].type = MFT_DEV_BLOCK_BASIC;
    vm.dev[1].fd = 8;
    vm.dev[2].type = MFT_DEV_NET_BASIC;
    vm.dev[2].fd = 9;
    filt_len = tnd_seccomp_build(&vm, filt, TND_SECCOMP_MAX_INSNS);
    CHECK(filt_len > 0 && filt_len <= BPF_MAXINSNS);

    ALLOWED(SYS_ioctl, 5, KVM_RUN);
    ALLOWED(SYS_ioctl, 5, KVM_GET_REGS);
    ALLOWED(SYS_ioctl, 5, KVM_GET_SREGS);
    KILLED(SYS_ioctl, 5, KVM_SET_REGS);        /* another vCPU ioctl */
    KILLED(SYS_ioctl, 5, KVM_CREATE_VCPU);
    KILLED(SYS_ioctl, 4, KVM_RUN);             /* another fd */
    KILLED(SYS_ioctl, 5 | (1ull << 32), KVM_RUN); /* high word set */
    KILLED(SYS_ioctl, 5, KVM_RUN | (1ull << 32));
    ALLOWED(SYS_write, 1, 0);
    ALLOWED(SYS_write, 2, 0);
    KILLED(SYS_write, 3, 0);
    KILLED(SYS_write, 7, 0); /* no events fd given */
    KILLED(SYS_write, 1ull << 32 | 1, 0);
    ALLOWED(SYS_pread64, 8, 0);
    ALLOWED(SYS_pwrite64, 8, 0);
    KILLED(SYS_pread64, 9, 0);
    KILLED(SYS_read, 8, 0);
    ALLOWED(SYS_read, 9, 0);
    ALLOWED(SYS_write, 9, 0);
    KILLED(SYS_pwrite64, 9, 0);
    KILLED(SYS_read, 0, 0);
    ALLOWED(SYS_ppoll, 0, 0);
    ALLOWED(SYS_clock_gettime, 1, 0);
    ALLOWED(SYS_rt_sigreturn, 0, 0);
    ALLOWED(SYS_rt_sigprocmask, 0, 0);
    ALLOWED(SYS_restart_syscall, 0, 0);
    ALLOWED(SYS_exit_group, 0, 0);
    KILLED(SYS_openat, 0, 0);
    KILLED(SYS_open, 0, 0);
    KILLED(SYS_mmap, 0, 0);
    KILLED(SYS_mprotect, 0, 0);
    KILLED(SYS_socket, 0, 0);
    KILLED(SYS_execve, 0, 0);
    KILLED(SYS_getpid, 0, 0);
    KILLED(SYS_exit, 0, 0);
    /* The x32 ABI and other architectures are refused whatever the nr. */
    KILLED(SYS_write | 0x40000000, 1, 0);
    KILLED(SYS_exit_group | 0x40000000, 0, 0);
    CHECK(verdict(AUDIT_ARCH_I386, SYS_write, 1, 0) ==
          SECCOMP_RET_KILL_PROCESS);
    CHECK(verdict(AUDIT_ARCH_I386, 252 /* i386 exit_group */, 0, 0) ==
          SECCOMP_RET_KILL_PROCESS);

    /* The events fd, when given, may be written. */
    vm.events_fd = 7;
    filt_len = tnd_seccomp_build(&vm, filt, TND_SECCOMP_MAX_INSNS);
    ALLOWED(SYS_write, 7, 0);
    KILLED(SYS_write, 6, 0);

    /* The largest manifest fits; a too-small array is refused. */
    vm.mft.entries = MFT_MAX_ENTRIES;
    for (uint32_t i = 1; i < MFT_MAX_ENTRIES; i++) {
        vm.dev[i].type = i % 2 ? MFT_DEV_BLOCK_BASIC : MFT_DEV_NET_BASIC;
        vm.dev[i].fd = (int)(10 + i);
    }
    filt_len = tnd_seccomp_build(&vm, filt, TND_SECCOMP_MAX_INSNS);
    CHECK(filt_len > 0 && filt_len <= BPF_MAXINSNS);
    ALLOWED(SYS_pread64, 10 + MFT_MAX_ENTRIES - 1, 0); /* last: block */
    ALLOWED(SYS_read, 10 + MFT_MAX_ENTRIES - 2, 0);    /* net */
    KILLED(SYS_read, 10 + MFT_MAX_ENTRIES - 1, 0);
    CHECK(tnd_seccomp_build(&vm, filt, 16) == 0);
}

/* ----------------------------------------------------- fmt (no libc) */

/* tnd_format must agree with glibc's snprintf: text, return value, and
 * truncation into a small buffer. */
#define SAME_AS_GLIBC(...)                                                   \
    do {                                                                     \
        char want[128], got[128], small_want[6], small_got[6];               \
        int nw = snprintf(want, sizeof(want), __VA_ARGS__);                  \
        int ng = tnd_format(got, sizeof(got), __VA_ARGS__);                  \
        CHECK(nw == ng && strcmp(want, got) == 0);                           \
        if (nw != ng || strcmp(want, got) != 0)                              \
            fprintf(stderr, "  glibc '%s' (%d), tnd '%s' (%d)\n", want, nw, \
                    got, ng);                                                \
        memset(small_got, 'X', sizeof(small_got));                           \
        nw = snprintf(small_want, sizeof(small_want), __VA_ARGS__);          \
        ng = tnd_format(small_got, sizeof(small_got), __VA_ARGS__);          \
        CHECK(nw == ng && strcmp(small_want, small_got) == 0);               \
    } while (0)

/* Truncating into small buffers is the point of these checks. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-truncation"
static void test_fmt(void)
{
    char buf[32];
    const char *name = "net0-and-more";

    SAME_AS_GLIBC("plain text");
    SAME_AS_GLIBC("%s: cannot open: %s", "/x/k.hvt", "No such file");
    SAME_AS_GLIBC("%d %d %d %d", 0, -1, 2147483647, (int)-2147483647 - 1);
    SAME_AS_GLIBC("%u %u", 0u, 4294967295u);
    SAME_AS_GLIBC("%llu %llu", 0ull, 18446744073709551615ull);
    SAME_AS_GLIBC("%lld %lld", -9223372036854775807ll - 1,
                  9223372036854775807ll);
    SAME_AS_GLIBC("0x%llx 0x%llx", 0ull, 0xfedcba9876543210ull);
    SAME_AS_GLIBC("%x %X %04x %04x", 0xbeefu, 0xbeefu, 0x1fu, 0x12345u);
    SAME_AS_GLIBC("\\u%04x", 0x7fu);
    SAME_AS_GLIBC("%zu bytes", (size_t)8200);
    SAME_AS_GLIBC("--block:%.*s=x", 4, name);
    SAME_AS_GLIBC("%.*s|", 0, name);
    SAME_AS_GLIBC("'%.67s'", name);
    SAME_AS_GLIBC("'%.3s'", name);
    SAME_AS_GLIBC("[%5d|%-5d|%05d|%-5s|%5s]", 42, 42, -42, "ab", "ab");
    SAME_AS_GLIBC("[%*d|%-*s]", 6, 7, 4, "z");
    SAME_AS_GLIBC("[%.3d|%8.3u|%.0d]", 5, 7u, 0);
    SAME_AS_GLIBC("%c%c%%", 'o', 'k');
    SAME_AS_GLIBC("%hhu %hu %ld %lu", 300, 70000, -5l, 5ul);
    SAME_AS_GLIBC("%p", (void *)0x1234);
    SAME_AS_GLIBC("%s", "");
    /* Size 0 writes nothing and still returns the length. */
    buf[0] = 'Q';
    CHECK(tnd_format(buf, 0, "%d", 12345) == 5 && buf[0] == 'Q');

    for (int e = 1; e <= 134; e++) {
        const char *t = tnd_strerror_text(e, buf, sizeof(buf));
        if (strncmp(t, "Unknown error", 13) != 0) {
            CHECK(strcmp(t, strerror(e)) == 0);
            if (strcmp(t, strerror(e)) != 0)
                fprintf(stderr, "  errno %d: '%s' vs glibc '%s'\n", e, t,
                        strerror(e));
        }
    }
    CHECK(strcmp(tnd_strerror_text(2, buf, sizeof(buf)),
                 "No such file or directory") == 0);
    CHECK(strcmp(tnd_strerror_text(4000, buf, sizeof(buf)),
                 "Unknown error 4000") == 0);
    CHECK(strcmp(tnd_strerror_text(-3, buf, sizeof(buf)),
                 "Unknown error -3") == 0);
}
#pragma GCC diagnostic pop

/* Real images built by `make guests`, when present. */
static void test_real_images(void)
{
    const char *names[] = {"hello", "multi", "blk", "net", "solo5like"};

    for (size_t i = 0; i < 5; i++) {
        char path[256];
        static uint8_t buf[1 << 16];
        FILE *f;
        size_t n;
        snprintf(path, sizeof(path), "%s/%s.hvt", TESTS_BUILD, names[i]);
        f = fopen(path, "rb");
        if (f == NULL)
            continue;
        n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        CHECK(tnd_elf_validate(buf, n, 4 << 20, &im, err, sizeof(err)) == 0);
        CHECK(im.entry >= 0x100000 && im.entry < 0x101000);
    }
}

int main(void)
{
    test_args();
    test_numbers();
    test_gpa();
    test_elf_valid();
    test_elf_rejects();
    test_elf_rejects_segments();
    test_elf_notes();
    test_mft();
    test_resolve();
    test_json();
    test_page_tables();
    test_seccomp();
    test_fmt();
    test_real_images();
    printf("tender unit tests: %d checks passed, %d failed\n", n_pass,
           n_fail);
    return n_fail == 0 ? 0 : 1;
}
