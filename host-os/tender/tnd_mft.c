/*
 * tnd_mft.c: [pure] Solo5 MFT1 manifest validation and device matching.
 *
 * tnd_mft_validate() checks the manifest bytes from the image's MFT1 note
 * (any alignment, read with memcpy). tnd_mft_resolve() copies them into an
 * aligned struct and matches the --block/--net options against the
 * declared devices. Neither opens devices; tnd_module_*.c do that.
 */
#include <stdio.h>
#include <string.h>

#include "tnd.h"

#define ENTRY_SIZE sizeof(struct mft_entry)

int tnd_mft_validate(const void *p, size_t len, char *err, size_t errlen)
{
    const uint8_t *b = p;
    uint32_t version, entries;

    if (len < 8) {
        snprintf(err, errlen, "MFT1 manifest: %zu bytes, too short", len);
        return -1;
    }
    memcpy(&version, b, 4);
    memcpy(&entries, b + 4, 4);
    if (version != MFT_VERSION) {
        snprintf(err, errlen, "MFT1 manifest: version %u, expected %u",
                 version, MFT_VERSION);
        return -1;
    }
    if (entries < 1 || entries > MFT_MAX_ENTRIES) {
        snprintf(err, errlen,
                 "MFT1 manifest: %u entries, expected 1 to %u", entries,
                 MFT_MAX_ENTRIES);
        return -1;
    }
    if (len != 8 + (size_t)entries * ENTRY_SIZE) {
        snprintf(err, errlen,
                 "MFT1 manifest: %zu bytes, expected exactly %zu for %u "
                 "entries",
                 len, 8 + (size_t)entries * ENTRY_SIZE, entries);
        return -1;
    }
    for (uint32_t i = 0; i < entries; i++) {
        struct mft_entry e;
        memcpy(&e, b + 8 + (size_t)i * ENTRY_SIZE, sizeof(e));
        if (e.name[MFT_NAME_MAX] != '\0') {
            snprintf(err, errlen,
                     "MFT1 manifest: entry %u name is not NUL-terminated", i);
            return -1;
        }
        if (e.attached != 0) {
            snprintf(err, errlen,
                     "MFT1 manifest: entry %u is marked attached in the file",
                     i);
            return -1;
        }
        if (i == 0) {
            if (e.type != MFT_RESERVED_FIRST || e.name[0] != '\0') {
                snprintf(err, errlen,
                         "MFT1 manifest: entry 0 must be the reserved entry "
                         "with an empty name");
                return -1;
            }
            continue;
        }
        if (e.type != MFT_DEV_BLOCK_BASIC && e.type != MFT_DEV_NET_BASIC) {
            snprintf(err, errlen,
                     "MFT1 manifest: entry %u ('%.67s') has unknown device "
                     "type %u",
                     i, e.name, e.type);
            return -1;
        }
        if (e.name[0] == '\0') {
            snprintf(err, errlen, "MFT1 manifest: entry %u has an empty name",
                     i);
            return -1;
        }
        for (uint32_t k = 1; k < i; k++) {
            char other[MFT_NAME_SIZE];
            memcpy(other, b + 8 + (size_t)k * ENTRY_SIZE, sizeof(other));
            if (strcmp(other, e.name) == 0) {
                snprintf(err, errlen,
                         "MFT1 manifest: device name '%.67s' declared twice",
                         e.name);
                return -1;
            }
        }
    }
    return 0;
}

/* Index of the entry named (name, n) with type t, or -1. */
static int find(const struct tnd_mft *m, const char *name, size_t n,
                uint32_t t)
{
    for (uint32_t i = 1; i < m->entries; i++) {
        if (m->e[i].type == t && strlen(m->e[i].name) == n &&
            memcmp(m->e[i].name, name, n) == 0)
            return (int)i;
    }
    return -1;
}

static int match(const struct tnd_mft *m, const struct tnd_devopt *d,
                 uint32_t t, const char *opt, char *err, size_t errlen)
{
    int i = find(m, d->name, d->name_len, t);
    if (i < 0)
        snprintf(err, errlen,
                 "%s%.*s: the image declares no %s device named '%.*s'", opt,
                 (int)d->name_len, d->name,
                 t == MFT_DEV_BLOCK_BASIC ? "block" : "net", (int)d->name_len,
                 d->name);
    return i;
}

int tnd_mft_resolve(const void *p, size_t len, const struct tnd_opts *o,
                    struct tnd_mft *m, struct tnd_devcfg cfg[MFT_MAX_ENTRIES],
                    char *err, size_t errlen)
{
    /* Copy first, then validate the copy: the bytes we use are the bytes
     * we checked, even if the image file changes underneath us. */
    memset(m, 0, sizeof(*m));
    if (len > sizeof(*m)) {
        snprintf(err, errlen, "MFT1 manifest: %zu bytes, too large", len);
        return -1;
    }
    memcpy(m, p, len);
    if (tnd_mft_validate(m, len, err, errlen) != 0)
        return -1;
    memset(cfg, 0, sizeof(*cfg) * MFT_MAX_ENTRIES);

    for (size_t k = 0; k < o->nblock; k++) {
        int i = match(m, &o->block[k], MFT_DEV_BLOCK_BASIC, "--block:", err,
                      errlen);
        if (i < 0)
            return -1;
        cfg[i].target = o->block[k].value;
        cfg[i].block_size = 512;
    }
    for (size_t k = 0; k < o->nsector; k++) {
        uint64_t n;
        int i = match(m, &o->sector[k], MFT_DEV_BLOCK_BASIC,
                      "--block-sector-size:", err, errlen);
        if (i < 0)
            return -1;
        if (cfg[i].target == NULL) {
            snprintf(err, errlen,
                     "--block-sector-size:%.*s given without --block:%.*s",
                     (int)o->sector[k].name_len, o->sector[k].name,
                     (int)o->sector[k].name_len, o->sector[k].name);
            return -1;
        }
        if (tnd_parse_u64(o->sector[k].value, 32768, &n) != 0 || n < 512 ||
            (n & (n - 1)) != 0) {
            snprintf(err, errlen,
                     "--block-sector-size:%.*s=%s: expected a power of two "
                     "from 512 to 32768",
                     (int)o->sector[k].name_len, o->sector[k].name,
                     o->sector[k].value);
            return -1;
        }
        cfg[i].block_size = (uint16_t)n;
    }
    for (size_t k = 0; k < o->nnet; k++) {
        int i =
            match(m, &o->net[k], MFT_DEV_NET_BASIC, "--net:", err, errlen);
        if (i < 0)
            return -1;
        cfg[i].target = o->net[k].value;
    }
    for (size_t k = 0; k < o->nmac; k++) {
        int i = match(m, &o->mac[k], MFT_DEV_NET_BASIC, "--net-mac:", err,
                      errlen);
        if (i < 0)
            return -1;
        if (tnd_parse_mac(o->mac[k].value, cfg[i].mac) != 0) {
            snprintf(err, errlen,
                     "--net-mac:%.*s=%s: expected a unicast MAC "
                     "xx:xx:xx:xx:xx:xx",
                     (int)o->mac[k].name_len, o->mac[k].name,
                     o->mac[k].value);
            return -1;
        }
        cfg[i].have_mac = true;
    }
    for (uint32_t i = 1; i < m->entries; i++) {
        if (cfg[i].target == NULL) {
            int blk = m->e[i].type == MFT_DEV_BLOCK_BASIC;
            snprintf(err, errlen,
                     "the image declares %s device '%.67s' but no %s%.67s= "
                     "option attaches it",
                     blk ? "block" : "net", m->e[i].name,
                     blk ? "--block:" : "--net:", m->e[i].name);
            return -1;
        }
    }
    return 0;
}
