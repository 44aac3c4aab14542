/*
 * xen/xenstore.c: just enough of the xenstore protocol for a graceful stop
 * (ADR 0011): one watch on control/shutdown (relative to the domain's home,
 * /local/domain/<id>), and a read of that node whenever the watch fires.
 * `xl shutdown` writes "poweroff" there; we acknowledge by writing "" back
 * (xl waits for that), and the platform exits with status 0.
 *
 * Messages are a struct xsd_sockmsg header plus payload, through two 1 KiB
 * rings in the xenstore page (free-running u32 indexes, like the console).
 * Nothing here blocks or waits for a reply: requests are queued, and replies
 * are consumed when the platform polls (between a sleeping app's wake-ups).
 * A reply or event longer than our buffer is consumed and ignored. If the
 * ring indexes ever look corrupt, xenstore is dropped for good: the guest
 * keeps running and `xl destroy` remains the way to stop it.
 *
 * It does not do transactions, other writes, other watches or reconnection.
 */
#include "internal.h"
#include "xen.h"

#define WATCH_TOKEN "edge-shutdown"
#define SHUTDOWN_NODE "control/shutdown"
#define REQ_WATCH 1u
#define REQ_READ 2u
#define REQ_ACK 3u
#define BUF_SIZE 128u

static volatile struct xenstore_domain_interface *xs;
static uint32_t xs_port;
static bool requested;

/* Reply being received: header, then up to BUF_SIZE payload bytes kept. */
static struct xsd_sockmsg hdr;
static uint32_t hdr_have;  /* header bytes received so far */
static uint32_t body_have; /* payload bytes received so far */
static char body[BUF_SIZE];

static void barrier(void)
{
    __asm__ __volatile__("" : : : "memory");
}

/* Queue one request; drop it when the ring has no room (xenstored is stuck). */
static void xs_send(uint32_t type, uint32_t req_id, const char *a, size_t alen, const char *b,
                    size_t blen)
{
    struct xsd_sockmsg m = {.type = type, .req_id = req_id, .tx_id = 0,
                            .len = (uint32_t)(alen + blen)};
    uint32_t total = (uint32_t)sizeof(m) + m.len;
    uint32_t cons = xs->req_cons;
    uint32_t prod = xs->req_prod;
    barrier();
    if (prod - cons > XENSTORE_RING_SIZE || XENSTORE_RING_SIZE - (prod - cons) < total)
        return;
    const char *parts[3] = {(const char *)&m, a, b};
    size_t lens[3] = {sizeof(m), alen, blen};
    for (int p = 0; p < 3; p++) {
        for (size_t i = 0; i < lens[p]; i++)
            xs->req[prod++ & (XENSTORE_RING_SIZE - 1)] = parts[p][i];
    }
    barrier(); /* the bytes land before the index (x86 keeps stores in order) */
    xs->req_prod = prod;
    xen_evtchn_send(xs_port);
}

void xs_watch_shutdown(volatile struct xenstore_domain_interface *ring, uint32_t port)
{
    xs = ring;
    xs_port = port;
    /* Payload: "path\0token\0". xenstored fires the watch once at once. */
    xs_send(XS_WATCH, REQ_WATCH, SHUTDOWN_NODE, sizeof(SHUTDOWN_NODE), WATCH_TOKEN,
            sizeof(WATCH_TOKEN));
}

static bool body_is(const char *word)
{
    size_t n = strlen(word);
    uint32_t len = hdr.len < BUF_SIZE ? hdr.len : BUF_SIZE;
    /* A read reply has no NUL; tolerate one anyway. */
    return hdr.len <= BUF_SIZE && (len == n || (len == n + 1 && body[n] == '\0')) &&
           memcmp(body, word, n) == 0;
}

static void handle_message(void)
{
    if (hdr.type == XS_WATCH_EVENT) {
        /* Payload "path\0token\0": ours when the token matches. */
        uint32_t len = hdr.len < BUF_SIZE ? hdr.len : BUF_SIZE;
        for (uint32_t i = 0; i + 1 < len; i++) {
            if (body[i] == '\0') {
                const char *token = &body[i + 1];
                size_t tlen = len - i - 1;
                if (tlen >= sizeof(WATCH_TOKEN) &&
                    memcmp(token, WATCH_TOKEN, sizeof(WATCH_TOKEN)) == 0)
                    xs_send(XS_READ, REQ_READ, SHUTDOWN_NODE, sizeof(SHUTDOWN_NODE), "", 0);
                break;
            }
        }
    } else if (hdr.type == XS_READ && hdr.req_id == REQ_READ) {
        if (body_is("poweroff") || body_is("halt")) {
            /* Acknowledge by clearing the node, as the toolstack expects (xl
             * shutdown waits for this); the stop itself follows at once. */
            xs_send(XS_WRITE, REQ_ACK, SHUTDOWN_NODE, sizeof(SHUTDOWN_NODE), "", 0);
            requested = true;
        }
    }
    /* XS_WATCH "OK" and XS_ERROR (node missing) need nothing. */
}

bool xs_shutdown_requested(void)
{
    if (xs == NULL || requested)
        return requested;
    xen_evtchn_clear(xs_port);
    uint32_t cons = xs->rsp_cons;
    uint32_t prod = xs->rsp_prod;
    barrier(); /* read the index before the bytes it covers */
    if (prod - cons > XENSTORE_RING_SIZE) {
        xs = NULL; /* corrupt indexes: give up on xenstore */
        return false;
    }
    bool consumed = false;
    while (cons != prod) {
        char c = xs->rsp[cons++ & (XENSTORE_RING_SIZE - 1)];
        consumed = true;
        if (hdr_have < sizeof(hdr)) {
            ((char *)&hdr)[hdr_have++] = c;
            if (hdr_have == sizeof(hdr) && hdr.len > XENSTORE_PAYLOAD_MAX) {
                xs = NULL; /* not a xenstore stream: give up */
                return false;
            }
        } else if (body_have < hdr.len) {
            if (body_have < BUF_SIZE)
                body[body_have] = c;
            body_have++;
        }
        if (hdr_have == sizeof(hdr) && body_have == hdr.len) {
            handle_message();
            hdr_have = 0;
            body_have = 0;
        }
    }
    if (consumed) {
        barrier();
        xs->rsp_cons = cons;
        xen_evtchn_send(xs_port); /* xenstored may be waiting for room */
    }
    return requested;
}
