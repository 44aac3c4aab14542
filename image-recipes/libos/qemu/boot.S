/*
 * qemu/boot.S: multiboot (v1) entry for the qemu platform (ADR 0002).
 *
 * QEMU's `-kernel` multiboot loader refuses 64-bit ELF files, so the image is
 * a flat binary whose multiboot header sets flag 16 (the "a.out kludge"):
 * the header itself gives the load address, the end of the loaded bytes, the
 * end of BSS (QEMU zeroes it) and the 32-bit entry point.
 *
 * _start32 runs in 32-bit protected mode with paging off (multiboot state:
 * eax = 0x2BADB002, ebx = multiboot info). It loads static identity-mapped
 * page tables (first 1 GiB, 2 MiB pages, built by the assembler, so no loop
 * runs at boot), enables PAE, long mode and paging, loads a 64-bit GDT, jumps
 * to 64-bit code, sets a 64 KiB BSS stack and calls qemu_start(mbi).
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00010002 /* bit 1: memory info; bit 16: address fields valid */

        .section .text.boot, "ax"
        .code32
        .p2align 2
multiboot_header:
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)
        .long multiboot_header  /* header_addr */
        .long _image_start      /* load_addr */
        .long _edata            /* load_end_addr */
        .long _end              /* bss_end_addr */
        .long _start32          /* entry_addr */

        .globl _start32
_start32:
        cli
        movl %ebx, %esi                 /* multiboot info, kept for qemu_start */
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
        movl %esi, %edi                 /* zero-extends: rdi = mbi */
        call qemu_start
1:      cli
        hlt
        jmp 1b

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
        .fill 511, 8, 0
pd:
        .set i, 0
        .rept 512
        .quad (i << 21) | 0x83          /* 2 MiB page: present, writable, PS */
        .set i, i + 1
        .endr

        .section .bss.boot_stack, "aw", @nobits
        .p2align 4
boot_stack:
        .skip 65536
boot_stack_top:

        .section .note.GNU-stack, "", @progbits
