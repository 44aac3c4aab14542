/*
 * hvt/abi_note.S: the ABI1 note (Solo5 hvt target 1, ABI version 2) that the
 * tender checks before anything else. Layout (hvt-abi.md section 4): a 12-byte
 * Elf64_Nhdr, the name "Solo5\0" padded to 8 bytes, then struct abi1_info at
 * offset 20 (note_align 4, no pad): target, version, two reserved words.
 */
        .section .note.solo5.abi, "a", @note
        .p2align 2
        .long 6                 /* n_namesz: "Solo5\0" */
        .long 16                /* n_descsz: sizeof(struct hvt_abi1_info) */
        .long 0x31494241        /* n_type: "ABI1" */
        .asciz "Solo5"
        .byte 0, 0              /* name padded to 8 bytes */
        .long 1                 /* abi_target: HVT */
        .long 2                 /* abi_version */
        .long 0, 0              /* reserved */

        .section .note.GNU-stack, "", @progbits
