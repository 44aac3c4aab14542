/*
 * fuzz_image.c: libFuzzer harness for edge-tender's image parsers.
 *
 * Feeds the input as a whole ELF image to tnd_elf_validate() (for two
 * guest memory sizes) and, when it is accepted, loads it into a guest RAM
 * buffer of that size and matches its manifest with no device options;
 * the same bytes also go to tnd_mft_validate() as raw manifest content.
 * ASan/UBSan turn any out-of-bounds read or write, or any overflow, into a
 * crash. Seeded with the regression guests from tests/c/build/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tnd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *mem;
    static struct tnd_image img;
    static struct tnd_opts opts;
    static struct tnd_mft m;
    static struct tnd_devcfg cfg[MFT_MAX_ENTRIES];
    const uint64_t small = 4u << 20;
    char err[TND_ERR_LEN];

    if (mem == NULL) {
        mem = malloc(small);
        if (mem == NULL)
            abort();
    }
    (void)tnd_mft_validate(data, size, err, sizeof(err));
    if (tnd_elf_validate(data, size, 512u << 20, &img, err, sizeof(err)) ==
        0) {
        /* Everything the validator accepted must be safe to use. */
        if (img.mft_off + img.mft_len > size || img.abi_off + 16 > size)
            abort();
        memset(&opts, 0, sizeof(opts));
        (void)tnd_mft_resolve(data + img.mft_off, img.mft_len, &opts, &m,
                              cfg, err, sizeof(err));
    }
    if (tnd_elf_validate(data, size, small, &img, err, sizeof(err)) == 0) {
        memset(mem, 0, 2u << 20);
        tnd_elf_load(data, &img, mem);
        if (img.kernel_end > small)
            abort();
    }
    return 0;
}
