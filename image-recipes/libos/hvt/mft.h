/*
 * hvt/mft.h: look up a device in the filled-in manifest copy the tender
 * placed after the boot info (read-only to the guest). The device handle is
 * the entry's index in the manifest.
 */
#ifndef LIBOS_HVT_MFT_H
#define LIBOS_HVT_MFT_H

#include "internal.h"
#include "hvt_abi.h"

static inline const struct mft_entry *hvt_mft_find(const char *name, uint32_t type,
                                                   uint64_t *index)
{
    const struct mft *m = libos_boot.mft;
    if (m == NULL || m->version != MFT_VERSION || m->entries > MFT_MAX_ENTRIES)
        return NULL;
    for (uint32_t i = 1; i < m->entries; i++) {
        const struct mft_entry *e = &m->e[i];
        if (e->type == type && e->attached && e->name[MFT_NAME_MAX] == '\0' &&
            strcmp(e->name, name) == 0) {
            *index = i;
            return e;
        }
    }
    return NULL;
}

#endif /* LIBOS_HVT_MFT_H */
