/*
 * tnd_module_block.c: file-backed block devices (MFT_DEV_BLOCK_BASIC).
 *
 * Attach opens the file read-write and derives the capacity from its size,
 * which must be a whole number (>= 1) of blocks. BLOCK_READ/BLOCK_WRITE
 * check the handle, offset and length (EINVAL to the guest when out of
 * range, as Solo5 does) and the buffer pointer (ABI violation when outside
 * guest RAM), then pread/pwrite. A short transfer or I/O error stops the VM
 * with status 245. Alignment to the block size is the guest's business,
 * as in Solo5; the tender only guarantees the range is inside the file.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tnd.h"

int tnd_block_attach(struct tnd_vm *vm, unsigned i, const struct tnd_devcfg *c,
                     struct tnd_stop *stop)
{
    struct mft_entry *e = &vm->mft.e[i];
    struct stat sb;
    int fd = open(c->target, O_RDWR | O_CLOEXEC);

    if (fd < 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "--block:%s=%s: cannot open: %s", e->name,
                            c->target, strerror(errno));
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "--block:%s=%s: not a regular file", e->name,
                            c->target);
    }
    if (sb.st_size < c->block_size || sb.st_size % c->block_size != 0) {
        close(fd);
        return tnd_stop_set(stop, TND_EXIT_USAGE, "setup",
                            "--block:%s=%s: size %lld is not a positive "
                            "multiple of the block size %u",
                            e->name, c->target, (long long)sb.st_size,
                            c->block_size);
    }
    vm->dev[i].type = MFT_DEV_BLOCK_BASIC;
    vm->dev[i].fd = fd;
    vm->dev[i].capacity = (uint64_t)sb.st_size;
    vm->dev[i].block_size = c->block_size;
    e->u.block_basic.capacity = (uint64_t)sb.st_size;
    e->u.block_basic.block_size = c->block_size;
    e->b.hostfd = fd;
    e->attached = 1;
    return 0;
}

/* The block device for a guest handle, or NULL (EINVAL to the guest). */
static struct tnd_dev *block_dev(struct tnd_vm *vm, uint64_t handle)
{
    if (handle == 0 || handle >= vm->mft.entries ||
        vm->dev[handle].type != MFT_DEV_BLOCK_BASIC)
        return NULL;
    return &vm->dev[handle];
}

/* 0 when [off, off+len) lies inside the device and len fits ssize_t. */
static int range_ok(const struct tnd_dev *d, uint64_t off, uint64_t len)
{
    uint64_t end;
    return !(off >= d->capacity || len > SSIZE_MAX ||
             __builtin_add_overflow(off, len, &end) || end > d->capacity);
}

int tnd_block_write(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *stop)
{
    struct hvt_hc_block_write a;
    void *p = tnd_gpa(vm->mem, vm->mem_size, gpa, sizeof(a));
    struct tnd_dev *d;
    void *data;
    ssize_t n;

    if (p == NULL)
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: BLOCK_WRITE argument at "
                            "0x%llx is outside guest memory",
                            (unsigned long long)gpa);
    memcpy(&a, p, sizeof(a));
    d = block_dev(vm, a.handle);
    if (d == NULL || !range_ok(d, a.offset, a.len)) {
        a.ret = HVT_R_EINVAL;
        memcpy(p, &a, sizeof(a));
        return 0;
    }
    data = tnd_gpa(vm->mem, vm->mem_size, a.data, a.len);
    if (data == NULL)
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: BLOCK_WRITE buffer "
                            "0x%llx+%llu is outside guest memory",
                            (unsigned long long)a.data,
                            (unsigned long long)a.len);
    do
        n = pwrite(d->fd, data, (size_t)a.len, (off_t)a.offset);
    while (n < 0 && errno == EINTR);
    if (n < 0 || (uint64_t)n != a.len)
        return tnd_stop_set(stop, TND_EXIT_IO, "io",
                            "block device '%s': write of %llu bytes at "
                            "%llu failed: %s",
                            vm->mft.e[a.handle].name,
                            (unsigned long long)a.len,
                            (unsigned long long)a.offset,
                            n < 0 ? strerror(errno) : "short write");
    a.ret = HVT_R_OK;
    memcpy(p, &a, sizeof(a));
    return 0;
}

int tnd_block_read(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *stop)
{
    struct hvt_hc_block_read a;
    void *p = tnd_gpa(vm->mem, vm->mem_size, gpa, sizeof(a));
    struct tnd_dev *d;
    void *data;
    ssize_t n;

    if (p == NULL)
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: BLOCK_READ argument at "
                            "0x%llx is outside guest memory",
                            (unsigned long long)gpa);
    memcpy(&a, p, sizeof(a));
    d = block_dev(vm, a.handle);
    if (d == NULL || !range_ok(d, a.offset, a.len)) {
        a.ret = HVT_R_EINVAL;
        memcpy(p, &a, sizeof(a));
        return 0;
    }
    data = tnd_gpa(vm->mem, vm->mem_size, a.data, a.len);
    if (data == NULL)
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: BLOCK_READ buffer "
                            "0x%llx+%llu is outside guest memory",
                            (unsigned long long)a.data,
                            (unsigned long long)a.len);
    do
        n = pread(d->fd, data, (size_t)a.len, (off_t)a.offset);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EFAULT)
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: BLOCK_READ buffer "
                            "0x%llx+%llu is read-only guest memory",
                            (unsigned long long)a.data,
                            (unsigned long long)a.len);
    if (n < 0 || (uint64_t)n != a.len)
        return tnd_stop_set(stop, TND_EXIT_IO, "io",
                            "block device '%s': read of %llu bytes at %llu "
                            "failed: %s",
                            vm->mft.e[a.handle].name,
                            (unsigned long long)a.len,
                            (unsigned long long)a.offset,
                            n < 0 ? strerror(errno) : "short read");
    a.ret = HVT_R_OK;
    memcpy(p, &a, sizeof(a));
    return 0;
}
