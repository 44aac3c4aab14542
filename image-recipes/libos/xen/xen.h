/*
 * xen/xen.h: the few pieces of the Xen public interface (x86_64 HVM/PVH
 * guest view) the xen platform uses, written from the interface facts in
 * ADR 0011 (numbers and layouts of the Xen public headers, Xen 4.17; these
 * have been stable since Xen 3.x/4.x). Only what we call is declared; the
 * static asserts pin every layout we share with Xen.
 *
 * It declares no functions beyond the hypercall primitive: policy (what to
 * call and when) lives in platform.c and clock.c.
 */
#ifndef LIBOS_XEN_XEN_H
#define LIBOS_XEN_XEN_H

#include <stdbool.h>
#include <stdint.h>

/* CPUID: hypervisor leaves are searched at 0x40000000 + 0x100 * i. */
#define XEN_CPUID_FIRST 0x40000000u
#define XEN_CPUID_LAST 0x40010000u
#define XEN_CPUID_SIGNATURE_EBX 0x566e6558u /* "XenV" */
#define XEN_CPUID_SIGNATURE_ECX 0x65584d4du /* "MMXe" */
#define XEN_CPUID_SIGNATURE_EDX 0x4d4d566eu /* "nVMM" */

/* Hypercall numbers (xen.h). Each has a 32-byte stub in the hypercall page. */
#define XEN_HC_memory_op 12
#define XEN_HC_sched_op 29
#define XEN_HC_event_channel_op 32
#define XEN_HC_hvm_op 34
#define XEN_HYPERCALL_STUB_SIZE 32

#define DOMID_SELF 0x7ff0u

/* memory.h */
#define XENMEM_add_to_physmap 7
#define XENMAPSPACE_shared_info 0
struct xen_add_to_physmap {
    uint16_t domid;
    uint16_t size;  /* only for XENMAPSPACE_gmfn_range */
    uint32_t space; /* XENMAPSPACE_* */
    uint64_t idx;   /* index into the space */
    uint64_t gpfn;  /* guest frame to map it at */
};
_Static_assert(sizeof(struct xen_add_to_physmap) == 24, "xen_add_to_physmap layout");

/* sched.h */
#define SCHEDOP_yield 0
#define SCHEDOP_shutdown 2
#define SCHEDOP_poll 3
#define SHUTDOWN_poweroff 0
#define SHUTDOWN_crash 3
struct sched_shutdown {
    uint32_t reason; /* SHUTDOWN_* */
};
struct sched_poll {
    uint64_t ports; /* guest handle: address of an evtchn_port_t array */
    uint32_t nr_ports;
    uint32_t pad;
    uint64_t timeout; /* absolute Xen system time in ns; 0 = none */
};
_Static_assert(sizeof(struct sched_poll) == 24, "sched_poll layout");

/* event_channel.h */
#define EVTCHNOP_send 4
struct evtchn_send {
    uint32_t port;
};

/* hvm/hvm_op.h and hvm/params.h */
#define HVMOP_get_param 1
#define HVM_PARAM_CONSOLE_PFN 17
#define HVM_PARAM_CONSOLE_EVTCHN 18
struct xen_hvm_param {
    uint16_t domid;
    uint16_t pad;
    uint32_t index; /* HVM_PARAM_* */
    uint64_t value;
};
_Static_assert(sizeof(struct xen_hvm_param) == 16, "xen_hvm_param layout");

/* io/xs_wire.h: the xenstore ring page shared with xenstored, and its messages. */
#define HVM_PARAM_STORE_PFN 1
#define HVM_PARAM_STORE_EVTCHN 2
#define XENSTORE_RING_SIZE 1024u
#define XENSTORE_PAYLOAD_MAX 4096u
#define XS_READ 2
#define XS_WATCH 4
#define XS_WRITE 11
#define XS_WATCH_EVENT 15
#define XS_ERROR 16
struct xenstore_domain_interface {
    char req[XENSTORE_RING_SIZE]; /* requests to xenstored */
    char rsp[XENSTORE_RING_SIZE]; /* replies and watch events */
    uint32_t req_cons, req_prod;
    uint32_t rsp_cons, rsp_prod;
    uint32_t server_features;
    uint32_t connection;
    uint32_t error;
};
_Static_assert(__builtin_offsetof(struct xenstore_domain_interface, rsp_prod) == 2060,
               "xenstore_domain_interface layout");
struct xsd_sockmsg {
    uint32_t type; /* XS_* */
    uint32_t req_id;
    uint32_t tx_id;
    uint32_t len; /* payload bytes that follow */
};
_Static_assert(sizeof(struct xsd_sockmsg) == 16, "xsd_sockmsg layout");

/* io/console.h: the PV console ring page shared with xenconsoled. */
#define XENCONS_IN_SIZE 1024u
#define XENCONS_OUT_SIZE 2048u
struct xencons_interface {
    char in[XENCONS_IN_SIZE];
    char out[XENCONS_OUT_SIZE];
    uint32_t in_cons, in_prod;
    uint32_t out_cons, out_prod;
};
_Static_assert(__builtin_offsetof(struct xencons_interface, out_cons) == 3080,
               "xencons_interface layout");

/* xen.h: vcpu_time_info, vcpu_info and shared_info (x86_64 layout). */
struct vcpu_time_info {
    uint32_t version; /* odd while Xen updates the record */
    uint32_t pad0;
    uint64_t tsc_timestamp; /* TSC at system_time */
    uint64_t system_time;   /* ns since boot at tsc_timestamp */
    uint32_t tsc_to_system_mul;
    int8_t tsc_shift;
    uint8_t flags;
    uint8_t pad1[2];
};
_Static_assert(sizeof(struct vcpu_time_info) == 32, "vcpu_time_info layout");

struct vcpu_info {
    uint8_t evtchn_upcall_pending;
    uint8_t evtchn_upcall_mask;
    uint8_t pad[6];
    uint64_t evtchn_pending_sel;
    uint64_t arch_cr2;
    uint64_t arch_pad;
    struct vcpu_time_info time;
};
_Static_assert(sizeof(struct vcpu_info) == 64, "vcpu_info layout");

#define XEN_LEGACY_MAX_VCPUS 32
struct shared_info {
    struct vcpu_info vcpu_info[XEN_LEGACY_MAX_VCPUS];
    uint64_t evtchn_pending[64];
    uint64_t evtchn_mask[64];
    uint32_t wc_version; /* odd while Xen updates the wall clock */
    uint32_t wc_sec;     /* wall clock at system time 0 */
    uint32_t wc_nsec;
    uint32_t wc_sec_hi;
    /* struct arch_shared_info follows; not used. */
};
_Static_assert(__builtin_offsetof(struct shared_info, evtchn_pending) == 2048,
               "shared_info layout");
_Static_assert(__builtin_offsetof(struct shared_info, wc_version) == 3072,
               "shared_info layout");

/* arch-x86/hvm/start_info.h: what %ebx points at on PVH entry. */
#define XEN_HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
    uint32_t magic;
    uint32_t version; /* 0, or 1 with the memory map */
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr; /* NUL-terminated, 0 if none */
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr; /* version >= 1 */
    uint32_t memmap_entries;
    uint32_t reserved;
};
_Static_assert(sizeof(struct hvm_start_info) == 56, "hvm_start_info layout");

struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type; /* 1 = RAM (E820 numbering) */
    uint32_t reserved;
};
_Static_assert(sizeof(struct hvm_memmap_table_entry) == 24, "memmap entry layout");

#define XEN_MEMMAP_RAM 1u

/* The hypercall page, installed by platform.c (boot.S reserves it in text). */
extern char xen_hypercall_page[];

/*
 * Call hypercall `nr` with two arguments through its stub in the hypercall
 * page (64-bit HVM convention: rdi, rsi, rdx, r10, r8; result in rax). Debug
 * builds of Xen clobber the argument registers, so all of them are outputs.
 */
static inline long xen_hypercall2(unsigned nr, uint64_t a1, uint64_t a2)
{
    register uint64_t rdi __asm__("rdi") = a1;
    register uint64_t rsi __asm__("rsi") = a2;
    register uint64_t rdx __asm__("rdx") = 0;
    register uint64_t r10 __asm__("r10") = 0;
    register uint64_t r8 __asm__("r8") = 0;
    long ret;
    __asm__ __volatile__("call *%[stub]"
                         : "=a"(ret), "+r"(rdi), "+r"(rsi), "+r"(rdx), "+r"(r10), "+r"(r8)
                         : [stub] "r"(xen_hypercall_page + nr * XEN_HYPERCALL_STUB_SIZE)
                         : "memory", "rcx", "r9", "r11");
    return ret;
}

/* platform.c: Xen system time in ns (monotonic, never goes back); aborts
 * when the guest is not running on Xen. */
uint64_t xen_system_time_ns(void);
/* platform.c: signal event channel `port`; clear its pending bit in shared_info. */
void xen_evtchn_send(uint32_t port);
void xen_evtchn_clear(uint32_t port);

/* xenstore.c: watch control/shutdown (the request is only queued; nothing is
 * waited for). `ring` is the xenstore page, `port` its event channel. */
void xs_watch_shutdown(volatile struct xenstore_domain_interface *ring, uint32_t port);
/* xenstore.c: consume what xenstored sent; true once the host has asked for a
 * poweroff or halt (`xl shutdown`). Never blocks. */
bool xs_shutdown_requested(void);

#endif /* LIBOS_XEN_XEN_H */
