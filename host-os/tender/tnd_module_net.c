/*
 * tnd_module_net.c: network devices (MFT_DEV_NET_BASIC) over TAP.
 *
 * Attach takes either a TAP interface name (opened through /dev/net/tun
 * with IFF_TAP|IFF_NO_PI; the interface must exist and be up; its MTU is
 * used) or "@FD", an fd inherited from the caller (MTU 1500). The MAC is
 * --net-mac or a random locally administered unicast address. The fd is
 * made non-blocking. NET_WRITE/NET_READ move one frame per hypercall.
 * There is no ring I/O (host_features = 0).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tnd.h"

/* Query flags and MTU of interface `name` via an AF_INET socket. */
static int iface_info(const char *name, short *flags, int *mtu)
{
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int rc = -1;

    if (s < 0)
        return -1;
    memset(&ifr, 0, sizeof(ifr));
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        *flags = ifr.ifr_flags;
        if (ioctl(s, SIOCGIFMTU, &ifr) == 0) {
            *mtu = ifr.ifr_mtu;
            rc = 0;
        }
    }
    close(s);
    return rc;
}

static int tap_open(const char *name, const char *dev, int *out,
                    uint16_t *mtu, struct tnd_stop *stop)
{
    struct ifreq ifr;
    short flags = 0;
    int m = 0;
    int fd;

    if (strlen(name) >= IFNAMSIZ)
        return tnd_stop_set(stop, TND_EXIT_USAGE, "setup",
                            "--net:%s=%s: interface name too long", dev,
                            name);
    if (iface_info(name, &flags, &m) != 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "--net:%s=%s: no such interface (create the TAP "
                            "device first: ip tuntap add %s mode tap)",
                            dev, name, name);
    if (!(flags & IFF_UP))
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "--net:%s=%s: interface is down (ip link set %s "
                            "up)",
                            dev, name, name);
    fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "--net:%s=%s: cannot open /dev/net/tun: %s", dev,
                            name, strerror(errno));
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
        int e = errno;
        close(fd);
        return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                            "--net:%s=%s: cannot attach to TAP interface: %s",
                            dev, name, strerror(e));
    }
    if (m < 576 || m > 65535)
        m = 1500;
    *mtu = (uint16_t)m;
    *out = fd;
    return 0;
}

int tnd_net_attach(struct tnd_vm *vm, unsigned i, const struct tnd_devcfg *c,
                   struct tnd_stop *stop)
{
    struct mft_entry *e = &vm->mft.e[i];
    uint16_t mtu = 1500;
    int fd = -1;

    if (c->target[0] == '@') {
        uint64_t n;
        int fl;
        if (tnd_parse_u64(c->target + 1, 65535, &n) != 0 || n < 3)
            return tnd_stop_set(stop, TND_EXIT_USAGE, "setup",
                                "--net:%s=%s: expected @FD with FD >= 3",
                                e->name, c->target);
        fd = (int)n;
        fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
            return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                                "--net:%s=%s: fd is not open: %s", e->name,
                                c->target, strerror(errno));
    } else if (tap_open(c->target, e->name, &fd, &mtu, stop) != 0) {
        return 1;
    }
    if (c->have_mac) {
        memcpy(e->u.net_basic.mac, c->mac, 6);
    } else {
        if (getrandom(e->u.net_basic.mac, 6, 0) != 6) {
            close(fd);
            return tnd_stop_set(stop, TND_EXIT_SETUP, "setup",
                                "getrandom failed: %s", strerror(errno));
        }
        e->u.net_basic.mac[0] &= 0xfe; /* unicast */
        e->u.net_basic.mac[0] |= 0x02; /* locally administered */
    }
    e->u.net_basic.mtu = mtu;
    e->b.hostfd = fd;
    e->attached = 1;
    vm->dev[i].type = MFT_DEV_NET_BASIC;
    vm->dev[i].fd = fd;
    return 0;
}

static struct tnd_dev *net_dev(struct tnd_vm *vm, uint64_t handle)
{
    if (handle == 0 || handle >= vm->mft.entries ||
        vm->dev[handle].type != MFT_DEV_NET_BASIC)
        return NULL;
    return &vm->dev[handle];
}

int tnd_net_write(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *stop)
{
    struct hvt_hc_net_write a;
    void *p = tnd_gpa(vm->mem, vm->mem_size, gpa, sizeof(a));
    struct tnd_dev *d;
    void *data;
    ssize_t n;

    if (p == NULL)
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: NET_WRITE argument at "
                            "0x%llx is outside guest memory",
                            (unsigned long long)gpa);
    memcpy(&a, p, sizeof(a));
    d = net_dev(vm, a.handle);
    if (d == NULL || a.len > 65535) {
        a.ret = HVT_R_EINVAL;
        memcpy(p, &a, sizeof(a));
        return 0;
    }
    data = tnd_gpa(vm->mem, vm->mem_size, a.data, a.len);
    if (data == NULL)
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: NET_WRITE buffer "
                            "0x%llx+%llu is outside guest memory",
                            (unsigned long long)a.data,
                            (unsigned long long)a.len);
    do
        n = write(d->fd, data, (size_t)a.len);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
        a.ret = HVT_R_AGAIN; /* frame dropped, as a busy NIC would */
    } else if (n < 0 || (uint64_t)n != a.len) {
        return tnd_stop_set(stop, TND_EXIT_IO, "io",
                            "net device '%s': write of %llu bytes failed: %s",
                            vm->mft.e[a.handle].name,
                            (unsigned long long)a.len,
                            n < 0 ? strerror(errno) : "short write");
    } else {
        a.ret = HVT_R_OK;
    }
    memcpy(p, &a, sizeof(a));
    return 0;
}

int tnd_net_read(struct tnd_vm *vm, uint64_t gpa, struct tnd_stop *stop)
{
    struct hvt_hc_net_read a;
    void *p = tnd_gpa(vm->mem, vm->mem_size, gpa, sizeof(a));
    struct tnd_dev *d;
    void *data;
    ssize_t n;

    if (p == NULL)
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: NET_READ argument at "
                            "0x%llx is outside guest memory",
                            (unsigned long long)gpa);
    memcpy(&a, p, sizeof(a));
    d = net_dev(vm, a.handle);
    if (d == NULL) {
        a.ret = HVT_R_EINVAL;
        memcpy(p, &a, sizeof(a));
        return 0;
    }
    data = tnd_gpa(vm->mem, vm->mem_size, a.data, a.len);
    if (data == NULL)
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: NET_READ buffer "
                            "0x%llx+%llu is outside guest memory",
                            (unsigned long long)a.data,
                            (unsigned long long)a.len);
    do
        n = read(d->fd, data, (size_t)a.len);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EFAULT)
        return tnd_stop_set(stop, TND_EXIT_ABI, "abi",
                            "guest ABI violation: NET_READ buffer 0x%llx is "
                            "read-only guest memory",
                            (unsigned long long)a.data);
    if (n == 0 || (n < 0 && errno == EAGAIN)) {
        a.ret = HVT_R_AGAIN;
    } else if (n < 0) {
        return tnd_stop_set(stop, TND_EXIT_IO, "io",
                            "net device '%s': read failed: %s",
                            vm->mft.e[a.handle].name, strerror(errno));
    } else {
        a.len = (uint64_t)n;
        a.ret = HVT_R_OK;
    }
    memcpy(p, &a, sizeof(a));
    return 0;
}
