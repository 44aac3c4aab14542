/*
 * kvstore: a key-value store on the block device "storage" that survives
 * reboots and ignores torn or corrupt writes.
 *
 * Usage (command line):   put KEY VALUE...   get KEY   del KEY   list
 * Output (one line each, parsable):
 *   OK                              put/del succeeded
 *   VALUE key=<k> value=<v>         get hit; list prints one per live key
 *   OK count=<n>                    end of list
 *   NOTFOUND key=<k>                get/del of a missing key (exit 1)
 *   ERROR <reason>                  bad usage, full store, I/O error (exit 1)
 *
 * On-disk format (one record per sector, little-endian):
 *   u32 magic "KVS1" | u32 crc32 | u64 seq | u16 klen | u16 vlen | u16 flags | u16 0
 *   then key bytes, then value bytes; the rest of the sector is ignored.
 * crc32 (IEEE, nibble table, integer only) covers the bytes from seq to the
 * end of the value. A sector whose magic, lengths or crc do not check out is
 * free. The live record for a key is its valid record with the highest seq;
 * flags bit 0 marks a deletion. A write always goes to a sector that holds no
 * live record (a free one first, else a superseded one), so a torn write can
 * only destroy the record being written: the previous version still wins.
 */
#include "libos.h"

#define MAGIC 0x3153564bu /* "KVS1" */
#define HDR_SIZE 24u
#define KEY_MAX 64u
#define SECTOR_MAX 4096u
#define MAX_SECTORS 4096u
#define FLAG_DELETED 1u

struct slot {
    bool valid;
    bool deleted;
    uint8_t klen;
    uint64_t seq;
    char key[KEY_MAX];
};

static const uint32_t crc_nibble[16] = {
    0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4,
    0x4db26158, 0x5005713c, 0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c,
    0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
};

static uint8_t sector[SECTOR_MAX + 1]; /* +1: room for a NUL after a full value */
static struct libos_block dev;
static struct slot *slots;
static uint64_t nslots;

static uint32_t crc32(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        c = (c >> 4) ^ crc_nibble[c & 15u];
        c = (c >> 4) ^ crc_nibble[c & 15u];
    }
    return ~c;
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16; }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)v); put16(p + 2, (uint16_t)(v >> 16)); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v); put32(p + 4, (uint32_t)(v >> 32)); }

static _Noreturn void fail(const char *reason)
{
    printf("ERROR %s\n", reason);
    libos_exit(1);
}

static void read_sector(uint64_t i)
{
    if (libos_block_read(&dev, i * dev.block_size, sector, dev.block_size) != 0)
        fail("block read failed");
}

/* Check the record in `sector`; fill *s. Returns false for a free sector. */
static bool parse_record(struct slot *s)
{
    if (get32(sector) != MAGIC)
        return false;
    uint32_t klen = get16(sector + 16), vlen = get16(sector + 18);
    if (klen == 0 || klen > KEY_MAX || HDR_SIZE + klen + vlen > dev.block_size)
        return false;
    if (crc32(sector + 8, HDR_SIZE - 8 + klen + vlen) != get32(sector + 4))
        return false;
    s->valid = true;
    s->seq = get64(sector + 8);
    s->deleted = (get16(sector + 20) & FLAG_DELETED) != 0;
    s->klen = (uint8_t)klen;
    memcpy(s->key, sector + HDR_SIZE, klen);
    return true;
}

static void scan(void)
{
    for (uint64_t i = 0; i < nslots; i++) {
        read_sector(i);
        slots[i].valid = false;
        (void)parse_record(&slots[i]);
    }
}

static bool same_key(const struct slot *s, const char *key, size_t klen)
{
    return s->valid && s->klen == klen && memcmp(s->key, key, klen) == 0;
}

/* Index of the live record (highest seq) for key, or -1. */
static int64_t latest(const char *key, size_t klen)
{
    int64_t best = -1;
    for (uint64_t i = 0; i < nslots; i++) {
        if (same_key(&slots[i], key, klen) && (best < 0 || slots[i].seq > slots[best].seq))
            best = (int64_t)i;
    }
    return best;
}

static uint64_t next_seq(void)
{
    uint64_t seq = 0;
    for (uint64_t i = 0; i < nslots; i++) {
        if (slots[i].valid && slots[i].seq > seq)
            seq = slots[i].seq;
    }
    return seq + 1;
}

/* A sector that holds no live record: free first, then superseded. */
static int64_t pick_target(void)
{
    for (uint64_t i = 0; i < nslots; i++) {
        if (!slots[i].valid)
            return (int64_t)i;
    }
    for (uint64_t i = 0; i < nslots; i++) {
        if (latest(slots[i].key, slots[i].klen) != (int64_t)i)
            return (int64_t)i;
    }
    /* A deletion that is the only record left for its key can go too. */
    for (uint64_t i = 0; i < nslots; i++) {
        if (slots[i].deleted)
            return (int64_t)i;
    }
    return -1;
}

static void write_record(const char *key, size_t klen, const char *val, size_t vlen,
                         uint16_t flags)
{
    int64_t target = pick_target();
    if (target < 0)
        fail("store full");
    memset(sector, 0, dev.block_size);
    put32(sector, MAGIC);
    put64(sector + 8, next_seq());
    put16(sector + 16, (uint16_t)klen);
    put16(sector + 18, (uint16_t)vlen);
    put16(sector + 20, flags);
    memcpy(sector + HDR_SIZE, key, klen);
    memcpy(sector + HDR_SIZE + klen, val, vlen);
    put32(sector + 4, crc32(sector + 8, HDR_SIZE - 8 + klen + vlen));
    if (libos_block_write(&dev, (uint64_t)target * dev.block_size, sector, dev.block_size) != 0)
        fail("block write failed");
}

static void print_value(int64_t i)
{
    read_sector((uint64_t)i);
    uint32_t klen = get16(sector + 16), vlen = get16(sector + 18);
    char key[KEY_MAX + 1];
    memcpy(key, sector + HDR_SIZE, klen);
    key[klen] = '\0';
    /* The value is printed from the sector buffer; terminate it in place. */
    char *val = (char *)sector + HDR_SIZE + klen;
    val[vlen] = '\0';
    printf("VALUE key=%s value=%s\n", key, val);
}

int app_main(int argc, char **argv)
{
    if (argc < 2)
        fail("usage: put KEY VALUE | get KEY | del KEY | list");
    if (!libos_block_find("storage", &dev))
        fail("no block device 'storage' attached");
    if (dev.block_size < 512 || dev.block_size > SECTOR_MAX)
        fail("unsupported block size");
    nslots = dev.capacity / dev.block_size;
    if (nslots > MAX_SECTORS)
        nslots = MAX_SECTORS;
    slots = calloc(nslots, sizeof(*slots));
    if (slots == NULL)
        fail("out of memory");
    scan();

    const char *cmd = argv[1];
    if (strcmp(cmd, "list") == 0 && argc == 2) {
        uint64_t count = 0;
        for (uint64_t i = 0; i < nslots; i++) {
            if (slots[i].valid && !slots[i].deleted &&
                latest(slots[i].key, slots[i].klen) == (int64_t)i) {
                print_value((int64_t)i);
                count++;
            }
        }
        printf("OK count=%lu\n", count);
        return 0;
    }
    if (argc < 3)
        fail("usage: put KEY VALUE | get KEY | del KEY | list");
    const char *key = argv[2];
    size_t klen = strlen(key);
    if (klen > KEY_MAX)
        fail("key too long (at most 64 bytes)");
    int64_t live = latest(key, klen);
    bool present = live >= 0 && !slots[live].deleted;

    if (strcmp(cmd, "get") == 0 && argc == 3) {
        if (!present) {
            printf("NOTFOUND key=%s\n", key);
            return 1;
        }
        print_value(live);
        return 0;
    }
    if (strcmp(cmd, "del") == 0 && argc == 3) {
        if (!present) {
            printf("NOTFOUND key=%s\n", key);
            return 1;
        }
        write_record(key, klen, "", 0, FLAG_DELETED);
        printf("OK\n");
        return 0;
    }
    if (strcmp(cmd, "put") == 0 && argc >= 4) {
        /* The value is the remaining arguments joined by single spaces. */
        char val[SECTOR_MAX];
        size_t vlen = 0;
        for (int i = 3; i < argc; i++) {
            size_t n = strlen(argv[i]);
            if (vlen + n + 1 > dev.block_size - HDR_SIZE - klen)
                fail("value too long for one sector");
            if (i > 3)
                val[vlen++] = ' ';
            memcpy(&val[vlen], argv[i], n);
            vlen += n;
        }
        write_record(key, klen, val, vlen, 0);
        printf("OK\n");
        return 0;
    }
    fail("usage: put KEY VALUE | get KEY | del KEY | list");
}
