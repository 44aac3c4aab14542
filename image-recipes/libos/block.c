/*
 * block.c: block device access on hvt through the BLOCK_READ and BLOCK_WRITE
 * hypercalls, by manifest name.
 *
 * Offsets and lengths must be whole blocks (the library checks this before
 * the hypercall, as Solo5's bindings do); the tender checks capacity. It does
 * no caching and no partial-block I/O.
 */
#include "internal.h"
#include "hvt/hypercall.h"
#include "hvt/mft.h"

bool libos_block_find(const char *name, struct libos_block *out)
{
    uint64_t idx;
    const struct mft_entry *e = hvt_mft_find(name, MFT_DEV_BLOCK_BASIC, &idx);
    if (e == NULL || e->u.block_basic.block_size == 0)
        return false;
    out->handle = idx;
    out->capacity = e->u.block_basic.capacity;
    out->block_size = e->u.block_basic.block_size;
    return true;
}

static bool aligned(const struct libos_block *b, uint64_t offset, size_t len)
{
    return len > 0 && offset % b->block_size == 0 && len % b->block_size == 0 &&
           offset <= b->capacity && len <= b->capacity - offset;
}

int libos_block_read(const struct libos_block *b, uint64_t offset, void *buf, size_t len)
{
    if (!aligned(b, offset, len))
        return HVT_R_EINVAL;
    for (size_t done = 0; done < len; done += b->block_size) {
        volatile struct hvt_hc_block_read a = {.handle = b->handle,
                                               .offset = offset + done,
                                               .data = (uint64_t)(uintptr_t)buf + done,
                                               .len = b->block_size,
                                               .ret = 0};
        hvt_hypercall(HVT_HYPERCALL_BLOCK_READ, &a);
        if (a.ret != HVT_R_OK)
            return a.ret;
    }
    return HVT_R_OK;
}

int libos_block_write(const struct libos_block *b, uint64_t offset, const void *buf, size_t len)
{
    if (!aligned(b, offset, len))
        return HVT_R_EINVAL;
    for (size_t done = 0; done < len; done += b->block_size) {
        volatile struct hvt_hc_block_write a = {.handle = b->handle,
                                                .offset = offset + done,
                                                .data = (uint64_t)(uintptr_t)buf + done,
                                                .len = b->block_size,
                                                .ret = 0};
        hvt_hypercall(HVT_HYPERCALL_BLOCK_WRITE, &a);
        if (a.ret != HVT_R_OK)
            return a.ret;
    }
    return HVT_R_OK;
}
