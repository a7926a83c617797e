/*
 * reset.c - resetting and deleting a counter that many nodes update at once,
 * without coordination, without losing or double counting anything.
 *
 * ---- Why a reset is not "set every slot to 0" ----
 *
 * A PN-counter's slots only grow (counter.c): merging takes the maximum, so a
 * node that zeroed its slots would get the old values straight back from its
 * peers, and a node that lowered only its own slot would break the merge law.
 * Counter stores that did it anyway are where the complaints come from:
 * Riak's counters could not really be deleted (a deleted counter came back
 * with its old count when a replica holding it answered: "resurrection"),
 * Akka's ORMap re-adds a removed key with its old value on a concurrent
 * update, and NATS and Cassandra users "reset" by publishing a negative
 * increment, which double counts when it is retried.
 *
 * ---- The observed reset ----
 *
 * tally keeps the slots as they are and adds a second grow-only map beside
 * them, the base: for each slot (replica) and each device maximum, the value a
 * reset took away. A reset at node X sets the base of every slot and device to
 * what X has observed of it at that moment; the counter's value becomes
 *
 *     value = sum(P - bP) - sum(N - bN) + sum(D - bD)
 *
 * and the base merges like the slots, entry by entry, by maximum. This is the
 * "observed-remove" idea of OR-sets (Shapiro et al., INRIA RR-7506, 2011,
 * 3.3.5) applied to a counter, the rule Redis Enterprise's Active-Active
 * databases use for removes: a reset removes exactly the increments the
 * resetting node had seen.
 *
 *   - An increment made elsewhere at the same moment (not yet seen by X)
 *     raises a slot above X's base: it survives the reset and is counted,
 *     once, everywhere.
 *   - Two resets, anywhere, in any order, merge to the larger base of each
 *     slot: the union of what they observed. Repeating a reset changes
 *     nothing. Nothing is ever subtracted twice, since a base never exceeds
 *     the slot it was taken from, and it only ever takes the value of a slot
 *     that was counted.
 *   - The base travels with the slots (SYNC, wire.c) and is on disk with them
 *     (persist.c). A base that arrives before its slot (a split message, a
 *     replay) takes away at most what the slot holds: each term is clamped at
 *     0 until the slot catches up.
 *
 * ---- Delete ----
 *
 * A delete is a reset that also hides the counter: it is left out of
 * listings, and every node replaces its retained total and state with empty
 * retained messages. Whether the latest operation was a reset or a delete is
 * decided by stamps, like Lamport clocks: an operation at a node takes the
 * stamp max(deleted, reset) + 1 of the counter as that node sees it; the two
 * stamps merge by maximum. A counter is hidden while
 *
 *     deleted > 0 and deleted >= reset and no slot or device is above its base
 *
 * so a delete wins over a concurrent reset of the same stamp, a reset made
 * after a node saw the delete shows the counter again (at 0), and an increment
 * after a delete, at any node, brings the counter back counting from zero:
 * its value is exactly the increments made after (or concurrently with) the
 * delete. Nothing of this needs the nodes to agree on time or on an order.
 *
 * ---- Tombstones, and what they cost ----
 *
 * A deleted counter keeps its slots and its base: that is its tombstone, and
 * it is what stops a peer's old state from resurrecting the old count. The
 * base has at most one entry per slot and device the counter has, so a
 * tombstone is bounded by the counter's live slots (24 + 16 bytes a slot);
 * it is never collected, since forgetting it safely would need every node to
 * acknowledge it (Akka's pruning). Tombstones count toward max_counters. A
 * counter that was never reset pays nothing: the bases live in their own
 * hash table, keyed by counter, and the counter carries one bit.
 *
 * ---- Invariants ----
 *
 *   1. Base entries and stamps never decrease, but for the entry of a
 *      retired incarnation's slot, which fold.c moves into its node's running
 *      slot's entry and then drops (table_drop_base_slot).
 *   2. After a local reset, every base entry equals its slot; bases merged
 *      from peers may lead their slots only until those slots arrive.
 *   3. base->slots is sorted by replica and base->devs by device, no repeats.
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

/* Distinguishes a base entry from its slot in the digest. */
#define BASE_TAG 0x6a09e667f3bcc909ULL
#define STAMPS_OWNER 0xbb67ae8584caa73bULL

/* ==== Lookups ==== */

struct tally_base *table_base(const struct tally_table *t, const struct tally_counter *c)
{
    struct tally_base *b = NULL;
    if (c->based)
        HASH_FIND_PTR(t->bases, &c, b);
    return b;
}

/* Binary searches, like every sorted array of a counter (sorted_entry): a
 * hub holds a slot per edge, so a reset gives a base entry per edge, each
 * merged and looked up here. Walking the base made the reset of a counter
 * of 10,000 slots take 47 ms, and 100,000 slots 4.1 s (now 1.1 and 11 ms). */
static struct tally_base_slot *bslot_find(const struct tally_base *b, uint32_t replica)
{
    struct tally_base *m = (struct tally_base *)b; /* unchanged: create is false */
    return sorted_entry((void **)&m->slots, &m->nslots, sizeof(*m->slots), replica, false);
}

/* The same for devices: a counter may hold max_devices of them. Walking the
 * base made a counter of 100,000 devices, once reset, take the broker 2 s to
 * sum at every publish of its total, and its reset 13 s. */
static struct tally_dev *bdev_find(const struct tally_base *b, uint32_t device)
{
    struct tally_base *m = (struct tally_base *)b; /* unchanged: create is false */
    return sorted_entry((void **)&m->devs, &m->ndevs, sizeof(*m->devs), device, false);
}

void base_slot(const struct tally_base *b, uint32_t replica, uint64_t *p, uint64_t *n)
{
    const struct tally_base_slot *s = b ? bslot_find(b, replica) : NULL;
    *p = s ? s->p : 0;
    *n = s ? s->n : 0;
}

uint64_t base_device(const struct tally_base *b, uint32_t device)
{
    const struct tally_dev *d = b ? bdev_find(b, device) : NULL;
    return d ? d->total : 0;
}

/* ==== Values ==== */

static uint64_t minus(uint64_t v, uint64_t base)
{
    return v > base ? v - base : 0;
}

/* a + b for a >= 0, saturated: thousands of slots near 2^53 could pass 2^63 */
static int64_t plus(int64_t a, uint64_t b)
{
    return b > (uint64_t)(INT64_MAX - a) ? INT64_MAX : a + (int64_t)b;
}

/* What the base and the fold entries take from each slot of a counter, found
 * in step with its slots: the three arrays are sorted by replica, so one
 * pass over them does it; taken() is table_slot_taken for replicas asked in
 * rising order. A reset counter is summed at every publish of its total and
 * for the DOWNs of a hub tick. At 10,000 slots (a hub of a tree whose edges
 * all write it) a walk of the base for each slot took 26 ms a sum, a binary
 * search 0.65 ms, this 0.04 ms; at 100,000 slots 2.1 s, 6.4 and 0.6 ms. */
struct taken_walk {
    const struct tally_base_slot *b;
    const struct tally_fold *f;
    uint32_t nb, nf;
};

static struct taken_walk taken_walk(const struct tally_base *b, const struct tally_folds *f)
{
    return (struct taken_walk){.b = b ? b->slots : NULL,
                               .nb = b ? b->nslots : 0,
                               .f = f ? f->e : NULL,
                               .nf = f ? f->n : 0};
}

/* What the base and a fold take from one slot (the larger of the two), and
 * the fold's part alone (fp, fn). */
static void taken(struct taken_walk *w, uint32_t replica, uint64_t *p, uint64_t *n, uint64_t *fp,
                  uint64_t *fn)
{
    *p = *n = *fp = *fn = 0;
    for (; w->nb && w->b->replica < replica; w->nb--)
        w->b++;
    if (w->nb && w->b->replica == replica) {
        *p = w->b->p;
        *n = w->b->n;
    }
    for (; w->nf && w->f->replica < replica; w->nf--)
        w->f++;
    if (w->nf && w->f->replica == replica) {
        *fp = w->f->p;
        *fn = w->f->n;
        *p = *fp > *p ? *fp : *p;
        *n = *fn > *n ? *fn : *n;
    }
}

/* ---- A reset in another group of hubs ----
 *
 * A hub in a group (group.c) holds its own group's nodes' slots, and one
 * slot per other group: that group's sum. A reset at a hub of group A sets
 * the base of B's replica to the sum of B it observed; it reaches B's hubs
 * in A's GSUMs, where it lands on B's own replica (t->group), which they
 * hold no slot of. There it takes away from B's own part of the total (its
 * nodes' slots, each less its base) down to B's sum less that base:
 *
 *     own part = min(sum(slot - max(base, fold)), sum(slot - fold) - G)
 *
 * the same figure the other groups find for B's replica, min(sum, max(the
 * bases B's GSUMs carry, G)), once they have converged. Which of B's slots
 * the observed sum came from is known to no one, so the two kinds of base
 * are joined by maximum, not by union: two resets, one in A and one in B,
 * that each observed a different part of B's increments, take away the
 * larger part, not both. Nothing is ever taken twice.
 *
 * ---- A reset in another region ----
 *
 * A region is a group of groups (group.c): a hub of region R, in group A,
 * holds A's nodes' slots, one slot per other group of R, and one per other
 * region. Its RSUMs carry R's sum (A's, and the other groups' slots) and
 * R's base: A's, at least G, plus each other group's base, at most its
 * slot. A reset in region S sets the base of R's replica, which lands on R's
 * own replica at R's hubs (t->region), and takes away from R's part, one
 * level up the same way:
 *
 *     region part = min(own part + sum(other group's slot - base),
 *                       sum(slot - fold) + sum(other group's slot) - R)
 *
 * which is what S finds for R's replica, min(sum, max(base, R)). Each level
 * above (a region of regions, group.c) takes its part from the one below
 * the same way, with its own replica's base. */
static void own_base(const struct tally_base *b, bool has, uint32_t replica, uint64_t *p,
                     uint64_t *n)
{
    *p = *n = 0;
    if (b && has)
        base_slot(b, replica, p, n);
}

static uint64_t least(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

void table_sums(const struct tally_table *t, const struct tally_counter *c, struct tally_sums *out)
{
    const struct tally_base *b = table_base(t, c);
    table_raw(t, c, out);
    if (!b && !c->folded)
        return;
    /* Each part is at most the raw one, which counter_sums kept in range.
     * A slot loses what its base took away, or what a fold moved into its
     * node's running slot (fold.c), whichever is larger. */
    uint64_t gp[TALLY_LEVELS + 1], gn[TALLY_LEVELS + 1];
    bool grouped = false;
    for (int k = 1; k <= TALLY_LEVELS; k++) {
        own_base(b, t->has_unit[k], t->unit[k], &gp[k], &gn[k]);
        grouped = grouped || gp[k] || gn[k];
    }
    /* grouped, by level k of the replica (0: our group's nodes): l, their
     * part, and raw, their raw sum (level 0: less folds) */
    int64_t lp[TALLY_LEVELS + 1] = {0}, ln[TALLY_LEVELS + 1] = {0};
    int64_t rawp[TALLY_LEVELS + 1] = {0}, rawn[TALLY_LEVELS + 1] = {0}, p, n, d = 0;
    struct taken_walk w = taken_walk(b, c->folded ? table_folds(t, c) : NULL);
    for (uint32_t i = 0; i < c->nslots; i++) {
        const struct tally_slot *s = &c->slots[i];
        uint64_t bp, bn, fp, fn;
        taken(&w, s->replica, &bp, &bn, &fp, &fn);
        if (!table_counts(t, s->replica))
            continue; /* its part is in the rest slot, or the other way (group.c, "Light hubs") */
        int k = grouped ? group_level(t, s->replica) : TALLY_LEVELS;
        lp[k] = plus(lp[k], minus(s->p, bp));
        ln[k] = plus(ln[k], minus(s->n, bn));
        rawp[k] = plus(rawp[k], k ? s->p : minus(s->p, fp));
        rawn[k] = plus(rawn[k], k ? s->n : minus(s->n, fn));
    }
    p = lp[TALLY_LEVELS];
    n = ln[TALLY_LEVELS];
    if (grouped) {
        /* our unit's part at each level, from the one below (level 1: our
         * group's own part; "A reset in another region", above) */
        uint64_t part_p = least((uint64_t)lp[0], minus((uint64_t)rawp[0], gp[1]));
        uint64_t part_n = least((uint64_t)ln[0], minus((uint64_t)rawn[0], gn[1]));
        int64_t whole_p = rawp[0], whole_n = rawn[0];
        for (int k = 2; k <= TALLY_LEVELS; k++) {
            whole_p = plus(whole_p, (uint64_t)rawp[k - 1]);
            whole_n = plus(whole_n, (uint64_t)rawn[k - 1]);
            part_p = least((uint64_t)plus((int64_t)part_p, (uint64_t)lp[k - 1]),
                           minus((uint64_t)whole_p, gp[k]));
            part_n = least((uint64_t)plus((int64_t)part_n, (uint64_t)ln[k - 1]),
                           minus((uint64_t)whole_n, gn[k]));
        }
        p = plus(p, part_p);
        n = plus(n, part_n);
    }
    const struct tally_dev *dv = counter_devs(c);
    for (uint32_t i = 0; i < counter_ndevs(c); i++)
        d = plus(d, minus(dv[i].total, base_device(b, dv[i].device)));
    out->p = p < out->p ? p : out->p;
    out->n = n < out->n ? n : out->n;
    out->devices = d < out->devices ? d : out->devices;
    out->value = clamp_safe(out->p - out->n + out->devices);
}

int64_t table_value(const struct tally_table *t, const struct tally_counter *c)
{
    struct tally_sums s;
    table_sums(t, c, &s);
    return s.value;
}

/* Hidden while nothing is left above the bases: every part of the sums is
 * a sum of terms that are each at least 0, so 0 means every term is. */
bool table_hidden(const struct tally_table *t, const struct tally_counter *c)
{
    const struct tally_base *b = table_base(t, c);
    if (!b || b->deleted == 0 || b->deleted < b->reset)
        return false;
    struct tally_sums s;
    table_sums(t, c, &s);
    return s.p == 0 && s.n == 0 && s.devices == 0;
}

/* ==== Changes ==== */

static struct tally_base *base_get(struct tally_table *t, struct tally_counter *c)
{
    struct tally_base *b = table_base(t, c);
    if (b)
        return b;
    b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->counter = c;
    HASH_ADD_PTR(t->bases, counter, b);
    c->based = 1;
    return b;
}

static struct tally_base_slot *bslot_get(struct tally_base *b, uint32_t replica)
{
    return sorted_entry((void **)&b->slots, &b->nslots, sizeof(*b->slots), replica, true);
}

static struct tally_dev *bdev_get(struct tally_base *b, uint32_t device)
{
    return sorted_entry((void **)&b->devs, &b->ndevs, sizeof(*b->devs), device, true);
}

/* Keeps the table's digest current: the base is part of the state peers
 * compare (anti-entropy), like the slots. */
static void digest(struct tally_table *t, const struct tally_counter *c, uint64_t owner,
                   uint64_t p0, uint64_t n0, uint64_t p1, uint64_t n1)
{
    uint64_t nh = tally_hash64(c->name, c->name_len, 0);
    uint64_t *d = &t->digest[nh % TALLY_BUCKETS];
    if (p0 || n0)
        *d -= table_entry_hash(nh, owner, p0, n0);
    *d += table_entry_hash(nh, owner, p1, n1);
}

int table_merge_base_slot(struct tally_table *t, struct tally_counter *c, uint32_t replica,
                          uint64_t p, uint64_t n, bool *rose)
{
    *rose = false;
    if (p > (uint64_t)TALLY_MAX_SAFE || n > (uint64_t)TALLY_MAX_SAFE)
        return TALLY_E_OVERFLOW;
    const struct tally_base *have = table_base(t, c);
    const struct tally_base_slot *s = have ? bslot_find(have, replica) : NULL;
    if ((s && s->p >= p && s->n >= n) || (!s && p == 0 && n == 0))
        return TALLY_OK;
    struct tally_base *b = base_get(t, c);
    struct tally_base_slot *e = b ? bslot_get(b, replica) : NULL;
    if (!e)
        return TALLY_E_NOMEM;
    uint64_t p0 = e->p, n0 = e->n;
    e->p = p > e->p ? p : e->p;
    e->n = n > e->n ? n : e->n;
    digest(t, c, table_replica_hash(t, replica) ^ BASE_TAG, p0, n0, e->p, e->n);
    table_mark_dirty(t, c);
    *rose = true;
    return TALLY_OK;
}

void table_drop_base_slot(struct tally_table *t, struct tally_counter *c, uint32_t replica)
{
    struct tally_base *b = table_base(t, c);
    struct tally_base_slot *e = b ? bslot_find(b, replica) : NULL;
    if (!e)
        return;
    uint64_t nh = tally_hash64(c->name, c->name_len, 0);
    t->digest[nh % TALLY_BUCKETS] -=
        table_entry_hash(nh, table_replica_hash(t, replica) ^ BASE_TAG, e->p, e->n);
    uint32_t i = (uint32_t)(e - b->slots);
    memmove(&b->slots[i], &b->slots[i + 1], (size_t)(b->nslots - i - 1) * sizeof(*b->slots));
    b->nslots--;
    table_mark_dirty(t, c);
}

int table_merge_base_device(struct tally_table *t, struct tally_counter *c, uint32_t device,
                            uint64_t total, bool *rose)
{
    *rose = false;
    if (total > (uint64_t)TALLY_MAX_SAFE)
        return TALLY_E_OVERFLOW;
    const struct tally_base *have = table_base(t, c);
    const struct tally_dev *d = have ? bdev_find(have, device) : NULL;
    if ((d && d->total >= total) || (!d && total == 0))
        return TALLY_OK;
    struct tally_base *b = base_get(t, c);
    struct tally_dev *e = b ? bdev_get(b, device) : NULL;
    if (!e)
        return TALLY_E_NOMEM;
    uint64_t old = e->total;
    e->total = total;
    digest(t, c, table_device_hash(t, device) ^ BASE_TAG, old, 0, total, 0);
    table_mark_dirty(t, c);
    *rose = true;
    return TALLY_OK;
}

int table_merge_stamps(struct tally_table *t, struct tally_counter *c, uint64_t deleted,
                       uint64_t reset, bool *rose)
{
    *rose = false;
    const struct tally_base *have = table_base(t, c);
    if ((have && have->deleted >= deleted && have->reset >= reset) ||
        (!have && deleted == 0 && reset == 0))
        return TALLY_OK;
    struct tally_base *b = base_get(t, c);
    if (!b)
        return TALLY_E_NOMEM;
    uint64_t d0 = b->deleted, r0 = b->reset;
    b->deleted = deleted > b->deleted ? deleted : b->deleted;
    b->reset = reset > b->reset ? reset : b->reset;
    digest(t, c, STAMPS_OWNER, d0, r0, b->deleted, b->reset);
    table_mark_dirty(t, c);
    *rose = true;
    return TALLY_OK;
}

int table_reset(struct tally_table *t, struct tally_counter *c, bool delete)
{
    const struct tally_base *have = table_base(t, c);
    uint64_t stamp = 1;
    if (have)
        stamp += have->deleted > have->reset ? have->deleted : have->reset;
    bool rose;
    for (uint32_t i = 0; i < c->nslots; i++) {
        const struct tally_slot s = c->slots[i];
        uint32_t q;
        if (!table_counts(t, s.replica))
            continue; /* its part is in a rest slot, or a rest slot's in the slots we hold */
        if (table_merge_base_slot(t, c, s.replica, s.p, s.n, &rose) != TALLY_OK)
            return TALLY_E_NOMEM;
        /* a rest slot at a split hub: its level's holder takes the parts,
         * asked by the request's base (group.c, "Split hubs") */
        if (t->split && t->replicas[s.replica]->rest &&
            (table_rest_replica(t, t->replicas[s.replica]->rest, true, &q) != TALLY_OK ||
             table_merge_base_slot(t, c, q, s.p, s.n, &rose) != TALLY_OK))
            return TALLY_E_NOMEM;
    }
    for (uint32_t i = 0; i < counter_ndevs(c); i++)
        if (table_merge_base_device(t, c, counter_devs(c)[i].device, counter_devs(c)[i].total,
                                    &rose) != TALLY_OK)
            return TALLY_E_NOMEM;
    return table_merge_stamps(t, c, delete ? stamp : 0, delete ? 0 : stamp, &rose);
}

void table_free_bases(struct tally_table *t)
{
    struct tally_base *b, *tmp;
    HASH_ITER(hh, t->bases, b, tmp)
    {
        HASH_DEL(t->bases, b);
        free(b->slots);
        free(b->devs);
        free(b);
    }
}
