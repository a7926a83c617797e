/*
 * table.c - the named counters of one node, and the registries of replicas
 * and devices that the counters' slots refer to by index.
 *
 * Counters live in a uthash table keyed by name. A counter that changed is put
 * once on the dirty list (a FIFO threaded through the counters themselves), so
 * that a tick touches only what changed: a burst of 10,000 increments to one
 * name is one entry, published once.
 *
 * Replicas ((node_id, incarnation) pairs) and devices are interned: a slot
 * holds a 32-bit index, not a string, and the registries never shrink while
 * the broker runs (replicas are few; devices are bounded by max_devices).
 *
 * A change is also owed to the neighbours: the slot is marked pending (who
 * taught it to us, see repl.c) and its counter put once on a second FIFO,
 * the replication list, which repl.c drains into SYNC deltas.
 *
 * Every change also keeps digest[] current: for each of TALLY_BUCKETS buckets
 * of names, the wrapping sum of a 64-bit hash of every (name, slot, value) in
 * it. Two nodes with the same state have the same digests whatever order they
 * learned it in, so comparing 256 numbers tells which buckets need repair
 * (anti-entropy, see wire.c and plugin.c).
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

/* ==== Hashing ==== */

static uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

/* FNV-1a with a MurmurHash3 finaliser: stable across machines and builds,
 * which the digests exchanged between nodes require. */
uint64_t tally_hash64(const void *data, size_t len, uint64_t seed)
{
    const uint8_t *p = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ fmix64(seed);
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return fmix64(h ^ len);
}

unsigned name_bucket(const char *name, size_t len)
{
    return (unsigned)(tally_hash64(name, len, 0) % TALLY_BUCKETS);
}

uint64_t table_entry_hash(uint64_t name_hash, uint64_t owner_hash, uint64_t p, uint64_t n)
{
    return fmix64(name_hash ^ fmix64(owner_hash + p * 0x9e3779b97f4a7c15ULL) ^
                  fmix64(n + 0x632be59bd9b4e019ULL));
}

/* ==== Setup ==== */

void table_init(struct tally_table *t, size_t max_counters, uint32_t max_devices)
{
    memset(t, 0, sizeof(*t));
    t->max_counters = max_counters;
    t->max_devices = max_devices;
    t->dirty_tail = &t->dirty_head;
}

void table_free(struct tally_table *t)
{
    table_free_bases(t);
    table_free_folds(t);
    table_free_below(t);
    table_free_adopt(t);
    free(t->repl);
    struct tally_counter *c, *tmp;
    HASH_ITER(hh, t->counters, c, tmp)
    {
        HASH_DEL(t->counters, c);
        counter_free(c);
    }
    HASH_CLEAR(hh, t->replica_hash);
    for (uint32_t i = 0; i < t->nreplicas; i++)
        free(t->replicas[i]);
    free(t->replicas);
    HASH_CLEAR(hh, t->device_hash);
    for (uint32_t i = 0; i < t->ndevices; i++)
        free(t->devices[i]);
    free(t->devices);
    memset(t, 0, sizeof(*t));
}

void table_set_clock(struct tally_table *t, uint64_t since_start_ms)
{
    t->clock_ds = (uint32_t)(since_start_ms / 100) + 1;
}

/* ==== Counters ==== */

struct tally_counter *table_find(struct tally_table *t, const char *name, size_t len)
{
    struct tally_counter *c = NULL;
    HASH_FIND(hh, t->counters, name, len, c);
    return c;
}

/* Finds or creates the counter `name` (already validated by name_check). A
 * new name is refused at max_counters only when it comes from local input. */
/* A counter named in up to 7 bytes is one 112-byte malloc chunk (glibc: 8 B
 * of header, 16 B steps): bench_table's 144 B a counter, under its 150 B
 * target, with a slot's 32. A field more pays 16 B in each of a million
 * counters; it grew so once unnoticed (160 B). */
_Static_assert(sizeof(struct tally_counter) <= 96, "a counter's fixed part fits 96 bytes");

int table_get(struct tally_table *t, const char *name, size_t len, enum table_mode mode,
              struct tally_counter **out)
{
    struct tally_counter *c = table_find(t, name, len);
    if (!c) {
        if (mode == TABLE_LOCAL && t->ncounters >= t->max_counters)
            return TALLY_E_MAX_COUNTERS;
        c = calloc(1, sizeof(*c) + len + 1);
        if (!c)
            return TALLY_E_NOMEM;
        memcpy(c->name, name, len);
        c->name_len = (uint8_t)len;
        HASH_ADD(hh, t->counters, name, len, c);
        t->ncounters++;
    }
    *out = c;
    return TALLY_OK;
}

bool table_over_counters(const struct tally_table *t)
{
    return t->ncounters > t->max_counters;
}

bool table_over_devices(const struct tally_table *t)
{
    return t->ndevices > t->max_devices;
}

/* Forgets a counter created for an increment that was then not applied. */
void table_drop_if_empty(struct tally_table *t, struct tally_counter *c)
{
    if (c->nslots || counter_ndevs(c) || c->dirty || c->repl_dirty || c->based || c->folded)
        return;
    HASH_DEL(t->counters, c);
    counter_free(c);
    t->ncounters--;
}

/* The replication list is an array that exists only while deltas are owed
 * (freed when drained), not a link in every counter: a pointer more in each
 * of a million counters would cost 16 B of malloc rounding each. Out of
 * memory, the counter is left off: its change waits for its next one, or for
 * anti-entropy (repl.c). */
static void mark_repl(struct tally_table *t, struct tally_counter *c)
{
    if (c->repl_dirty)
        return;
    if (t->nrepl == t->repl_cap && t->repl_next > 0) { /* drop what was taken */
        memmove(t->repl, t->repl + t->repl_next, (t->nrepl - t->repl_next) * sizeof(*t->repl));
        t->nrepl -= t->repl_next;
        t->repl_next = 0;
    }
    if (t->nrepl == t->repl_cap) {
        size_t cap = t->repl_cap ? t->repl_cap * 2 : 64;
        struct tally_counter **l = realloc(t->repl, cap * sizeof(*l));
        if (!l)
            return;
        t->repl = l;
        t->repl_cap = cap;
    }
    t->repl[t->nrepl++] = c;
    c->repl_dirty = 1;
}

/* A changed counter: its outputs are stale, and it owes its peers a delta
 * (its pending slots, and its base if it has one: reset.c changes only that). */
void table_mark_dirty(struct tally_table *t, struct tally_counter *c)
{
    c->stale = 1;
    mark_repl(t, c);
    if (c->dirty)
        return;
    c->dirty = 1;
    c->dirty_next = NULL;
    *t->dirty_tail = c;
    t->dirty_tail = &c->dirty_next;
    t->ndirty++;
}

/* A slot learned from `from` owes itself to every neighbour but that one,
 * unless it already owed itself to someone else: then to everyone. */
static uint16_t pending_join(uint16_t was, uint16_t from)
{
    return was == REPL_NONE || was == from ? from : REPL_ALL;
}

struct tally_counter *table_pop_repl(struct tally_table *t)
{
    if (t->repl_next == t->nrepl) {
        free(t->repl);
        t->repl = NULL;
        t->nrepl = t->repl_next = t->repl_cap = 0;
        return NULL;
    }
    struct tally_counter *c = t->repl[t->repl_next++];
    c->repl_dirty = 0;
    return c;
}

bool table_repl_pending(const struct tally_table *t)
{
    return t->repl_next < t->nrepl;
}

/* Takes the oldest counter off the dirty list and clears its flag: a change
 * after this puts it back at the end. NULL when nothing is dirty. */
struct tally_counter *table_pop_dirty(struct tally_table *t)
{
    struct tally_counter *c = t->dirty_head;
    if (!c)
        return NULL;
    t->dirty_head = c->dirty_next;
    if (!t->dirty_head)
        t->dirty_tail = &t->dirty_head;
    c->dirty = 0;
    c->dirty_next = NULL;
    t->ndirty--;
    return c;
}

/* ==== Changes that keep the digest current ==== */

uint64_t table_replica_hash(const struct tally_table *t, uint32_t replica)
{
    return t->replicas[replica]->hash;
}

uint64_t table_device_hash(const struct tally_table *t, uint32_t device)
{
    return t->devices[device]->hash ^ 0xd1b54a32d192ed03ULL;
}

/* Whether replica's slots count in the digest: not another unit's where a
 * light hub of our group holds none (t->lean). */
static bool digested(const struct tally_table *t, uint32_t replica)
{
    return !t->lean || !table_foreign(t, replica);
}

static void digest_slot(struct tally_table *t, const struct tally_counter *c, uint32_t replica,
                        const struct tally_slot *before, const struct tally_slot *after)
{
    if (!digested(t, replica))
        return;
    uint64_t nh = tally_hash64(c->name, c->name_len, 0);
    uint64_t oh = table_replica_hash(t, replica);
    uint64_t *d = &t->digest[nh % TALLY_BUCKETS];
    if (before)
        *d -= table_entry_hash(nh, oh, before->p, before->n);
    *d += table_entry_hash(nh, oh, after->p, after->n);
}

/* After slot `replica` of c changed: digest, dirty list, what it owes. */
static void slot_changed(struct tally_table *t, struct tally_counter *c, uint32_t replica,
                         const struct tally_slot *before, uint16_t from)
{
    struct tally_slot *s = (struct tally_slot *)counter_slot(c, replica);
    if (!before)
        t->replicas[replica]->held++;
    digest_slot(t, c, replica, before, s);
    s->pending = pending_join(s->pending, from);
    table_mark_dirty(t, c);
}

int table_add(struct tally_table *t, struct tally_counter *c, uint32_t replica, int64_t delta,
              bool *changed)
{
    const struct tally_slot *s = counter_slot(c, replica);
    struct tally_slot before = s ? *s : (struct tally_slot){0};
    *changed = false;
    int rc = counter_add(c, replica, delta);
    if (rc != TALLY_OK)
        return rc;
    if (s && delta == 0)
        return TALLY_OK;
    if (!s && !counter_slot(c, replica))
        return TALLY_OK; /* a 0 increment to a counter that already held something */
    slot_changed(t, c, replica, s ? &before : NULL, REPL_ALL);
    counter_rate_add(c, delta > 0 ? (uint64_t)delta : (uint64_t)-delta, t->clock_ds);
    *changed = true;
    return TALLY_OK;
}

void table_drop_slot(struct tally_table *t, struct tally_counter *c, uint32_t replica)
{
    struct tally_slot was;
    if (!counter_drop_slot(c, replica, &was))
        return;
    uint64_t nh = tally_hash64(c->name, c->name_len, 0);
    if (digested(t, replica))
        t->digest[nh % TALLY_BUCKETS] -=
            table_entry_hash(nh, table_replica_hash(t, replica), was.p, was.n);
    t->replicas[replica]->held--;
    table_mark_dirty(t, c);
}

/* A slot of a retired incarnation, or one its fold entry covers, is old
 * news: it is counted in its node's running slot (fold.c). */
static bool slot_folded(const struct tally_table *t, const struct tally_counter *c,
                        uint32_t replica, uint64_t p, uint64_t n)
{
    if (t->replicas[replica]->retired)
        return true;
    const struct tally_fold *f = c->folded ? table_fold(t, c, replica) : NULL;
    return f && p <= f->p && n <= f->n;
}

int table_merge_slot_from(struct tally_table *t, struct tally_counter *c, uint32_t replica,
                          uint64_t p, uint64_t n, uint16_t from, bool *changed)
{
    *changed = false;
    if (table_unheld(t, replica)) {
        t->foreign_dropped++;
        return TALLY_OK; /* counted in a rest slot (group.c, "Light hubs") */
    }
    if (t->split && table_foreign(t, replica))
        from = REPL_NONE; /* a holder of its level takes it from its stream, not our SYNCs */
    if (slot_folded(t, c, replica, p, n))
        return p > (uint64_t)TALLY_MAX_SAFE || n > (uint64_t)TALLY_MAX_SAFE ? TALLY_E_OVERFLOW
                                                                            : TALLY_OK;
    const struct tally_slot *s = counter_slot(c, replica);
    struct tally_slot before = s ? *s : (struct tally_slot){0};
    int rc = counter_merge_slot(c, replica, p, n, changed);
    if (rc != TALLY_OK || !*changed)
        return rc;
    slot_changed(t, c, replica, s ? &before : NULL, from);
    if (!table_counts(t, replica))
        return TALLY_OK; /* the total moved with what it sums, or not at all */
    /* P and N only rise: the total moved by the difference of the two rises */
    const struct tally_slot *after = counter_slot(c, replica);
    int64_t moved = (int64_t)(after->p - before.p) - (int64_t)(after->n - before.n);
    counter_rate_add(c, moved < 0 ? (uint64_t)-moved : (uint64_t)moved, t->clock_ds);
    return TALLY_OK;
}

int table_merge_slot(struct tally_table *t, struct tally_counter *c, uint32_t replica, uint64_t p,
                     uint64_t n, bool *changed)
{
    return table_merge_slot_from(t, c, replica, p, n, REPL_ALL, changed);
}

/* After device `device` of c rose from *old (NULL: new) to total. */
static void device_changed(struct tally_table *t, struct tally_counter *c, uint32_t device,
                           const uint64_t *old, uint64_t total, uint16_t from)
{
    uint64_t nh = tally_hash64(c->name, c->name_len, 0);
    uint64_t oh = table_device_hash(t, device);
    uint64_t *dg = &t->digest[nh % TALLY_BUCKETS];
    if (old)
        *dg -= table_entry_hash(nh, oh, *old, 0);
    *dg += table_entry_hash(nh, oh, total, 0);
    struct tally_dev *d = (struct tally_dev *)counter_device(c, device);
    d->pending = pending_join(d->pending, from);
    table_mark_dirty(t, c);
}

static int merge_device(struct tally_table *t, struct tally_counter *c, uint32_t device,
                        uint64_t total, bool local, uint16_t from, bool *changed)
{
    const struct tally_dev *d = counter_device(c, device);
    bool existed = d != NULL;
    uint64_t old = existed ? d->total : 0;
    int rc = local ? counter_report(c, device, total, changed)
                   : counter_merge_device(c, device, total, changed);
    if (rc != TALLY_OK || !*changed)
        return rc;
    device_changed(t, c, device, existed ? &old : NULL, total, from);
    counter_rate_add(c, total - old, t->clock_ds);
    return TALLY_OK;
}

int table_merge_device(struct tally_table *t, struct tally_counter *c, uint32_t device,
                       uint64_t total, bool local, bool *changed)
{
    return merge_device(t, c, device, total, local, REPL_ALL, changed);
}

int table_merge_device_from(struct tally_table *t, struct tally_counter *c, uint32_t device,
                            uint64_t total, uint16_t from, bool *changed)
{
    return merge_device(t, c, device, total, false, from, changed);
}

/* ==== Registries ==== */

static int grow(void *arrp, uint32_t *cap, uint32_t need)
{
    void **arr = arrp;
    if (need <= *cap)
        return TALLY_OK;
    uint32_t ncap = *cap ? *cap * 2 : 16;
    while (ncap < need)
        ncap *= 2;
    void *n = realloc(*arr, ncap * sizeof(void *));
    if (!n)
        return TALLY_E_NOMEM;
    *arr = n;
    *cap = ncap;
    return TALLY_OK;
}

/* k for the id of the rest of the tree at level k (REST_ID_LEN), or of its
 * request (*request: group.c, "Split hubs"), else 0. */
static uint8_t rest_level(const char *id, size_t len, bool *request)
{
    *request = false;
    if (len != REST_ID_LEN)
        return 0;
    for (size_t i = 0; i + 1 < len; i++)
        if (id[i] != GROUP_MARK)
            return 0;
    char last = id[len - 1];
    if (last >= '1' && last <= '0' + TALLY_LEVELS)
        return (uint8_t)(last - '0');
    *request = last >= REST_REQUEST && last < REST_REQUEST + TALLY_LEVELS;
    return *request ? (uint8_t)(last - REST_REQUEST + 1) : 0;
}

int table_rest_replica(struct tally_table *t, int k, bool request, uint32_t *out)
{
    char id[REST_ID_LEN];
    memset(id, GROUP_MARK, REST_ID_LEN - 1);
    id[REST_ID_LEN - 1] = (char)(request ? REST_REQUEST + k - 1 : '0' + k);
    return table_replica(t, id, REST_ID_LEN, GROUP_INCARNATION, out);
}

/* Interns (node_id, incarnation), node_id being len bytes (not necessarily
 * NUL-terminated: an id read from a message), and returns its index in *out. */
int table_replica(struct tally_table *t, const char *node_id, size_t len, uint64_t incarnation,
                  uint32_t *out)
{
    if (len == 0 || len > TALLY_NODE_ID_MAX || memchr(node_id, '\0', len))
        return TALLY_E_WIRE;
    char key[TALLY_NODE_ID_MAX + 1 + 8];
    memcpy(key, node_id, len);
    key[len] = '\0';
    memcpy(key + len + 1, &incarnation, 8);
    size_t keylen = len + 1 + 8;
    struct tally_replica *r = NULL;
    HASH_FIND(hh, t->replica_hash, key, keylen, r);
    if (r) {
        *out = r->index;
        return TALLY_OK;
    }
    if (grow(&t->replicas, &t->replicas_cap, t->nreplicas + 1))
        return TALLY_E_NOMEM;
    r = calloc(1, sizeof(*r));
    if (!r)
        return TALLY_E_NOMEM;
    memcpy(r->key, key, keylen);
    r->id_len = (uint8_t)len;
    r->incarnation = incarnation;
    r->hash = tally_hash64(key, keylen, 1);
    r->index = t->nreplicas;
    r->held = r->folded = 0;
    r->retired = fold_is_retired(t, node_id, len, incarnation);
    r->adopted = fold_is_adopted(t, node_id, len, incarnation);
    r->rest = rest_level(node_id, len, &r->request);
    t->rested = t->rested || r->rest;
    t->replicas[t->nreplicas++] = r;
    HASH_ADD(hh, t->replica_hash, key, keylen, r);
    *out = r->index;
    return TALLY_OK;
}

bool replica_is_node(const struct tally_replica *r, const char *node, size_t len)
{
    return name_same(r->key, r->id_len, node, len);
}

bool table_foreign(const struct tally_table *t, uint32_t replica)
{
    const struct tally_replica *r = t->replicas[replica];
    if (r->key[0] != GROUP_MARK || r->rest)
        return false;
    for (int k = 1; k <= TALLY_LEVELS; k++)
        if (t->has_unit[k] && t->unit[k] == replica)
            return false;
    return true;
}

bool table_counts(const struct tally_table *t, uint32_t replica)
{
    if (t->light || t->split)
        return !table_foreign(t, replica);
    return !t->replicas[replica]->rest;
}

bool table_unheld(const struct tally_table *t, uint32_t replica)
{
    if (!(t->light || t->split) || !table_foreign(t, replica))
        return false;
    return t->light || !(t->holds & (1u << group_level(t, replica)));
}

void table_raw(const struct tally_table *t, const struct tally_counter *c, struct tally_sums *out)
{
    counter_sums(c, out);
    if (t->light || (!t->rested && !t->split))
        return;
    for (uint32_t i = 0; i < c->nslots; i++)
        if (!table_counts(t, c->slots[i].replica)) {
            out->p -= (int64_t)c->slots[i].p;
            out->n -= (int64_t)c->slots[i].n;
        }
    out->value = clamp_safe(out->p - out->n + out->devices);
}

/* Looks up, and unless mode is DEVICE_FIND interns, a device id. New devices
 * reporting here are bounded by max_devices; devices learned from peers are
 * not refused, since refusing part of a peer's state would stop convergence
 * (each of them was bounded at the node it reported to). */
int table_device(struct tally_table *t, const char *id, size_t len, enum device_mode mode,
                 uint32_t *out)
{
    struct tally_device *d = NULL;
    HASH_FIND(hh, t->device_hash, id, len, d);
    if (d) {
        *out = d->index;
        return TALLY_OK;
    }
    if (mode == DEVICE_FIND)
        return TALLY_E_DEVICE;
    if (mode == DEVICE_LOCAL && t->ndevices >= t->max_devices)
        return TALLY_E_MAX_DEVICES;
    if (grow(&t->devices, &t->devices_cap, t->ndevices + 1))
        return TALLY_E_NOMEM;
    d = calloc(1, sizeof(*d) + len + 1);
    if (!d)
        return TALLY_E_NOMEM;
    memcpy(d->id, id, len);
    d->index = t->ndevices;
    d->hash = tally_hash64(id, len, 2);
    t->devices[t->ndevices++] = d;
    HASH_ADD(hh, t->device_hash, id[0], len, d);
    *out = d->index;
    return TALLY_OK;
}
