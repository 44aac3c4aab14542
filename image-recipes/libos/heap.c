/*
 * heap.c: a simple first-fit allocator over [heap_start, heap_end): the RAM
 * between the end of the image (including BSS) and the stack reserved at the
 * top of memory.
 *
 * Blocks carry a 16-byte header; free blocks form a singly linked list that
 * is searched first-fit and split when large; adjacent free blocks are not
 * coalesced (apps here allocate a few long-lived buffers). The heap grows
 * lazily from the top of the used region, so start-up touches no memory.
 * Not thread-safe (there are no threads). Out of memory returns NULL.
 */
#include "internal.h"

struct block_hdr {
    uint64_t size;          /* payload bytes, multiple of 16 */
    struct block_hdr *next; /* free-list link, valid only when free */
};

static uint64_t brk_pos;             /* next unused byte; 0 until first use */
static struct block_hdr *free_list;

void *malloc(size_t n)
{
    if (n == 0)
        n = 1;
    if (n > libos_boot.heap_end)
        return NULL;
    uint64_t size = ((uint64_t)n + 15u) & ~(uint64_t)15u;

    struct block_hdr **pp = &free_list;
    for (struct block_hdr *b = free_list; b != NULL; pp = &b->next, b = b->next) {
        if (b->size < size)
            continue;
        if (b->size >= size + 2 * sizeof(struct block_hdr)) {
            /* Split: the tail stays on the free list. */
            struct block_hdr *rest =
                (struct block_hdr *)(void *)((char *)(b + 1) + size);
            rest->size = b->size - size - sizeof(struct block_hdr);
            rest->next = b->next;
            *pp = rest;
            b->size = size;
        } else {
            *pp = b->next;
        }
        return b + 1;
    }

    if (brk_pos == 0)
        brk_pos = libos_boot.heap_start;
    uint64_t need = size + sizeof(struct block_hdr);
    if (brk_pos > libos_boot.heap_end || libos_boot.heap_end - brk_pos < need)
        return NULL;
    struct block_hdr *b = (struct block_hdr *)(uintptr_t)brk_pos;
    brk_pos += need;
    b->size = size;
    return b + 1;
}

void *calloc(size_t nmemb, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(nmemb, size, &total))
        return NULL;
    void *p = malloc(total);
    if (p != NULL)
        memset(p, 0, total);
    return p;
}

void free(void *p)
{
    if (p == NULL)
        return;
    struct block_hdr *b = (struct block_hdr *)p - 1;
    b->next = free_list;
    free_list = b;
}
