/*
 * hvt_abi.h: the guest/host ABI shared by host-os/tender/ (edge-tender) and
 * image-recipes/ (our library OS). One versioned header, included by both.
 *
 * It describes the Solo5 "hvt" guest ABI, target 1, version 2, for x86_64,
 * written from the interface facts in shared/docs/hvt-abi.md (see ADR 0002).
 * Unmodified hvt unikernels built by other toolchains use the same layout,
 * which is why every offset below is pinned by a static assertion.
 *
 * This header holds types and constants only: no code, no host or guest
 * specific includes beyond <stdint.h> and <stddef.h>.
 */
#ifndef EDGE_HVT_ABI_H
#define EDGE_HVT_ABI_H

#include <stddef.h>
#include <stdint.h>

/* ABI identity, checked by the tender before anything else. */
#define HVT_ABI_TARGET 1u
#define HVT_ABI_VERSION 2u

/* ELF notes (name "Solo5\0", n_namesz 6). */
#define HVT_NOTE_NAME "Solo5"
#define HVT_NOTE_NAMESZ 6u
#define HVT_NOTE_TYPE_ABI1 0x31494241u /* "ABI1" */
#define HVT_NOTE_TYPE_MFT1 0x3154464du /* "MFT1" */
#define HVT_ABI1_NOTE_MAX_SIZE 32u
#define HVT_MFT1_NOTE_MAX_SIZE 6668u
#define HVT_ABI1_NOTE_ALIGN 4u
#define HVT_MFT1_NOTE_ALIGN 8u

struct hvt_abi1_info {
    uint32_t abi_target;
    uint32_t abi_version;
    uint32_t reserved0;
    uint32_t reserved1;
};

/* Manifest (MFT1). The guest-visible handle of a device is its entry index. */
#define MFT_VERSION 1u
#define MFT_MAX_ENTRIES 64u
#define MFT_NAME_SIZE 68u
#define MFT_NAME_MAX 67u

#define MFT_DEV_BLOCK_BASIC 1u
#define MFT_DEV_NET_BASIC 2u
#define MFT_RESERVED_FIRST (1u << 30)

struct mft_block_basic {
    uint64_t capacity;   /* bytes */
    uint16_t block_size; /* bytes */
};

struct mft_net_basic {
    uint8_t mac[6];
    uint16_t mtu;
};

struct mft_entry {
    char name[MFT_NAME_SIZE];
    uint32_t type;
    union {
        struct mft_block_basic block_basic;
        struct mft_net_basic net_basic;
    } u;
    union {
        int hostfd;
        uint64_t data; /* tender-private; 8 bytes in the file */
    } b;
    uint8_t attached; /* bool */
    uint8_t pad_[7];
};

struct mft {
    uint32_t version;
    uint32_t entries;
    struct mft_entry e[];
};

/* Guest physical memory layout. */
#define HVT_GDT_BASE 0x1000u
#define HVT_PML4_BASE 0x2000u
#define HVT_PDPT_BASE 0x3000u
#define HVT_PD_BASE 0x4000u /* 4 pages, one per GiB */
#define HVT_PT0_BASE 0x8000u
#define HVT_BOOT_INFO_BASE 0x10000u
#define HVT_GUEST_MIN_BASE 0x100000u
#define HVT_CMDLINE_SIZE 8192u
#define HVT_GUEST_MAX_MEM (2048ull * 0x200000ull) /* 4 GiB */
#define HVT_MEM_ALIGN 0x200000ull                /* 2 MiB */

/* Initial vCPU state (64-bit long mode, paging on). */
#define HVT_X86_CR0 0x80010021ull
#define HVT_X86_CR3 0x2000ull
#define HVT_X86_CR4 0x620ull
#define HVT_X86_EFER 0x500ull
#define HVT_X86_GDT_CODE 0x00AF99000000FFFFull
#define HVT_X86_GDT_DATA 0x00CF93000000FFFFull

struct hvt_boot_info {
    uint64_t mem_size;       /* guest RAM bytes (excludes net ring) */
    uint64_t kernel_end;     /* end of loaded PT_LOADs */
    uint64_t cpu_cycle_freq; /* TSC Hz */
    uint64_t cmdline;        /* GPA of NUL-terminated command line */
    uint64_t mft;            /* GPA of the filled-in manifest */
    uint32_t host_features;  /* bit0 RING_IO; 0 from edge-tender */
    uint32_t guest_features;
    uint64_t net_ring; /* GPA of the net ring, 0 if absent */
};

/* Hypercalls: outl %eax, %dx with dx = HVT_HYPERCALL_PIO_BASE + nr and eax the
 * low 32 bits of the argument struct's guest-physical address. */
#define HVT_HYPERCALL_PIO_BASE 0x500u
#define HVT_HYPERCALL_WALLTIME 1u
#define HVT_HYPERCALL_PUTS 2u
#define HVT_HYPERCALL_POLL 3u
#define HVT_HYPERCALL_BLOCK_WRITE 4u
#define HVT_HYPERCALL_BLOCK_READ 5u
#define HVT_HYPERCALL_NET_WRITE 6u
#define HVT_HYPERCALL_NET_READ 7u
#define HVT_HYPERCALL_HALT 8u
#define HVT_HYPERCALL_MAX 9u /* exclusive */
#define HVT_HYPERCALL_PIO(nr) (HVT_HYPERCALL_PIO_BASE + (nr))
#define HVT_HALT_COOKIE_MAX 512u

/* solo5_result_t */
#define HVT_R_OK 0
#define HVT_R_AGAIN 1
#define HVT_R_EINVAL 2
#define HVT_R_EUNSPEC 3

/* Exit statuses */
#define HVT_EXIT_SUCCESS 0
#define HVT_EXIT_FAILURE 1
#define HVT_EXIT_ABORT 255

struct hvt_hc_walltime {
    uint64_t nsecs;
};

struct hvt_hc_puts {
    uint64_t data; /* GPA */
    uint64_t len;
};

struct hvt_hc_poll {
    uint64_t timeout_nsecs; /* in, relative */
    uint64_t ready_set;     /* out */
    int32_t ret;            /* out */
};

struct hvt_hc_block_write {
    uint64_t handle;
    uint64_t offset;
    uint64_t data; /* GPA */
    uint64_t len;
    int32_t ret;
};

struct hvt_hc_block_read {
    uint64_t handle;
    uint64_t offset;
    uint64_t data; /* GPA */
    uint64_t len;  /* in/out */
    int32_t ret;
};

struct hvt_hc_net_write {
    uint64_t handle;
    uint64_t data; /* GPA */
    uint64_t len;
    int32_t ret;
};

struct hvt_hc_net_read {
    uint64_t handle;
    uint64_t data; /* GPA */
    uint64_t len;  /* in/out */
    int32_t ret;
};

struct hvt_hc_halt {
    uint64_t cookie; /* GPA or 0 */
    int32_t exit_status;
};

/* Trap registers a guest may pass as the HALT cookie after a CPU trap. */
struct hvt_trap_regs {
    uint64_t cr2, ec, rip, cs, rflags, rsp, ss;
};

/* Pin the layout: these sizes and offsets are the ABI. */
#define HVT_ABI_ASSERT(c, m) _Static_assert(c, m)
HVT_ABI_ASSERT(sizeof(struct hvt_abi1_info) == 16, "abi1_info");
HVT_ABI_ASSERT(sizeof(struct mft_entry) == 104, "mft_entry size");
HVT_ABI_ASSERT(offsetof(struct mft_entry, type) == 68, "mft_entry.type");
HVT_ABI_ASSERT(offsetof(struct mft_entry, u) == 72, "mft_entry.u");
HVT_ABI_ASSERT(offsetof(struct mft_entry, b) == 88, "mft_entry.b");
HVT_ABI_ASSERT(offsetof(struct mft_entry, attached) == 96, "mft_entry.attached");
HVT_ABI_ASSERT(sizeof(struct mft) == 8, "mft header");
HVT_ABI_ASSERT(sizeof(struct hvt_boot_info) == 56, "boot_info");
HVT_ABI_ASSERT(offsetof(struct hvt_boot_info, host_features) == 40, "host_features");
HVT_ABI_ASSERT(offsetof(struct hvt_boot_info, net_ring) == 48, "net_ring");
HVT_ABI_ASSERT(sizeof(struct hvt_hc_poll) == 24, "hc_poll");
HVT_ABI_ASSERT(sizeof(struct hvt_hc_block_write) == 40, "hc_block_write");
HVT_ABI_ASSERT(sizeof(struct hvt_hc_block_read) == 40, "hc_block_read");
HVT_ABI_ASSERT(sizeof(struct hvt_hc_net_write) == 32, "hc_net_write");
HVT_ABI_ASSERT(sizeof(struct hvt_hc_net_read) == 32, "hc_net_read");
HVT_ABI_ASSERT(sizeof(struct hvt_hc_halt) == 16, "hc_halt");
HVT_ABI_ASSERT(offsetof(struct mft_block_basic, block_size) == 8, "block_size");
HVT_ABI_ASSERT(offsetof(struct mft_net_basic, mtu) == 6, "mtu");

#endif /* EDGE_HVT_ABI_H */
