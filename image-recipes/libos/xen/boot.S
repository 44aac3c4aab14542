/*
 * xen/boot.S: PVH entry for the xen platform (ADR 0011).
 *
 * The ELF notes tell Xen's domain builder (and QEMU's -kernel PVH loader)
 * that this is a PVH kernel and where its 32-bit entry point is. Xen (and
 * QEMU) enter _start32 in 32-bit protected mode, paging off, flat segments,
 * interrupts off, no usable stack or GDT, with %ebx = physical address of
 * struct hvm_start_info.
 *
 * _start32 clears BSS (one rep stosl), loads static identity-mapped page
 * tables for the first 4 GiB (2 MiB pages, built by the assembler: no loop
 * runs at boot; 4 GiB so that Xen's special pages just below 4 GiB, such as
 * the console ring, are reachable), enables PAE, long mode and paging, loads
 * a 64-bit GDT, jumps to 64-bit code, sets a 64 KiB BSS stack and calls
 * xen_start(start_info). It installs no IDT: a CPU exception is a triple
 * fault, which Xen reports as a crash of the domain.
 *
 * The hypercall page lives here too (4 KiB in text, filled with int3 until
 * Xen overwrites it with its stubs; calling it before that faults).
 */
#define XEN_ELFNOTE_XEN_VERSION 5
#define XEN_ELFNOTE_GUEST_OS 6
#define XEN_ELFNOTE_LOADER 8
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* One note: 12-byte header, name "Xen\0" (4 bytes), desc, 4-aligned. */
#define XEN_NOTE_STR(type, str)                                                \
        .p2align 2;                                                            \
        .long 4, 2f - 1f, type;                                                \
        .asciz "Xen";                                                          \
1:      .asciz str;                                                            \
2:      .p2align 2

        .section .note.xen, "a", @note
        .p2align 2
        /* The PVH entry. The descriptor is 8 bytes: QEMU reads a 64-bit
         * value from ELF64 images; Xen accepts 4 or 8 bytes. */
        .long 4, 8, XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .quad _start32
        XEN_NOTE_STR(XEN_ELFNOTE_GUEST_OS, "edgeagent-libos")
        XEN_NOTE_STR(XEN_ELFNOTE_XEN_VERSION, "xen-3.0")
        XEN_NOTE_STR(XEN_ELFNOTE_LOADER, "generic")

        .section .text.boot, "ax"
        .code32
        .globl _start32
_start32:
        cli
        cld
        movl %ebx, %esi                 /* hvm_start_info, kept for xen_start */
        movl $__bss_start, %edi         /* BSS: 4 KiB aligned at both ends */
        movl $_end, %ecx
        subl %edi, %ecx
        shrl $2, %ecx
        xorl %eax, %eax
        rep stosl
        movl $pml4, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $0x20, %eax                 /* CR4.PAE */
        movl %eax, %cr4
        movl $0xC0000080, %ecx          /* EFER */
        rdmsr
        orl $0x100, %eax                /* EFER.LME */
        wrmsr
        movl %cr0, %eax
        orl $0x80000001, %eax           /* CR0.PG | CR0.PE */
        movl %eax, %cr0
        lgdt gdt_ptr
        ljmp $0x08, $start64

        .code64
start64:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movw %ax, %fs
        movw %ax, %gs
        movq $boot_stack_top, %rsp
        movl %esi, %edi                 /* zero-extends: rdi = start_info */
        call xen_start
1:      cli
        hlt
        jmp 1b

        .section .text.hypercall_page, "ax"
        .p2align 12
        .globl xen_hypercall_page
xen_hypercall_page:
        .fill 4096, 1, 0xcc             /* int3 until Xen writes its stubs */

        .section .rodata.boot_gdt, "a"
        .p2align 3
gdt:
        .quad 0
        .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code, DPL0 */
        .quad 0x00CF92000000FFFF        /* 0x10: data, DPL0 */
gdt_end:
gdt_ptr:
        .word gdt_end - gdt - 1
        .long gdt

        .section .data.boot_pagetables, "aw"
        .p2align 12
pml4:
        .quad pdpt + 0x3                /* present, writable */
        .fill 511, 8, 0
pdpt:
        .quad pd + 0x3
        .quad pd + 0x1000 + 0x3
        .quad pd + 0x2000 + 0x3
        .quad pd + 0x3000 + 0x3
        .fill 508, 8, 0
pd:
        .set i, 0
        .rept 2048
        .quad (i << 21) | 0x83          /* 2 MiB page: present, writable, PS */
        .set i, i + 1
        .endr

        .section .bss.boot_stack, "aw", @nobits
        .p2align 4
boot_stack:
        .skip 65536
boot_stack_top:

        .section .note.GNU-stack, "", @progbits
