/*
 * wire.c - the replication wire format: what one tally node tells another
 * over a Mosquitto bridge, under `$tally/`.
 *
 * ---- Why state, not operations ----
 *
 * Nodes send states of slots (each slot that changed since the last send,
 * with its absolute P and N; see repl.c for which), never "add 5". Merging a state is idempotent,
 * so a bridge may drop, repeat, reorder or replay messages and, as long as some later state gets
 * through, the totals converge (see counter.c). The traffic grows with the number of counters that
 * changed per publish interval, not with the increment rate: 10,000 increments to one counter in
 * 100 ms cost one entry of a few bytes.
 *
 * ---- Topics ----
 *
 *   $tally/v1/sync/<node>      SYNC: slot states; the receiver merges, and
 *                              what changed its state it sends on at its next
 *                              tick, so any connected topology converges and a
 *                              message that changes nothing goes no further
 *                              (no loops, even in a ring of bridges). Each
 *                              node numbers its SYNCs (session, seq): see
 *                              repl.c for what a gap triggers
 *   $tally/v1/digest/<node>    DIGEST: 256 bucket hashes (anti-entropy), the
 *                              sender's stream position, and the neighbours
 *                              it asks for a repair
 *   $tally/v1/presence/<node>  PRESENCE: a node's own viewer counts, flooded
 *                              by (origin, incarnation, seq), also the
 *                              liveness heartbeat behind peer_timeout_ms
 *   $tally/v1/replay/<node>    PRESENCE of <node>, replayed to a neighbour
 *                              that restarted over their bridge alone
 *                              (presence.c), which does not flood it on
 *   $tally/stats/<node>        JSON stats, retained, flooded the same way
 *
 * ---- Encoding (SYNC version 5, DIGEST version 6, PRESENCE version 4) ----
 *
 * All integers are unsigned. varint = LEB128 (7 bits a byte, low first, at
 * most 10 bytes); u64 = 8 bytes little-endian; str8 = one length byte then
 * that many bytes (no NUL).
 *
 *   header    'T' 'L' version type              4 bytes
 *   SYNC      str8 sender, u64 session, varint seq                (v3 on)
 *             varint R, R x { varint key,                        replicas
 *                             if key & 1 (before v5: always, and no key):
 *                               str8 node_id, u64 incarnation }
 *             varint D, D x { str8 device_id }                   devices
 *             varint C, C x { str8 name,
 *                             varint S, S x { varint r, varint p, varint n },
 *                             varint E, E x { varint d, varint total },
 *                             varint based (0 or 1; version 2 on), if 1:
 *                               varint deleted, varint reset,
 *                               varint S', S' x { varint r, varint p, varint n },
 *                               varint E', E' x { varint d, varint total },
 *                             varint F, F x { varint r, varint p, varint n,
 *                                             varint bp, varint bn } }
 *                                                    fold entries (v4 on, fold.c)
 *   DIGEST    str8 sender, u64 session, varint seq,               (v2 on)
 *             varint Q, Q x { str8 node_id,      asked to repair  (v2 on)
 *                             varint W, W x varint number,        (v3 on)
 *                             varint since, if since > 0:         (v4 on)
 *                               u64 session, varint until - since }
 *             varint B (=256), B x u64 bucket hash
 *             varint H, H x { str8 node_id,     neighbours heard  (v5 on)
 *                             u64 session, varint seq }  how far  (v6 on)
 *   PRESENCE  str8 origin, u64 incarnation, u64 seq,
 *             u64 lo, u64 hi                                      (v2 on)
 *             varint G, G x { str8 page, varint viewers }
 *             optionally (v3 on), a node's listing (tier.c): its own
 *             entry first (its own id, age 0), then its edges
 *             varint L, L x { str8 edge, u64 incarnation, varint seq,
 *                             u64 digest, varint age_ms }
 *             varint W, W x { str8 origin }                      wants
 *             optionally (v4 on), a hub's carried set (tier.c, "The
 *             carrier's keepalive"): varint flags, u64 stamp,
 *             u64 digest, varint count, varint age_ms; or in a replay
 *             (flags 4), str8 the carrier of its entry
 *
 * Older versions had no stream position (SYNC before 3, DIGEST 1), no
 * repair requests and no page range (PRESENCE 1: every page); a node still
 * reads them (as a stream it cannot check, session 0), and writes the newest
 * only. An older node refuses newer
 * messages and counts them as refused: a cluster is upgraded whole (README,
 * "Upgrading").
 *
 * A PRESENCE holds the origin's counts for every page whose presence_hash
 * lies in [lo, hi]: a page of that range it does not list has no viewers
 * there; lo > hi (version 3) covers no page, for a part that carries only a
 * listing. An announcement too large for max_message_bytes is split into
 * messages over consecutive ranges, each with its own seq, so each message
 * replaces exactly its own share and needs no other to be applied.
 *
 * Every message is at most max_message_bytes (an option, at least 4096, the
 * same on every node): a SYNC is split between counters, and a counter too
 * large for one message (many devices) between its slots and devices, since
 * part of a counter's state is a state too; PRESENCE is split by ranges; a
 * DIGEST is about 2 KB. A receiver refuses and counts a larger message.
 *
 * r and d index the message's own replica and device lists, so a counter's
 * slot costs 3 to 20 bytes whatever the lengths of node and device ids.
 *
 * From version 5 a replica's key is its number in the sender's stream (the
 * index of its registry, fixed while the broker runs) times two, plus one
 * when the replica is named. A stream names each replica once; its later
 * messages give the number alone, which the receiver looks up in what that
 * stream taught it. A replica's name and incarnation took about 13 of the
 * 16 to 20 bytes of a typical slot, since most slots that change are each
 * another edge's or node's (README, "Tiers"). A message outside the stream
 * (a repair, to one neighbour) names every replica. How a name lost on the
 * way is named again is repl.c's rule 7; a DIGEST's request lists the
 * numbers (at most WIRE_MAX_NAMES) its sender could not resolve.
 * Decoding validates everything (lengths, indexes, names, p/n/total at most
 * 2^53-1, no bytes left over) before any of it is applied: a malformed
 * message is refused whole. A receiver refuses versions it does not know
 * (counted as refused replication, like any bad message). A SYNC of version 1
 * is a version 2 without bases; nodes of this version write version 2, which
 * older nodes refuse, so a cluster upgrades all its nodes together.
 *
 * The base of a counter (reset.c: what its resets and deletes took away, and
 * their stamps) travels with its slots: it is part of the counter's state and
 * merges the same way, entry by entry, by maximum. So do its fold entries
 * (fold.c), with the first part of the counter, which is where the slots of
 * a counter of fewer than about 150 slots all are: a receiver sees a slot
 * raised by a fold and the fold entry in one record.
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

/* ==== Writing (the buffer itself is buf.c) ==== */

static uint8_t version_of(int type)
{
    return type == WIRE_SYNC       ? WIRE_SYNC_VERSION
           : type == WIRE_DIGEST   ? WIRE_DIGEST_VERSION
           : type == WIRE_PRESENCE ? WIRE_PRESENCE_VERSION
           : type == WIRE_DOWN     ? WIRE_DOWN_VERSION
                                   : WIRE_VERSION;
}

static void header(struct wire_buf *b, enum wire_type type)
{
    const uint8_t h[4] = {'T', 'L', version_of(type), (uint8_t)type};
    wbuf_bytes(b, h, sizeof(h));
}

/* ==== Reading ==== */

static bool need(struct wire_reader *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = true;
        return false;
    }
    return true;
}

uint8_t wr_u8(struct wire_reader *r)
{
    return need(r, 1) ? *r->p++ : 0;
}

uint64_t wr_u64(struct wire_reader *r)
{
    if (!need(r, 8))
        return 0;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += 8;
    return v;
}

uint64_t wr_varint(struct wire_reader *r)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        uint8_t byte = wr_u8(r);
        if (r->bad)
            return 0;
        if (shift == 63 && byte > 1) /* more than 64 bits */
            break;
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80))
            return v;
    }
    r->bad = true;
    return 0;
}

const char *wr_str8(struct wire_reader *r, size_t *len)
{
    *len = wr_u8(r);
    if (!need(r, *len))
        return NULL;
    const char *s = (const char *)r->p;
    r->p += *len;
    return s;
}

/* A count that must fit in what is left of the message, `min` bytes each:
 * a forged count can never make the decoder allocate more than the message
 * could describe. */
static uint32_t wr_count(struct wire_reader *r, size_t min)
{
    uint64_t n = wr_varint(r);
    if (!r->bad && n > (uint64_t)(r->end - r->p) / min)
        r->bad = true;
    return r->bad ? 0 : (uint32_t)n;
}

/* Reads the header of a message of `type`; returns its version (1 up to the
 * type's own), or 0 when the message is not one tally can read. */
static uint8_t read_header(struct wire_reader *r, const void *msg, size_t len, enum wire_type type)
{
    r->p = msg;
    r->end = r->p + len;
    r->bad = false;
    uint8_t t = wr_u8(r), l = wr_u8(r), v = wr_u8(r), ty = wr_u8(r);
    bool ok = !r->bad && t == 'T' && l == 'L' && ty == type && v >= 1 && v <= version_of(type);
    return ok ? v : 0;
}

static bool sender_ok(const char *s, size_t len)
{
    return s && node_id_check(s, len) == TALLY_OK;
}

int wire_peek_type(const void *msg, size_t len)
{
    const uint8_t *p = msg;
    if (len < 4 || p[0] != 'T' || p[1] != 'L' || p[2] < 1 || p[2] > version_of(p[3]))
        return -1;
    return p[3];
}

/* ==== SYNC ==== */

void sync_writer_free(struct wire_sync_writer *w)
{
    wbuf_free(&w->dict);
    wbuf_free(&w->dev_dict);
    wbuf_free(&w->body);
    wbuf_free(&w->out);
    free(w->rep_ref);
    free(w->dev_ref);
    free(w->rep_used);
    free(w->dev_used);
    memset(w, 0, sizeof(*w));
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >>= 7)
        n++;
    return n;
}

/* Grows a registry-index -> message-ref map to hold n entries, new ones -1. */
static int ref_grow(int32_t **ref, uint32_t **used, uint32_t *cap, uint32_t n)
{
    if (n <= *cap)
        return TALLY_OK;
    uint32_t ncap = *cap ? *cap : 16;
    while (ncap < n)
        ncap *= 2;
    int32_t *r = realloc(*ref, ncap * sizeof(*r));
    if (r)
        *ref = r;
    uint32_t *u = realloc(*used, ncap * sizeof(*u));
    if (u)
        *used = u;
    if (!r || !u)
        return TALLY_E_NOMEM;
    for (uint32_t i = *cap; i < ncap; i++)
        r[i] = -1;
    *cap = ncap;
    return TALLY_OK;
}

static uint32_t rep_ref(struct wire_sync_writer *w, const struct tally_table *t, uint32_t idx)
{
    if (w->rep_ref[idx] < 0) {
        const struct tally_replica *rep = t->replicas[idx];
        wbuf_str8(&w->dict, rep->key, rep->id_len);
        wbuf_u64(&w->dict, rep->incarnation);
        w->nums_len += varint_len((uint64_t)idx << 1 | 1);
        w->rep_used[w->nrep] = idx;
        w->rep_ref[idx] = (int32_t)w->nrep++;
    }
    return (uint32_t)w->rep_ref[idx];
}

static uint32_t dev_ref(struct wire_sync_writer *w, const struct tally_table *t, uint32_t idx)
{
    if (w->dev_ref[idx] < 0) {
        const char *id = t->devices[idx]->id;
        wbuf_str8(&w->dev_dict, id, strlen(id));
        w->dev_used[w->ndev] = idx;
        w->dev_ref[idx] = (int32_t)w->ndev++;
    }
    return (uint32_t)w->dev_ref[idx];
}

static void add_base(struct wire_sync_writer *w, const struct tally_table *t,
                     const struct tally_base *b)
{
    wbuf_varint(&w->body, b != NULL);
    if (!b)
        return;
    wbuf_varint(&w->body, b->deleted);
    wbuf_varint(&w->body, b->reset);
    wbuf_varint(&w->body, b->nslots);
    for (uint32_t i = 0; i < b->nslots; i++) {
        wbuf_varint(&w->body, rep_ref(w, t, b->slots[i].replica));
        wbuf_varint(&w->body, b->slots[i].p);
        wbuf_varint(&w->body, b->slots[i].n);
    }
    wbuf_varint(&w->body, b->ndevs);
    for (uint32_t i = 0; i < b->ndevs; i++) {
        wbuf_varint(&w->body, dev_ref(w, t, b->devs[i].device));
        wbuf_varint(&w->body, b->devs[i].total);
    }
}

static void add_folds(struct wire_sync_writer *w, const struct tally_table *t,
                      const struct tally_folds *f)
{
    wbuf_varint(&w->body, f ? f->n : 0);
    for (uint32_t i = 0; f && i < f->n; i++) {
        wbuf_varint(&w->body, rep_ref(w, t, f->e[i].replica));
        wbuf_varint(&w->body, f->e[i].p);
        wbuf_varint(&w->body, f->e[i].n);
        wbuf_varint(&w->body, f->e[i].bp);
        wbuf_varint(&w->body, f->e[i].bn);
    }
}

/* Entry i of counter c: its slots, then its devices. */
static bool entry_kept(const struct tally_counter *c, uint32_t i, sync_keep_fn *keep, void *ctx)
{
    if (!keep)
        return true;
    if (i < c->nslots)
        return keep(c->slots[i].pending, c->slots[i].sent, ctx);
    const struct tally_dev *d = &counter_devs(c)[i - c->nslots];
    return keep(d->pending, d->sent, ctx);
}

/* Bytes that entry i adds to the message, dictionary entry included when the
 * message does not name its replica or device yet; the reference may be to
 * up to `added` dictionary entries added since. */
static size_t entry_cost(const struct wire_sync_writer *w, const struct tally_table *t,
                         const struct tally_counter *c, uint32_t i, uint32_t added)
{
    if (i < c->nslots) {
        const struct tally_slot *sl = &c->slots[i];
        size_t n = varint_len(w->nrep + added) + varint_len(sl->p) + varint_len(sl->n);
        size_t named =
            1 + t->replicas[sl->replica]->id_len + 8 + varint_len(sl->replica * 2ULL + 1);
        return n + (w->rep_ref[sl->replica] < 0 ? named : 0);
    }
    const struct tally_dev *d = &counter_devs(c)[i - c->nslots];
    size_t n = varint_len(w->ndev + added) + varint_len(d->total);
    return n + (w->dev_ref[d->device] < 0 ? 1 + strlen(t->devices[d->device]->id) : 0);
}

/* At most the bytes base adds to a message (dictionary entries included). */
static size_t base_cost(const struct tally_base *b)
{
    if (!b)
        return 1;
    return 1 + 2 * 10 + 2 * 5 + b->nslots * (5 + 2 * 10 + 1 + TALLY_NODE_ID_MAX + 8) +
           b->ndevs * (5 + 10 + 1 + TALLY_DEVICE_MAX);
}

/* At most the bytes fold entries add to a message (dictionary included). */
static size_t folds_cost(const struct tally_folds *f)
{
    return 5 + (f ? f->n * (5 + 4 * 10 + 1 + TALLY_NODE_ID_MAX + 8) : 0);
}

/* Appends the kept entries among [from, to) of counter c as one counter of
 * the message, with base and fold entries (or none): a part of a counter's
 * state is itself a state, so a large counter may be sent in parts. */
static void add_part(struct wire_sync_writer *w, const struct tally_table *t,
                     const struct tally_counter *c, uint32_t from, uint32_t to,
                     const struct tally_base *base, const struct tally_folds *folds,
                     sync_keep_fn *keep, void *ctx)
{
    uint32_t nslots = 0, ndevs = 0;
    for (uint32_t i = from; i < to; i++)
        if (entry_kept(c, i, keep, ctx))
            *(i < c->nslots ? &nslots : &ndevs) += 1;
    wbuf_str8(&w->body, c->name, c->name_len);
    wbuf_varint(&w->body, nslots);
    for (uint32_t i = from; i < to && i < c->nslots; i++) {
        if (!entry_kept(c, i, keep, ctx))
            continue;
        wbuf_varint(&w->body, rep_ref(w, t, c->slots[i].replica));
        wbuf_varint(&w->body, c->slots[i].p);
        wbuf_varint(&w->body, c->slots[i].n);
    }
    wbuf_varint(&w->body, ndevs);
    for (uint32_t i = from > c->nslots ? from : c->nslots; i < to; i++) {
        if (!entry_kept(c, i, keep, ctx))
            continue;
        const struct tally_dev *d = &counter_devs(c)[i - c->nslots];
        wbuf_varint(&w->body, dev_ref(w, t, d->device));
        wbuf_varint(&w->body, d->total);
    }
    add_base(w, t, base);
    add_folds(w, t, folds);
    w->ncounters++;
}

/* Hands the message under construction to w->full, if it holds anything. */
static int writer_full(struct wire_sync_writer *w)
{
    return sync_writer_empty(w) || !w->full ? TALLY_OK : w->full(w, w->full_ctx);
}

/* Where the entries from `from` on must stop for the message to stay within
 * w->max_bytes after head more bytes; from itself when none fits. */
static uint32_t entries_that_fit(const struct wire_sync_writer *w, const struct tally_table *t,
                                 const struct tally_counter *c, uint32_t from, size_t head,
                                 sync_keep_fn *keep, void *ctx, bool *over)
{
    uint32_t total = c->nslots + counter_ndevs(c), to = from, added = 0;
    size_t used = sync_writer_size(w) + head;
    for (; to < total && used <= w->max_bytes; to++) {
        if (!entry_kept(c, to, keep, ctx))
            continue;
        used += entry_cost(w, t, c, to, added++);
        if (used > w->max_bytes)
            break;
    }
    *over = used > w->max_bytes;
    return to;
}

bool sync_writer_owes(const struct tally_table *t, const struct tally_counter *c,
                      sync_keep_fn *keep, void *ctx)
{
    if (table_base(t, c) || table_folds(t, c))
        return true;
    for (uint32_t i = 0; i < c->nslots + counter_ndevs(c); i++)
        if (entry_kept(c, i, keep, ctx))
            return true;
    return false;
}

/* The kept entries of c (all when keep is NULL), in as many parts as
 * w->max_bytes needs (none set: one part). Returns TALLY_OK or a tally_err. */
static int add_counter(struct wire_sync_writer *w, const struct tally_table *t,
                       const struct tally_counter *c, sync_keep_fn *keep, void *ctx)
{
    uint32_t total = c->nslots + counter_ndevs(c), from = 0;
    if (keep && !sync_writer_owes(t, c, keep, ctx))
        return TALLY_OK;
    const struct tally_base *base = table_base(t, c);
    const struct tally_folds *folds = table_folds(t, c);
    if (ref_grow(&w->rep_ref, &w->rep_used, &w->rep_cap, t->nreplicas) ||
        ref_grow(&w->dev_ref, &w->dev_used, &w->dev_cap, t->ndevices))
        return TALLY_E_NOMEM;
    /* name, two counts, and the base with the first part */
    size_t head = 1 + c->name_len + 2 * 5 + base_cost(base) + folds_cost(folds);
    for (;;) {
        uint32_t to = total;
        bool over = false;
        if (w->max_bytes)
            to = entries_that_fit(w, t, c, from, head, keep, ctx, &over);
        if (over && to == from && !sync_writer_empty(w) && w->full) {
            int rc = writer_full(w); /* nothing fits: start a new message */
            if (rc != TALLY_OK)
                return rc;
            continue;
        }
        if (over && to == from && to < total)
            to++; /* a lone entry always fits in max_bytes >= 4096 */
        add_part(w, t, c, from, to, from == 0 ? base : NULL, from == 0 ? folds : NULL, keep, ctx);
        head = 1 + c->name_len + 2 * 5 + 1 + 1;
        from = to;
        if (from >= total)
            break;
        int rc = writer_full(w);
        if (rc != TALLY_OK)
            return rc;
    }
    if (w->body.failed || w->dict.failed || w->dev_dict.failed)
        return TALLY_E_NOMEM;
    return TALLY_OK;
}

/* Appends counter c's whole state (see add_counter for the splitting). */
int sync_writer_add(struct wire_sync_writer *w, const struct tally_table *t,
                    const struct tally_counter *c)
{
    return add_counter(w, t, c, NULL, NULL);
}

/* Appends what c owes: its entries kept by keep(pending, sent, ctx), and its base
 * and fold entries, which are rare and whole, so they go with every delta. */
int sync_writer_add_delta(struct wire_sync_writer *w, const struct tally_table *t,
                          const struct tally_counter *c, sync_keep_fn *keep, void *ctx)
{
    return add_counter(w, t, c, keep, ctx);
}

size_t sync_writer_size(const struct wire_sync_writer *w)
{
    return w->dict.len + w->nums_len + w->dev_dict.len + w->body.len + 96;
}

bool sync_writer_empty(const struct wire_sync_writer *w)
{
    return w->ncounters == 0;
}

/* Marks replica idx named by the stream; false if it had been already. */
static bool name_once(struct wire_names *names, uint32_t idx)
{
    if (array_reserve(&names->named, &names->cap, idx, 1) != TALLY_OK)
        return true; /* named, not marked: named again next time */
    if (names->named[idx])
        return false;
    names->named[idx] = 1;
    return true;
}

/* The message's replicas (version 5): each by its registry index, the
 * stream's number for it, and named (id, incarnation) unless the stream
 * named it before. */
static void write_replicas(struct wire_sync_writer *w)
{
    const uint8_t *p = w->dict.data;
    if (w->dict.failed) {
        w->out.failed = true;
        return;
    }
    for (uint32_t i = 0; i < w->nrep; i++) {
        uint32_t idx = w->rep_used[i];
        size_t len = 1 + (size_t)p[0] + 8;
        bool named = !w->names || name_once(w->names, idx);
        wbuf_varint(&w->out, ((uint64_t)idx << 1) | named);
        if (named)
            wbuf_bytes(&w->out, p, len);
        p += len;
    }
}

int sync_writer_finish(struct wire_sync_writer *w, const char *sender, uint64_t session,
                       uint64_t seq)
{
    wbuf_reset(&w->out);
    header(&w->out, WIRE_SYNC);
    wbuf_str8(&w->out, sender, strlen(sender));
    wbuf_u64(&w->out, session);
    wbuf_varint(&w->out, seq);
    wbuf_varint(&w->out, w->nrep);
    write_replicas(w);
    wbuf_varint(&w->out, w->ndev);
    wbuf_bytes(&w->out, w->dev_dict.data, w->dev_dict.len);
    wbuf_varint(&w->out, w->ncounters);
    wbuf_bytes(&w->out, w->body.data, w->body.len);
    for (uint32_t i = 0; i < w->nrep; i++)
        w->rep_ref[w->rep_used[i]] = -1;
    for (uint32_t i = 0; i < w->ndev; i++)
        w->dev_ref[w->dev_used[i]] = -1;
    w->nrep = w->ndev = w->ncounters = 0;
    w->nums_len = 0;
    wbuf_reset(&w->dict);
    wbuf_reset(&w->dev_dict);
    wbuf_reset(&w->body);
    return w->out.failed ? TALLY_E_NOMEM : TALLY_OK;
}

void wire_sync_free(struct wire_sync *s)
{
    free(s->replicas);
    free(s->devices);
    free(s->counters);
    free(s->slots);
    free(s->devs);
    free(s->base_slots);
    free(s->base_devs);
    free(s->folds);
    memset(s, 0, sizeof(*s));
}

static bool read_value(struct wire_reader *r, uint64_t *v)
{
    *v = wr_varint(r);
    if (*v > (uint64_t)TALLY_MAX_SAFE)
        r->bad = true;
    return !r->bad;
}

/* Reads count slots (or device maxima) into arr from *n on: a registry ref
 * below refs, then the values. */
static void read_slots(struct wire_reader *r, struct wire_sync_slot *arr, uint32_t *n,
                       uint32_t count, uint32_t refs)
{
    for (uint32_t i = 0; i < count && !r->bad; i++) {
        struct wire_sync_slot *sl = &arr[(*n)++];
        sl->replica_ref = (uint32_t)wr_varint(r);
        if (sl->replica_ref >= refs)
            r->bad = true;
        read_value(r, &sl->p);
        read_value(r, &sl->n);
    }
}

static void read_devs(struct wire_reader *r, struct wire_sync_dev *arr, uint32_t *n, uint32_t count,
                      uint32_t refs)
{
    for (uint32_t i = 0; i < count && !r->bad; i++) {
        struct wire_sync_dev *d = &arr[(*n)++];
        d->device_ref = (uint32_t)wr_varint(r);
        if (d->device_ref >= refs)
            r->bad = true;
        read_value(r, &d->total);
    }
}

/* A counter's fold entries (fold.c); replica holds the message's ref. */
static void read_folds(struct wire_reader *r, struct wire_sync *s, struct wire_sync_counter *c)
{
    c->nfolds = wr_count(r, 5);
    c->first_fold = s->nfolds;
    for (uint32_t i = 0; i < c->nfolds && !r->bad; i++) {
        struct tally_fold *f = &s->folds[s->nfolds++];
        f->replica = (uint32_t)wr_varint(r);
        if (f->replica >= s->nreplicas)
            r->bad = true;
        read_value(r, &f->p);
        read_value(r, &f->n);
        read_value(r, &f->bp);
        read_value(r, &f->bn);
    }
}

static void read_base(struct wire_reader *r, struct wire_sync *s, struct wire_sync_counter *c)
{
    uint64_t based = wr_varint(r);
    if (based > 1)
        r->bad = true;
    if (r->bad || !based)
        return;
    c->based = true;
    c->deleted = wr_varint(r);
    c->reset = wr_varint(r);
    c->nbase_slots = wr_count(r, 3);
    c->first_base_slot = s->nbase_slots;
    read_slots(r, s->base_slots, &s->nbase_slots, c->nbase_slots, s->nreplicas);
    c->nbase_devs = wr_count(r, 2);
    c->first_base_dev = s->nbase_devs;
    read_devs(r, s->base_devs, &s->nbase_devs, c->nbase_devs, s->ndevices);
}

/* Reads one counter's slots and device maxima into s's flat arrays, which
 * have room for everything the message could hold. */
static void read_counter(struct wire_reader *r, struct wire_sync *s, struct wire_sync_counter *c,
                         uint8_t version)
{
    c->name = wr_str8(r, &c->name_len);
    if (r->bad || name_check(c->name, c->name_len) != TALLY_OK) {
        r->bad = true;
        return;
    }
    c->nslots = wr_count(r, 3);
    c->first_slot = s->nslots;
    read_slots(r, s->slots, &s->nslots, c->nslots, s->nreplicas);
    c->ndevs = wr_count(r, 2);
    c->first_dev = s->ndevs;
    read_devs(r, s->devs, &s->ndevs, c->ndevs, s->ndevices);
    if (version >= 2)
        read_base(r, s, c);
    if (version >= 4)
        read_folds(r, s, c);
}

/* One replica of a SYNC's dictionary: from version 5 its number in the
 * sender's stream, then its name unless the stream named it before. */
static void read_replica(struct wire_reader *r, struct wire_sync_replica *rep, uint8_t version)
{
    bool named = true;
    if (version >= 5) {
        uint64_t key = wr_varint(r);
        if (key >> 1 > UINT32_MAX)
            r->bad = true;
        rep->numbered = true;
        rep->no = (uint32_t)(key >> 1);
        named = key & 1;
    }
    if (!named)
        return;
    rep->node_id = wr_str8(r, &rep->len);
    rep->incarnation = wr_u64(r);
    if (!r->bad && !sender_ok(rep->node_id, rep->len))
        r->bad = true;
}

int wire_decode_sync(const void *msg, size_t len, struct wire_sync *s)
{
    struct wire_reader r;
    memset(s, 0, sizeof(*s));
    uint8_t version = read_header(&r, msg, len, WIRE_SYNC);
    if (!version)
        return TALLY_E_WIRE;
    s->sender = wr_str8(&r, &s->sender_len);
    if (!sender_ok(s->sender, s->sender_len))
        return TALLY_E_WIRE;
    if (version >= 3) {
        s->session = wr_u64(&r);
        s->seq = wr_varint(&r);
    }
    uint32_t n = wr_count(&r, version >= 5 ? 1 : 9);
    s->replicas = calloc(n + 1, sizeof(*s->replicas));
    for (uint32_t i = 0; i < n && s->replicas && !r.bad; i++)
        read_replica(&r, &s->replicas[s->nreplicas++], version);
    n = wr_count(&r, 2);
    s->devices = calloc(n + 1, sizeof(*s->devices));
    for (uint32_t i = 0; i < n && s->devices && !r.bad; i++) {
        s->devices[i].id = wr_str8(&r, &s->devices[i].len);
        if (!r.bad && device_id_check(s->devices[i].id, s->devices[i].len) != TALLY_OK)
            r.bad = true;
        s->ndevices++;
    }
    /* Every counter takes at least 3 bytes and every slot or device at least
     * 2, so what remains bounds all three arrays. */
    size_t left = (size_t)(r.end - r.p);
    n = wr_count(&r, 3);
    s->counters = calloc(n + 1, sizeof(*s->counters));
    s->slots = calloc(left / 3 + 1, sizeof(*s->slots));
    s->devs = calloc(left / 2 + 1, sizeof(*s->devs));
    s->base_slots = calloc(version >= 2 ? left / 3 + 1 : 1, sizeof(*s->base_slots));
    s->base_devs = calloc(version >= 2 ? left / 2 + 1 : 1, sizeof(*s->base_devs));
    s->folds = calloc(version >= 4 ? left / 5 + 1 : 1, sizeof(*s->folds));
    if (!s->replicas || !s->devices || !s->counters || !s->slots || !s->devs || !s->base_slots ||
        !s->base_devs || !s->folds) {
        wire_sync_free(s);
        return TALLY_E_NOMEM;
    }
    for (uint32_t i = 0; i < n && !r.bad; i++)
        read_counter(&r, s, &s->counters[s->ncounters++], version);
    if (r.bad || r.p != r.end) {
        wire_sync_free(s);
        return TALLY_E_WIRE;
    }
    return TALLY_OK;
}

/* ==== DIGEST ==== */

void wire_encode_digest(struct wire_buf *b, const struct wire_digest *d)
{
    wbuf_reset(b);
    header(b, WIRE_DIGEST);
    wbuf_str8(b, d->sender, d->sender_len);
    wbuf_u64(b, d->session);
    wbuf_varint(b, d->seq);
    wbuf_varint(b, d->nrequests);
    for (uint32_t i = 0; i < d->nrequests; i++) {
        const struct wire_node_ref *q = &d->requests[i];
        wbuf_str8(b, q->id, q->len);
        wbuf_varint(b, q->nnames);
        for (uint32_t j = 0; j < q->nnames; j++)
            wbuf_varint(b, q->names[j]);
        wbuf_varint(b, q->since);
        if (q->since) {
            wbuf_u64(b, q->session);
            wbuf_varint(b, q->until - q->since);
        }
    }
    wbuf_varint(b, TALLY_BUCKETS);
    for (unsigned i = 0; i < TALLY_BUCKETS; i++)
        wbuf_u64(b, d->digest[i]);
    wbuf_varint(b, d->nhears);
    for (uint32_t i = 0; i < d->nhears; i++) {
        wbuf_str8(b, d->hears[i].id, d->hears[i].len);
        wbuf_u64(b, d->heard[i].session);
        wbuf_varint(b, d->heard[i].seq);
    }
}

int wire_decode_digest(const void *msg, size_t len, struct wire_digest *d)
{
    struct wire_reader r;
    memset(d, 0, sizeof(*d));
    int version = read_header(&r, msg, len, WIRE_DIGEST);
    if (!version)
        return TALLY_E_WIRE;
    d->sender = wr_str8(&r, &d->sender_len);
    if (!sender_ok(d->sender, d->sender_len))
        return TALLY_E_WIRE;
    if (version >= 2) {
        d->session = wr_u64(&r);
        d->seq = wr_varint(&r);
        d->nrequests = wr_count(&r, 2);
        if (d->nrequests > WIRE_MAX_REQUESTS)
            r.bad = true;
        for (uint32_t i = 0; i < d->nrequests && !r.bad; i++) {
            struct wire_node_ref *q = &d->requests[i];
            q->id = wr_str8(&r, &q->len);
            if (!r.bad && !sender_ok(q->id, q->len))
                r.bad = true;
            q->nnames = version >= 3 ? wr_count(&r, 1) : 0;
            if (q->nnames > WIRE_MAX_NAMES)
                r.bad = true;
            for (uint32_t j = 0; j < q->nnames && !r.bad; j++) {
                uint64_t no = wr_varint(&r);
                r.bad |= no > UINT32_MAX;
                q->names[j] = (uint32_t)no;
            }
            q->since = version >= 4 ? wr_varint(&r) : 0;
            q->session = q->since ? wr_u64(&r) : 0;
            uint64_t span = q->since ? wr_varint(&r) : 0;
            r.bad |= span > UINT64_MAX - q->since;
            q->until = q->since + span;
        }
    }
    if (r.bad || wr_varint(&r) != TALLY_BUCKETS)
        return TALLY_E_WIRE;
    for (unsigned i = 0; i < TALLY_BUCKETS; i++)
        d->digest[i] = wr_u64(&r);
    d->nhears = version >= 5 ? wr_count(&r, 2) : 0;
    r.bad |= d->nhears > WIRE_MAX_HEARS;
    for (uint32_t i = 0; i < d->nhears && !r.bad; i++) {
        struct wire_id *h = &d->hears[i];
        h->id = wr_str8(&r, &h->len);
        r.bad |= !r.bad && !sender_ok(h->id, h->len);
        if (version >= 6) {
            d->heard[i].session = wr_u64(&r);
            d->heard[i].seq = wr_varint(&r);
        }
    }
    return r.bad || r.p != r.end ? TALLY_E_WIRE : TALLY_OK;
}

/* ==== PRESENCE ==== */

void wire_presence_begin(struct wire_buf *b, const char *origin, uint64_t incarnation, uint64_t seq,
                         uint64_t lo, uint64_t hi, uint32_t npages)
{
    wbuf_reset(b);
    header(b, WIRE_PRESENCE);
    wbuf_str8(b, origin, strlen(origin));
    wbuf_u64(b, incarnation);
    wbuf_u64(b, seq);
    wbuf_u64(b, lo);
    wbuf_u64(b, hi);
    wbuf_varint(b, npages);
}

void wire_presence_page(struct wire_buf *b, const char *page, size_t len, uint64_t count)
{
    wbuf_str8(b, page, len);
    wbuf_varint(b, count);
}

void wire_presence_count(struct wire_buf *b, uint32_t n)
{
    wbuf_varint(b, n);
}

void wire_presence_edge(struct wire_buf *b, const struct wire_presence_edge *e)
{
    wbuf_str8(b, e->id, e->len);
    wbuf_u64(b, e->incarnation);
    wbuf_varint(b, e->seq);
    wbuf_u64(b, e->digest);
    wbuf_varint(b, e->age_ms);
}

void wire_presence_want(struct wire_buf *b, const char *id, size_t len)
{
    wbuf_str8(b, id, len);
}

void wire_presence_carried(struct wire_buf *b, const struct wire_presence *set)
{
    wbuf_varint(b, set->listing_flags);
    if (set->listing_flags & WIRE_LISTING_CARRIER) {
        wbuf_str8(b, set->carrier, set->carrier_len);
        return;
    }
    wbuf_u64(b, set->listing_stamp);
    wbuf_u64(b, set->carried_digest);
    wbuf_varint(b, set->ncarried);
    wbuf_varint(b, set->carried_age_ms);
}

/* A hub's carried set (version 4), after the wants of its heartbeat. */
static void read_carried(struct wire_reader *r, struct wire_presence *out)
{
    uint64_t flags = wr_varint(r);
    if (flags == WIRE_LISTING_CARRIER) {
        out->carrier = wr_str8(r, &out->carrier_len);
        out->listing_flags = (uint8_t)flags;
        out->has_carried = !r->bad && sender_ok(out->carrier, out->carrier_len);
        r->bad = !out->has_carried;
        return;
    }
    out->listing_stamp = wr_u64(r);
    out->carried_digest = wr_u64(r);
    uint64_t n = wr_varint(r);
    out->carried_age_ms = wr_varint(r);
    if (flags > (WIRE_LISTING_LAST | WIRE_LISTING_FULL) || n > UINT32_MAX)
        r->bad = true;
    out->listing_flags = (uint8_t)flags;
    out->ncarried = (uint32_t)n;
    out->has_carried = !r->bad;
}

/* The listing (version 3, when bytes follow the pages): edges, then wants,
 * in one block of memory. */
static void read_listing(struct wire_reader *r, struct wire_presence *out)
{
    out->nlisted = wr_count(r, 20);
    out->listed = calloc(out->nlisted + 1, sizeof(*out->listed));
    if (!out->listed) {
        r->bad = true;
        return;
    }
    for (uint32_t i = 0; i < out->nlisted && !r->bad; i++) {
        struct wire_presence_edge *e = &out->listed[i];
        e->id = wr_str8(r, &e->len);
        e->incarnation = wr_u64(r);
        e->seq = wr_varint(r);
        e->digest = wr_u64(r);
        e->age_ms = wr_varint(r);
        if (!r->bad && !sender_ok(e->id, e->len))
            r->bad = true;
    }
    uint32_t nwants = wr_count(r, 2);
    size_t edges = (out->nlisted + 1) * sizeof(*out->listed);
    void *grown = r->bad ? NULL : realloc(out->listed, edges + (nwants + 1) * sizeof(*out->wants));
    if (!grown) {
        r->bad = true;
        return;
    }
    out->listed = grown;
    out->wants = (struct wire_presence_want *)((char *)grown + edges);
    for (out->nwants = 0; out->nwants < nwants && !r->bad; out->nwants++) {
        struct wire_presence_want *w = &out->wants[out->nwants];
        w->id = wr_str8(r, &w->len);
        if (!r->bad && !sender_ok(w->id, w->len))
            r->bad = true;
    }
}

void wire_presence_free(struct wire_presence *p)
{
    free(p->pages);
    free(p->listed);
    memset(p, 0, sizeof(*p));
}

size_t wire_presence_origin(const void *msg, size_t len, const char **origin)
{
    struct wire_reader r;
    size_t n = 0;
    *origin = NULL;
    if (read_header(&r, msg, len, WIRE_PRESENCE))
        *origin = wr_str8(&r, &n);
    return *origin && sender_ok(*origin, n) ? n : 0;
}

int wire_decode_presence(const void *msg, size_t len, struct wire_presence *out)
{
    struct wire_reader r;
    memset(out, 0, sizeof(*out));
    uint8_t version = read_header(&r, msg, len, WIRE_PRESENCE);
    if (!version)
        return TALLY_E_WIRE;
    out->origin = wr_str8(&r, &out->origin_len);
    if (!sender_ok(out->origin, out->origin_len))
        return TALLY_E_WIRE;
    out->incarnation = wr_u64(&r);
    out->seq = wr_u64(&r);
    out->lo = version >= 2 ? wr_u64(&r) : 0;
    out->hi = version >= 2 ? wr_u64(&r) : UINT64_MAX;
    if (out->lo > out->hi && version < 3)
        return TALLY_E_WIRE; /* from 3 on, lo > hi is no range: a listing only */
    uint32_t n = wr_count(&r, 3);
    out->pages = calloc(n + 1, sizeof(*out->pages));
    if (!out->pages)
        return TALLY_E_NOMEM;
    for (uint32_t i = 0; i < n && !r.bad; i++) {
        struct wire_presence_page *pg = &out->pages[out->npages++];
        pg->page = wr_str8(&r, &pg->len);
        pg->count = wr_varint(&r);
        if (!r.bad && (name_check(pg->page, pg->len) != TALLY_OK || pg->count > UINT32_MAX ||
                       !presence_in_range(pg->page, pg->len, out->lo, out->hi)))
            r.bad = true;
    }
    if (version >= 3 && !r.bad && r.p != r.end)
        read_listing(&r, out);
    if (version >= 4 && !r.bad && r.p != r.end)
        read_carried(&r, out);
    if (r.bad || r.p != r.end) {
        wire_presence_free(out);
        return TALLY_E_WIRE;
    }
    return TALLY_OK;
}
