/*
 * hypercall.h: the hvt hypercall primitive (guest side).
 *
 * A hypercall is `outl %eax, %dx` with dx = 0x500 + nr and eax = the low 32
 * bits of the guest-physical address of the argument struct (ADR 0002; the
 * guest is identity-mapped, so a pointer is its GPA). The tender writes
 * results back into the struct before the next instruction runs.
 */
#ifndef LIBOS_HVT_HYPERCALL_H
#define LIBOS_HVT_HYPERCALL_H

#include <stdint.h>

#include "hvt_abi.h"

static inline void hvt_hypercall(uint32_t nr, volatile void *arg)
{
    uint32_t gpa = (uint32_t)(uintptr_t)arg;
    __asm__ __volatile__("outl %0, %1"
                         :
                         : "a"(gpa), "d"((uint16_t)HVT_HYPERCALL_PIO(nr))
                         : "memory");
}

#endif /* LIBOS_HVT_HYPERCALL_H */
