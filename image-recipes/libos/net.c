/*
 * net.c: network device access on hvt through the NET_READ and NET_WRITE
 * hypercalls, by manifest name. Readiness comes from libos_yield()'s ready
 * set (POLL hypercall). Ring I/O is not used (edge-tender offers none).
 *
 * It moves whole Ethernet frames only; protocols are the app's business.
 */
#include "internal.h"
#include "hvt/hypercall.h"
#include "hvt/mft.h"

bool libos_net_find(const char *name, struct libos_net *out)
{
    uint64_t idx;
    const struct mft_entry *e = hvt_mft_find(name, MFT_DEV_NET_BASIC, &idx);
    if (e == NULL)
        return false;
    out->handle = idx;
    memcpy(out->mac, e->u.net_basic.mac, sizeof(out->mac));
    out->mtu = e->u.net_basic.mtu;
    return true;
}

int libos_net_read(const struct libos_net *n, void *buf, size_t *len)
{
    volatile struct hvt_hc_net_read a = {
        .handle = n->handle, .data = (uint64_t)(uintptr_t)buf, .len = *len, .ret = 0};
    hvt_hypercall(HVT_HYPERCALL_NET_READ, &a);
    if (a.ret == HVT_R_OK)
        *len = (size_t)a.len;
    return a.ret;
}

int libos_net_write(const struct libos_net *n, const void *buf, size_t len)
{
    volatile struct hvt_hc_net_write a = {
        .handle = n->handle, .data = (uint64_t)(uintptr_t)buf, .len = len, .ret = 0};
    hvt_hypercall(HVT_HYPERCALL_NET_WRITE, &a);
    return a.ret;
}
