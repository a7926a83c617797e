/*
 * tier.c - edges and hubs: a tree of brokers in which only the hubs hold the
 * whole state. Pure C; plugin.c (and tests/sim) hand it messages and send
 * what it writes.
 *
 * ---- Why ----
 *
 * In a flat cluster every node stores every counter with a slot per node
 * that wrote it, and hears every change of every slot: per-node state and
 * traffic grow with the cluster. One broker holds tens of thousands of
 * WebSocket viewers, so 100 million viewers is thousands of brokers. Real
 * deployments are trees anyway: edge brokers near the browsers, bridged to a
 * few central ones, with a failover `address` list on the bridge.
 *
 * ---- The roles ----
 *
 * A hub is a node of today's cluster: it holds every counter, with every
 * slot, and replicates with the other hubs by the ordinary protocol (SYNC,
 * DIGEST, PRESENCE; any topology). A hub also carries the edges currently
 * bridged to it.
 *
 * An edge keeps only:
 *   - its own slot, under its own replica (edge id, incarnation), in each
 *     counter its clients write: an ordinary tally_table holding nothing
 *     else;
 *   - for each counter its clients watch, a view of the rest of the world:
 *     (P, N, D) learned from its hub, P and N being the sums of every slot
 *     but its own, D the sum of the device maxima. A view outlives its last
 *     watcher by TIER_VIEW_LINGER_MS: a client that subscribes, reads the
 *     retained total and leaves (mosquitto_sub -C 1, a poll) would otherwise
 *     drop the view before its hub's answer arrives, and the next poll would
 *     read a stale total again; keeping it also keeps its maxima, so a total
 *     watched again within the linger never steps back;
 *   - for each page its viewers watch, the count the hub reports for the
 *     others.
 * It shows its clients: own P + view P - own N - view N + max(own D, view D),
 * less what resets took away (view tP, tN, tD), for a counter; own viewers +
 * the others' for a page.
 *
 * ---- The messages ----
 *
 * UP, edge -> its hub, on $tally/up/<edge> (topic $tally/up/# out 1 on the
 * edge's bridge):
 *     edge id, incarnation, seq, the session it was built under, flags,
 *     counters: name, own P, own N, own device maxima (absolute values),
 *     [watch list: every counter name its clients watch]      (flag 1)
 *     [page list: every page its viewers watch, with counts]  (flag 2)
 * An UP carries every counter whose last change went out in an UP the hub
 * has not acknowledged, so the hub, holding an UP of seq s built under the
 * session it gave the edge, holds every change the edge made up to s: UPs may
 * be lost or reordered, and the acknowledgement is simply the highest such
 * seq. The watch and page lists ride the same way; the hub takes lists only
 * from an UP newer than any it has seen (they replace), slots from any (they
 * are maxima). An edge sends an UP when it has something unacknowledged, at
 * most once a publish interval (an UP not yet acknowledged is so resent once
 * an interval, not once a broker loop), and at least every heartbeat_ms, so
 * that its hub knows it is alive.
 *
 * DOWN, hub -> one edge, on $tally/down/<edge> (topic $tally/down/<edge>/#
 * in 1 on the edge's bridge, so an edge hears nothing else):
 *     hub id, session, the ack,
 *     counters: name, P, N, D, the edge's own P and N as the hub holds them,
 *               and what resets took away from P, N and D (reset.c),
 *     pages: name, total viewers, the edge's own viewers as the hub holds them.
 * The session is new whenever the hub's record of the edge is (a hub
 * restarted, or one that forgot a silent edge): an edge that reads a new
 * (hub, session) forgets every acknowledgement, and its next UP carries its
 * whole slot and both lists. A DOWN carries each watched counter whose
 * figures changed since the last DOWN to that edge, and all of them every
 * heartbeat_ms: DOWN needs no acknowledgement, a lost one is healed by the
 * next full one.
 *
 * ---- The exact baseline (this file) ----
 *
 * The edge's slot is state-based: absolute (P, N) under its replica, merged
 * by maximum. The hub merges it into its table as any other replica's slot
 * and replicates it to the other hubs by the ordinary protocol. A maximum
 * never double counts, whoever delivers the slot and however often. Hence:
 *
 *   - An edge whose hub dies: its bridge connects to the next address. The
 *     first DOWN from the new hub names another (hub, session), so the edge
 *     forgets every acknowledgement and sends its whole slot. What the dead
 *     hub had merged and replicated is already at the others; what it had not
 *     is in the edge's slot, and it arrives now. Nothing is lost (the edge
 *     acknowledges its clients only after its own log, as any node does), and
 *     nothing is counted twice (the same replica, merged by maximum).
 *   - A hub lost for good: the same, for each of its edges. Its own slots
 *     (increments its own clients made) are at the other hubs as far as it
 *     replicated them, as in today's cluster; the edges' slots are complete
 *     again once every edge has moved.
 *   - An edge lost for good: its slot stays at the hubs with whatever reached
 *     them; what it acknowledged but never sent is lost with its disk, as for
 *     any node of a cluster. Its viewers leave the counts after
 *     peer_timeout_ms (below). Its slot stays forever, as a departed node's
 *     does today (folding retired slots is the replication module's job).
 *   - An edge that moves and moves back (a bridge's first address is its main
 *     one: Mosquitto goes back to it when it returns): each move is a new
 *     (hub, session) for the edge, so it sends its whole slot again; the hubs
 *     take maxima of the same slot: idempotent, commutative, no double count.
 *   - No step back: an edge keeps, per watched counter, the maximum of each of
 *     the rest-of-world P, N and D it has been told. Every hub's P minus the
 *     edge's own P is a sum of other replicas' slots as that hub holds them,
 *     each at most the true slot, so each view is a lower bound of the truth
 *     that only grows, and it is exact once the hubs have converged. A new
 *     hub that knows less than the dead one did cannot make a total go back.
 *     A reset is the one deliberate step back: what resets took away is a sum
 *     of min(slot, base) terms, each only growing (reset.c), carried and
 *     kept by maximum the same way.
 *
 * Cost of the baseline: a hub holds a slot per edge per counter that edge
 * wrote, and the other hubs do too: for a counter written at every edge, a
 * hub's state and its replication of that counter grow with the number of
 * edges (sums are recomputed over every slot). An edge's state and traffic
 * depend only on its own clients.
 *
 * ---- What handoff counters would save ----
 *
 * Almeida and Baquero's handoff counters (Distributed Computing 32, 2019)
 * give identities only to the tier that needs them: a node of tier k hands
 * its count to one of tier k-1 by a two-phase exchange (slot, token, ack)
 * that moves the value into the parent's own slot exactly once, after which
 * both forget the child's identity. Hubs would then hold a slot per hub, not
 * per edge, and an edge's slot would be transient. The price is the handoff
 * state machine: a child that moves in the middle of a handoff must finish it
 * with the parent that holds the token or wait for it to be declared dead,
 * and a parent lost for good with tokens it had accepted but not yet
 * replicated loses them unless the child keeps them until a hub-wide
 * acknowledgement. Here, the same guarantees follow from the maximum alone,
 * at the cost above; the handoff is the next step where a counter written at
 * thousands of edges makes that cost matter.
 *
 * ---- Presence through the tree ----
 *
 * The UP's page list is the edge's viewers per page, a last-writer-wins
 * register ordered by (incarnation, seq) like any node's presence
 * announcement. Its hub applies it as the presence origin named after the
 * edge, and floods it to the other hubs as a PRESENCE from that origin with
 * the edge's incarnation and seq (tier_hub_relay). A page's count at a hub is
 * then the sum over every edge (and hub) origin. When an edge moves, its
 * new hub announces the same origin with a higher seq: it replaces the old
 * one, nothing is counted under both hubs. An edge that goes silent is
 * expired after peer_timeout_ms by every hub, as any peer is. A hub that dies
 * has its own viewers expired, not its edges': they are their own origins.
 *
 * ---- Invariants ----
 *
 *   - An edge's table holds only its own replica's slots and its own devices.
 *   - mine->sent_seq > acked means the hub may lack that counter's latest
 *     value: it is in every UP until acknowledged.
 *   - A view only grows; the edge's own part never comes from the hub.
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

/* The edge's own counters: when their latest value last went up. */
struct tier_mine {
    UT_hash_handle hh;
    uint64_t sent_seq; /* the UP that carried the latest value; 0: not sent */
    bool changed;
    uint8_t len;
    char name[];
};

/* A view stays this long after its last watcher leaves (see above). */
#define TIER_VIEW_LINGER_MS 30000

/* What the edge knows of the rest of the world for one watched counter. */
struct tier_view {
    UT_hash_handle hh;
    uint64_t p, n, d;       /* the others' P and N, and every device maximum */
    uint64_t tp, tn, td;    /* what resets took away from those (reset.c) */
    uint64_t idle_since_ms; /* unwatched since (0: not yet stamped by tier_edge_up) */
    bool idle;              /* no watcher: dropped TIER_VIEW_LINGER_MS later */
    uint8_t len;
    char name[];
};

/* The others' viewers of a page the edge's viewers watch. */
struct tier_page {
    UT_hash_handle hh;
    uint64_t others;
    uint8_t len;
    char name[];
};

/* A counter watched by some child of a hub, with its figures this tick. */
struct tier_watch {
    UT_hash_handle hh;
    uint32_t refs;
    uint64_t gen; /* hub->gen when the figures were computed */
    uint64_t p, n, d, tp, tn, td;
    uint8_t len;
    char name[];
};

/* One watched counter of one child: what the child was last told. */
struct tier_sub {
    struct tier_watch *w;
    uint64_t p, n, d, tp, tn, td, mine_p, mine_n;
};

struct tier_child_page {
    uint64_t count, sent_total, sent_mine;
    uint8_t len;
    char name[TALLY_NAME_MAX + 1];
};

/* ==== Small helpers ==== */

static void *named_new(size_t size, const char *name, size_t len, size_t name_off)
{
    char *e = calloc(1, size + len + 1);
    if (e)
        memcpy(e + name_off, name, len);
    return e;
}

static void write_header(struct wire_buf *b, enum wire_type type)
{
    const uint8_t h[4] = {'T', 'L', WIRE_VERSION, (uint8_t)type};
    wbuf_bytes(b, h, sizeof(h));
}

static bool read_header(struct wire_reader *r, const void *msg, size_t len, enum wire_type type)
{
    r->p = msg;
    r->end = r->p + len;
    r->bad = false;
    return wire_peek_type(msg, len) == (int)type && (r->p += 4, true);
}

/* A name from the wire, checked as a counter or page name. */
static const char *wr_name(struct wire_reader *r, size_t *len)
{
    const char *s = wr_str8(r, len);
    if (s && name_check(s, *len) != TALLY_OK)
        r->bad = true;
    return r->bad ? NULL : s;
}

static uint64_t wr_safe(struct wire_reader *r)
{
    uint64_t v = wr_varint(r);
    if (v > (uint64_t)TALLY_MAX_SAFE)
        r->bad = true;
    return v;
}

/* ==== Edge ==== */

void tier_edge_init(struct tier_edge *e, const char *node_id, uint64_t incarnation)
{
    memset(e, 0, sizeof(*e));
    strncpy(e->node_id, node_id, TALLY_NODE_ID_MAX);
    e->incarnation = incarnation;
    e->seq = 1;
}

void tier_edge_free(struct tier_edge *e)
{
    struct tier_mine *m, *mt;
    HASH_ITER(hh, e->mine, m, mt)
    {
        HASH_DEL(e->mine, m);
        free(m);
    }
    struct tier_view *v, *vt;
    HASH_ITER(hh, e->views, v, vt)
    {
        HASH_DEL(e->views, v);
        free(v);
    }
    struct tier_page *pg, *pt;
    HASH_ITER(hh, e->pages, pg, pt)
    {
        HASH_DEL(e->pages, pg);
        free(pg);
    }
    memset(e, 0, sizeof(*e));
}

int tier_edge_wrote(struct tier_edge *e, const char *name, size_t len)
{
    struct tier_mine *m = NULL;
    HASH_FIND(hh, e->mine, name, len, m);
    if (!m) {
        m = named_new(sizeof(*m), name, len, offsetof(struct tier_mine, name));
        if (!m)
            return TALLY_E_NOMEM;
        m->len = (uint8_t)len;
        HASH_ADD(hh, e->mine, name, len, m);
    }
    m->changed = true;
    return TALLY_OK;
}

int tier_edge_watch(struct tier_edge *e, const char *name, size_t len, bool on)
{
    struct tier_view *v = NULL;
    HASH_FIND(hh, e->views, name, len, v);
    if (on && !v) {
        v = named_new(sizeof(*v), name, len, offsetof(struct tier_view, name));
        if (!v)
            return TALLY_E_NOMEM;
        v->len = (uint8_t)len;
        HASH_ADD(hh, e->views, name, len, v);
        e->watch_changed = true;
    } else if (v && v->idle != !on) {
        /* the hub keeps sending it while it lingers: nothing to tell it */
        v->idle = !on;
        v->idle_since_ms = 0;
        e->nidle += on ? -1 : 1;
    }
    return TALLY_OK;
}

/* Drops the views unwatched for TIER_VIEW_LINGER_MS; stamps the newly idle. */
static void edge_drop_idle(struct tier_edge *e, uint64_t now_ms)
{
    struct tier_view *v, *vt;
    HASH_ITER(hh, e->views, v, vt)
    {
        if (!v->idle)
            continue;
        if (v->idle_since_ms == 0) {
            v->idle_since_ms = now_ms ? now_ms : 1;
        } else if (now_ms - v->idle_since_ms >= TIER_VIEW_LINGER_MS) {
            HASH_DEL(e->views, v);
            free(v);
            e->nidle--;
            e->watch_changed = true;
        }
    }
}

void tier_edge_pages_changed(struct tier_edge *e)
{
    e->pages_changed = true;
}

/* Whether the hub may lack something sent at sent_seq (or never sent). */
static bool unacked(const struct tier_edge *e, bool changed, uint64_t sent_seq)
{
    return changed || sent_seq > e->acked;
}

static bool up_due(const struct tier_edge *e, uint64_t now_ms, uint64_t every_ms,
                   uint64_t heartbeat_ms)
{
    if (now_ms - e->last_up_ms >= heartbeat_ms || e->last_up_ms == 0)
        return true;
    if (now_ms - e->last_up_ms < every_ms)
        return false; /* one UP an interval: it carries all that is unacknowledged */
    if (unacked(e, e->watch_changed, e->watch_sent_seq) ||
        unacked(e, e->pages_changed, e->pages_sent_seq))
        return true;
    for (struct tier_mine *m = e->mine; m; m = m->hh.next)
        if (unacked(e, m->changed, m->sent_seq))
            return true;
    return false;
}

static void up_counter(struct wire_buf *b, const struct tally_table *t, uint32_t self,
                       const struct tally_counter *c)
{
    const struct tally_slot *s = counter_slot(c, self);
    wbuf_str8(b, c->name, c->name_len);
    wbuf_varint(b, s ? s->p : 0);
    wbuf_varint(b, s ? s->n : 0);
    wbuf_varint(b, c->ndevs);
    for (uint32_t i = 0; i < c->ndevs; i++) {
        const struct tally_device *d = t->devices[c->devs[i].device];
        wbuf_str8(b, d->id, strlen(d->id));
        wbuf_varint(b, c->devs[i].total);
    }
}

struct up_pages {
    struct wire_buf *b;
    uint32_t n;
};

static void up_page(const char *page, size_t len, uint64_t n, void *ud)
{
    struct up_pages *u = ud;
    wbuf_str8(u->b, page, len);
    wbuf_varint(u->b, n);
    u->n++;
}

int tier_edge_up(struct tier_edge *e, struct tally_table *t, struct tally_presence *pr,
                 uint64_t now_ms, uint64_t every_ms, uint64_t heartbeat_ms, struct wire_buf *out,
                 bool *written)
{
    wbuf_reset(out);
    *written = false;
    if (e->nidle)
        edge_drop_idle(e, now_ms);
    if (!up_due(e, now_ms, every_ms, heartbeat_ms))
        return TALLY_OK;
    uint32_t self;
    int rc = table_replica(t, e->node_id, strlen(e->node_id), e->incarnation, &self);
    if (rc != TALLY_OK)
        return rc;
    uint64_t seq = e->seq++;
    bool watch = unacked(e, e->watch_changed, e->watch_sent_seq);
    bool pages = unacked(e, e->pages_changed, e->pages_sent_seq);
    write_header(out, WIRE_UP);
    wbuf_str8(out, e->node_id, strlen(e->node_id));
    wbuf_u64(out, e->incarnation);
    wbuf_varint(out, seq);
    wbuf_u64(out, e->hub_session);
    wbuf_u8(out, (uint8_t)((watch ? 1 : 0) | (pages ? 2 : 0)));
    uint32_t n = 0;
    for (struct tier_mine *m = e->mine; m; m = m->hh.next)
        n += unacked(e, m->changed, m->sent_seq) && table_find(t, m->name, m->len);
    wbuf_varint(out, n);
    for (struct tier_mine *m = e->mine; m; m = m->hh.next) {
        struct tally_counter *c = table_find(t, m->name, m->len);
        if (!unacked(e, m->changed, m->sent_seq) || !c)
            continue;
        up_counter(out, t, self, c);
        m->changed = false;
        m->sent_seq = seq;
    }
    if (watch) {
        wbuf_varint(out, HASH_COUNT(e->views));
        for (struct tier_view *v = e->views; v; v = v->hh.next)
            wbuf_str8(out, v->name, v->len);
        e->watch_changed = false;
        e->watch_sent_seq = seq;
    }
    if (pages) {
        /* The count goes first: presence_each_local walks once to count. */
        struct wire_buf list = {0};
        struct up_pages u = {&list, 0};
        presence_each_local(pr, up_page, &u);
        wbuf_varint(out, u.n);
        wbuf_bytes(out, list.data, list.len);
        wbuf_free(&list);
        e->pages_changed = false;
        e->pages_sent_seq = seq;
    }
    e->last_up_ms = now_ms;
    *written = !out->failed;
    return out->failed ? TALLY_E_NOMEM : TALLY_OK;
}

/* A new hub, or the same one restarted: it may lack everything. */
static void edge_new_hub(struct tier_edge *e, const char *hub, size_t len, uint64_t session)
{
    memcpy(e->hub, hub, len);
    e->hub[len] = '\0';
    e->hub_session = session;
    e->acked = 0;
    e->hub_changes++;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* Each figure is a sum of terms that only grow: the maximum of what any hub
 * said is a lower bound of the truth, and the truth once hubs converge. */
static bool view_raise(struct tier_view *v, const uint64_t f[6])
{
    struct tier_view before = *v;
    v->p = max_u64(v->p, f[0]);
    v->n = max_u64(v->n, f[1]);
    v->d = max_u64(v->d, f[2]);
    v->tp = max_u64(v->tp, f[3]);
    v->tn = max_u64(v->tn, f[4]);
    v->td = max_u64(v->td, f[5]);
    return memcmp(&before.p, &v->p, 6 * sizeof(uint64_t)) != 0;
}

static int edge_page_set(struct tier_edge *e, const char *name, size_t len, uint64_t others)
{
    struct tier_page *pg = NULL;
    HASH_FIND(hh, e->pages, name, len, pg);
    if (!pg) {
        pg = named_new(sizeof(*pg), name, len, offsetof(struct tier_page, name));
        if (!pg)
            return TALLY_E_NOMEM;
        pg->len = (uint8_t)len;
        HASH_ADD(hh, e->pages, name, len, pg);
    }
    pg->others = others;
    return TALLY_OK;
}

int tier_edge_apply_down(struct tier_edge *e, const void *msg, size_t len, tier_changed_fn *fn,
                         void *ud)
{
    struct wire_reader r;
    size_t hlen, nlen;
    if (!read_header(&r, msg, len, WIRE_DOWN))
        return TALLY_E_WIRE;
    const char *hub = wr_str8(&r, &hlen);
    uint64_t session = wr_u64(&r), ack = wr_varint(&r);
    if (r.bad || node_id_check(hub, hlen) != TALLY_OK)
        return TALLY_E_WIRE;
    if (session != e->hub_session || strlen(e->hub) != hlen || memcmp(e->hub, hub, hlen) != 0)
        edge_new_hub(e, hub, hlen, session);
    if (ack > e->acked && ack < e->seq)
        e->acked = ack;
    uint64_t ncounters = wr_varint(&r);
    for (uint64_t i = 0; i < ncounters && !r.bad; i++) {
        const char *name = wr_name(&r, &nlen);
        uint64_t p = wr_safe(&r), n = wr_safe(&r), d = wr_safe(&r);
        uint64_t mp = wr_safe(&r), mn = wr_safe(&r);
        uint64_t tp = wr_safe(&r), tn = wr_safe(&r), td = wr_safe(&r);
        if (r.bad || mp > p || mn > n || tp > p || tn > n || td > d)
            return TALLY_E_WIRE;
        struct tier_view *v = NULL;
        HASH_FIND(hh, e->views, name, nlen, v);
        const uint64_t f[6] = {p - mp, n - mn, d, tp, tn, td};
        if (v && view_raise(v, f) && fn) /* !v: no longer watched */
            fn(name, nlen, ud);
    }
    uint64_t npages = wr_varint(&r);
    for (uint64_t i = 0; i < npages && !r.bad; i++) {
        const char *name = wr_name(&r, &nlen);
        uint64_t total = wr_varint(&r), mine = wr_varint(&r);
        if (r.bad || mine > total)
            return TALLY_E_WIRE;
        int rc = edge_page_set(e, name, nlen, total - mine);
        if (rc != TALLY_OK)
            return rc;
    }
    return r.bad || r.p != r.end ? TALLY_E_WIRE : TALLY_OK;
}

int64_t tier_edge_value(const struct tier_edge *e, struct tally_table *t, const char *name,
                        size_t len)
{
    struct tally_sums own = {0};
    const struct tally_counter *c = table_find(t, name, len);
    if (c)
        counter_sums(c, &own);
    const struct tier_view *v = NULL;
    HASH_FIND(hh, e->views, name, len, v);
    static const struct tier_view none;
    if (!v)
        v = &none;
    int64_t d = own.devices > (int64_t)v->d ? own.devices : (int64_t)v->d;
    int64_t value = (own.p + (int64_t)v->p - (int64_t)v->tp) -
                    (own.n + (int64_t)v->n - (int64_t)v->tn) + d - (int64_t)v->td;
    return value > TALLY_MAX_SAFE    ? TALLY_MAX_SAFE
           : value < -TALLY_MAX_SAFE ? -TALLY_MAX_SAFE
                                     : value;
}

uint64_t tier_edge_page_total(const struct tier_edge *e, const struct tally_presence *pr,
                              const char *page, size_t len)
{
    const struct tier_page *pg = NULL;
    HASH_FIND(hh, e->pages, page, len, pg);
    return presence_total(pr, page, len) + (pg ? pg->others : 0);
}

/* ==== Hub ==== */

struct tier_child {
    UT_hash_handle hh;
    uint64_t incarnation, seq, last_heard_ms, last_full_ms;
    uint64_t session; /* what the child is told: new whenever this record is */
    uint64_t ack;     /* highest seq of an UP built under that session */
    uint64_t last_relay_ms;
    bool pages_new; /* its page list changed since the last relay */
    uint32_t replica;
    struct tier_sub *subs;
    uint32_t nsubs;
    struct tier_child_page *pages;
    uint32_t npages;
    bool ack_owed;
    char id[TALLY_NODE_ID_MAX + 1];
};

void tier_hub_init(struct tier_hub *h, const char *node_id, uint64_t session)
{
    memset(h, 0, sizeof(*h));
    strncpy(h->node_id, node_id, TALLY_NODE_ID_MAX);
    h->session = session;
    h->gen = 1;
}

static void watch_unref(struct tier_hub *h, struct tier_watch *w)
{
    if (--w->refs == 0) {
        HASH_DEL(h->watches, w);
        free(w);
    }
}

static void child_clear_subs(struct tier_hub *h, struct tier_child *c)
{
    for (uint32_t i = 0; i < c->nsubs; i++)
        watch_unref(h, c->subs[i].w);
    free(c->subs);
    c->subs = NULL;
    c->nsubs = 0;
}

static void child_free(struct tier_hub *h, struct tier_child *c)
{
    child_clear_subs(h, c);
    free(c->pages);
    HASH_DEL(h->children, c);
    free(c);
}

void tier_hub_free(struct tier_hub *h)
{
    struct tier_child *c, *tmp;
    HASH_ITER(hh, h->children, c, tmp)
    child_free(h, c);
    struct tier_watch *w, *wt;
    HASH_ITER(hh, h->page_totals, w, wt)
    {
        HASH_DEL(h->page_totals, w);
        free(w);
    }
    memset(h, 0, sizeof(*h));
}

static struct tier_watch *watch_ref(struct tier_hub *h, const char *name, size_t len)
{
    struct tier_watch *w = NULL;
    HASH_FIND(hh, h->watches, name, len, w);
    if (!w) {
        w = named_new(sizeof(*w), name, len, offsetof(struct tier_watch, name));
        if (!w)
            return NULL;
        w->len = (uint8_t)len;
        HASH_ADD(hh, h->watches, name, len, w);
    }
    w->refs++;
    return w;
}

static struct tier_child *child_get(struct tier_hub *h, struct tally_table *t, const char *id,
                                    size_t len, uint64_t incarnation)
{
    char key[TALLY_NODE_ID_MAX + 1];
    memcpy(key, id, len);
    key[len] = '\0';
    struct tier_child *c = NULL;
    HASH_FIND_STR(h->children, key, c);
    if (c && c->incarnation != incarnation) {
        child_free(h, c); /* a new life of the edge: its old lists are void */
        c = NULL;
    }
    if (c)
        return c;
    c = calloc(1, sizeof(*c));
    if (!c || table_replica(t, key, strlen(key), incarnation, &c->replica) != TALLY_OK) {
        free(c);
        return NULL;
    }
    memcpy(c->id, key, len + 1);
    c->incarnation = incarnation;
    c->session = h->session + ++h->children_made;
    HASH_ADD_STR(h->children, id, c);
    return c;
}

static int hub_merge_counter(struct tally_table *t, struct tier_child *ch, struct wire_reader *r)
{
    size_t len, dlen;
    const char *name = wr_name(r, &len);
    uint64_t p = wr_safe(r), n = wr_safe(r), ndevs = wr_varint(r);
    if (r->bad)
        return TALLY_E_WIRE;
    struct tally_counter *c;
    int rc = table_get(t, name, len, TABLE_MERGE, &c);
    if (rc != TALLY_OK)
        return rc;
    bool changed;
    if (table_merge_slot(t, c, ch->replica, p, n, &changed) != TALLY_OK)
        return TALLY_E_OVERFLOW;
    for (uint64_t i = 0; i < ndevs; i++) {
        const char *dev = wr_str8(r, &dlen);
        uint64_t total = wr_safe(r);
        uint32_t d;
        if (r->bad || device_id_check(dev, dlen) != TALLY_OK)
            return TALLY_E_WIRE;
        rc = table_device(t, dev, dlen, DEVICE_PEER, &d);
        if (rc != TALLY_OK)
            return rc;
        if (table_merge_device(t, c, d, total, false, &changed) != TALLY_OK)
            return TALLY_E_OVERFLOW;
    }
    return TALLY_OK;
}

static int hub_read_watch(struct tier_hub *h, struct tier_child *ch, struct wire_reader *r)
{
    uint64_t n = wr_varint(r);
    if (r->bad || n > (uint64_t)(r->end - r->p))
        return TALLY_E_WIRE;
    child_clear_subs(h, ch);
    ch->subs = calloc(n ? n : 1, sizeof(*ch->subs));
    if (!ch->subs)
        return TALLY_E_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        size_t len;
        const char *name = wr_name(r, &len);
        if (r->bad)
            return TALLY_E_WIRE;
        struct tier_watch *w = watch_ref(h, name, len);
        if (!w)
            return TALLY_E_NOMEM;
        ch->subs[ch->nsubs++] = (struct tier_sub){.w = w, .p = UINT64_MAX};
    }
    return TALLY_OK;
}

/* The child's viewers per page: replaces the previous list. */
static int hub_read_pages(struct tier_child *ch, struct wire_reader *r)
{
    uint64_t n = wr_varint(r);
    if (r->bad || n > (uint64_t)(r->end - r->p) / 2)
        return TALLY_E_WIRE;
    struct tier_child_page *pages = calloc(n ? n : 1, sizeof(*pages));
    if (!pages)
        return TALLY_E_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        size_t len;
        const char *name = wr_name(r, &len);
        pages[i].count = wr_varint(r);
        if (r->bad) {
            free(pages);
            return TALLY_E_WIRE;
        }
        memcpy(pages[i].name, name, len);
        pages[i].len = (uint8_t)len;
        pages[i].sent_total = UINT64_MAX;
    }
    free(ch->pages);
    ch->pages = pages;
    ch->npages = (uint32_t)n;
    ch->pages_new = true;
    return TALLY_OK;
}

/* The child's viewers as its presence origin, if this UP is its newest. */
static int hub_apply_presence(struct tally_presence *pr, struct tier_child *ch, bool pages,
                              uint64_t now_ms)
{
    struct tally_origin *o = presence_origin(pr, ch->id);
    if (!o)
        return TALLY_E_NOMEM;
    o->last_heard_ms = now_ms;
    if (!pages || (o->incarnation == ch->incarnation && ch->seq <= o->seq))
        return TALLY_OK;
    o->incarnation = ch->incarnation;
    o->seq = ch->seq;
    presence_origin_begin(pr, o, 0, UINT64_MAX); /* an UP carries all the child's pages */
    for (uint32_t i = 0; i < ch->npages; i++)
        if (presence_origin_set(pr, o, ch->pages[i].name, ch->pages[i].len, ch->pages[i].count) !=
            TALLY_OK)
            return TALLY_E_NOMEM;
    return TALLY_OK;
}

int tier_hub_apply_up(struct tier_hub *h, struct tally_table *t, struct tally_presence *pr,
                      const void *msg, size_t len, uint64_t now_ms, struct tier_child **from)
{
    struct wire_reader r;
    size_t idlen;
    *from = NULL;
    if (!read_header(&r, msg, len, WIRE_UP))
        return TALLY_E_WIRE;
    const char *id = wr_str8(&r, &idlen);
    uint64_t incarnation = wr_u64(&r), seq = wr_varint(&r), session = wr_u64(&r);
    uint8_t flags = wr_u8(&r);
    uint64_t ncounters = wr_varint(&r);
    if (r.bad || node_id_check(id, idlen) != TALLY_OK || seq == 0)
        return TALLY_E_WIRE;
    struct tier_child *ch = child_get(h, t, id, idlen, incarnation);
    if (!ch)
        return TALLY_E_NOMEM;
    int rc = TALLY_OK;
    /* Slots are maxima: merged from any UP, however late. */
    for (uint64_t i = 0; i < ncounters && rc == TALLY_OK; i++)
        rc = hub_merge_counter(t, ch, &r);
    /* The lists replace the previous ones: only from a newer UP. */
    bool newer = seq > ch->seq;
    if (rc == TALLY_OK && (flags & 1) && newer)
        rc = hub_read_watch(h, ch, &r);
    if (rc == TALLY_OK && (flags & 2) && newer)
        rc = hub_read_pages(ch, &r);
    if (rc != TALLY_OK)
        return rc;
    ch->last_heard_ms = now_ms;
    if (newer)
        ch->seq = seq;
    /* Only an UP built under the session this record gave the edge holds
     * everything the edge had not had acknowledged by this record. */
    if (session == ch->session && seq > ch->ack) {
        ch->ack = seq;
        ch->ack_owed = true;
    }
    rc = hub_apply_presence(pr, ch, (flags & 2) && newer, now_ms);
    *from = ch;
    return rc;
}

void tier_hub_tick(struct tier_hub *h)
{
    h->gen++;
}

static void watch_figures(struct tier_hub *h, struct tier_watch *w, struct tally_table *t)
{
    if (w->gen == h->gen)
        return;
    struct tally_sums raw = {0}, after = {0};
    const struct tally_counter *c = table_find(t, w->name, w->len);
    if (c) {
        counter_sums(c, &raw);
        table_sums(t, c, &after);
    }
    w->p = (uint64_t)raw.p;
    w->n = (uint64_t)raw.n;
    w->d = (uint64_t)raw.devices;
    /* sum(min(slot, base)): grows with slots and bases alike */
    w->tp = (uint64_t)(raw.p - after.p);
    w->tn = (uint64_t)(raw.n - after.n);
    w->td = (uint64_t)(raw.devices - after.devices);
    w->gen = h->gen;
}

/* A page's viewers, once a tick: summing them costs a term per origin. */
static uint64_t page_figure(struct tier_hub *h, const struct tally_presence *pr, const char *name,
                            size_t len)
{
    struct tier_watch *w = NULL;
    HASH_FIND(hh, h->page_totals, name, len, w);
    if (!w) {
        w = named_new(sizeof(*w), name, len, offsetof(struct tier_watch, name));
        if (!w)
            return presence_total(pr, name, len);
        w->len = (uint8_t)len;
        HASH_ADD(hh, h->page_totals, name, len, w);
    }
    if (w->gen != h->gen) {
        w->p = presence_total(pr, name, len);
        w->gen = h->gen;
    }
    return w->p;
}

int tier_hub_down(struct tier_hub *h, struct tally_table *t, const struct tally_presence *pr,
                  struct tier_child *ch, uint64_t now_ms, uint64_t heartbeat_ms,
                  struct wire_buf *out, bool *written)
{
    bool full = now_ms - ch->last_full_ms >= heartbeat_ms || ch->last_full_ms == 0;
    struct wire_buf body = {0};
    uint32_t ncounters = 0, npages = 0;
    for (uint32_t i = 0; i < ch->nsubs; i++) {
        struct tier_sub *s = &ch->subs[i];
        watch_figures(h, s->w, t);
        const struct tally_counter *c = table_find(t, s->w->name, s->w->len);
        const struct tally_slot *mine = c ? counter_slot(c, ch->replica) : NULL;
        uint64_t mp = mine ? mine->p : 0, mn = mine ? mine->n : 0;
        const struct tier_watch *w = s->w;
        struct tier_sub now = {s->w, w->p, w->n, w->d, w->tp, w->tn, w->td, mp, mn};
        if (!full && memcmp(s, &now, sizeof(now)) == 0)
            continue;
        *s = now;
        wbuf_str8(&body, w->name, w->len);
        const uint64_t f[8] = {w->p, w->n, w->d, mp, mn, w->tp, w->tn, w->td};
        for (int k = 0; k < 8; k++)
            wbuf_varint(&body, f[k]);
        ncounters++;
    }
    struct wire_buf pages = {0};
    for (uint32_t i = 0; i < ch->npages; i++) {
        struct tier_child_page *pg = &ch->pages[i];
        uint64_t total = page_figure(h, pr, pg->name, pg->len);
        uint64_t mine = total < pg->count ? total : pg->count;
        if (!full && pg->sent_total == total && pg->sent_mine == mine)
            continue;
        pg->sent_total = total;
        pg->sent_mine = mine;
        wbuf_str8(&pages, pg->name, pg->len);
        wbuf_varint(&pages, total);
        wbuf_varint(&pages, mine);
        npages++;
    }
    int rc = TALLY_OK;
    wbuf_reset(out);
    *written = false;
    if (full || ncounters || npages || ch->ack_owed) {
        write_header(out, WIRE_DOWN);
        wbuf_str8(out, h->node_id, strlen(h->node_id));
        wbuf_u64(out, ch->session);
        wbuf_varint(out, ch->ack);
        wbuf_varint(out, ncounters);
        wbuf_bytes(out, body.data, body.len);
        wbuf_varint(out, npages);
        wbuf_bytes(out, pages.data, pages.len);
        ch->ack_owed = false;
        if (full)
            ch->last_full_ms = now_ms;
        rc = out->failed || body.failed || pages.failed ? TALLY_E_NOMEM : TALLY_OK;
        *written = rc == TALLY_OK;
    }
    wbuf_free(&body);
    wbuf_free(&pages);
    return rc;
}

int tier_hub_relay(struct tier_child *ch, uint64_t now_ms, uint64_t every_ms, struct wire_buf *out,
                   bool *written)
{
    wbuf_reset(out);
    *written = false;
    if (!ch->pages_new && now_ms - ch->last_relay_ms < every_ms)
        return TALLY_OK;
    ch->pages_new = false;
    ch->last_relay_ms = now_ms;
    wire_presence_begin(out, ch->id, ch->incarnation, ch->seq, 0, UINT64_MAX, ch->npages);
    for (uint32_t i = 0; i < ch->npages; i++)
        wire_presence_page(out, ch->pages[i].name, ch->pages[i].len, ch->pages[i].count);
    *written = !out->failed;
    return out->failed ? TALLY_E_NOMEM : TALLY_OK;
}

struct tier_child *tier_hub_next(struct tier_hub *h, struct tier_child *ch)
{
    return ch ? ch->hh.next : h->children;
}

void tier_edge_each_page(const struct tier_edge *e, tier_page_fn *fn, void *ud)
{
    for (const struct tier_page *pg = e->pages; pg; pg = pg->hh.next)
        fn(pg->name, pg->len, pg->others, ud);
}

size_t tier_hub_children(const struct tier_hub *h)
{
    return HASH_COUNT(h->children);
}

size_t tier_edge_entries(const struct tier_edge *e)
{
    return HASH_COUNT(e->mine) + HASH_COUNT(e->views) + HASH_COUNT(e->pages);
}

struct tier_child *tier_hub_child(struct tier_hub *h, const char *id)
{
    struct tier_child *c = NULL;
    HASH_FIND_STR(h->children, id, c);
    return c;
}

const char *tier_child_id(const struct tier_child *ch)
{
    return ch->id;
}

void tier_hub_expire(struct tier_hub *h, uint64_t now_ms, uint64_t timeout_ms)
{
    struct tier_child *c, *tmp;
    HASH_ITER(hh, h->children, c, tmp)
    {
        if (now_ms - c->last_heard_ms > timeout_ms)
            child_free(h, c);
    }
}
