/*
 * echo: a UDP echo / health responder on the net device "service".
 *
 * Arguments: ip=A.B.C.D (default 10.0.0.2), port=N (default 7), count=K
 * (exit 0 after echoing K datagrams; default: run until halted).
 * Prints "READY ip=<ip> port=<port> mac=<mac>" once the device is found.
 *
 * It answers ARP requests for its address, ICMP echo requests (ping) to its
 * address, and sends every UDP datagram to its address and port back to the
 * sender (addresses and ports swapped; the UDP checksum stays valid under
 * the swap, the IPv4 header checksum is recomputed). Everything else,
 * including IPv4 fragments and IP options it does not understand, is
 * dropped. There is no routing: replies go to the sender's MAC address.
 */
#include "libos.h"

#define ETH_HDR 14u
#define FRAME_MAX 9216u
#define ETHERTYPE_IPV4 0x0800u
#define ETHERTYPE_ARP 0x0806u

static uint8_t frame[FRAME_MAX];
static struct libos_net nic;
static uint8_t my_ip[4] = {10, 0, 0, 2};
static uint64_t my_port = 7;

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static void swap_bytes(uint8_t *a, uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t t = a[i];
        a[i] = b[i];
        b[i] = t;
    }
}

static uint16_t ip_checksum(const uint8_t *p, size_t n)
{
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += be16(p + i);
    if (n & 1u)
        sum += (uint32_t)p[n - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)~sum;
}

static bool parse_ip(const char *s, uint8_t out[4])
{
    for (int i = 0; i < 4; i++) {
        unsigned v = 0;
        int digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 4) {
            v = v * 10 + (unsigned)(*s++ - '0');
            digits++;
        }
        if (digits == 0 || v > 255 || (i < 3 ? *s != '.' : *s != '\0'))
            return false;
        out[i] = (uint8_t)v;
        s++;
    }
    return true;
}

static void reply_ethernet(size_t len)
{
    memcpy(frame, frame + 6, 6);
    memcpy(frame + 6, nic.mac, 6);
    (void)libos_net_write(&nic, frame, len);
}

static void handle_arp(size_t len)
{
    uint8_t *a = frame + ETH_HDR;
    if (len < ETH_HDR + 28 || be16(a) != 1 || be16(a + 2) != ETHERTYPE_IPV4 || a[4] != 6 ||
        a[5] != 4 || be16(a + 6) != 1 || memcmp(a + 24, my_ip, 4) != 0)
        return;
    put_be16(a + 6, 2); /* reply */
    memcpy(a + 18, a + 8, 10); /* target hw+proto = sender's */
    memcpy(a + 8, nic.mac, 6);
    memcpy(a + 14, my_ip, 4);
    reply_ethernet(ETH_HDR + 28);
}

/* Returns true when a UDP datagram was echoed. */
static bool handle_ipv4(size_t len)
{
    uint8_t *ip = frame + ETH_HDR;
    if (len < ETH_HDR + 20 || (ip[0] >> 4) != 4)
        return false;
    size_t ihl = (size_t)(ip[0] & 0x0fu) * 4u;
    size_t total = be16(ip + 2);
    if (ihl < 20 || total < ihl || ETH_HDR + total > len || memcmp(ip + 16, my_ip, 4) != 0)
        return false;
    if ((be16(ip + 6) & 0x3fffu) != 0) /* fragment */
        return false;
    uint8_t *l4 = ip + ihl;
    size_t l4len = total - ihl;
    bool udp = false;
    if (ip[9] == 1) { /* ICMP */
        if (l4len < 8 || l4[0] != 8)
            return false;
        l4[0] = 0; /* echo reply */
        put_be16(l4 + 2, 0);
        put_be16(l4 + 2, ip_checksum(l4, l4len));
    } else if (ip[9] == 17) { /* UDP */
        if (l4len < 8 || be16(l4 + 2) != my_port || be16(l4 + 4) > l4len)
            return false;
        swap_bytes(l4, l4 + 2, 2);
        udp = true;
    } else {
        return false;
    }
    swap_bytes(ip + 12, ip + 16, 4);
    ip[8] = 64; /* TTL */
    put_be16(ip + 10, 0);
    put_be16(ip + 10, ip_checksum(ip, ihl));
    reply_ethernet(ETH_HDR + total);
    return udp;
}

int app_main(int argc, char **argv)
{
    uint64_t count = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if ((v = libos_arg_value(argv[i], "ip")) != NULL) {
            if (!parse_ip(v, my_ip)) {
                printf("ERROR bad ip: %s\n", v);
                return 2;
            }
        } else if ((v = libos_arg_value(argv[i], "port")) != NULL) {
            if (!libos_parse_u64(v, &my_port) || my_port == 0 || my_port > 65535) {
                printf("ERROR bad port: %s\n", v);
                return 2;
            }
        } else if ((v = libos_arg_value(argv[i], "count")) != NULL) {
            if (!libos_parse_u64(v, &count)) {
                printf("ERROR bad count: %s\n", v);
                return 2;
            }
        } else {
            printf("ERROR unknown argument: %s (expected ip=, port= or count=)\n", argv[i]);
            return 2;
        }
    }
    if (!libos_net_find("service", &nic)) {
        printf("ERROR no net device 'service' attached\n");
        return 1;
    }
    static const char hex[] = "0123456789abcdef";
    char mac[18];
    for (int i = 0; i < 6; i++) {
        mac[i * 3] = hex[nic.mac[i] >> 4];
        mac[i * 3 + 1] = hex[nic.mac[i] & 15u];
        mac[i * 3 + 2] = i < 5 ? ':' : '\0';
    }
    printf("READY ip=%u.%u.%u.%u port=%lu mac=%s\n", my_ip[0], my_ip[1], my_ip[2], my_ip[3],
           my_port, mac);

    uint64_t echoed = 0;
    for (;;) {
        (void)libos_yield(libos_clock_monotonic() + 1000000000ull);
        for (;;) {
            size_t len = sizeof(frame);
            if (libos_net_read(&nic, frame, &len) != 0)
                break;
            if (len < ETH_HDR)
                continue;
            uint16_t type = be16(frame + 12);
            if (type == ETHERTYPE_ARP)
                handle_arp(len);
            else if (type == ETHERTYPE_IPV4 && handle_ipv4(len))
                echoed++;
            if (count != 0 && echoed >= count) {
                printf("DONE echoed=%lu\n", echoed);
                return 0;
            }
        }
    }
}
