/*
 * fold.c - folding the slots of retired incarnations, so that a counter's
 * size is bounded by the live nodes, whatever the number of restarts, and no
 * total ever changes by the folding.
 *
 * ---- The problem ----
 *
 * A replica is one life of a node, (node_id, incarnation) (counter.c,
 * "Replicas and restarts"). A node that comes back without its state draws a
 * new incarnation, so every counter it then touches gets a new slot, and the
 * old slots live on in its peers, forever: after 200 restarts of one node of
 * three, a counter has 202 slots. Riak met the same "actor bloat" in its
 * version vectors and dotted version vectors (every new actor a client or a
 * vnode handoff introduced stayed), and Akka Distributed Data in its
 * counters and vector clocks (every node that ever wrote stays): Akka's
 * answer is pruning, which this follows.
 *
 * ---- Akka's pruning, in short ----
 *
 * When a node is removed from the cluster, the leader moves the removed
 * node's part of each value into its own part ("prune"), marks the value
 * PruningInitialized(owner, seen), waits until every member has seen the
 * marker, then PruningPerformed; the marker is dropped after
 * pruning-marker-time-to-live, and data that later arrives from the removed
 * node is ignored while the marker lives (Akka's docs: a node that was
 * removed must not come back with old data). Its weak points are the
 * dependency on membership (the leader, "every member has seen") and the
 * time-to-live.
 *
 * ---- Folding in tally ----
 *
 * 1. One folder per slot. Only the running incarnation I of node X ever
 *    folds, and only slots (X, J) with J != I: node ids are unique and the
 *    state_dir lock allows one broker per node, so J is a past life of X that
 *    never writes again. Nobody else folds X's slots, so nothing can be
 *    folded twice. (Akka needs a leader for this; tally has the owner.)
 *
 * 2. A fold at X, of counter c: X's own slot (X, I) += J's (P, N) as X holds
 *    them; c records the fold entry (J, P, N, BP, BN) ("so much of J, and of
 *    its base, is inside X's running slot"); J's slot is dropped. X's total
 *    is unchanged.
 *
 * 3. The fold entries of c travel with c in SYNC (wire.c, version 4), in the
 *    same counter record as the raised slot (X, I): a receiver never sees
 *    one without the other. Fold entries merge by maximum per J, like slots:
 *    commutative, associative, idempotent, so any order, repeat or loss is
 *    harmless. A receiver counts J's slot as max(0, J - fold) per side, and
 *    drops the slot once the entry covers it (J <= fold, both sides); a slot
 *    of J arriving later and covered by the entry is old news and ignored.
 *    If a receiver N holds more of J than the entry (a partition: N saw J's
 *    last increments, X did not), N keeps the slot, counting only the rest;
 *    the slot reaches X as an ordinary slot, and X folds the difference
 *    (own += J - fold, fold := J). So every node's total is the same before
 *    and after a fold, wherever the fold has reached, and the state
 *    converges to: one slot per live incarnation, plus fold entries.
 *
 * 4. Fold entries are what is left to collect, and they need the cluster's
 *    word. An entry for J may go once no node can still hold a slot of J:
 *    then every slot of J that arrives is old news, and J can be *retired*:
 *    its entries dropped everywhere, its slots discarded on arrival.
 *    Incarnations grow with time (tally_incarnation_new: the wall clock in
 *    milliseconds above 20 random bits, and above the node's last life and
 *    watermark when it has them on disk), so retirement is one number per
 *    node id, a watermark: "every life of X below W is retired". Each node
 *    says in its stats document (flooded to every node, $tally/stats/<node>),
 *    under "fold":
 *      "lowest":  for each node id, the lowest life it holds a slot of
 *      "members": the nodes whose stats it read within member_timeout_ms
 *      "below":   every watermark it knows, of any node
 *    X raises its own W to the lowest life that X itself or any member
 *    holds a slot of (at most X's own incarnation). A member is a node whose
 *    stats (with a "fold" object: edges have none) X read, or that a member
 *    named, within member_timeout_ms (an option, default one hour); one X
 *    has not heard *live* holds W where it is. Live means a document
 *    written after the first one X read of that node: the first may be a
 *    retained copy that a bridge hands over on connecting, written before a
 *    partition cut that node off (tests/integration/test_fold.py found a
 *    folder retiring a life that a node cut off still held, on such a
 *    copy). X raises nothing before its first peer_timeout_ms, nor before
 *    it has heard a member. A partitioned member holds the collection back
 *    until the partition heals or member_timeout_ms passes (its last word,
 *    or its last mention by another member, grows older than that): that
 *    is where it waits. Every node takes every watermark it reads (any
 *    node's, from any member), drops what it covers, and logs it ('R'
 *    record, persist.c), so that a slot of a retired life arriving later,
 *    from a stale replay or a node that was away, is discarded everywhere.
 *    And X folds nothing until it knows the watermarks (its first member's
 *    stats, or peer_timeout_ms alone): a node restarted without state never
 *    folds a stale slot of a retired life into its own.
 *
 * 5. Bases (reset.c) move with their slots. A counter that was reset has a
 *    base per slot: what its resets took away. X moves J's base into its
 *    own slot's base as it moves J's slot (at most what the slot holds: a
 *    base above its slot waits for the slot), and the fold entry records it
 *    (bp, bn) so that a receiver drops J's base entry once covered. The
 *    value is unchanged (asserted), as J's part and its base move together.
 *
 * ---- Why nothing is counted twice or lost ----
 *
 * Before retirement, a node's total is sum over slots of (slot - taken),
 * where taken is the larger of a slot's base and its fold entry: J's part
 * counted once, either in X's running slot (up to the entry) or in J's slot
 * (above it). A watermark passes only lives no member holds a slot of (each
 * member said so after it dropped them, which it does only when an entry
 * covers them), and every slot of such a life in flight was held by a member
 * when it was sent, so it is covered too.
 *
 * ---- The trade-offs, said plainly ----
 *
 *   - Like Akka's marker time-to-live: a node silent for more than
 *     member_timeout_ms that comes back holding J's last increments (which X
 *     never saw) loses them: they are discarded as a retired life's, rather
 *     than counted twice. Restarts with state keep the incarnation and never
 *     fold.
 *   - A reset that races a fold (at a node that had not yet seen it) removes
 *     J's part only above the fold entry (taken = max(base, fold)), until X
 *     folds the raised base into its own; bases merge by maximum, so where
 *     two such raises meet one may hide the other. Every node converges to
 *     the same value; a racing reset may remove less than it observed, never
 *     more.
 *   - A wall clock set back, between two starts without state, by more than
 *     the time between them gives a life below its node's watermark: its
 *     slots would be discarded. README says so (known limits).
 *   - A removed node that was not dead after all (removeNode refuses one
 *     heard within peer_timeout_ms) is ignored: its stats are not read, and
 *     once its lives are retired, its slots are discarded. It logs that it
 *     was removed; it must come back under a new node id.
 *
 * ---- Nodes removed for good ----
 *
 * A node that will never come back (its machine is gone) leaves one slot in
 * every counter it wrote, and holds every node's collection back until
 * member_timeout_ms passes. Nobody runs under its id to fold them, so an
 * admin names one node to adopt it: removeNode (control.c) at node A claims
 * R. An adopter folds R's lives as it folds its own past ones (2., into A's
 * running slot, the same fold entries), then raises R's watermark to the
 * lowest life of R any member holds, up to UINT64_MAX: every life of R,
 * retired everywhere. What must hold is rule 1: one folder per slot, so
 * two adopters of R must never both fold. That is where Akka needs the
 * leader and the membership's convergence; tally uses the same stats:
 *
 *   - A claim (R, A, lives_below, settled) travels in every node's stats
 *     ("adopt") and is persisted ('A' record). Claims merge by a total
 *     order, the claim of more lives first (see "Edges' past lives"), then
 *     a settled one, then the lower adopter id: a join, so every node ends
 *     with the same claim for R whatever order it hears them.
 *   - A folds nothing until its claim is settled: every node A ever heard
 *     of, but R and the nodes being removed, has said, in a live full
 *     document, that it backs (R, A). A node backs the highest claim it
 *     knows, so while two unsettled claims (R, A) and (R, B), A < B, exist,
 *     B never settles (A backs A), and once all have heard both, A settles.
 *     removeNode is refused at a node that knows a removal of R, so a new
 *     one can only come from a node that has not heard the current one;
 *     had that one settled, that node would have backed it.
 *   - Where it waits: settling waits for every node this node ever heard
 *     of (and did not see removed), with no member_timeout_ms: a node cut
 *     off holds the claim unsettled until the partition heals, however
 *     long, so two sides never both settle. The price is liveness: a node
 *     gone for good holds every claim back until it is removed too (several
 *     removals at once settle: each excludes every node being removed).
 *     Only a node that lost its knowledge of the others (restarted with no
 *     state and no retained stats to read) could settle a second claim;
 *     nodes that meet two settled claims count it (stats "adopt_conflicts")
 *     and keep the lower adopter.
 *   - R is dropped from the members everywhere once a claim for it is
 *     known, and its own stats are no longer read: it no longer holds any
 *     collection back.
 *
 * ---- Edges' past lives ----
 *
 * An edge (tier.c) holds its own slot and nobody else's, so it cannot fold
 * its past lives as a node does: their slots are at the hubs. So a hub
 * adopts them, by the same claims: a claim names how many lives it adopts,
 * lives_below (every life below it; UINT64_MAX for a removed node). A hub
 * that carries an edge running life I, and holds a slot of an earlier life
 * of it not yet retired, claims (edge, I) (fold_claim_past). The order of
 * claims puts the claim of more lives first: an edge restarted again (a
 * later I), or removed, supersedes. While the new claim is unsettled nobody
 * folds the edge (the old adopter stops once it backs the new claim, and
 * the new one waits for every member, the old adopter among them, to back
 * it), so there is still one folder per slot at any time. The adopter
 * folds the lives below I into its own slot and raises the edge's
 * watermark up to I, never past the running life. The edge sees nothing of
 * it: its view is the rest of the world's sum, which no fold changes.
 *
 * ---- Invariants ----
 *
 *   1. A fold entry only rises; an entry and its counter's folded bit exist
 *      together; entries are sorted by replica, without repeats.
 *   2. No node keeps a slot (or base entry) that its fold entry covers.
 *   3. Only a predecessor of self (or a life of a node self adopted) is
 *      folded at self, into self's slot, and the counter's value is the same
 *      after (asserted).
 *   4. A watermark only rises, and never passes this node's own life.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "persist.h"
#include "tally.h"

/* Distinguishes a fold entry from a slot in the digest. */
#define FOLD_TAG 0x3c6ef372fe94f82bULL

/* ==== Lookups ==== */

const struct tally_folds *table_folds(const struct tally_table *t, const struct tally_counter *c)
{
    struct tally_folds *f = NULL;
    if (c->folded)
        HASH_FIND_PTR(t->folds, &c, f);
    return f;
}

const struct tally_fold *table_fold(const struct tally_table *t, const struct tally_counter *c,
                                    uint32_t replica)
{
    struct tally_folds *f = (struct tally_folds *)table_folds(t, c); /* create is false */
    return f ? sorted_entry((void **)&f->e, &f->n, sizeof(*f->e), replica, false) : NULL;
}

void table_slot_taken(const struct tally_table *t, const struct tally_counter *c, uint32_t replica,
                      uint64_t *p, uint64_t *n)
{
    base_slot(table_base(t, c), replica, p, n);
    const struct tally_fold *f = c->folded ? table_fold(t, c, replica) : NULL;
    if (f) {
        *p = f->p > *p ? f->p : *p;
        *n = f->n > *n ? f->n : *n;
    }
}

static void mark_adopted(struct tally_table *t, const char *node, size_t len);

void table_set_self(struct tally_table *t, uint32_t self)
{
    t->self = self;
    t->has_self = true;
    for (const struct fold_adopt *a = t->adopt; a; a = a->hh.next)
        mark_adopted(t, a->node, strlen(a->node)); /* claims loaded from disk */
}

static bool is_self(const struct tally_table *t, const char *node)
{
    const struct tally_replica *me = t->has_self ? t->replicas[t->self] : NULL;
    return me && replica_is_node(me, node, strlen(node));
}

/* An earlier life of this node. */
static bool own_past(const struct tally_table *t, uint32_t replica)
{
    if (!t->has_self || replica == t->self)
        return false;
    const struct tally_replica *me = t->replicas[t->self];
    return replica_is_node(t->replicas[replica], me->key, me->id_len);
}

bool fold_is_predecessor(const struct tally_table *t, uint32_t replica)
{
    return own_past(t, replica) || (t->has_self && t->replicas[replica]->adopted);
}

/* ==== Fold entries ==== */

static struct tally_folds *folds_get(struct tally_table *t, struct tally_counter *c)
{
    struct tally_folds *f = (struct tally_folds *)table_folds(t, c);
    if (f)
        return f;
    f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->counter = c;
    HASH_ADD_PTR(t->folds, counter, f);
    c->folded = 1;
    return f;
}

/* A binary search, as every sorted array of a counter: a hub adopts the past
 * lives of its edges (one entry each), and every slot merged and summed
 * looks its entry up. */
static struct tally_fold *entry_get(struct tally_table *t, struct tally_folds *f, uint32_t replica)
{
    uint32_t n = f->n;
    struct tally_fold *e = sorted_entry((void **)&f->e, &f->n, sizeof(*f->e), replica, true);
    if (e && f->n > n)
        t->replicas[replica]->folded++;
    return e;
}

static void digest_fold(struct tally_table *t, const struct tally_counter *c,
                        const struct tally_fold *before, const struct tally_fold *after)
{
    const struct tally_fold *e = before ? before : after;
    uint64_t nh = tally_hash64(c->name, c->name_len, 0);
    uint64_t oh = table_replica_hash(t, e->replica) ^ FOLD_TAG;
    uint64_t *d = &t->digest[nh % TALLY_BUCKETS];
    if (before)
        *d -= table_entry_hash(nh, oh, before->p, before->n) ^
              table_entry_hash(nh, oh ^ 1, before->bp, before->bn);
    if (after)
        *d += table_entry_hash(nh, oh, after->p, after->n) ^
              table_entry_hash(nh, oh ^ 1, after->bp, after->bn);
}

static uint64_t max64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

static bool over_safe(const struct tally_fold *f)
{
    return f->p > (uint64_t)TALLY_MAX_SAFE || f->n > (uint64_t)TALLY_MAX_SAFE ||
           f->bp > (uint64_t)TALLY_MAX_SAFE || f->bn > (uint64_t)TALLY_MAX_SAFE;
}

int table_merge_fold(struct tally_table *t, struct tally_counter *c, const struct tally_fold *in,
                     bool *rose)
{
    *rose = false;
    if (over_safe(in))
        return TALLY_E_OVERFLOW;
    if (t->replicas[in->replica]->retired)
        return TALLY_OK;
    const struct tally_fold *have = table_fold(t, c, in->replica);
    if (have && have->p >= in->p && have->n >= in->n && have->bp >= in->bp && have->bn >= in->bn)
        return TALLY_OK;
    struct tally_folds *f = folds_get(t, c);
    struct tally_fold *e = f ? entry_get(t, f, in->replica) : NULL;
    if (!e)
        return TALLY_E_NOMEM;
    struct tally_fold before = *e;
    e->p = max64(e->p, in->p);
    e->n = max64(e->n, in->n);
    e->bp = max64(e->bp, in->bp);
    e->bn = max64(e->bn, in->bn);
    digest_fold(t, c, have ? &before : NULL, e);
    table_mark_dirty(t, c);
    *rose = true;
    return TALLY_OK;
}

void fold_settle(struct tally_table *t, struct tally_counter *c)
{
    const struct tally_folds *f = table_folds(t, c);
    for (uint32_t i = 0; f && i < f->n; i++) {
        const struct tally_fold *e = &f->e[i];
        const struct tally_slot *s = counter_slot(c, e->replica);
        if (s && s->p <= e->p && s->n <= e->n)
            table_drop_slot(t, c, e->replica); /* invariant 2 */
        uint64_t bp, bn;
        base_slot(table_base(t, c), e->replica, &bp, &bn);
        if ((bp || bn) && bp <= e->bp && bn <= e->bn)
            table_drop_base_slot(t, c, e->replica);
    }
}

/* Drops c's entry for replica (retirement), if it has one. */
static void drop_entry(struct tally_table *t, struct tally_counter *c, uint32_t replica)
{
    struct tally_folds *f = (struct tally_folds *)table_folds(t, c);
    struct tally_fold *e = (struct tally_fold *)table_fold(t, c, replica);
    if (!e)
        return;
    digest_fold(t, c, e, NULL);
    t->replicas[replica]->folded--;
    uint32_t i = (uint32_t)(e - f->e);
    memmove(&f->e[i], &f->e[i + 1], (size_t)(f->n - i - 1) * sizeof(*f->e));
    if (--f->n == 0) {
        HASH_DEL(t->folds, f);
        free(f->e);
        free(f);
        c->folded = 0;
    }
    table_mark_dirty(t, c);
}

void table_free_folds(struct tally_table *t)
{
    struct tally_folds *f, *tmp;
    HASH_ITER(hh, t->folds, f, tmp)
    {
        HASH_DEL(t->folds, f);
        free(f->e);
        free(f);
    }
}

/* ==== Folding, at the running incarnation ==== */

/* What folding predecessor j of c moves now: the entry it leaves (*to) and
 * how much goes into self's slot (dp, dn) and self's base (dbp, dbn). The
 * base moves only as far as the slot has (a base above its slot waits for
 * the slot): min(base, folded slot). */
struct move {
    struct tally_fold to;
    uint64_t dp, dn, dbp, dbn;
};

static struct move plan(const struct tally_table *t, const struct tally_counter *c, uint32_t j)
{
    const struct tally_slot *s = counter_slot(c, j);
    const struct tally_fold *f = table_fold(t, c, j);
    struct tally_fold was = f ? *f : (struct tally_fold){.replica = j};
    struct move m = {.to = was};
    uint64_t bp, bn;
    base_slot(table_base(t, c), j, &bp, &bn);
    m.to.p = max64(was.p, s ? s->p : 0);
    m.to.n = max64(was.n, s ? s->n : 0);
    m.to.bp = max64(was.bp, bp < m.to.p ? bp : m.to.p);
    m.to.bn = max64(was.bn, bn < m.to.n ? bn : m.to.n);
    m.dp = m.to.p - was.p;
    m.dn = m.to.n - was.n;
    m.dbp = m.to.bp - was.bp;
    m.dbn = m.to.bn - was.bn;
    return m;
}

/* Moves what c holds of predecessor j above its entry into self's slot
 * (and base). c's value is unchanged, but where a base of j rose after j
 * was folded (a reset that had not seen the fold): that base now applies to
 * what was folded. */
static int fold_one(struct tally_table *t, struct tally_counter *c, uint32_t j, bool *folded)
{
    struct move m = plan(t, c, j);
    if (!(m.dp || m.dn || m.dbp || m.dbn)) {
        fold_settle(t, c);
        return TALLY_OK;
    }
    const struct tally_slot *me = counter_slot(c, t->self);
    uint64_t mp = me ? me->p : 0, mn = me ? me->n : 0, bp, bn;
    base_slot(table_base(t, c), t->self, &bp, &bn);
    if (m.dp > (uint64_t)TALLY_MAX_SAFE - mp || m.dn > (uint64_t)TALLY_MAX_SAFE - mn)
        return TALLY_E_OVERFLOW; /* left unfolded: still exact */
    int64_t before = table_value(t, c);
    bool changed, rose;
    int rc = table_merge_slot(t, c, t->self, mp + m.dp, mn + m.dn, &changed);
    if (rc == TALLY_OK && (m.dbp || m.dbn))
        rc = table_merge_base_slot(t, c, t->self, bp + m.dbp, bn + m.dbn, &rose);
    if (rc == TALLY_OK)
        rc = table_merge_fold(t, c, &m.to, &rose);
    if (rc != TALLY_OK)
        return rc;
    fold_settle(t, c);
    assert(c->based || table_value(t, c) == before); /* invariant 3 */
    (void)before;
    *folded = true;
    return TALLY_OK;
}

/* The next predecessor of self that c holds a slot or a base entry of,
 * after replica `after` (UINT32_MAX: the first); UINT32_MAX if none. */
static uint32_t next_predecessor(const struct tally_table *t, const struct tally_counter *c,
                                 uint32_t after)
{
    uint32_t best = UINT32_MAX;
    for (uint32_t i = 0; i < c->nslots; i++) {
        uint32_t r = c->slots[i].replica;
        if ((after == UINT32_MAX || r > after) && r < best && fold_is_predecessor(t, r))
            best = r;
    }
    const struct tally_base *b = table_base(t, c);
    for (uint32_t i = 0; b && i < b->nslots; i++) {
        uint32_t r = b->slots[i].replica;
        if ((after == UINT32_MAX || r > after) && r < best && fold_is_predecessor(t, r))
            best = r;
    }
    return best;
}

int fold_counter(struct tally_table *t, struct tally_counter *c, bool *folded)
{
    *folded = false;
    if (!t->has_self || !t->fold_ready)
        return TALLY_OK;
    for (uint32_t j = next_predecessor(t, c, UINT32_MAX); j != UINT32_MAX;
         j = next_predecessor(t, c, j)) {
        int rc = fold_one(t, c, j, folded);
        if (rc != TALLY_OK)
            return rc;
    }
    return TALLY_OK;
}

/* ==== Retirement: a watermark per node id ==== */

static struct fold_below *below_find(const struct tally_table *t, const char *node, size_t len)
{
    struct fold_below *b = NULL;
    HASH_FIND(hh, t->below, node, len, b);
    return b;
}

uint64_t fold_below_of(const struct tally_table *t, const char *node, size_t len)
{
    const struct fold_below *b = t->below ? below_find(t, node, len) : NULL;
    return b ? b->below : 0;
}

bool fold_is_retired(const struct tally_table *t, const char *node, size_t len,
                     uint64_t incarnation)
{
    return incarnation < fold_below_of(t, node, len);
}

/* Retires one life: its fold entries and slots leave every counter. */
static void retire(struct tally_table *t, uint32_t replica)
{
    struct tally_replica *r = t->replicas[replica];
    r->retired = true;
    if (r->held == 0 && r->folded == 0)
        return;
    struct tally_counter *c, *tmp;
    HASH_ITER(hh, t->counters, c, tmp)
    {
        if (c->folded)
            drop_entry(t, c, replica);
        table_drop_slot(t, c, replica);
        if (c->based)
            table_drop_base_slot(t, c, replica);
    }
}

int fold_set_below(struct tally_table *t, struct persist *p, const char *node, size_t len,
                   uint64_t below)
{
    if (node_id_check(node, len) != TALLY_OK)
        return TALLY_E_WIRE;
    struct fold_below *b = below_find(t, node, len);
    if (b && b->below >= below)
        return TALLY_OK;
    if (!b) {
        b = calloc(1, sizeof(*b));
        if (!b)
            return TALLY_E_NOMEM;
        memcpy(b->node, node, len);
        HASH_ADD(hh, t->below, node[0], len, b);
    }
    b->below = below;
    for (uint32_t i = 0; i < t->nreplicas; i++) {
        const struct tally_replica *r = t->replicas[i];
        if (!r->retired && replica_is_node(r, node, len) && r->incarnation < below &&
            !(t->has_self && i == t->self))
            retire(t, i);
    }
    return p ? persist_retired(p, node, len, below) : TALLY_OK;
}

void table_free_below(struct tally_table *t)
{
    struct fold_below *b, *tmp;
    HASH_ITER(hh, t->below, b, tmp)
    {
        HASH_DEL(t->below, b);
        free(b);
    }
}

/* ==== Removal: a node gone for good, adopted by one node ==== */

static struct fold_adopt *adopt_find(const struct tally_table *t, const char *node, size_t len)
{
    struct fold_adopt *a = NULL;
    if (t->adopt)
        HASH_FIND(hh, t->adopt, node, len, a);
    return a;
}

const struct fold_adopt *fold_adoption(const struct tally_table *t, const char *node, size_t len)
{
    return adopt_find(t, node, len);
}

/* A node removed for good: every life of it adopted (removeNode). */
static bool removed(const struct tally_table *t, const char *node)
{
    const struct fold_adopt *a = adopt_find(t, node, strlen(node));
    return a && a->lives_below == UINT64_MAX;
}

bool fold_is_adopted(const struct tally_table *t, const char *node, size_t len,
                     uint64_t incarnation)
{
    const struct fold_adopt *a = t->has_self ? adopt_find(t, node, len) : NULL;
    return a && a->settled && incarnation < a->lives_below && is_self(t, a->by);
}

/* Sets the adopted mark of node's lives: this node's to fold once its claim
 * is settled (replicas interned later take it in table_replica). */
static void mark_adopted(struct tally_table *t, const char *node, size_t len)
{
    for (uint32_t i = 0; i < t->nreplicas; i++) {
        struct tally_replica *r = t->replicas[i];
        if (replica_is_node(r, node, len))
            r->adopted =
                fold_is_adopted(t, node, len, r->incarnation) && !(t->has_self && i == t->self);
    }
}

/* The order claims merge by (a join: any order of arrival ends the same):
 * the claim of more lives first (a later life of an edge, or a removal),
 * then a settled one, then the lower adopter id. */
static int claim_cmp(uint64_t lives_below, bool settled, const char *by, const struct fold_adopt *a)
{
    if (lives_below != a->lives_below)
        return lives_below > a->lives_below ? 1 : -1;
    if (settled != a->settled)
        return settled ? 1 : -1;
    int c = strcmp(by, a->by);
    return c < 0 ? 1 : c > 0 ? -1 : 0;
}

int fold_set_adopt(struct tally_table *t, struct persist *p, const char *node, size_t len,
                   const char *by, uint64_t lives_below, bool settled)
{
    size_t blen = strlen(by);
    if (node_id_check(node, len) != TALLY_OK || node_id_check(by, blen) != TALLY_OK ||
        name_same(node, len, by, blen) || lives_below == 0)
        return TALLY_E_WIRE;
    if (lives_below != UINT64_MAX && fold_below_of(t, node, len) >= lives_below)
        return TALLY_OK; /* an edge's lives all retired here: that claim is over */
    struct fold_adopt *a = adopt_find(t, node, len);
    if (a && lives_below == a->lives_below && settled && a->settled && strcmp(by, a->by) != 0)
        t->adopt_conflicts++; /* two sides settled apart (see the essay) */
    if (a && claim_cmp(lives_below, settled, by, a) <= 0)
        return TALLY_OK;
    if (!a) {
        a = calloc(1, sizeof(*a));
        if (!a)
            return TALLY_E_NOMEM;
        memcpy(a->node, node, len);
        HASH_ADD(hh, t->adopt, node[0], len, a);
    }
    memcpy(a->by, by, blen + 1);
    a->lives_below = lives_below;
    a->settled = settled;
    mark_adopted(t, node, len);
    return p ? persist_adopt(p, a) : TALLY_OK;
}

void table_free_adopt(struct tally_table *t)
{
    struct fold_adopt *a, *tmp;
    HASH_ITER(hh, t->adopt, a, tmp)
    {
        HASH_DEL(t->adopt, a);
        free(a);
    }
}

uint64_t tally_incarnation_new(uint64_t wall_ms, uint64_t random, uint64_t after)
{
    uint64_t inc = wall_ms << 20 | (random & 0xfffff);
    return inc > after ? inc : after + 1;
}

/* ==== Collection (stats documents) ==== */

/* A node whose stats were read, or that another member named: when, and the
 * lowest life of each node it holds a slot of (unknown until it is heard
 * itself: then it holds everything back). */
struct fold_member {
    UT_hash_handle hh;
    uint64_t heard_ms; /* heard, or named by a member heard */
    uint64_t any_ms;   /* any stats document of it read */
    bool collecting;   /* it said so in its last document */
    bool full;         /* its last live document said what it holds */
    bool direct;       /* its own stats were read, live */
    uint64_t direct_ms;
    uint64_t first_doc_ms;     /* the time_ms of the first of its documents read */
    struct fold_below *lowest; /* node -> lowest incarnation held */
    struct fold_adopt *adopt;  /* the claims its last full live document backs */
    char node[TALLY_NODE_ID_MAX + 1];
};

void fold_gc_init(struct fold_gc *gc, uint64_t member_timeout_ms, uint64_t not_before_ms)
{
    memset(gc, 0, sizeof(*gc));
    gc->member_timeout_ms = member_timeout_ms;
    gc->not_before_ms = not_before_ms;
}

static void lowest_free(struct fold_member *m)
{
    struct fold_below *b, *tmp;
    HASH_ITER(hh, m->lowest, b, tmp)
    {
        HASH_DEL(m->lowest, b);
        free(b);
    }
}

static void backed_free(struct fold_member *m)
{
    struct fold_adopt *a, *tmp;
    HASH_ITER(hh, m->adopt, a, tmp)
    {
        HASH_DEL(m->adopt, a);
        free(a);
    }
}

static void member_free(struct fold_gc *gc, struct fold_member *m)
{
    HASH_DEL(gc->members, m);
    lowest_free(m);
    backed_free(m);
    free(m);
}

void fold_gc_free(struct fold_gc *gc)
{
    struct fold_member *m, *tmp;
    HASH_ITER(hh, gc->members, m, tmp)
    {
        member_free(gc, m);
    }
}

/* A node heard within member_timeout_ms, and not removed. */
static bool is_member(const struct fold_gc *gc, const struct tally_table *t,
                      const struct fold_member *m, uint64_t now_ms)
{
    return now_ms - m->heard_ms <= gc->member_timeout_ms && !removed(t, m->node);
}

/* Appends `"key":"hex"` unless b would pass limit; false when left out. */
static bool map_item(struct wire_buf *b, size_t limit, bool first, const char *key, size_t len,
                     uint64_t v)
{
    if (b->len + len + 24 > limit)
        return false;
    wbuf_printf(b, "%s\"%.*s\":\"%016" PRIx64 "\"", first ? "" : ",", (int)len, key, v);
    return true;
}

/* The lowest life of each node this node holds a slot of, into m->lowest
 * form: a list of (replica) per node id, written straight to b. */
static uint32_t write_lowest(struct wire_buf *b, const struct tally_table *t, size_t limit,
                             uint32_t *omitted)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < t->nreplicas; i++) {
        const struct tally_replica *r = t->replicas[i];
        if (r->held == 0)
            continue;
        bool lowest = true; /* the lowest held life of its node id */
        for (uint32_t j = 0; j < t->nreplicas && lowest; j++) {
            const struct tally_replica *o = t->replicas[j];
            lowest = !(o->held && o->incarnation < r->incarnation &&
                       replica_is_node(o, r->key, r->id_len));
        }
        if (lowest)
            map_item(b, limit, n == 0, r->key, r->id_len, r->incarnation) ? n++ : (*omitted)++;
    }
    return n;
}

/* This node has past lives to retire: its watermark is below its own life
 * (so is a node that has not yet heard its members). */
static bool collecting(const struct tally_table *t)
{
    if (!t->has_self)
        return false;
    for (const struct fold_adopt *a = t->adopt; a; a = a->hh.next)
        if (fold_below_of(t, a->node, strlen(a->node)) < a->lives_below)
            return true; /* an adoption this node has not seen to its end */
    const struct tally_replica *me = t->replicas[t->self];
    return fold_below_of(t, me->key, me->id_len) < me->incarnation;
}

/* Whether this node's stats say all it knows (see fold_stats_json). */
static bool say_all(const struct fold_gc *gc, const struct tally_table *t, uint64_t now_ms)
{
    if (collecting(t) || now_ms < gc->eager_until_ms)
        return true;
    for (const struct fold_member *m = gc->members; m; m = m->hh.next)
        if (is_member(gc, t, m, now_ms) && m->collecting)
            return true;
    return false;
}

void fold_stats_json(struct wire_buf *b, const struct tally_table *t, const struct fold_gc *gc,
                     uint64_t now_ms, size_t limit)
{
    uint32_t n = 0, omitted = 0;
    if (!say_all(gc, t, now_ms)) {
        const struct tally_replica *me = t->replicas[t->self];
        wbuf_str(b, "{\"collecting\":false,\"full\":false,\"below\":{");
        map_item(b, limit, true, me->key, me->id_len, fold_below_of(t, me->key, me->id_len));
        wbuf_str(b, "}");
        if (t->adopt_conflicts)
            wbuf_printf(b, ",\"adopt_conflicts\":%" PRIu32, t->adopt_conflicts);
        wbuf_str(b, "}");
        return;
    }
    wbuf_printf(b, "{\"collecting\":%s,\"full\":true,\"members\":[",
                collecting(t) ? "true" : "false");
    for (const struct fold_member *m = gc->members; m; m = m->hh.next) {
        if (!m->direct || now_ms - m->direct_ms > gc->member_timeout_ms || removed(t, m->node))
            continue;
        if (b->len + strlen(m->node) + 4 > limit) {
            omitted++;
            continue;
        }
        wbuf_printf(b, "%s\"%s\"", n++ ? "," : "", m->node);
    }
    wbuf_str(b, "],\"lowest\":{");
    write_lowest(b, t, limit, &omitted);
    wbuf_str(b, "},\"below\":{");
    n = 0;
    for (const struct fold_below *w = t->below; w; w = w->hh.next)
        map_item(b, limit, n == 0, w->node, strlen(w->node), w->below) ? n++ : omitted++;
    wbuf_str(b, "},\"adopt\":{");
    n = 0;
    for (const struct fold_adopt *a = t->adopt; a; a = a->hh.next) {
        if (b->len + 2 * TALLY_NODE_ID_MAX + 72 > limit) {
            omitted++;
            continue;
        }
        wbuf_printf(b, "%s\"%s\":{\"by\":\"%s\",\"below\":\"%016" PRIx64 "\",\"settled\":%s}",
                    n++ ? "," : "", a->node, a->by, a->lives_below, a->settled ? "true" : "false");
    }
    wbuf_printf(b, "},\"adopt_conflicts\":%" PRIu32 ",\"omitted\":%" PRIu32 "}", t->adopt_conflicts,
                omitted);
}

static struct fold_member *member(struct fold_gc *gc, const char *node)
{
    struct fold_member *m = NULL;
    HASH_FIND_STR(gc->members, node, m);
    if (m)
        return m;
    m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    snprintf(m->node, sizeof(m->node), "%s", node);
    HASH_ADD_STR(gc->members, node, m);
    return m;
}

/* The members a member names: waited for too, as long as some member has
 * heard them within member_timeout_ms, even if this node never has (they
 * are on the far side of a partition). */
static int note_named(struct fold_gc *gc, const struct tally_table *t, const cJSON *list,
                      uint64_t now_ms)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, list)
    {
        if (!cJSON_IsString(item) ||
            node_id_check(item->valuestring, strlen(item->valuestring)) != TALLY_OK ||
            is_self(t, item->valuestring) || removed(t, item->valuestring))
            continue;
        struct fold_member *m = member(gc, item->valuestring);
        if (!m)
            return TALLY_E_NOMEM;
        m->heard_ms = now_ms;
    }
    return TALLY_OK;
}

static bool hex64(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsString(item) || strlen(item->valuestring) != 16)
        return false;
    char *end;
    *out = strtoull(item->valuestring, &end, 16);
    return *end == '\0';
}

static int note_lowest(struct fold_member *m, const cJSON *map)
{
    lowest_free(m);
    const cJSON *item;
    uint64_t inc;
    cJSON_ArrayForEach(item, map)
    {
        size_t len = strlen(item->string);
        if (!hex64(item, &inc) || node_id_check(item->string, len) != TALLY_OK)
            continue;
        struct fold_below *l = calloc(1, sizeof(*l));
        if (!l)
            return TALLY_E_NOMEM;
        memcpy(l->node, item->string, len);
        l->below = inc;
        HASH_ADD(hh, m->lowest, node[0], len, l);
    }
    return TALLY_OK;
}

/* Any node's watermarks are taken from any member: they spread, so that a
 * node started without state learns them (and a slot of a retired life that
 * comes back late is discarded everywhere, not counted twice). */
static int note_below(struct tally_table *t, struct persist *p, const cJSON *map)
{
    const cJSON *item;
    uint64_t below;
    int rc = TALLY_OK;
    cJSON_ArrayForEach(item, map)
    {
        if (hex64(item, &below) && rc == TALLY_OK)
            rc = fold_set_below(t, p, item->string, strlen(item->string), below);
    }
    return rc == TALLY_E_WIRE ? TALLY_OK : rc;
}

/* The claims of a full document: merged into this node's (a removed node is
 * no longer a member), and, from a live one, what member m backs. */
static int note_adopt(struct fold_gc *gc, struct tally_table *t, struct persist *p,
                      struct fold_member *m, const cJSON *map, bool live)
{
    if (live)
        backed_free(m);
    const cJSON *item;
    cJSON_ArrayForEach(item, map)
    {
        const cJSON *by = cJSON_GetObjectItemCaseSensitive(item, "by");
        bool settled = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(item, "settled"));
        size_t len = strlen(item->string);
        uint64_t lives_below;
        if (!cJSON_IsString(by) || node_id_check(item->string, len) != TALLY_OK ||
            node_id_check(by->valuestring, strlen(by->valuestring)) != TALLY_OK ||
            !hex64(cJSON_GetObjectItemCaseSensitive(item, "below"), &lives_below) ||
            lives_below == 0)
            continue;
        int rc = fold_set_adopt(t, p, item->string, len, by->valuestring, lives_below, settled);
        if (rc == TALLY_E_NOMEM)
            return rc;
        struct fold_member *gone = NULL;
        HASH_FIND_STR(gc->members, item->string, gone);
        if (gone && gone != m && removed(t, gone->node))
            member_free(gc, gone);
        struct fold_adopt *a = live ? calloc(1, sizeof(*a)) : NULL;
        if (live && !a)
            return TALLY_E_NOMEM;
        if (a) {
            memcpy(a->node, item->string, len);
            snprintf(a->by, sizeof(a->by), "%s", by->valuestring);
            a->lives_below = lives_below;
            a->settled = settled;
            HASH_ADD(hh, m->adopt, node[0], len, a);
        }
    }
    return TALLY_OK;
}

int fold_peer_stats(struct fold_gc *gc, struct tally_table *t, struct persist *p, const char *node,
                    const void *json, size_t len, uint64_t now_ms, uint64_t doc_ms)
{
    if (removed(t, node)) {
        /* removed: it holds nothing back, and says nothing; every node says
         * all for a while (at most once a minute), so that it hears it */
        if (!gc->told_removed_ms || now_ms - gc->told_removed_ms > 4 * FOLD_EAGER_MS) {
            gc->told_removed_ms = now_ms;
            gc->eager_until_ms = now_ms + FOLD_EAGER_MS;
        }
        return TALLY_OK;
    }
    cJSON *root = cJSON_ParseWithLength(json, len);
    const cJSON *fold = cJSON_GetObjectItemCaseSensitive(root, "fold");
    if (!cJSON_IsObject(fold)) {
        cJSON_Delete(root);
        return TALLY_OK; /* an edge (tier.c), which holds no slot but its own */
    }
    struct fold_member *m = NULL;
    HASH_FIND_STR(gc->members, node, m);
    /* A member new, or back after a silence, may lack watermarks or hold
     * retired lives: every node says all it knows for a while. */
    if (!m || now_ms - m->any_ms > FOLD_EAGER_MS)
        gc->eager_until_ms = now_ms + FOLD_EAGER_MS;
    bool full = !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(fold, "full"));
    if (!m)
        m = member(gc, node);
    if (m) {
        m->any_ms = now_ms;
        m->collecting = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fold, "collecting"));
    }
    int rc = m ? note_named(gc, t, cJSON_GetObjectItemCaseSensitive(fold, "members"), now_ms)
               : TALLY_E_NOMEM;
    /* The first document heard of a node may be an old retained copy (of a
     * node now cut off), which says nothing of what it holds now: only a
     * later one, written after it, shows the node is heard live. */
    bool live = m && m->first_doc_ms && doc_ms > m->first_doc_ms;
    if (m && !m->first_doc_ms)
        m->first_doc_ms = doc_ms ? doc_ms : 1;
    if (rc == TALLY_OK && live && full)
        rc = note_lowest(m, cJSON_GetObjectItemCaseSensitive(fold, "lowest"));
    if (m && live)
        m->full = full;
    if (rc == TALLY_OK)
        rc = note_below(t, p, cJSON_GetObjectItemCaseSensitive(fold, "below"));
    if (rc == TALLY_OK && full)
        rc = note_adopt(gc, t, p, m, cJSON_GetObjectItemCaseSensitive(fold, "adopt"), live);
    cJSON_Delete(root);
    if (rc != TALLY_OK)
        return rc;
    m->heard_ms = now_ms;
    if (live) {
        m->direct_ms = now_ms;
        m->direct = true;
    }
    return fold_ready(t, p); /* the watermarks are known: folding may start */
}

/* The lowest life of node that member m holds a slot of; UINT64_MAX if
 * none, 0 if m was never heard saying all (it may hold any). */
static uint64_t member_lowest(const struct fold_member *m, const char *node, size_t len)
{
    if (!m->direct || !m->full)
        return 0;
    const struct fold_below *l = NULL;
    HASH_FIND(hh, m->lowest, node, len, l);
    return l ? l->below : UINT64_MAX;
}

/* Whether member m's last full live document backs claim c. */
static bool backs(const struct fold_member *m, const struct fold_adopt *c)
{
    const struct fold_adopt *a = NULL;
    if (m->direct && m->full)
        HASH_FIND(hh, m->adopt, c->node, strlen(c->node), a);
    return a && strcmp(a->by, c->by) == 0 && a->lives_below == c->lives_below;
}

/* How far node's watermark may rise: to the lowest life of it that this
 * node or any member holds a slot of, and at most cap. */
static uint64_t collectable(const struct fold_gc *gc, const struct tally_table *t, const char *node,
                            size_t len, uint64_t cap, uint64_t now_ms)
{
    uint64_t w = cap;
    for (uint32_t i = 0; i < t->nreplicas; i++) {
        const struct tally_replica *r = t->replicas[i];
        if (r->held && r->incarnation < w && replica_is_node(r, node, len))
            w = r->incarnation;
    }
    for (const struct fold_member *m = gc->members; m; m = m->hh.next) {
        uint64_t l = is_member(gc, t, m, now_ms) ? member_lowest(m, node, len) : UINT64_MAX;
        w = l < w ? l : w;
    }
    return w;
}

static int fold_all(struct tally_table *t, struct persist *p)
{
    for (struct tally_counter *c = t->counters; c; c = c->hh.next) {
        int rc = fold_counter_logged(t, p, c);
        if (rc == TALLY_E_NOMEM)
            return rc;
    }
    return TALLY_OK;
}

/* This node's claims: one every member backs is settled, and the lives it
 * names folded here; a settled one's watermark rises to the lowest life of
 * its node anyone holds, up to lives_below (UINT64_MAX for a removal: every
 * life retired). */
static int adopt_step(struct fold_gc *gc, struct tally_table *t, struct persist *p, uint64_t now_ms,
                      bool *changed)
{
    /* A claim of an edge's past lives is over once they are retired here:
     * the watermark says the rest. A removal's stays, to keep the node out. */
    struct fold_adopt *a, *tmp;
    HASH_ITER(hh, t->adopt, a, tmp)
    {
        if (a->lives_below != UINT64_MAX &&
            fold_below_of(t, a->node, strlen(a->node)) >= a->lives_below) {
            HASH_DEL(t->adopt, a);
            mark_adopted(t, a->node, strlen(a->node));
            free(a);
        }
    }
    for (a = t->adopt; a; a = a->hh.next) {
        size_t len = strlen(a->node);
        if (!is_self(t, a->by))
            continue;
        if (!a->settled) {
            bool all = true;
            /* every node ever heard, however long ago, and not removed: a
             * claim never settles on one side of a partition */
            for (const struct fold_member *m = gc->members; m && all; m = m->hh.next)
                all = removed(t, m->node) || backs(m, a);
            int rc =
                all ? fold_set_adopt(t, p, a->node, len, a->by, a->lives_below, true) : TALLY_OK;
            if (rc == TALLY_OK && all)
                rc = fold_all(t, p);
            if (rc != TALLY_OK)
                return rc;
            *changed |= all;
            continue; /* retirement waits for the members to hear it */
        }
        uint64_t w = collectable(gc, t, a->node, len, a->lives_below, now_ms);
        if (w <= fold_below_of(t, a->node, len))
            continue;
        int rc = fold_set_below(t, p, a->node, len, w);
        if (rc != TALLY_OK)
            return rc;
        *changed = true;
    }
    return TALLY_OK;
}

const char *fold_remove(struct fold_gc *gc, struct tally_table *t, struct persist *p,
                        const char *node, uint64_t now_ms)
{
    size_t len = strlen(node);
    if (node_id_check(node, len) != TALLY_OK)
        return "invalid node id";
    if (!t->has_self || is_self(t, node))
        return "a node cannot remove itself";
    if (removed(t, node))
        return "already removed, or being removed (see the stats' fold.adopt)";
    struct fold_member *m = NULL;
    HASH_FIND_STR(gc->members, node, m);
    if (m && m->any_ms && now_ms - m->any_ms <= gc->alive_ms)
        return "the node is alive: stop it for good first";
    if (!t->fold_ready || now_ms < gc->not_before_ms)
        return "not ready: this node has not heard the cluster yet";
    bool known = m || fold_below_of(t, node, len);
    for (uint32_t i = 0; i < t->nreplicas && !known; i++)
        known = replica_is_node(t->replicas[i], node, len);
    if (!known)
        return "unknown node";
    const struct tally_replica *me = t->replicas[t->self];
    int rc = fold_set_adopt(t, p, node, len, me->key, UINT64_MAX, false);
    if (m)
        member_free(gc, m);
    gc->eager_until_ms = now_ms + FOLD_EAGER_MS; /* every node says all, and hears the claim */
    return rc == TALLY_OK ? NULL : rc == TALLY_E_NOMEM ? "out of memory" : "cannot write the state";
}

int fold_claim_past(struct fold_gc *gc, struct tally_table *t, struct persist *p, const char *node,
                    uint64_t incarnation, uint64_t now_ms)
{
    size_t len = strlen(node);
    const struct fold_adopt *a = adopt_find(t, node, len);
    if (!t->has_self || !t->fold_ready || now_ms < gc->not_before_ms ||
        (a && a->lives_below >= incarnation) || is_self(t, node))
        return TALLY_OK;
    uint64_t below = fold_below_of(t, node, len);
    bool past = false;
    for (uint32_t i = 0; i < t->nreplicas && !past; i++) {
        const struct tally_replica *r = t->replicas[i];
        past = (r->held || r->folded) && r->incarnation < incarnation && r->incarnation >= below &&
               replica_is_node(r, node, len);
    }
    if (!past)
        return TALLY_OK; /* an edge's first life, or its past already retired */
    gc->eager_until_ms = now_ms + FOLD_EAGER_MS;
    return fold_set_adopt(t, p, node, len, t->replicas[t->self]->key, incarnation, false);
}

int fold_collect(struct fold_gc *gc, struct tally_table *t, struct persist *p, uint64_t now_ms,
                 bool *retired)
{
    *retired = false;
    if (!t->has_self || !t->fold_ready || now_ms < gc->not_before_ms)
        return TALLY_OK; /* the members have not all been heard yet */
    int rc = adopt_step(gc, t, p, now_ms, retired);
    if (rc != TALLY_OK || !gc->members)
        return rc;
    /* below the lowest life anyone holds a slot of, ourselves included */
    const struct tally_replica *me = t->replicas[t->self];
    uint64_t w = collectable(gc, t, me->key, me->id_len, me->incarnation, now_ms);
    if (w <= fold_below_of(t, me->key, me->id_len))
        return TALLY_OK;
    *retired = true;
    return fold_set_below(t, p, me->key, me->id_len, w);
}

int fold_ready(struct tally_table *t, struct persist *p)
{
    if (t->fold_ready || !t->has_self)
        return TALLY_OK;
    t->fold_ready = true;
    return fold_all(t, p);
}

int fold_counter_logged(struct tally_table *t, struct persist *p, struct tally_counter *c)
{
    bool folded;
    int rc = fold_counter(t, c, &folded);
    const struct tally_folds *f = table_folds(t, c);
    for (uint32_t i = 0; folded && p && f && i < f->n; i++)
        persist_fold(p, t, c, f->e[i].replica, counter_slot(c, t->self));
    return rc;
}
