/*
 * persist.c - what a node keeps on disk so that a `kill -9` loses nothing it
 * acknowledged, and a restart never counts anything twice.
 *
 * ---- Files in state_dir ----
 *
 *   lock         the pid of the broker using the directory, which holds a
 *                lock on this file (see "One broker per directory")
 *   meta         text: node id, incarnation (hex), kernel boot id
 *   state.log    "TALLYLOG" u32 version, then records, appended as changes
 *                are applied
 *   state.log.N  a log set aside while a snapshot is written (see below)
 *   state.log.new  the next state.log while a rotation prepares it
 *   state.snap   "TALLYSNP" u32 version, then records, then an 'E' record;
 *                written to state.snap.tmp, fsynced and renamed over
 *
 * A record is u32 length, u32 CRC-32 (zlib) of the payload, the payload:
 *
 *   'S' str8 name, str8 node_id, u64 incarnation, varint p, varint n,
 *       u8 has_key, [u64 key.a, u64 key.b]      a slot's whole state
 *   'D' str8 name, str8 device, varint total    a device's maximum
 *   'K' u64 key.a, u64 key.b                    an idempotency key (snapshot)
 *   'B' str8 name, str8 node_id, u64 incarnation, varint p, varint n
 *                                               a slot's base (reset.c)
 *   'b' str8 name, str8 device, varint total    a device's base
 *   'M' str8 name, varint deleted, varint reset the stamps of a counter's
 *                                               last delete and reset
 *   'F' str8 name, str8 node_id, u64 incarnation, varint p, varint n,
 *       varint bp, varint bn, u8 with, [str8 node_id if with is 2,
 *       u64 incarnation, varint p, varint n]    a fold entry (fold.c), and
 *                                               the slot it was folded into,
 *                                               if given (with 1: a slot of
 *                                               the same node; 2: of the
 *                                               node that adopted it)
 *   'R' str8 node_id, u64 below                 every life of node_id below
 *                                               is retired (fold.c)
 *   'A' str8 node_id, str8 by, u64 lives_below, u8 settled
 *                                               the lives of node_id below
 *                                               lives_below are adopted by
 *                                               `by` (fold.c)
 *   'G' str8 group, str8 region                 the group and region the
 *                                               state is made in (an edge:
 *                                               the group its count is in;
 *                                               region: plugin_opt_region,
 *                                               "r/z" with those above it)
 *   'E' u64 records                             end of snapshot
 *
 * Records hold states, not deltas, so replaying one twice, or replaying the
 * log over a snapshot that already contains it, changes nothing: the merge is
 * idempotent (counter.c). That makes the crash windows harmless: between the
 * rename of a new snapshot and the truncation of the log, both are replayed.
 *
 * ---- When is it on disk ----
 *
 * A record is copied into state.log, which is mapped shared (the mapping is
 * the kernel's page cache), in the MESSAGE callback, before Mosquitto sends
 * the PUBACK: an acknowledged increment is in the kernel when the client
 * hears of it, and survives `kill -9` of the broker, at the cost of a memcpy
 * rather than a write(2) per increment. The file is allocated ahead with
 * posix_fallocate (a quarter of its size, 16 KiB to 8 MiB), so a full disk is an error before the
 * copy, never a SIGBUS, and the zeros past the last record are cut at the next start.
 * fsync_interval_ms bounds what a power loss can take: 0 msyncs every record
 * before the acknowledgement; N > 0 msyncs at most N ms after a change. An
 * msync that fails (an I/O error) is reported, and from then on nothing more
 * is acknowledged until one succeeds again: a write that may not reach the
 * disk is treated as a write that failed.
 *
 * ---- One broker per directory ----
 *
 * Two brokers on one state_dir would each take the other's log space for a
 * torn tail and cut it. So the first thing a broker does with state_dir,
 * before it reads a byte, is to take a lock on state_dir/lock (fcntl(2)); a
 * second broker finds it held and refuses to start, naming the holder. The
 * kernel drops the lock when its process dies, however it dies.
 *
 * ---- Incarnations ----
 *
 * After a power loss inside the fsync window the log may miss records whose
 * states were already replicated; reusing the old slot would let the peers'
 * larger values hide new increments. So a node keeps its incarnation only
 * when nothing can have been lost: fsync_interval_ms is 0, or the kernel's
 * boot id is unchanged (the process died, the page cache did not). Otherwise
 * it starts a fresh incarnation and its old slot lives on in peers.
 *
 * ---- Recovery ----
 *
 * Load the snapshot (any damage: refuse to start, naming file and offset),
 * replay the log, cut a torn last record with a warning, and refuse to start
 * on damage anywhere else: never start silently from zero. A full disk does
 * not stop a start: the log is mapped again without space ahead, and local
 * changes are refused until it can grow.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zlib.h>

#include "persist.h"

#define LOG_MAGIC "TALLYLOG"
#define SNAP_MAGIC "TALLYSNP"
#define FILE_VERSION 1
#define HEADER_LEN 12
/* The largest record tally writes is about 350 bytes (a 200-byte name and a
 * 128-byte device id). */
#define RECORD_MAX 1024u
#define COMPACT_MIN_BYTES (4u << 20)
/* state.log is allocated ahead by a quarter of its size, at least 16 KiB
 * and at most 8 MiB, so a small log stays small and a big one grows rarely. */
#define LOG_AHEAD_MIN (16u << 10)
#define LOG_AHEAD_MAX (8u << 20)

/* A log file open for appending. */
struct log {
    int fd;
    uint8_t *map; /* mapped shared: the page cache itself */
    size_t size;  /* allocated (posix_fallocate) and mapped bytes */
    size_t used;  /* the header and the records: appends go here */
};

struct persist {
    struct log log;          /* state.log */
    int lock_fd;             /* state_dir/lock, locked for as long as p lives */
    int sync_error;          /* errno of a failed msync, until one succeeds */
    pid_t child;             /* a background snapshot, or 0 */
    uint32_t rotation;       /* the newest state.log.<n> */
    uint32_t oldest;         /* the oldest state.log.<n> that may exist */
    uint32_t child_rotation; /* the rotation the running child compacts */
    char dir[512];
    long long fsync_interval_ms, snapshot_interval_ms;
    uint64_t last_fsync_ms, last_snapshot_ms;
    bool unsynced;
    struct wire_buf payload, frame;
};

/* ==== Records ==== */

static uint32_t crc(const uint8_t *p, size_t n)
{
    return (uint32_t)crc32(crc32(0L, Z_NULL, 0), p, (uInt)n);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void record_frame(struct wire_buf *out, const struct wire_buf *payload)
{
    uint8_t h[8];
    put_u32(h, (uint32_t)payload->len);
    put_u32(h + 4, crc(payload->data, payload->len));
    wbuf_reset(out);
    wbuf_bytes(out, h, sizeof(h));
    wbuf_bytes(out, payload->data, payload->len);
}

/* True if a whole, checksummed record starts anywhere in data[from, size). */
static bool record_after(const uint8_t *data, size_t size, size_t from)
{
    for (size_t j = from; j + 8 <= size; j++) {
        uint32_t n = get_u32(data + j);
        if (n > 0 && n <= RECORD_MAX && size - j - 8 >= n &&
            crc(data + j + 8, n) == get_u32(data + j + 4))
            return true;
    }
    return false;
}

enum record_status record_next(const uint8_t *data, size_t size, size_t *off,
                               const uint8_t **payload, size_t *len)
{
    size_t left = size - *off;
    if (left < 8)
        return RECORD_TORN;
    uint32_t n = get_u32(data + *off);
    /* A write torn by a crash (or the zeros a power cut leaves) is followed by
     * no whole record; damage in the middle of the file is. */
    if (n == 0 || n > RECORD_MAX || left - 8 < n ||
        crc(data + *off + 8, n) != get_u32(data + *off + 4))
        return record_after(data, size, *off + 1) ? RECORD_CORRUPT : RECORD_TORN;
    *payload = data + *off + 8;
    *len = n;
    *off += 8 + n;
    return RECORD_OK;
}

static void slot_payload(struct wire_buf *b, const struct tally_table *t,
                         const struct tally_counter *c, const struct tally_slot *s,
                         const struct tally_key *key)
{
    const struct tally_replica *r = t->replicas[s->replica];
    wbuf_reset(b);
    wbuf_u8(b, 'S');
    wbuf_str8(b, c->name, c->name_len);
    wbuf_str8(b, r->key, r->id_len);
    wbuf_u64(b, r->incarnation);
    wbuf_varint(b, s->p);
    wbuf_varint(b, s->n);
    wbuf_u8(b, key != NULL);
    if (key) {
        wbuf_u64(b, key->a);
        wbuf_u64(b, key->b);
    }
}

static void device_payload(struct wire_buf *b, const struct tally_table *t,
                           const struct tally_counter *c, const struct tally_dev *d)
{
    const char *id = t->devices[d->device]->id;
    wbuf_reset(b);
    wbuf_u8(b, 'D');
    wbuf_str8(b, c->name, c->name_len);
    wbuf_str8(b, id, strlen(id));
    wbuf_varint(b, d->total);
}

/* A counter's base, one record per entry (a record holds at most
 * RECORD_MAX bytes, a base as many entries as the counter has slots). */
static void base_slot_payload(struct wire_buf *b, const struct tally_table *t,
                              const struct tally_counter *c, const struct tally_base_slot *s)
{
    const struct tally_replica *r = t->replicas[s->replica];
    wbuf_reset(b);
    wbuf_u8(b, 'B');
    wbuf_str8(b, c->name, c->name_len);
    wbuf_str8(b, r->key, r->id_len);
    wbuf_u64(b, r->incarnation);
    wbuf_varint(b, s->p);
    wbuf_varint(b, s->n);
}

static void base_device_payload(struct wire_buf *b, const struct tally_table *t,
                                const struct tally_counter *c, const struct tally_dev *d)
{
    device_payload(b, t, c, d);
    if (!b->failed)
        b->data[0] = 'b';
}

static void stamps_payload(struct wire_buf *b, const struct tally_counter *c,
                           const struct tally_base *base)
{
    wbuf_reset(b);
    wbuf_u8(b, 'M');
    wbuf_str8(b, c->name, c->name_len);
    wbuf_varint(b, base->deleted);
    wbuf_varint(b, base->reset);
}

static void fold_payload(struct wire_buf *b, const struct tally_table *t,
                         const struct tally_counter *c, uint32_t replica,
                         const struct tally_slot *with)
{
    const struct tally_replica *r = t->replicas[replica];
    const struct tally_fold *f = table_fold(t, c, replica);
    wbuf_reset(b);
    wbuf_u8(b, 'F');
    wbuf_str8(b, c->name, c->name_len);
    wbuf_str8(b, r->key, r->id_len);
    wbuf_u64(b, r->incarnation);
    wbuf_varint(b, f ? f->p : 0);
    wbuf_varint(b, f ? f->n : 0);
    wbuf_varint(b, f ? f->bp : 0);
    wbuf_varint(b, f ? f->bn : 0);
    const struct tally_replica *to = with ? t->replicas[with->replica] : NULL;
    bool same = to && replica_is_node(to, r->key, r->id_len);
    wbuf_u8(b, !to ? 0 : same ? 1 : 2);
    if (to && !same)
        wbuf_str8(b, to->key, to->id_len);
    if (with) {
        wbuf_u64(b, to->incarnation);
        wbuf_varint(b, with->p);
        wbuf_varint(b, with->n);
    }
}

static void retired_payload(struct wire_buf *b, const char *node, size_t len, uint64_t below)
{
    wbuf_reset(b);
    wbuf_u8(b, 'R');
    wbuf_str8(b, node, len);
    wbuf_u64(b, below);
}

static void scope_payload(struct wire_buf *b, const struct tally_scope *s)
{
    wbuf_reset(b);
    wbuf_u8(b, 'G');
    wbuf_str8(b, s->group, strlen(s->group));
    wbuf_str8(b, s->region, strlen(s->region));
}

static void adopt_payload(struct wire_buf *b, const struct fold_adopt *a)
{
    wbuf_reset(b);
    wbuf_u8(b, 'A');
    wbuf_str8(b, a->node, strlen(a->node));
    wbuf_str8(b, a->by, strlen(a->by));
    wbuf_u64(b, a->lives_below);
    wbuf_u8(b, a->settled);
}

static int apply_fold(struct wire_reader *r, struct tally_table *t)
{
    size_t nlen, idlen;
    const char *name = wr_str8(r, &nlen);
    const char *id = wr_str8(r, &idlen);
    uint64_t inc = wr_u64(r);
    struct tally_fold f = {0};
    f.p = wr_varint(r);
    f.n = wr_varint(r);
    f.bp = wr_varint(r);
    f.bn = wr_varint(r);
    uint8_t has_with = wr_u8(r);
    uint64_t winc = 0, wp = 0, wn = 0;
    const char *wid = id;
    size_t widlen = idlen;
    if (has_with == 2)
        wid = wr_str8(r, &widlen);
    if (has_with) {
        winc = wr_u64(r);
        wp = wr_varint(r);
        wn = wr_varint(r);
    }
    if (r->bad || r->p != r->end || has_with > 2 || name_check(name, nlen) != TALLY_OK ||
        node_id_check(id, idlen) != TALLY_OK || node_id_check(wid, widlen) != TALLY_OK)
        return TALLY_E_WIRE;
    uint32_t with;
    struct tally_counter *c;
    bool changed;
    int rc = table_replica(t, id, idlen, inc, &f.replica);
    if (rc == TALLY_OK && has_with)
        rc = table_replica(t, wid, widlen, winc, &with);
    if (rc == TALLY_OK)
        rc = table_get(t, name, nlen, TABLE_MERGE, &c);
    /* the raised slot first: the entry then drops what it covers */
    if (rc == TALLY_OK && has_with && table_merge_slot(t, c, with, wp, wn, &changed) != TALLY_OK)
        rc = TALLY_E_WIRE;
    if (rc == TALLY_OK && table_merge_fold(t, c, &f, &changed) != TALLY_OK)
        rc = TALLY_E_WIRE;
    if (rc == TALLY_OK && c->folded)
        fold_settle(t, c);
    return rc;
}

static int apply_retired(struct wire_reader *r, struct tally_table *t)
{
    size_t idlen;
    const char *id = wr_str8(r, &idlen);
    uint64_t below = wr_u64(r);
    if (r->bad || r->p != r->end || node_id_check(id, idlen) != TALLY_OK)
        return TALLY_E_WIRE;
    return fold_set_below(t, NULL, id, idlen, below);
}

static int apply_adopt(struct wire_reader *r, struct tally_table *t)
{
    size_t idlen, bylen;
    const char *id = wr_str8(r, &idlen);
    const char *by = wr_str8(r, &bylen);
    uint64_t lives_below = wr_u64(r);
    uint8_t settled = wr_u8(r);
    char byz[TALLY_NODE_ID_MAX + 1];
    if (r->bad || r->p != r->end || settled > 1 || bylen > TALLY_NODE_ID_MAX)
        return TALLY_E_WIRE;
    memcpy(byz, by, bylen);
    byz[bylen] = '\0';
    return fold_set_adopt(t, NULL, id, idlen, byz, lives_below, settled);
}

static int apply_slot(struct wire_reader *r, struct tally_table *t, struct tally_dedup *d)
{
    size_t nlen, idlen;
    const char *name = wr_str8(r, &nlen);
    const char *id = wr_str8(r, &idlen);
    uint64_t inc = wr_u64(r), p = wr_varint(r), n = wr_varint(r);
    uint8_t has_key = wr_u8(r);
    struct tally_key key = {0, 0};
    if (has_key) {
        key.a = wr_u64(r);
        key.b = wr_u64(r);
    }
    if (r->bad || r->p != r->end || has_key > 1 || name_check(name, nlen) != TALLY_OK ||
        node_id_check(id, idlen) != TALLY_OK)
        return TALLY_E_WIRE;
    uint32_t replica;
    struct tally_counter *c;
    int rc = table_replica(t, id, idlen, inc, &replica);
    bool changed;
    if (rc == TALLY_OK)
        rc = table_get(t, name, nlen, TABLE_MERGE, &c);
    if (rc == TALLY_OK && table_merge_slot(t, c, replica, p, n, &changed) != TALLY_OK)
        rc = TALLY_E_WIRE;
    if (rc == TALLY_OK && has_key)
        dedup_insert(d, key);
    return rc;
}

static int apply_device(struct wire_reader *r, struct tally_table *t)
{
    size_t nlen, dlen;
    const char *name = wr_str8(r, &nlen);
    const char *dev = wr_str8(r, &dlen);
    uint64_t total = wr_varint(r);
    if (r->bad || r->p != r->end || name_check(name, nlen) != TALLY_OK ||
        device_id_check(dev, dlen) != TALLY_OK)
        return TALLY_E_WIRE;
    uint32_t idx;
    struct tally_counter *c;
    int rc = table_device(t, dev, dlen, DEVICE_PEER, &idx);
    if (rc == TALLY_OK)
        rc = table_get(t, name, nlen, TABLE_MERGE, &c);
    bool changed;
    if (rc == TALLY_OK && table_merge_device(t, c, idx, total, false, &changed) != TALLY_OK)
        rc = TALLY_E_WIRE;
    return rc;
}

static int apply_base_slot(struct wire_reader *r, struct tally_table *t)
{
    size_t nlen, idlen;
    const char *name = wr_str8(r, &nlen);
    const char *id = wr_str8(r, &idlen);
    uint64_t inc = wr_u64(r), p = wr_varint(r), n = wr_varint(r);
    if (r->bad || r->p != r->end || name_check(name, nlen) != TALLY_OK ||
        node_id_check(id, idlen) != TALLY_OK)
        return TALLY_E_WIRE;
    uint32_t replica;
    struct tally_counter *c;
    int rc = table_replica(t, id, idlen, inc, &replica);
    if (rc == TALLY_OK)
        rc = table_get(t, name, nlen, TABLE_MERGE, &c);
    bool rose;
    if (rc == TALLY_OK && table_merge_base_slot(t, c, replica, p, n, &rose) != TALLY_OK)
        rc = TALLY_E_WIRE;
    return rc;
}

static int apply_base_device(struct wire_reader *r, struct tally_table *t)
{
    size_t nlen, dlen;
    const char *name = wr_str8(r, &nlen);
    const char *dev = wr_str8(r, &dlen);
    uint64_t total = wr_varint(r);
    if (r->bad || r->p != r->end || name_check(name, nlen) != TALLY_OK ||
        device_id_check(dev, dlen) != TALLY_OK)
        return TALLY_E_WIRE;
    uint32_t idx;
    struct tally_counter *c;
    int rc = table_device(t, dev, dlen, DEVICE_PEER, &idx);
    if (rc == TALLY_OK)
        rc = table_get(t, name, nlen, TABLE_MERGE, &c);
    bool rose;
    if (rc == TALLY_OK && table_merge_base_device(t, c, idx, total, &rose) != TALLY_OK)
        rc = TALLY_E_WIRE;
    return rc;
}

static int apply_stamps(struct wire_reader *r, struct tally_table *t)
{
    size_t nlen;
    const char *name = wr_str8(r, &nlen);
    uint64_t deleted = wr_varint(r), reset = wr_varint(r);
    if (r->bad || r->p != r->end || name_check(name, nlen) != TALLY_OK)
        return TALLY_E_WIRE;
    struct tally_counter *c;
    int rc = table_get(t, name, nlen, TABLE_MERGE, &c);
    bool rose;
    if (rc == TALLY_OK && table_merge_stamps(t, c, deleted, reset, &rose) != TALLY_OK)
        rc = TALLY_E_WIRE;
    return rc;
}

/* The last 'G' read is the scope: each one written names the whole of it. */
static int apply_scope(struct wire_reader *r, struct tally_table *t)
{
    size_t glen, rlen;
    const char *group = wr_str8(r, &glen), *region = wr_str8(r, &rlen);
    char names[TALLY_LEVELS - 1][GROUP_NAME_MAX + 1];
    /* a region, and those above it ("r/up"), as plugin_opt_region holds it */
    if (r->bad || r->p != r->end || (glen && group_name_check(group, glen) != TALLY_OK) ||
        rlen >= sizeof(t->scope.region) || region_path(region, rlen, names) < 0)
        return TALLY_E_WIRE;
    memcpy(t->scope.group, group, glen);
    t->scope.group[glen] = '\0';
    memcpy(t->scope.region, region, rlen);
    t->scope.region[rlen] = '\0';
    t->scope.known = true;
    return TALLY_OK;
}

int record_apply(const uint8_t *payload, size_t len, struct tally_table *t, struct tally_dedup *d)
{
    struct wire_reader r = {payload, payload + len, false};
    switch (wr_u8(&r)) {
    case 'S':
        return apply_slot(&r, t, d);
    case 'D':
        return apply_device(&r, t);
    case 'B':
        return apply_base_slot(&r, t);
    case 'b':
        return apply_base_device(&r, t);
    case 'M':
        return apply_stamps(&r, t);
    case 'F':
        return apply_fold(&r, t);
    case 'R':
        return apply_retired(&r, t);
    case 'A':
        return apply_adopt(&r, t);
    case 'G':
        return apply_scope(&r, t);
    case 'K': {
        struct tally_key key = {wr_u64(&r), wr_u64(&r)};
        if (r.bad || r.p != r.end)
            return TALLY_E_WIRE;
        dedup_insert(d, key);
        return TALLY_OK;
    }
    default:
        return TALLY_E_WIRE;
    }
}

/* ==== Files ==== */

static char *path(const struct persist *p, const char *file, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", p->dir, file);
    return buf;
}

static int read_file(const char *file, uint8_t **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    int fd = open(file, O_RDONLY);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return -1;
    }
    *data = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (*data && got < (size_t)st.st_size) {
        ssize_t n = read(fd, *data + got, (size_t)st.st_size - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    *size = got;
    return *data ? 1 : -1;
}

static bool has_header(const uint8_t *data, size_t size, const char *magic)
{
    return size >= HEADER_LEN && memcmp(data, magic, 8) == 0 && get_u32(data + 8) == FILE_VERSION;
}

static int load_snapshot(struct persist *p, struct tally_table *t, struct tally_dedup *d, char *err,
                         size_t errlen)
{
    char file[600];
    uint8_t *data;
    size_t size, off = HEADER_LEN;
    int have = read_file(path(p, "state.snap", file, sizeof(file)), &data, &size);
    if (have <= 0) {
        if (have < 0)
            snprintf(err, errlen, "cannot read %s: %s", file, strerror(errno));
        return have;
    }
    int rc = -1;
    bool ended = false;
    if (!has_header(data, size, SNAP_MAGIC)) {
        snprintf(err, errlen, "%s is damaged at offset 0 (bad header); refusing to start", file);
        goto out;
    }
    while (off < size && !ended) {
        const uint8_t *rec;
        size_t len, at = off;
        if (record_next(data, size, &off, &rec, &len) != RECORD_OK ||
            (rec[0] == 'E' ? (ended = true, false) : record_apply(rec, len, t, d) != TALLY_OK)) {
            snprintf(err, errlen, "%s is damaged at offset %zu; refusing to start", file, at);
            goto out;
        }
    }
    if (!ended || off != size) {
        snprintf(err, errlen, "%s is damaged at offset %zu (no end record); refusing to start",
                 file, off);
        goto out;
    }
    rc = 1;
out:
    free(data);
    return rc;
}

/* Replays one log file; cuts a torn tail (a record the file ends inside). */
static int load_log(struct persist *p, const char *name, struct tally_table *t,
                    struct tally_dedup *d, char *err, size_t errlen)
{
    char file[600];
    uint8_t *data;
    size_t size, off = HEADER_LEN;
    int have = read_file(path(p, name, file, sizeof(file)), &data, &size);
    if (have < 0) {
        snprintf(err, errlen, "cannot read %s: %s", file, strerror(errno));
        return -1;
    }
    if (have == 0 || size < HEADER_LEN) {
        free(data);
        p->log.used = 0;
        /* Shorter than its header: a crash while the log was created. */
        if (have > 0 && truncate(file, 0) < 0) {
            snprintf(err, errlen, "cannot empty %s: %s", file, strerror(errno));
            return -1;
        }
        return 0;
    }
    int rc = 1;
    if (!has_header(data, size, LOG_MAGIC)) {
        snprintf(err, errlen, "%s is damaged at offset 0 (bad header); refusing to start", file);
        rc = -1;
    }
    while (rc > 0 && off < size) {
        const uint8_t *rec;
        size_t len, at = off;
        enum record_status s = record_next(data, size, &off, &rec, &len);
        if (s == RECORD_TORN) {
            /* Zeros are the space allocated ahead of the log (see above), or
             * what a power cut leaves: cut without a warning. */
            size_t z = at;
            while (z < size && data[z] == 0)
                z++;
            if (z < size)
                snprintf(err, errlen, "%s: torn last record at offset %zu (%zu bytes) cut off",
                         file, at, size - at);
            if (truncate(file, (off_t)at) < 0)
                rc = -1;
            size = at;
            break;
        }
        if (s == RECORD_CORRUPT || record_apply(rec, len, t, d) != TALLY_OK) {
            snprintf(err, errlen, "%s is damaged at offset %zu; refusing to start", file, at);
            rc = -1;
        }
    }
    p->log.used = size;
    free(data);
    return rc;
}

static bool boot_id(char *out, size_t len)
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    bool ok = f && fgets(out, (int)len, f);
    if (f)
        fclose(f);
    if (ok)
        out[strcspn(out, "\n")] = '\0';
    return ok;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* A file written whole or not at all: into <file>.tmp, then fsynced and
 * renamed over <file>, and the directory fsynced. */
struct file_writer {
    int fd;
    bool failed;
    struct wire_buf buf; /* written out at 1 MiB and at commit */
    char tmp[620];
};

static int fw_open(struct persist *p, struct file_writer *w, const char *file)
{
    memset(w, 0, sizeof(*w));
    snprintf(w->tmp, sizeof(w->tmp), "%s/%s.tmp", p->dir, file);
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    return w->fd < 0 ? -1 : 0;
}

static void fw_flush(struct file_writer *w)
{
    size_t done = 0;
    w->failed = w->failed || w->buf.failed;
    while (!w->failed && done < w->buf.len) {
        ssize_t n = write(w->fd, w->buf.data + done, w->buf.len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            w->failed = true;
        else
            done += (size_t)n;
    }
    wbuf_reset(&w->buf);
}

/* Commits w, or removes what it wrote (on a full disk, the space it took is
 * what the next attempt needs). */
static int fw_commit(struct persist *p, struct file_writer *w, const char *file)
{
    char dst[600];
    fw_flush(w);
    wbuf_free(&w->buf);
    int rc = !w->failed && fsync(w->fd) == 0 ? 0 : -1;
    close(w->fd);
    if (rc == 0)
        rc = rename(w->tmp, path(p, file, dst, sizeof(dst)));
    if (rc < 0)
        unlink(w->tmp);
    return rc == 0 ? fsync_dir(p->dir) : -1;
}

static int write_atomic(struct persist *p, const char *file, const void *data, size_t len)
{
    struct file_writer w;
    if (fw_open(p, &w, file) < 0)
        return -1;
    wbuf_bytes(&w.buf, data, len);
    return fw_commit(p, &w, file);
}

/* Reads meta; returns 1 with the stored incarnation and boot id, 0 if none. */
static int read_meta(struct persist *p, const char *node_id, uint64_t *inc, char *boot,
                     size_t bootlen, char *err, size_t errlen)
{
    char file[600], line[256], node[TALLY_NODE_ID_MAX + 2] = "";
    FILE *f = fopen(path(p, "meta", file, sizeof(file)), "r");
    if (!f)
        return 0;
    int found = 0;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "node %65s", node) == 1)
            found |= 1;
        else if (sscanf(line, "incarnation %" SCNx64, inc) == 1)
            found |= 2;
        else if (sscanf(line, "boot %63s", boot) == 1)
            found |= 4;
    }
    (void)bootlen;
    fclose(f);
    if (found != 7) {
        snprintf(err, errlen, "%s is damaged; refusing to start", file);
        return -1;
    }
    if (strcmp(node, node_id) != 0) {
        snprintf(err, errlen, "%s belongs to node '%s', not '%s'; refusing to start", p->dir, node,
                 node_id);
        return -1;
    }
    return 1;
}

/* ==== The log ==== */

/* Makes room for need bytes of l: the file is allocated ahead (so a full disk
 * shows here, as ENOSPC, never as SIGBUS on a store into the map) and mapped
 * shared, so a record copied in is in the page cache at once, with no system
 * call, and survives the process being killed. On a disk too full for the
 * space ahead it takes no more than the pages it needs: a log that held its
 * records before the disk filled up can always be mapped again. */
static int log_reserve(struct log *l, size_t need)
{
    if (need <= l->size)
        return 0;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t ahead = need / 4;
    ahead = ahead < LOG_AHEAD_MIN ? LOG_AHEAD_MIN : ahead > LOG_AHEAD_MAX ? LOG_AHEAD_MAX : ahead;
    size_t size = (need + ahead + LOG_AHEAD_MIN - 1) / LOG_AHEAD_MIN * LOG_AHEAD_MIN;
    int e = posix_fallocate(l->fd, 0, (off_t)size);
    if (e == ENOSPC || e == EDQUOT) {
        size = (need + page - 1) / page * page;
        e = posix_fallocate(l->fd, 0, (off_t)size);
    }
    if (e) {
        errno = e;
        return -1;
    }
    void *m = l->map ? mremap(l->map, l->size, size, MREMAP_MAYMOVE)
                     : mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, l->fd, 0);
    if (m == MAP_FAILED)
        return -1;
    l->map = m;
    l->size = size;
    return 0;
}

/* Writes l back to disk, from byte `from` on. */
static int log_sync(const struct log *l, size_t from)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t start = from / page * page;
    if (!l->map || l->used <= start)
        return 0;
    return msync(l->map + start, l->used - start, MS_SYNC);
}

static void log_unmap(struct log *l)
{
    if (l->map)
        munmap(l->map, l->size);
    l->map = NULL;
    l->size = 0;
}

/* Syncs, unmaps and trims l to its records, then closes it. */
static int log_close(struct log *l)
{
    int rc = log_sync(l, 0);
    log_unmap(l);
    if (l->fd >= 0) {
        if (ftruncate(l->fd, (off_t)l->used) < 0 || fsync(l->fd) < 0)
            rc = -1;
        close(l->fd);
    }
    l->fd = -1;
    return rc;
}

/* Closes l and removes its file: a log that never held a record. */
static void log_discard(struct log *l, const char *file)
{
    log_unmap(l);
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    unlink(file);
}

/* Creates the empty log `file`: header written and synced, space allocated
 * and mapped. Returns -1 with errno, and leaves no file, when it cannot. */
static int log_create(struct log *l, const char *file)
{
    *l = (struct log){.fd = open(file, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)};
    if (l->fd < 0)
        return -1;
    if (log_reserve(l, HEADER_LEN) == 0) {
        memcpy(l->map, LOG_MAGIC, 8);
        put_u32(l->map + 8, FILE_VERSION);
        l->used = HEADER_LEN;
        if (log_sync(l, 0) == 0)
            return 0;
    }
    int saved = errno;
    log_discard(l, file);
    errno = saved;
    return -1;
}

/* Opens state.log after load_log for appending to its records (l->used), or
 * creates it when it has none. */
static int log_open(struct persist *p, struct log *l, char *err, size_t errlen)
{
    char file[600];
    int rc;
    path(p, "state.log", file, sizeof(file));
    if (l->used < HEADER_LEN) {
        rc = log_create(l, file);
    } else {
        l->fd = open(file, O_RDWR | O_CLOEXEC);
        rc = l->fd < 0 ? -1 : log_reserve(l, l->used);
    }
    if (rc < 0)
        snprintf(err, errlen, "cannot write %s: %s", file, strerror(errno));
    return rc;
}

/* ==== One broker per directory ==== */

/* The pid of the process holding the lock on fd: the kernel's answer, or the
 * one the holder wrote into the file when the kernel cannot tell (a holder in
 * another pid namespace: another container on the same volume); 0 if none. */
static long lock_owner(int fd)
{
    struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    char buf[16] = "";
    if (fcntl(fd, F_GETLK, &l) == 0 && l.l_type != F_UNLCK && l.l_pid > 0)
        return l.l_pid;
    return pread(fd, buf, sizeof(buf) - 1, 0) > 0 ? strtol(buf, NULL, 10) : 0;
}

static void lock_refused(const struct persist *p, const char *file, char *err, size_t errlen)
{
    char who[32] = "another process";
    long owner = lock_owner(p->lock_fd);
    if (owner > 0)
        snprintf(who, sizeof(who), "process %ld", owner);
    snprintf(err, errlen,
             "plugin_opt_state_dir %s is in use by %s, which holds the lock on %s (one "
             "state_dir belongs to one broker); refusing to start",
             p->dir, who, file);
}

/* Takes the lock on state_dir/lock, or says who holds it. It is a POSIX
 * record lock: the kernel drops it when the process dies, however it dies,
 * and a forked child does not inherit it, so a compaction child can never
 * keep a restarted broker out. */
static int lock_dir(struct persist *p, char *err, size_t errlen)
{
    char file[600], pid[16];
    struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    p->lock_fd = open(path(p, "lock", file, sizeof(file)), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (p->lock_fd < 0 || fcntl(p->lock_fd, F_SETLK, &l) < 0) {
        if (p->lock_fd >= 0 && (errno == EACCES || errno == EAGAIN))
            lock_refused(p, file, err, errlen);
        else
            snprintf(err, errlen, "cannot lock %s: %s", file, strerror(errno));
        return -1;
    }
    /* The pid is for people (lock_owner asks the kernel first), so a disk too
     * full to take it does not stop a start; it has a fixed width so that it
     * overwrites the last one in place. */
    int n = snprintf(pid, sizeof(pid), "%10ld\n", (long)getpid());
    ssize_t written = pwrite(p->lock_fd, pid, (size_t)n, 0);
    (void)written;
    return 0;
}

/* ==== Snapshots ==== */

/* Compaction runs in a forked child, as Redis's BGSAVE does: the parent
 * renames state.log to state.log.<n> and goes on appending to a new
 * state.log, while the child, holding a copy-on-write image of the state at
 * that instant, writes state.snap.tmp, fsyncs it, renames it over state.snap
 * and deletes state.log.<= n>. A start replays state.snap, then every
 * state.log.<n> left by a snapshot that did not finish, then state.log;
 * records are states, so a replay of what the snapshot already holds is
 * harmless.
 *
 * The rotation is all or nothing: the new log is made whole (created as
 * state.log.new, header synced, space allocated and mapped) before the old
 * one is renamed, so a full disk leaves the old log in use and intact, and
 * compaction is tried again after snapshot_interval_ms. */

static void snap_record(struct persist *p, struct file_writer *w)
{
    record_frame(&p->frame, &p->payload);
    wbuf_bytes(&w->buf, p->frame.data, p->frame.len);
    w->failed = w->failed || p->frame.failed || p->payload.failed;
    if (w->buf.len >= (1u << 20))
        fw_flush(w);
}

/* Writes c's base, if it has one; returns the number of records. */
static uint64_t snap_base(struct persist *p, struct file_writer *w, const struct tally_table *t,
                          const struct tally_counter *c)
{
    const struct tally_base *b = table_base(t, c);
    if (!b)
        return 0;
    for (uint32_t i = 0; i < b->nslots; i++) {
        base_slot_payload(&p->payload, t, c, &b->slots[i]);
        snap_record(p, w);
    }
    for (uint32_t i = 0; i < b->ndevs; i++) {
        base_device_payload(&p->payload, t, c, &b->devs[i]);
        snap_record(p, w);
    }
    stamps_payload(&p->payload, c, b);
    snap_record(p, w);
    return (uint64_t)b->nslots + b->ndevs + 1;
}

/* Writes c's fold entries, if it has any; returns the number of records. */
static uint64_t snap_folds(struct persist *p, struct file_writer *w, const struct tally_table *t,
                           const struct tally_counter *c)
{
    const struct tally_folds *f = table_folds(t, c);
    for (uint32_t i = 0; f && i < f->n; i++) {
        fold_payload(&p->payload, t, c, f->e[i].replica, NULL);
        snap_record(p, w);
    }
    return f ? f->n : 0;
}

/* Writes the scope, the retirement watermarks and the removals' claims,
 * first: a slot of a retired life is then never loaded. */
static uint64_t snap_retired(struct persist *p, struct file_writer *w, const struct tally_table *t)
{
    uint64_t n = 0;
    if (t->scope.known) { /* the scope first of all */
        scope_payload(&p->payload, &t->scope);
        snap_record(p, w);
        n++;
    }
    for (const struct fold_below *b = t->below; b; b = b->hh.next, n++) {
        retired_payload(&p->payload, b->node, strlen(b->node), b->below);
        snap_record(p, w);
    }
    for (const struct fold_adopt *a = t->adopt; a; a = a->hh.next, n++) {
        adopt_payload(&p->payload, a);
        snap_record(p, w);
    }
    return n;
}

/* Writes the whole state to state.snap, atomically. Returns 0 or -1. */
static int write_snapshot(struct persist *p, const struct tally_table *t,
                          const struct tally_dedup *d)
{
    struct file_writer w;
    uint64_t records = 0;
    uint8_t h[4];
    if (fw_open(p, &w, "state.snap") < 0)
        return -1;
    wbuf_bytes(&w.buf, SNAP_MAGIC, 8);
    put_u32(h, FILE_VERSION);
    wbuf_bytes(&w.buf, h, 4);
    records += snap_retired(p, &w, t);
    struct tally_counter *c, *ctmp;
    HASH_ITER(hh, t->counters, c, ctmp)
    {
        for (uint32_t i = 0; i < c->nslots; i++, records++) {
            slot_payload(&p->payload, t, c, &c->slots[i], NULL);
            snap_record(p, &w);
        }
        for (uint32_t i = 0; i < counter_ndevs(c); i++, records++) {
            device_payload(&p->payload, t, c, &counter_devs(c)[i]);
            snap_record(p, &w);
        }
        records += snap_base(p, &w, t, c);
        records += snap_folds(p, &w, t, c);
    }
    for (uint32_t i = 0; i < d->count; i++, records++) {
        const struct tally_key *k = &d->ring[(d->head + i) % d->window];
        wbuf_reset(&p->payload);
        wbuf_u8(&p->payload, 'K');
        wbuf_u64(&p->payload, k->a);
        wbuf_u64(&p->payload, k->b);
        snap_record(p, &w);
    }
    wbuf_reset(&p->payload);
    wbuf_u8(&p->payload, 'E');
    wbuf_u64(&p->payload, records);
    snap_record(p, &w);
    return fw_commit(p, &w, "state.snap");
}

static void remove_rotated(struct persist *p, uint32_t upto)
{
    char name[64], file[600];
    for (uint32_t n = p->oldest; n && n <= upto; n++) {
        snprintf(name, sizeof(name), "state.log.%" PRIu32, n);
        unlink(path(p, name, file, sizeof(file)));
    }
    fsync_dir(p->dir);
}

/* Sets state.log aside as state.log.<n> and appends to a new one from now
 * on; on any failure the old log stays state.log and stays in use. */
static int rotate_log(struct persist *p)
{
    char cur[600], aside[600], next[600], name[64];
    struct log fresh;
    snprintf(name, sizeof(name), "state.log.%" PRIu32, p->rotation + 1);
    path(p, "state.log", cur, sizeof(cur));
    path(p, name, aside, sizeof(aside));
    path(p, "state.log.new", next, sizeof(next));
    if (log_sync(&p->log, 0) < 0 || log_create(&fresh, next) < 0)
        return -1;
    if (rename(cur, aside) < 0 || rename(next, cur) < 0) {
        int saved = errno;
        rename(aside, cur);
        log_discard(&fresh, next);
        errno = saved;
        return -1;
    }
    log_close(&p->log); /* trims it: it was synced above, so its records are on disk */
    p->log = fresh;
    p->unsynced = false;
    p->rotation++;
    if (!p->oldest)
        p->oldest = p->rotation;
    return fsync_dir(p->dir);
}

/* In the child of a background snapshot: it keeps nothing of the broker's
 * but memory. It dies with its parent (a broker killed with -9 must not leave
 * a process writing into its state_dir behind), and it closes every
 * descriptor it inherited: a restarted broker must be able to bind the
 * listening sockets at once. Its standard streams are /dev/null. */
static void detach_from_broker(pid_t broker)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != broker)
        _exit(1);
    if (close_range(3, ~0U, 0) < 0) /* Linux before 5.9 */
        for (long fd = 3, max = sysconf(_SC_OPEN_MAX); fd < max; fd++)
            close((int)fd);
    int null = open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3 && null >= 0; fd++)
        dup2(null, fd);
    if (null > 2)
        close(null);
}

/* Compacts the log into a snapshot, in a child process when background. */
static int snapshot(struct persist *p, const struct tally_table *t, const struct tally_dedup *d,
                    bool background)
{
    pid_t broker = getpid();
    if (p->child || rotate_log(p) < 0)
        return -1;
    pid_t pid = background ? fork() : -1;
    if (pid == 0) {
        detach_from_broker(broker);
        _exit(write_snapshot(p, t, d) == 0 ? 0 : 1);
    }
    if (pid > 0) {
        p->child = pid;
        p->child_rotation = p->rotation;
        return 0;
    }
    if (write_snapshot(p, t, d) < 0)
        return -1;
    remove_rotated(p, p->rotation);
    p->oldest = 0;
    return 0;
}

/* Collects a finished background snapshot: -1 if it failed. */
static int reap(struct persist *p, bool wait)
{
    int status;
    if (!p->child || waitpid(p->child, &status, wait ? 0 : WNOHANG) <= 0)
        return 0;
    p->child = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    remove_rotated(p, p->child_rotation);
    p->oldest = p->child_rotation < p->rotation ? p->child_rotation + 1 : 0;
    return 0;
}

/* Finds the state.log.<n> files left by snapshots that did not finish. */
static int scan_rotated(struct persist *p)
{
    DIR *dir = opendir(p->dir);
    if (!dir)
        return -1;
    for (struct dirent *e; (e = readdir(dir));) {
        unsigned n;
        char tail;
        if (sscanf(e->d_name, "state.log.%u%c", &n, &tail) == 1 && n > 0) {
            if (n > p->rotation)
                p->rotation = n;
            if (!p->oldest || n < p->oldest)
                p->oldest = n;
        }
    }
    closedir(dir);
    return 0;
}

static int load_rotated(struct persist *p, struct tally_table *t, struct tally_dedup *d, char *err,
                        size_t errlen)
{
    char name[64];
    for (uint32_t n = p->oldest; n && n <= p->rotation; n++) {
        snprintf(name, sizeof(name), "state.log.%" PRIu32, n);
        if (load_log(p, name, t, d, err, errlen) < 0)
            return -1;
    }
    return 0;
}

/* ==== API ==== */

/* Writes meta when what it says changes (not on every start: a disk that
 * filled up while the broker was down must not keep it down). */
static int write_meta(struct persist *p, const char *node_id, uint64_t incarnation,
                      const char *boot, bool unchanged)
{
    char meta[256];
    int n = snprintf(meta, sizeof(meta), "node %s\nincarnation %016" PRIx64 "\nboot %s\n", node_id,
                     incarnation, boot[0] ? boot : "unknown");
    return unchanged ? 0 : write_atomic(p, "meta", meta, (size_t)n);
}

struct persist *persist_open(const char *state_dir, const char *node_id,
                             long long fsync_interval_ms, long long snapshot_interval_ms,
                             struct tally_table *t, struct tally_dedup *d, uint64_t *incarnation,
                             char *err, size_t errlen)
{
    struct persist *p = calloc(1, sizeof(*p));
    char boot[64] = "", old_boot[64] = "";
    uint64_t old_inc = 0;
    err[0] = '\0';
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->log.fd = p->lock_fd = -1;
    snprintf(p->dir, sizeof(p->dir), "%s", state_dir);
    p->fsync_interval_ms = fsync_interval_ms;
    p->snapshot_interval_ms = snapshot_interval_ms;
    if (mkdir(state_dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create plugin_opt_state_dir %s: %s", state_dir,
                 strerror(errno));
        goto fail;
    }
    if (lock_dir(p, err, errlen) < 0)
        goto fail;
    int had = read_meta(p, node_id, &old_inc, old_boot, sizeof(old_boot), err, errlen);
    if (had < 0 || load_snapshot(p, t, d, err, errlen) < 0 || scan_rotated(p) < 0 ||
        load_rotated(p, t, d, err, errlen) < 0 || load_log(p, "state.log", t, d, err, errlen) < 0)
        goto fail;
    boot_id(boot, sizeof(boot));
    bool same_boot = boot[0] && strcmp(boot, old_boot) == 0;
    bool keep = had > 0 && (fsync_interval_ms == 0 || same_boot);
    uint64_t rnd;
    struct timespec now;
    if (keep) {
        *incarnation = old_inc;
    } else if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd)) {
        snprintf(err, errlen, "getrandom failed: %s", strerror(errno));
        goto fail;
    } else {
        /* above every earlier life, retired ones included (fold.c) */
        uint64_t below = fold_below_of(t, node_id, strlen(node_id));
        uint64_t after = had > 0 && old_inc > below ? old_inc : below;
        clock_gettime(CLOCK_REALTIME, &now);
        *incarnation = tally_incarnation_new(
            (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000, rnd, after);
    }
    if (write_meta(p, node_id, *incarnation, boot, keep && same_boot) < 0) {
        snprintf(err, errlen, "cannot write %s/meta: %s", state_dir, strerror(errno));
        goto fail;
    }
    if (log_open(p, &p->log, err, errlen) < 0)
        goto fail;
    return p;
fail:
    log_unmap(&p->log);
    if (p->log.fd >= 0)
        close(p->log.fd);
    if (p->lock_fd >= 0)
        close(p->lock_fd);
    wbuf_free(&p->payload);
    wbuf_free(&p->frame);
    free(p);
    return NULL;
}

/* Appends the framed payload to the mapped log. Returns -1 with errno, and
 * nothing of the record in the log, when there is no room for it, when the
 * last msync failed, or (with fsync_interval_ms 0) when it cannot be made
 * durable. */
static int log_write(struct persist *p)
{
    record_frame(&p->frame, &p->payload);
    if (p->frame.failed || p->payload.failed) {
        errno = ENOMEM;
        return -1;
    }
    if (p->sync_error) {
        errno = p->sync_error;
        return -1;
    }
    size_t at = p->log.used, len = p->frame.len;
    if (log_reserve(&p->log, at + len) < 0)
        return -1;
    memcpy(p->log.map + at, p->frame.data, len);
    p->log.used += len;
    if (p->fsync_interval_ms == 0 && log_sync(&p->log, at) < 0) {
        int saved = errno;
        memset(p->log.map + at, 0, len);
        p->log.used = at;
        errno = saved;
        return -1;
    }
    p->unsynced = p->fsync_interval_ms != 0;
    return 0;
}

int persist_slot(struct persist *p, const struct tally_table *t, const struct tally_counter *c,
                 const struct tally_slot *s, const struct tally_key *key)
{
    slot_payload(&p->payload, t, c, s, key);
    return log_write(p) == 0 ? TALLY_OK : TALLY_E_DISK;
}

int persist_device(struct persist *p, const struct tally_table *t, const struct tally_counter *c,
                   const struct tally_dev *d)
{
    device_payload(&p->payload, t, c, d);
    return log_write(p) == 0 ? TALLY_OK : TALLY_E_DISK;
}

int persist_fold(struct persist *p, const struct tally_table *t, const struct tally_counter *c,
                 uint32_t replica, const struct tally_slot *with)
{
    fold_payload(&p->payload, t, c, replica, with);
    return log_write(p) == 0 ? TALLY_OK : TALLY_E_DISK;
}

int persist_retired(struct persist *p, const char *node, size_t len, uint64_t below)
{
    retired_payload(&p->payload, node, len, below);
    return log_write(p) == 0 ? TALLY_OK : TALLY_E_DISK;
}

int persist_scope(struct persist *p, const struct tally_table *t)
{
    scope_payload(&p->payload, &t->scope);
    return log_write(p) == 0 ? TALLY_OK : TALLY_E_DISK;
}

int persist_adopt(struct persist *p, const struct fold_adopt *a)
{
    adopt_payload(&p->payload, a);
    return log_write(p) == 0 ? TALLY_OK : TALLY_E_DISK;
}

int persist_base(struct persist *p, const struct tally_table *t, const struct tally_counter *c)
{
    const struct tally_base *b = table_base(t, c);
    if (!b)
        return TALLY_OK;
    for (uint32_t i = 0; i < b->nslots; i++) {
        base_slot_payload(&p->payload, t, c, &b->slots[i]);
        if (log_write(p) != 0)
            return TALLY_E_DISK;
    }
    for (uint32_t i = 0; i < b->ndevs; i++) {
        base_device_payload(&p->payload, t, c, &b->devs[i]);
        if (log_write(p) != 0)
            return TALLY_E_DISK;
    }
    stamps_payload(&p->payload, c, b);
    return log_write(p) == 0 ? TALLY_OK : TALLY_E_DISK;
}

/* msyncs the log when fsync_interval_ms has passed since the last change
 * (or since a failed msync, to try again). A failure withholds every later
 * acknowledgement (log_write) until an msync succeeds; it is reported once,
 * when it starts. */
static int tick_sync(struct persist *p, uint64_t now_ms, char *err, size_t errlen)
{
    if (!(p->unsynced || p->sync_error) ||
        now_ms - p->last_fsync_ms < (uint64_t)p->fsync_interval_ms)
        return 0;
    p->last_fsync_ms = now_ms;
    if (log_sync(&p->log, 0) == 0) {
        p->sync_error = 0;
        p->unsynced = false;
        return 0;
    }
    bool first = p->sync_error == 0;
    p->sync_error = errno;
    if (first)
        snprintf(err, errlen,
                 "cannot sync %s/state.log (%s): increments are refused until it syncs again",
                 p->dir, strerror(p->sync_error));
    return first ? -1 : 0;
}

int persist_tick(struct persist *p, const struct tally_table *t, const struct tally_dedup *d,
                 uint64_t now_ms, char *err, size_t errlen)
{
    int rc = TALLY_OK;
    err[0] = '\0';
    if (reap(p, false) < 0) {
        snprintf(err, errlen,
                 "a snapshot of %s failed in its child process; the log is kept and replayed "
                 "at the next start",
                 p->dir);
        rc = TALLY_E_DISK;
    }
    if (tick_sync(p, now_ms, err, errlen) < 0)
        rc = TALLY_E_DISK;
    if (p->last_snapshot_ms == 0)
        p->last_snapshot_ms = now_ms;
    if (now_ms - p->last_snapshot_ms >= (uint64_t)p->snapshot_interval_ms &&
        p->log.used >= COMPACT_MIN_BYTES && !p->child) {
        if (snapshot(p, t, d, true) < 0) {
            snprintf(err, errlen,
                     "a snapshot of %s failed (%s); the log stays in use and is replayed at the "
                     "next start",
                     p->dir, strerror(errno));
            rc = TALLY_E_DISK;
        }
        p->last_snapshot_ms = now_ms;
    }
    return rc;
}

void persist_close(struct persist *p, const struct tally_table *t, const struct tally_dedup *d)
{
    if (!p)
        return;
    reap(p, true);
    snapshot(p, t, d, false);
    log_close(&p->log);
    close(p->lock_fd);
    wbuf_free(&p->payload);
    wbuf_free(&p->frame);
    free(p);
}
