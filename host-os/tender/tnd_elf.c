/*
 * tnd_elf.c: [pure] ELF validation and loading for hvt guest images.
 *
 * tnd_elf_validate() checks an ELF64 x86_64 executable held in memory: the
 * header, the PT_LOAD segments (identity-mapped at p_vaddr, above 1 MiB,
 * ascending, non-overlapping, inside guest RAM, never writable and
 * executable together) and the Solo5 ABI1 and MFT1 notes. It reads every
 * field with memcpy, so the image may have any alignment, and it checks
 * every offset and size with overflow-checked arithmetic; it is fuzzed.
 * tnd_elf_load() copies the validated segments into guest RAM.
 *
 * It does not open files, mprotect, or talk to KVM.
 */
#include <elf.h>
#include <stdio.h>
#include <string.h>

#include "tnd.h"

#define PAGE 0x1000ull

/* fmt is always a literal with one %llx/%llu conversion. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static int fail(char *err, size_t errlen, const char *fmt, uint64_t a)
{
    snprintf(err, errlen, fmt, (unsigned long long)a);
    return -1;
}
#pragma GCC diagnostic pop

/* Bounds-checked read of n bytes at offset off of the image. */
static int rd(const void *p, size_t len, uint64_t off, void *out, size_t n)
{
    uint64_t end;
    if (__builtin_add_overflow(off, (uint64_t)n, &end) || end > len)
        return -1;
    memcpy(out, (const uint8_t *)p + off, n);
    return 0;
}

static uint64_t align_up(uint64_t v, uint64_t a, int *ovf)
{
    uint64_t r;
    if (__builtin_add_overflow(v, a - 1, &r)) {
        *ovf = 1;
        return 0;
    }
    return r & ~(a - 1);
}

/* Find the Solo5 note of type `type` in PT_NOTE segments. */
static int find_note(const void *p, size_t len, const Elf64_Ehdr *eh,
                     uint32_t type, uint32_t max, uint32_t align,
                     size_t *out_off, size_t *out_len, char *err,
                     size_t errlen, const char *what)
{
    int found = 0;

    for (uint16_t i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr ph;
        uint64_t end, pos;
        (void)rd(p, len, eh->e_phoff + (uint64_t)i * sizeof(ph), &ph,
                 sizeof(ph));
        if (ph.p_type != PT_NOTE)
            continue;
        if (__builtin_add_overflow(ph.p_offset, ph.p_filesz, &end) ||
            end > len)
            return fail(err, errlen,
                        "PT_NOTE segment %llu lies outside the file", i);
        /* Walk the notes of this segment. */
        pos = ph.p_offset;
        while (end - pos >= 20) {
            uint32_t nh[3];
            char name[8];
            uint64_t name_sz, desc_off, desc_sz, next;
            int ovf = 0;

            memcpy(nh, (const uint8_t *)p + pos, sizeof(nh));
            memcpy(name, (const uint8_t *)p + pos + 12, sizeof(name));
            name_sz = align_up(nh[0], 4, &ovf);
            desc_sz = align_up(nh[1], 4, &ovf);
            /* No overflow: every term is below 2^34. The last note may
             * omit the padding after its descriptor. */
            if (ovf || pos + 12 + name_sz + nh[1] > end)
                break; /* malformed tail: not a note we read */
            next = pos + 12 + name_sz + desc_sz;
            if (nh[0] == HVT_NOTE_NAMESZ &&
                memcmp(name, HVT_NOTE_NAME, HVT_NOTE_NAMESZ) == 0 &&
                nh[2] == type) {
                uint64_t pad = align_up(20, align, &ovf) - 20;
                if (found) {
                    snprintf(err, errlen, "image has more than one %s note",
                             what);
                    return -1;
                }
                if (nh[1] < 1 || nh[1] > max || nh[1] <= pad) {
                    snprintf(err, errlen,
                             "%s note has invalid size %u (max %u)", what,
                             nh[1], max);
                    return -1;
                }
                desc_off = pos + 20 + pad;
                if (pos + 20 + (uint64_t)nh[1] > end) {
                    snprintf(err, errlen, "%s note is truncated", what);
                    return -1;
                }
                *out_off = (size_t)desc_off;
                *out_len = (size_t)(nh[1] - pad);
                found = 1;
            }
            if (next >= end)
                break;
            pos = next;
        }
    }
    if (!found) {
        snprintf(err, errlen,
                 "image has no %s note: not a Solo5 hvt executable", what);
        return -1;
    }
    return 0;
}

static int check_load(const Elf64_Phdr *ph, size_t len, uint64_t mem_size,
                      uint64_t *prev_end, struct tnd_seg *s, char *err,
                      size_t errlen)
{
    uint64_t align = ph->p_align ? ph->p_align : 1;
    uint64_t fend, vend, aend;
    int ovf = 0;

    if ((align & (align - 1)) != 0)
        return fail(err, errlen,
                    "PT_LOAD p_align 0x%llx is not a power of two",
                    ph->p_align);
    if (ph->p_vaddr < HVT_GUEST_MIN_BASE ||
        (ph->p_vaddr & ~(align - 1)) < HVT_GUEST_MIN_BASE)
        return fail(err, errlen,
                    "PT_LOAD at 0x%llx is below the 1 MiB guest base",
                    ph->p_vaddr);
    if (ph->p_memsz < ph->p_filesz)
        return fail(err, errlen, "PT_LOAD at 0x%llx has memsz < filesz",
                    ph->p_vaddr);
    if (__builtin_add_overflow(ph->p_offset, ph->p_filesz, &fend) ||
        fend > len)
        return fail(err, errlen,
                    "PT_LOAD at 0x%llx has file bytes outside the file",
                    ph->p_vaddr);
    if (__builtin_add_overflow(ph->p_vaddr, ph->p_memsz, &vend) ||
        vend > mem_size)
        return fail(err, errlen,
                    "PT_LOAD at 0x%llx does not fit in guest memory (--mem)",
                    ph->p_vaddr);
    aend = align_up(vend, align, &ovf);
    if (ovf || aend > mem_size)
        return fail(err, errlen,
                    "PT_LOAD at 0x%llx does not fit in guest memory (--mem)",
                    ph->p_vaddr);
    s->prot_start = ph->p_vaddr & ~(PAGE - 1);
    s->prot_end = align_up(vend, PAGE, &ovf);
    if (ovf || s->prot_end > mem_size)
        return fail(err, errlen,
                    "PT_LOAD at 0x%llx does not fit in guest memory (--mem)",
                    ph->p_vaddr);
    if (s->prot_start < *prev_end)
        return fail(err, errlen,
                    "PT_LOAD at 0x%llx overlaps or precedes the previous "
                    "segment's pages",
                    ph->p_vaddr);
    *prev_end = s->prot_end;
    s->offset = ph->p_offset;
    s->vaddr = ph->p_vaddr;
    s->filesz = ph->p_filesz;
    s->memsz = ph->p_memsz;
    s->flags = ph->p_flags;
    return 0;
}

int tnd_elf_validate(const void *p, size_t len, uint64_t mem_size,
                     struct tnd_image *img, char *err, size_t errlen)
{
    Elf64_Ehdr eh;
    uint64_t phend, prev_end = 0;
    struct hvt_abi1_info abi;

    memset(img, 0, sizeof(*img));
    if (rd(p, len, 0, &eh, sizeof(eh)) != 0 ||
        memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) {
        snprintf(err, errlen, "not an ELF file");
        return -1;
    }
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 ||
        eh.e_ident[EI_DATA] != ELFDATA2LSB ||
        eh.e_ident[EI_VERSION] != EV_CURRENT || eh.e_version != EV_CURRENT) {
        snprintf(err, errlen,
                 "ELF header: expected 64-bit little-endian version 1");
        return -1;
    }
    if (eh.e_type != ET_EXEC || eh.e_machine != EM_X86_64) {
        snprintf(err, errlen,
                 "ELF header: expected an x86_64 executable (ET_EXEC), got "
                 "e_type %u e_machine %u",
                 eh.e_type, eh.e_machine);
        return -1;
    }
    if (eh.e_ehsize != sizeof(Elf64_Ehdr) ||
        eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum < 1) {
        snprintf(err, errlen,
                 "ELF header: bad e_ehsize/e_phentsize/e_phnum");
        return -1;
    }
    if (__builtin_mul_overflow((uint64_t)eh.e_phnum, sizeof(Elf64_Phdr),
                               &phend) ||
        __builtin_add_overflow(phend, eh.e_phoff, &phend) || phend > len) {
        snprintf(err, errlen,
                 "ELF header: program headers lie outside the file");
        return -1;
    }
    if (eh.e_entry < HVT_GUEST_MIN_BASE || eh.e_entry >= mem_size)
        return fail(err, errlen,
                    "ELF entry point 0x%llx is outside guest memory",
                    eh.e_entry);

    /* ABI1 first: an image for another target gets the right message. */
    if (find_note(p, len, &eh, HVT_NOTE_TYPE_ABI1, HVT_ABI1_NOTE_MAX_SIZE,
                  HVT_ABI1_NOTE_ALIGN, &img->abi_off, &img->abi_len, err,
                  errlen, "ABI1") != 0)
        return -1;
    if (img->abi_len != sizeof(abi)) {
        snprintf(err, errlen, "ABI1 note has size %zu, expected %zu",
                 img->abi_len, sizeof(abi));
        return -1;
    }
    memcpy(&abi, (const uint8_t *)p + img->abi_off, sizeof(abi));
    if (abi.abi_target != HVT_ABI_TARGET) {
        snprintf(err, errlen,
                 "Executable is not for the solo5-hvt target (abi_target "
                 "%u)",
                 abi.abi_target);
        return -1;
    }
    if (abi.abi_version != HVT_ABI_VERSION) {
        snprintf(err, errlen,
                 "Executable requests unsupported ABI version %u "
                 "(supported: %u)",
                 abi.abi_version, HVT_ABI_VERSION);
        return -1;
    }
    if (find_note(p, len, &eh, HVT_NOTE_TYPE_MFT1, HVT_MFT1_NOTE_MAX_SIZE,
                  HVT_MFT1_NOTE_ALIGN, &img->mft_off, &img->mft_len, err,
                  errlen, "MFT1") != 0)
        return -1;
    if (tnd_mft_validate((const uint8_t *)p + img->mft_off, img->mft_len,
                         err, errlen) != 0)
        return -1;

    for (uint16_t i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        struct tnd_seg *s;
        int ovf = 0;
        uint64_t aend;

        (void)rd(p, len, eh.e_phoff + (uint64_t)i * sizeof(ph), &ph,
                 sizeof(ph));
        if (ph.p_type != PT_LOAD)
            continue;
        if ((ph.p_flags & (PF_W | PF_X)) == (PF_W | PF_X))
            return fail(err, errlen,
                        "PT_LOAD at 0x%llx is both writable and executable",
                        ph.p_vaddr);
        if (ph.p_filesz == 0)
            continue; /* BSS-only: guest RAM starts zeroed */
        if (img->nload >= TND_MAX_LOAD)
            return fail(err, errlen, "more than %llu loadable segments",
                        TND_MAX_LOAD);
        s = &img->load[img->nload];
        if (check_load(&ph, len, mem_size, &prev_end, s, err, errlen) != 0)
            return -1;
        aend = align_up(ph.p_vaddr + ph.p_memsz, ph.p_align ? ph.p_align : 1,
                        &ovf);
        if (aend > img->kernel_end)
            img->kernel_end = aend;
        img->nload++;
    }
    if (img->nload == 0) {
        snprintf(err, errlen, "image has no loadable segment");
        return -1;
    }
    img->entry = eh.e_entry;
    return 0;
}

void tnd_elf_load(const void *p, const struct tnd_image *img, uint8_t *mem)
{
    for (size_t i = 0; i < img->nload; i++) {
        const struct tnd_seg *s = &img->load[i];
        memcpy(mem + s->vaddr, (const uint8_t *)p + s->offset, s->filesz);
    }
}
