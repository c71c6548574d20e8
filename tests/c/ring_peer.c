/*
 * A C peer for pvkit's differential ring tests, built only from Xen's own io/ring.h macros (shared
 * request/response rings) and, for the console and XenStore pages, the index arithmetic documented in
 * io/console.h and io/xs_wire.h.
 * Headers come from the SYSTEM (/usr/include/xen, Debian's libxen-dev).
 *
 * Every function takes the ring's private state (allocated here) or the shared page, so the Rust test
 * can drive a C front or back end step by step on memory it owns.
 */
#define __XEN_INTERFACE_VERSION__ 0x00040e00

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ring.h leaves the barriers to the includer for this interface version. */
#define xen_mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/io/console.h>
#include <xen/io/xs_wire.h>

/* Shared-header helpers, identical for every ring type (the header does not depend on the entries). */

size_t pv_sring_header_size(void)
{
    return offsetof(struct blkif_sring, ring);
}

/* Writes all four shared indices, to start a ring at an arbitrary point of the index space. */
void pv_sring_set_indices(void *page, RING_IDX prod, RING_IDX event)
{
    struct blkif_sring *s = page;
    s->req_prod = prod;
    s->rsp_prod = prod;
    s->req_event = event;
    s->rsp_event = event;
}

void pv_ring_free(void *ring)
{
    free(ring);
}

/* The operations on one ring type, in the order the Rust side declares them (tests/src/xen_c.rs). */
struct pv_ring_ops {
    size_t (*slot_size)(void);
    unsigned (*const_ring_size)(size_t bytes);
    void *(*front_new)(void *page, size_t len, RING_IDX start, int init);
    void *(*back_new)(void *page, size_t len, RING_IDX start);
    unsigned (*front_size)(void *ring);
    unsigned (*back_size)(void *ring);
    unsigned (*front_free)(void *ring);
    int (*front_write)(void *ring, const void *req);
    void (*front_push)(void *ring);
    int (*front_push_notify)(void *ring);
    int (*front_read)(void *ring, void *rsp);
    unsigned (*front_unconsumed)(void *ring);
    int (*front_final_check)(void *ring);
    int (*back_read)(void *ring, void *req);
    unsigned (*back_unconsumed)(void *ring);
    void (*back_write)(void *ring, const void *rsp);
    void (*back_push)(void *ring);
    int (*back_push_notify)(void *ring);
    int (*back_final_check)(void *ring);
};

/*
 * One set of front/back functions per ring type. Entries are moved with memcpy to and from
 * RING_GET_REQUEST/RING_GET_RESPONSE so that every byte, padding included, is copied exactly.
 */
#define PV_RING_PEER(P, REQ, RSP)                                                           \
                                                                                            \
static size_t pv_##P##_slot_size(void) { return sizeof(union P##_sring_entry); }                   \
                                                                                            \
static unsigned pv_##P##_const_ring_size(size_t bytes) { return __CONST_RING_SIZE(P, bytes); }     \
                                                                                            \
static void *pv_##P##_front_new(void *page, size_t len, RING_IDX start, int init)                  \
{                                                                                           \
    P##_front_ring_t *r = calloc(1, sizeof(*r));                                            \
    P##_sring_t *s = page;                                                                  \
    if (!r)                                                                                 \
        return NULL;                                                                        \
    if (init)                                                                               \
        SHARED_RING_INIT(s);                                                                \
    FRONT_RING_ATTACH(r, s, start, len);                                                    \
    return r;                                                                               \
}                                                                                           \
                                                                                            \
static void *pv_##P##_back_new(void *page, size_t len, RING_IDX start)                             \
{                                                                                           \
    P##_back_ring_t *r = calloc(1, sizeof(*r));                                             \
    if (!r)                                                                                 \
        return NULL;                                                                        \
    BACK_RING_ATTACH(r, (P##_sring_t *)page, start, len);                                   \
    return r;                                                                               \
}                                                                                           \
                                                                                            \
static unsigned pv_##P##_front_size(void *ring) { return RING_SIZE((P##_front_ring_t *)ring); }    \
static unsigned pv_##P##_back_size(void *ring) { return RING_SIZE((P##_back_ring_t *)ring); }      \
                                                                                            \
static unsigned pv_##P##_front_free(void *ring)                                                    \
{                                                                                           \
    return RING_FREE_REQUESTS((P##_front_ring_t *)ring);                                    \
}                                                                                           \
                                                                                            \
/* Queues one request; 0 if the ring is full. */                                            \
static int pv_##P##_front_write(void *ring, const void *req)                                       \
{                                                                                           \
    P##_front_ring_t *r = ring;                                                             \
    if (RING_FULL(r))                                                                       \
        return 0;                                                                           \
    memcpy(RING_GET_REQUEST(r, r->req_prod_pvt), req, sizeof(REQ));                         \
    r->req_prod_pvt++;                                                                      \
    return 1;                                                                               \
}                                                                                           \
                                                                                            \
static void pv_##P##_front_push(void *ring) { RING_PUSH_REQUESTS((P##_front_ring_t *)ring); }      \
                                                                                            \
static int pv_##P##_front_push_notify(void *ring)                                                  \
{                                                                                           \
    int notify;                                                                             \
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY((P##_front_ring_t *)ring, notify);                  \
    return notify;                                                                          \
}                                                                                           \
                                                                                            \
/* Consumes one response: 1 if one was read, 0 if none is waiting, -1 if the backend's     \
 * producer index is impossible (RING_RESPONSE_PROD_OVERFLOW). */                           \
static int pv_##P##_front_read(void *ring, void *rsp)                                              \
{                                                                                           \
    P##_front_ring_t *r = ring;                                                             \
    RING_IDX prod = r->sring->rsp_prod;                                                     \
    xen_rmb(); /* read responses only after reading the producer index */                   \
    if (RING_RESPONSE_PROD_OVERFLOW(r, prod))                                               \
        return -1;                                                                          \
    if (r->rsp_cons == prod)                                                                \
        return 0;                                                                           \
    memcpy(rsp, RING_GET_RESPONSE(r, r->rsp_cons), sizeof(RSP));                            \
    r->rsp_cons++;                                                                          \
    return 1;                                                                               \
}                                                                                           \
                                                                                            \
static unsigned pv_##P##_front_unconsumed(void *ring)                                              \
{                                                                                           \
    return RING_HAS_UNCONSUMED_RESPONSES((P##_front_ring_t *)ring);                         \
}                                                                                           \
                                                                                            \
static int pv_##P##_front_final_check(void *ring)                                                  \
{                                                                                           \
    int work;                                                                               \
    RING_FINAL_CHECK_FOR_RESPONSES((P##_front_ring_t *)ring, work);                         \
    return work != 0;                                                                       \
}                                                                                           \
                                                                                            \
/* Consumes one request: 1 if one was read, 0 if none is waiting, -1 if the frontend's     \
 * producer index is impossible (RING_REQUEST_PROD_OVERFLOW). */                            \
static int pv_##P##_back_read(void *ring, void *req)                                               \
{                                                                                           \
    P##_back_ring_t *r = ring;                                                              \
    RING_IDX prod = r->sring->req_prod;                                                     \
    xen_rmb(); /* read requests only after reading the producer index */                    \
    if (RING_REQUEST_PROD_OVERFLOW(r, prod))                                                \
        return -1;                                                                          \
    if (!RING_HAS_UNCONSUMED_REQUESTS(r) || RING_REQUEST_CONS_OVERFLOW(r, r->req_cons))     \
        return 0;                                                                           \
    memcpy(req, RING_GET_REQUEST(r, r->req_cons), sizeof(REQ));                             \
    r->req_cons++;                                                                          \
    return 1;                                                                               \
}                                                                                           \
                                                                                            \
static unsigned pv_##P##_back_unconsumed(void *ring)                                               \
{                                                                                           \
    return RING_HAS_UNCONSUMED_REQUESTS((P##_back_ring_t *)ring);                           \
}                                                                                           \
                                                                                            \
/* Queues one response to the oldest unanswered request. */                                 \
static void pv_##P##_back_write(void *ring, const void *rsp)                                       \
{                                                                                           \
    P##_back_ring_t *r = ring;                                                              \
    memcpy(RING_GET_RESPONSE(r, r->rsp_prod_pvt), rsp, sizeof(RSP));                        \
    r->rsp_prod_pvt++;                                                                      \
}                                                                                           \
                                                                                            \
static void pv_##P##_back_push(void *ring) { RING_PUSH_RESPONSES((P##_back_ring_t *)ring); }       \
                                                                                            \
static int pv_##P##_back_push_notify(void *ring)                                                   \
{                                                                                           \
    int notify;                                                                             \
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY((P##_back_ring_t *)ring, notify);                  \
    return notify;                                                                          \
}                                                                                           \
                                                                                            \
static int pv_##P##_back_final_check(void *ring)                                                   \
{                                                                                           \
    int work;                                                                               \
    RING_FINAL_CHECK_FOR_REQUESTS((P##_back_ring_t *)ring, work);                           \
    return work != 0;                                                                       \
}                                                                                           \
                                                                                            \
const struct pv_ring_ops pv_##P##_ops = {                                                   \
    pv_##P##_slot_size, pv_##P##_const_ring_size, pv_##P##_front_new, pv_##P##_back_new,    \
    pv_##P##_front_size, pv_##P##_back_size, pv_##P##_front_free, pv_##P##_front_write,     \
    pv_##P##_front_push, pv_##P##_front_push_notify, pv_##P##_front_read,                   \
    pv_##P##_front_unconsumed, pv_##P##_front_final_check, pv_##P##_back_read,              \
    pv_##P##_back_unconsumed, pv_##P##_back_write, pv_##P##_back_push,                      \
    pv_##P##_back_push_notify, pv_##P##_back_final_check,                                   \
};

PV_RING_PEER(blkif, struct blkif_request, struct blkif_response)
PV_RING_PEER(netif_tx, struct netif_tx_request, struct netif_tx_response)
PV_RING_PEER(netif_rx, struct netif_rx_request, struct netif_rx_response)

/*
 * Byte rings, written from the headers' descriptions: console.h's xencons_interface and xs_wire.h's
 * xenstore_domain_interface. Free-running 32-bit indices; a byte's position is the index masked
 * with MASK_XENCONS_IDX / MASK_XENSTORE_IDX. Each function reads both indices once, writes or reads
 * as much as possible, and publishes its own index after a barrier. Returns the number of bytes
 * moved, or -1 if the indices claim more bytes than the ring holds.
 */
#define PV_BYTE_WRITE(NAME, TYPE, RING, PROD, CONS, MASK)                                   \
long NAME(TYPE *intf, const char *data, size_t len)                                         \
{                                                                                           \
    uint32_t cons = intf->CONS, prod = intf->PROD;                                          \
    size_t n = 0;                                                                           \
    xen_mb(); /* the reader is done with bytes before cons before we overwrite them */     \
    if (prod - cons > sizeof(intf->RING))                                                   \
        return -1;                                                                          \
    while (n < len && prod - cons < sizeof(intf->RING)) {                                   \
        intf->RING[MASK(prod, intf->RING)] = data[n++];                                     \
        prod++;                                                                             \
    }                                                                                       \
    xen_wmb(); /* the reader sees the bytes before the new producer index */                \
    intf->PROD = prod;                                                                      \
    return (long)n;                                                                         \
}

#define PV_BYTE_READ(NAME, TYPE, RING, PROD, CONS, MASK)                                    \
long NAME(TYPE *intf, char *buf, size_t len)                                                \
{                                                                                           \
    uint32_t cons = intf->CONS, prod = intf->PROD;                                          \
    size_t n = 0;                                                                           \
    xen_rmb(); /* read bytes only after reading the producer index */                       \
    if (prod - cons > sizeof(intf->RING))                                                   \
        return -1;                                                                          \
    while (n < len && cons != prod) {                                                       \
        buf[n++] = intf->RING[MASK(cons, intf->RING)];                                      \
        cons++;                                                                             \
    }                                                                                       \
    xen_mb(); /* finish reading the bytes before the writer may reuse their space */       \
    intf->CONS = cons;                                                                      \
    return (long)n;                                                                         \
}

#define PV_XS_MASK(idx, ring) MASK_XENSTORE_IDX(idx)

PV_BYTE_WRITE(pv_cons_guest_write, struct xencons_interface, out, out_prod, out_cons, MASK_XENCONS_IDX)
PV_BYTE_READ(pv_cons_guest_read, struct xencons_interface, in, in_prod, in_cons, MASK_XENCONS_IDX)
PV_BYTE_WRITE(pv_cons_backend_write, struct xencons_interface, in, in_prod, in_cons, MASK_XENCONS_IDX)
PV_BYTE_READ(pv_cons_backend_read, struct xencons_interface, out, out_prod, out_cons, MASK_XENCONS_IDX)

PV_BYTE_WRITE(pv_xs_guest_write, struct xenstore_domain_interface, req, req_prod, req_cons, PV_XS_MASK)
PV_BYTE_READ(pv_xs_guest_read, struct xenstore_domain_interface, rsp, rsp_prod, rsp_cons, PV_XS_MASK)
PV_BYTE_WRITE(pv_xs_daemon_write, struct xenstore_domain_interface, rsp, rsp_prod, rsp_cons, PV_XS_MASK)
PV_BYTE_READ(pv_xs_daemon_read, struct xenstore_domain_interface, req, req_prod, req_cons, PV_XS_MASK)
