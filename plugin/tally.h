/*
 * tally.h - the private header of the tally plugin: every type and function
 * that more than one file of plugin/ shares.
 *
 * Everything declared here is pure C with no Mosquitto header, so the unit
 * tests, benchmarks and fuzzers link these files directly. plugin.c is the
 * only file that speaks to Mosquitto.
 *
 * Data flows one way: an event in plugin.c -> parse (codec.c) -> apply
 * (counter.c, table.c, reset.c, dedup.c, presence.c) -> mark dirty -> on tick, publish
 * totals and replicate (wire.c).
 */
#ifndef TALLY_H
#define TALLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <uthash.h>

/* 2^53-1: the largest integer a browser's JavaScript holds exactly. No delta,
 * total, P or N ever leaves [-TALLY_MAX_SAFE, TALLY_MAX_SAFE]. */
#define TALLY_MAX_SAFE 9007199254740991LL
#define TALLY_NAME_MAX 200
#define TALLY_ID_MAX 64
#define TALLY_NODE_ID_MAX 64
/* A hub's units (group.c): its group (level 1), its region (2, a group of
 * groups) and up to two levels above that (3, 4: regions of regions). */
#define TALLY_LEVELS 4
#define TALLY_DEVICE_MAX 128
#define TALLY_PAYLOAD_MAX 1024

#define TALLY_BUCKETS 256

/* ==== Errors ==== */

/* Every rejection has a reason; the log line and the stats quote its name.
 * One convention everywhere: a function that can fail returns int, TALLY_OK
 * or one of these reasons (always positive, never negated). What happened
 * when it succeeded ("changed", "rose", "written") goes through a bool out
 * parameter, never through the return value's sign or size. */
enum tally_err {
    TALLY_OK = 0,
    TALLY_E_NAME_EMPTY,
    TALLY_E_NAME_TOO_LONG,
    TALLY_E_NAME_UTF8,
    TALLY_E_NAME_CHAR,
    TALLY_E_NAME_DOLLAR,
    TALLY_E_PAYLOAD_TOO_LARGE,
    TALLY_E_NOT_INTEGER,
    TALLY_E_DELTA_RANGE,
    TALLY_E_JSON,
    TALLY_E_JSON_KEY,
    TALLY_E_ID,
    TALLY_E_DEVICE,
    TALLY_E_OVERFLOW,
    TALLY_E_MAX_COUNTERS,
    TALLY_E_MAX_DEVICES,
    TALLY_E_MAX_VIEWERS,
    TALLY_E_FORBIDDEN,
    TALLY_E_WIRE,
    TALLY_E_DISK,
    TALLY_E_NOMEM,
    TALLY_E_DEVICE_ASSIGNED, /* a plain report from a client id the broker made up */
    TALLY_E_TOO_LARGE,       /* a replication message over max_message_bytes */
    TALLY_E__COUNT
};

/* A short stable name for err ("name_too_long"), for logs and stats keys. */
const char *tally_strerror(int err);

/* ==== Codec (codec.c): names, increments, reports ==== */

int name_check(const char *name, size_t len);
int node_id_check(const char *id, size_t len);
/* Whether two names of known lengths (not NUL-terminated) are the same. */
static inline bool name_same(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

struct tally_inc {
    int64_t delta;
    char id[TALLY_ID_MAX + 1]; /* "" when the increment has no idempotency key */
};
int parse_increment(const void *payload, size_t len, struct tally_inc *out);

struct tally_report {
    uint64_t total;
    char device[TALLY_DEVICE_MAX + 1]; /* "" means: the publishing client */
};
int parse_report(const void *payload, size_t len, struct tally_report *out);
int device_id_check(const char *id, size_t len);

/* Parses a signed decimal integer of exactly len bytes ("5", "-3", "+2"),
 * |value| <= TALLY_MAX_SAFE. */
int parse_int(const char *s, size_t len, int64_t *out);

/* ==== The PN-counter (counter.c) ==== */

/* What a slot or device maximum still owes the neighbours (repl.c): nothing,
 * everyone (a local change, or learned from several), or everyone but the
 * neighbour REPL_FROM(k) it was learned from. Kept in the padding after the
 * 32-bit index, so it costs no memory. */
#define REPL_NONE 0
#define REPL_ALL 1
#define REPL_FROM(k) ((uint16_t)((k) + 2))

/* sent: the seq, mod 2^16, of the last SYNC of our stream that carried the
 * entry (repl.c: a repair since a gap sends what the stream carried since),
 * in the same padding. */
struct tally_slot {
    uint32_t replica; /* index into the table's replica registry */
    uint16_t pending; /* REPL_NONE, REPL_ALL or REPL_FROM(neighbour) */
    uint16_t sent;
    uint64_t p, n;
};

struct tally_dev {
    uint32_t device;        /* index into the table's device registry */
    uint16_t pending, sent; /* as tally_slot's */
    uint64_t total;
};

/* A counter's devices, in one block with their count and sum: most counters
 * have none, and pay the pointer alone (16 B a counter less, in malloc's
 * rounding, than a count and a sum in each: bench_table's target). */
struct tally_devs {
    uint64_t total; /* the sum of d[].total, saturated (counter_merge_device) */
    uint32_t n;
    struct tally_dev d[]; /* sorted by device */
};

struct tally_counter {
    UT_hash_handle hh;
    struct tally_counter *dirty_next;
    struct tally_slot *slots; /* sorted by replica */
    struct tally_devs *devs;  /* NULL until its first device */
    float rate;               /* recent change of the total: see counter_rate */
    uint32_t rate_ds;         /* when rate was last raised, in table clock ticks */
    uint32_t nslots;
    uint8_t dirty : 1;       /* on the table's dirty list (outputs) */
    uint8_t repl_dirty : 1;  /* on the table's replication list (repl.c) */
    uint8_t stale : 1;       /* the retained total is older than the counter */
    uint8_t queued : 1;      /* on the refresh queue (schedule.c) */
    uint8_t state_shown : 1; /* a retained state document is published (plugin.c) */
    uint8_t based : 1;       /* has an entry in the table's bases (reset.c) */
    uint8_t paced : 1;       /* published_ms is set (plugin.c) */
    uint8_t folded : 1;      /* has an entry in the table's folds (fold.c) */
    uint8_t name_len;
    uint16_t published_ms; /* when its outputs last went out, ms mod 2^16 (plugin.c) */
    char name[];
};

struct tally_sums {
    int64_t p, n, devices, value; /* value = p - n + devices, saturated */
};

int counter_add_preview(const struct tally_counter *c, uint32_t replica, int64_t delta,
                        struct tally_slot *next);
int counter_add(struct tally_counter *c, uint32_t replica, int64_t delta);
int counter_merge_slot(struct tally_counter *c, uint32_t replica, uint64_t p, uint64_t n,
                       bool *changed);
int counter_merge_device(struct tally_counter *c, uint32_t device, uint64_t total, bool *changed);
int counter_report_check(const struct tally_counter *c, uint32_t device, uint64_t total,
                         bool *raises);
int counter_report(struct tally_counter *c, uint32_t device, uint64_t total, bool *changed);
/* v within [-(2^53-1), 2^53-1], saturated: what a total may show. */
int64_t clamp_safe(int64_t v);
void counter_sums(const struct tally_counter *c, struct tally_sums *out);
int64_t counter_value(const struct tally_counter *c);
/* The recent rate: `amount` (an absolute change of the total) raises an
 * exponentially decaying sum with a 10 s time constant; counter_rate is that
 * sum per second, so a steady flow of r a second reads as r. now_ds is the
 * table's clock (tenths of a second); 0 keeps no rate (loading from disk). */
void counter_rate_add(struct tally_counter *c, uint64_t amount, uint32_t now_ds);
double counter_rate(const struct tally_counter *c, uint32_t now_ds);
const struct tally_slot *counter_slot(const struct tally_counter *c, uint32_t replica);
/* In a sorted array of n entries that start with their uint32_t key (a
 * counter's slots and devices, a base's devices), the entry keyed key, found
 * by binary search, or created zeroed (then keyed) in its place when absent
 * and create is set; NULL when absent, or out of memory (nothing changed).
 * Past 8 entries the array's room doubles: only sorted_entry may grow it. */
void *sorted_entry(void **arr, uint32_t *n, size_t size, uint32_t key, bool create);
const struct tally_dev *counter_device(const struct tally_counter *c, uint32_t device);
static inline uint32_t counter_ndevs(const struct tally_counter *c)
{
    return c->devs ? c->devs->n : 0;
}
static inline struct tally_dev *counter_devs(const struct tally_counter *c)
{
    return c->devs ? c->devs->d : NULL;
}
bool counter_drop_slot(struct tally_counter *c, uint32_t replica, struct tally_slot *was);
void counter_free(struct tally_counter *c);

/* ==== The table of counters, replicas and devices (table.c) ==== */

/* A replica is one life of one node: (node_id, incarnation). */
struct tally_replica {
    UT_hash_handle hh;
    uint64_t incarnation;
    uint64_t hash;
    uint32_t index;
    uint32_t held;   /* counters holding a slot of it */
    uint32_t folded; /* counters holding a fold entry for it (fold.c) */
    bool retired;    /* below its node's watermark: its slots are discarded (fold.c) */
    bool adopted;    /* a life adopted by this node: removed, or an edge's past (fold.c) */
    uint8_t rest;    /* k for the rest of the tree at level k (group.c, "Light hubs"), or 0 */
    bool request;    /* ... a reset's request for its part (group.c, "Split hubs"): no slot */
    uint8_t id_len;
    char key[TALLY_NODE_ID_MAX + 1 + 8]; /* node id, NUL, incarnation: the hash key */
};

struct tally_device {
    UT_hash_handle hh;
    uint32_t index;
    uint64_t hash;
    char id[];
};

struct tally_table {
    struct tally_counter *counters;
    size_t ncounters, max_counters;
    struct tally_counter *dirty_head, **dirty_tail;
    size_t ndirty;
    /* Counters with a slot whose pending is not REPL_NONE (or a base),
     * oldest first, from repl[repl_next] to repl[nrepl - 1] (table.c). */
    struct tally_counter **repl;
    size_t nrepl, repl_next, repl_cap;

    struct tally_replica *replica_hash, **replicas;
    uint32_t nreplicas, replicas_cap;

    struct tally_device *device_hash, **devices;
    uint32_t ndevices, devices_cap, max_devices;

    struct tally_base *bases;  /* of counters that were reset or deleted (reset.c) */
    struct tally_folds *folds; /* of counters holding retired slots' folds (fold.c) */
    struct fold_below *below;  /* retirement watermarks by node id (fold.c) */
    struct fold_adopt *adopt;  /* removed nodes and their adopters (fold.c) */
    uint32_t adopt_conflicts;  /* two settled adopters of one node met (fold.c) */
    /* This life's replica, once set (table_set_self): the one that folds
     * the slots of its node's earlier lives, once fold_ready. */
    uint32_t self;
    bool has_self, fold_ready;
    /* At a hub in a group (group_bind): the replica of its own unit of each
     * level (unit[1], its group; unit[2], its region, a group of groups;
     * and so on up, group.c), which it holds no slot of, only the base a
     * reset in another unit observed of the unit's sum (reset.c,
     * table_sums). */
    uint32_t unit[TALLY_LEVELS + 1];
    bool has_unit[TALLY_LEVELS + 1];
    /* Light hubs (group.c, "Light hubs"). light: this hub holds no slot of
     * another unit (their bases, which only resets make, it does hold), and
     * counts the rest of the tree from its rest slots. lean: a hub of a
     * group with light hubs, light or not: its digest leaves other units'
     * slots out, as a light hub holds none. rested: a rest slot's replica
     * is named here, which a light or split hub counts. foreign_dropped: slots
     * of other units a light hub did not take.
     * Split hubs (group.c, "Split hubs"): split, this hub counts the rest
     * of the tree from its rest slots as a light hub does, and holds the
     * other units' slots of the levels it keeps the rest slots of: bit k of
     * holds for level k (group_holds). */
    bool light, lean, rested, split;
    uint8_t holds;
    uint64_t foreign_dropped;
    /* The group and region this state was made in (an edge's: the group
     * its count is in), as the state_dir records them (persist.c's 'G');
     * plugin.c keeps a hub from starting in others. */
    struct tally_scope {
        char group[TALLY_NODE_ID_MAX + 1], region[TALLY_NODE_ID_MAX + 1];
        bool known;
    } scope;

    /* Tenths of a second since the plugin started, plus 1; 0 while state is
     * loaded from disk, so a replay does not read as a burst of changes. */
    uint32_t clock_ds;

    /* Anti-entropy: the sum of the hashes of every slot and device maximum,
     * per bucket of names; kept up to date on every change. */
    uint64_t digest[TALLY_BUCKETS];
};

void table_init(struct tally_table *t, size_t max_counters, uint32_t max_devices);
void table_free(struct tally_table *t);
/* Starts or advances the table's clock (see clock_ds). */
void table_set_clock(struct tally_table *t, uint64_t since_start_ms);
struct tally_counter *table_find(struct tally_table *t, const char *name, size_t len);
/* Where a change comes from: limits refuse new local input only. State merged
 * from peers or loaded from disk is always taken (refusing part of a peer's
 * state would stop convergence), so a node may hold more than its limits. */
enum table_mode { TABLE_LOCAL, TABLE_MERGE };
int table_get(struct tally_table *t, const char *name, size_t len, enum table_mode mode,
              struct tally_counter **out);
bool table_over_counters(const struct tally_table *t);
bool table_over_devices(const struct tally_table *t);
void table_drop_if_empty(struct tally_table *t, struct tally_counter *c);
int table_replica(struct tally_table *t, const char *node_id, size_t len, uint64_t incarnation,
                  uint32_t *out);
/* True if r is a life of the node named by node (len bytes). */
bool replica_is_node(const struct tally_replica *r, const char *node, size_t len);
/* A replica of another unit than ours (group.c): one a light hub holds no
 * slot of, and a lean digest leaves its slot out of. */
bool table_foreign(const struct tally_table *t, uint32_t replica);
/* The replica of our rest slot of level k (or, request, of the bases that
 * ask its holder for a reset's part: group.c, "Split hubs"), named when new. */
int table_rest_replica(struct tally_table *t, int k, bool request, uint32_t *out);
/* Whether replica's slot counts in our totals: at a light or split hub, any
 * but another unit's (its rest slots count them); at any other, any but a
 * rest slot (it holds what they sum). */
bool table_counts(const struct tally_table *t, uint32_t replica);
/* Whether we take no slot of replica: another unit's, at a light hub, or at
 * a split hub that does not hold its level. */
bool table_unheld(const struct tally_table *t, uint32_t replica);
/* c's raw sums as counter_sums, of the slots that count (table_counts). */
void table_raw(const struct tally_table *t, const struct tally_counter *c, struct tally_sums *out);
enum device_mode { DEVICE_FIND, DEVICE_LOCAL, DEVICE_PEER };
int table_device(struct tally_table *t, const char *id, size_t len, enum device_mode mode,
                 uint32_t *out);

/* Changes that keep the digest and the dirty list up to date. Each returns
 * TALLY_OK or a tally_err, and sets *changed when the counter changed. */
int table_add(struct tally_table *t, struct tally_counter *c, uint32_t replica, int64_t delta,
              bool *changed);
int table_merge_slot(struct tally_table *t, struct tally_counter *c, uint32_t replica, uint64_t p,
                     uint64_t n, bool *changed);
int table_merge_device(struct tally_table *t, struct tally_counter *c, uint32_t device,
                       uint64_t total, bool local, bool *changed);
/* The same for a state learned from neighbour `from` (a REPL_FROM value):
 * the change is owed to every neighbour but that one. */
int table_merge_slot_from(struct tally_table *t, struct tally_counter *c, uint32_t replica,
                          uint64_t p, uint64_t n, uint16_t from, bool *changed);
int table_merge_device_from(struct tally_table *t, struct tally_counter *c, uint32_t device,
                            uint64_t total, uint16_t from, bool *changed);
/* Takes the oldest counter off the list of those owing a delta; NULL if none.
 * The caller clears the pending marks it sends. */
struct tally_counter *table_pop_repl(struct tally_table *t);
bool table_repl_pending(const struct tally_table *t);

/* Exposed for reset.c, which keeps the same digest and dirty list. */
uint64_t table_entry_hash(uint64_t name_hash, uint64_t owner_hash, uint64_t p, uint64_t n);
uint64_t table_replica_hash(const struct tally_table *t, uint32_t replica);
uint64_t table_device_hash(const struct tally_table *t, uint32_t device);
void table_mark_dirty(struct tally_table *t, struct tally_counter *c);
/* Exposed for fold.c: drops replica's slot, or base entry, of c (digest
 * kept current). */
void table_drop_slot(struct tally_table *t, struct tally_counter *c, uint32_t replica);
void table_drop_base_slot(struct tally_table *t, struct tally_counter *c, uint32_t replica);

struct tally_counter *table_pop_dirty(struct tally_table *t);

unsigned name_bucket(const char *name, size_t len);
uint64_t tally_hash64(const void *data, size_t len, uint64_t seed);

/* ==== Folding retired incarnations (fold.c) ==== */

/* A fold entry: of the retired replica's slot, (p, n) are counted in the
 * slot of its node's running incarnation, and of its base (reset.c),
 * (bp, bn) in that slot's base. */
struct tally_fold {
    uint32_t replica;
    uint64_t p, n, bp, bn;
};

/* A counter's fold entries, owned by the table (like bases). */
struct tally_folds {
    UT_hash_handle hh;
    const struct tally_counter *counter; /* the key */
    struct tally_fold *e;                /* sorted by replica */
    uint32_t n;
};

/* Sets this life's replica: once fold_ready, fold_counter folds the slots
 * of every earlier life of the same node id into it. */
void table_set_self(struct tally_table *t, uint32_t self);
/* True if replica is this node's to fold: an earlier life of it (same id,
 * not self), or a life of a node it adopted (removeNode). */
bool fold_is_predecessor(const struct tally_table *t, uint32_t replica);
/* c's fold entry for replica, or NULL. */
const struct tally_fold *table_fold(const struct tally_table *t, const struct tally_counter *c,
                                    uint32_t replica);
const struct tally_folds *table_folds(const struct tally_table *t, const struct tally_counter *c);
/* What c's state takes away from replica's slot: the larger of its base
 * (reset.c) and its fold entry, per side. */
void table_slot_taken(const struct tally_table *t, const struct tally_counter *c, uint32_t replica,
                      uint64_t *p, uint64_t *n);
/* Merges a peer's (or the disk's) fold entry by maximum, field by field;
 * *rose when it rose. Call fold_settle after. */
int table_merge_fold(struct tally_table *t, struct tally_counter *c, const struct tally_fold *f,
                     bool *rose);
/* Drops from c the slots and base entries its fold entries cover. */
void fold_settle(struct tally_table *t, struct tally_counter *c);
/* At the running incarnation (table_set_self, fold_ready): moves what c
 * holds of its predecessors' slots (and bases) into its own, records fold
 * entries, drops what they cover. *folded when something moved. */
int fold_counter(struct tally_table *t, struct tally_counter *c, bool *folded);
void table_free_folds(struct tally_table *t);

/* Retirement: every life of a node below a watermark ("below", per node
 * id) is retired: its fold entries, slots and base entries are dropped, and
 * its slots arriving later are discarded. Incarnations grow with time
 * (tally_incarnation_new), so one number per node id says it all. */
struct fold_below {
    UT_hash_handle hh;
    uint64_t below;
    char node[TALLY_NODE_ID_MAX + 1];
};
bool fold_is_retired(const struct tally_table *t, const char *node, size_t len,
                     uint64_t incarnation);
/* node's watermark (0: none). */
uint64_t fold_below_of(const struct tally_table *t, const char *node, size_t len);
struct persist;
/* Raises node's watermark to below (logged to p, if any); never retires
 * this node's own life. */
int fold_set_below(struct tally_table *t, struct persist *p, const char *node, size_t len,
                   uint64_t below);
void table_free_below(struct tally_table *t);

/* Adoption (fold.c, "Nodes removed for good", "Edges' past lives"): the
 * lives of a node below lives_below (every life: UINT64_MAX, a node removed
 * for good; an edge's past lives: its running life) are adopted by one
 * node, which folds their slots into its own and then retires them. A claim
 * is settled once every node its adopter ever heard of (and did not see
 * removed) backs it. */
struct fold_adopt {
    UT_hash_handle hh;
    uint64_t lives_below;
    bool settled;
    char by[TALLY_NODE_ID_MAX + 1];
    char node[TALLY_NODE_ID_MAX + 1]; /* the key */
};
const struct fold_adopt *fold_adoption(const struct tally_table *t, const char *node, size_t len);
/* Whether that life of node is this node's to fold: a settled claim of ours. */
bool fold_is_adopted(const struct tally_table *t, const char *node, size_t len,
                     uint64_t incarnation);
/* Merges a claim (from a peer's stats, the disk, removeNode or a hub's
 * edge): the claim of more lives wins, then a settled one, then the lower
 * adopter id; logged to p when it changed. TALLY_E_WIRE for an invalid one. */
int fold_set_adopt(struct tally_table *t, struct persist *p, const char *node, size_t len,
                   const char *by, uint64_t lives_below, bool settled);
void table_free_adopt(struct tally_table *t);
/* A new incarnation: the wall clock (ms) in the high bits, random low bits,
 * and above `after` (the last one, when known). */
uint64_t tally_incarnation_new(uint64_t wall_ms, uint64_t random, uint64_t after);

/* Collection (see fold.c): each node says in its stats the lowest life of
 * each node it holds a slot of ("lowest"), the members it hears
 * ("members") and the watermarks it knows ("below"); the running
 * incarnation raises its own node's watermark to the lowest life any member
 * heard within member_timeout_ms holds. */
struct fold_member;
struct wire_buf;
struct fold_gc {
    struct fold_member *members;
    uint64_t member_timeout_ms;
    uint64_t not_before_ms;   /* no retirement before (the members' stats arrive) */
    uint64_t eager_until_ms;  /* every "fold" says all until then */
    uint64_t alive_ms;        /* removeNode refuses a node heard within this */
    uint64_t told_removed_ms; /* last stats of a removed node made us say all */
};
/* How long every node's stats say all they know after a member came, or came
 * back after a silence this long (fold_stats_json). */
#define FOLD_EAGER_MS 15000
void fold_gc_init(struct fold_gc *gc, uint64_t member_timeout_ms, uint64_t not_before_ms);
void fold_gc_free(struct fold_gc *gc);
/* The "fold" object of this node's stats into b. While this node or a member
 * collects (or a member just came, FOLD_EAGER_MS), all it knows:
 * {"collecting":bool,"full":true,"members":[node...],"lowest":{node:hex},
 *  "below":{node:hex},"adopt":{node:{"by":node,"below":hex,"settled":bool}},
 *  "adopt_conflicts":n,"omitted":n}, entries that would take b past limit
 * bytes left out and counted; otherwise only its own watermark,
 * {"collecting":false,"full":false,"below":{node:hex}} (and adopt_conflicts
 * when not 0): a document flooded to every node stays O(1) when nothing is
 * to be collected, not O(cluster). An adoption not yet seen to its end
 * counts as collecting. */
void fold_stats_json(struct wire_buf *b, const struct tally_table *t, const struct fold_gc *gc,
                     uint64_t now_ms, size_t limit);
/* A peer's stats document (node, JSON, written at doc_ms by its clock):
 * notes the members it names, takes its watermarks (logged to p, if any),
 * makes folding ready, and, once a document of that node written after the
 * first one read arrives (the first may be a stale retained copy), notes
 * its lowest lives. Returns TALLY_OK or TALLY_E_NOMEM. */
int fold_peer_stats(struct fold_gc *gc, struct tally_table *t, struct persist *p, const char *node,
                    const void *json, size_t len, uint64_t now_ms, uint64_t doc_ms);
/* At the running incarnation: raises its node's watermark as far as every
 * member allows; *retired when it rose. */
int fold_collect(struct fold_gc *gc, struct tally_table *t, struct persist *p, uint64_t now_ms,
                 bool *retired);
/* removeNode: this node claims node, to adopt it once the claim settles
 * (fold_collect). NULL, or why not. */
const char *fold_remove(struct fold_gc *gc, struct tally_table *t, struct persist *p,
                        const char *node, uint64_t now_ms);
/* At a hub, for an edge of it running `incarnation`: claims the edge's
 * earlier lives this node holds slots of, to adopt them as removeNode does
 * (an edge never folds: it holds no one's slots). */
int fold_claim_past(struct fold_gc *gc, struct tally_table *t, struct persist *p, const char *node,
                    uint64_t incarnation, uint64_t now_ms);
/* Folding starts (the watermarks are known, or nobody answered in time):
 * every counter is folded, and logged to p. */
int fold_ready(struct tally_table *t, struct persist *p);
/* fold_counter, and its fold entries logged to p (if any) with the slot
 * they were folded into. */
int fold_counter_logged(struct tally_table *t, struct persist *p, struct tally_counter *c);

/* ==== Reset and delete: observed bases (reset.c) ==== */

struct tally_base_slot {
    uint32_t replica;
    uint64_t p, n;
};

/* What the resets and deletes of a counter have observed: per slot and per
 * device, the values they took away, and the stamps of the last delete and
 * reset. Owned by the table; a counter has one once it was reset. */
struct tally_base {
    UT_hash_handle hh;
    const struct tally_counter *counter; /* the key */
    struct tally_base_slot *slots;       /* sorted by replica */
    struct tally_dev *devs;              /* sorted by device */
    uint32_t nslots, ndevs;
    uint64_t deleted, reset; /* stamps: 0 = never */
};

struct tally_base *table_base(const struct tally_table *t, const struct tally_counter *c);
void table_free_bases(struct tally_table *t);
/* c's sums after its resets (each slot and device minus its base). */
void table_sums(const struct tally_table *t, const struct tally_counter *c, struct tally_sums *out);
int64_t table_value(const struct tally_table *t, const struct tally_counter *c);
/* A deleted counter that nothing raised since: listed nowhere, its retained
 * topics cleared. */
bool table_hidden(const struct tally_table *t, const struct tally_counter *c);
/* What c's base takes away from one slot or device (0 without a base). */
void base_slot(const struct tally_base *b, uint32_t replica, uint64_t *p, uint64_t *n);
uint64_t base_device(const struct tally_base *b, uint32_t device);
/* Resets (or deletes) c here: its base becomes everything this node has
 * observed of it. Returns TALLY_OK, or TALLY_E_NOMEM when part of the base
 * may be set (a reset that observed less: still a valid state). */
int table_reset(struct tally_table *t, struct tally_counter *c, bool delete);
/* Merges a peer's (or the disk's) base; each returns TALLY_OK or a
 * tally_err, and sets *rose when c's base rose. */
int table_merge_base_slot(struct tally_table *t, struct tally_counter *c, uint32_t replica,
                          uint64_t p, uint64_t n, bool *rose);
int table_merge_base_device(struct tally_table *t, struct tally_counter *c, uint32_t device,
                            uint64_t total, bool *rose);
int table_merge_stamps(struct tally_table *t, struct tally_counter *c, uint64_t deleted,
                       uint64_t reset, bool *rose);

/* ==== Idempotency window (dedup.c) ==== */

struct tally_key {
    uint64_t a, b;
};

struct tally_dedup {
    struct tally_key *ring; /* insertion order, oldest at head */
    uint32_t *index;        /* open addressing: ring position + 1, 0 = empty */
    uint32_t window, head, count, mask;
};

int dedup_init(struct tally_dedup *d, uint32_t window);
void dedup_free(struct tally_dedup *d);
struct tally_key dedup_key(const char *name, size_t name_len, const char *id, size_t id_len);
bool dedup_contains(const struct tally_dedup *d, struct tally_key k);
void dedup_insert(struct tally_dedup *d, struct tally_key k);

/* ==== Presence (presence.c) ==== */

struct tally_page;
struct wire_buf;
struct tally_viewer;

struct tally_origin {
    UT_hash_handle hh;
    uint64_t incarnation, seq;
    uint64_t last_heard_ms;
    /* when the listing entry last_heard_ms was taken from came here
     * (presence_origin_listed) */
    uint64_t heard_listed_ms;
    uint32_t slot; /* its number: the key of its cells in the pages it counts */
    /* 0: a node; 1: a group's sum (".g", scope.c); 2: a region's ("..r"),
     * and so on up to TALLY_LEVELS: the marks its id starts with */
    uint8_t level;
    /* wants of it heard, owed in our stream of level k (bit k, scope.c) */
    uint8_t scope_wanted;
    uint64_t digest; /* presence_digest of its counts held here */
    /* The pages it counts (a cell each, presence.c): what its expiry or a
     * full announcement replaces, without a walk of every page. */
    struct tally_page **counted;
    uint32_t ncounted, counted_cap;
    uint64_t stats_incarnation, stats_time_ms, stats_seq;
    /* The newest listing of it by a hub (an edge's origin, tier.c): what its
     * carrier holds, to compare with what is held here. */
    uint64_t listed_incarnation, listed_seq, listed_digest;
    uint64_t first_listed_ms; /* when it was first listed here */
    bool listed;
    bool alive;
    bool carried; /* our own edge's, as our record of it holds them (tier.c) */
    /* Liveness from the carrier (tier.c, "The carrier's keepalive"): the hub
     * whose carried set holds this edge as its listings last said, in whose
     * list of such edges (carries, linked by carry_prev/next) it is, the key
     * of that entry (or of ours, for our own edge; 0: nobody's) and the
     * stamp of the listing it came in; on a hub's origin, whether our next
     * heartbeat asks for its full listing. */
    struct tally_origin *carrier, *carries, *carry_prev, *carry_next;
    uint64_t carry_key, carry_stamp;
    bool listing_wanted;
    char node_id[TALLY_NODE_ID_MAX + 1];
};

/* The changes since the last announcement are sent alone (a message per
 * changed hash) only while they are at most this many hashes, a quarter of
 * our pages, and we view at least PRESENCE_CHANGES_MIN_PAGES pages (see
 * presence.c, changes_worth_alone). */
#define PRESENCE_CHANGES_MAX 1024
#define PRESENCE_CHANGES_MIN_PAGES 64
#define PRESENCE_SCOPE_MAX 65536

struct tally_presence {
    struct tally_page *pages;
    struct tally_page *by_hash; /* the same pages by presence_hash (presence.c) */
    struct tally_viewer *viewers;
    struct tally_view *views; /* every local (client, page) pair, by the two */
    struct tally_origin *origins;
    struct tally_page *dirty_head;
    uint32_t norigins;
    uint64_t nviews;       /* local (client, page) pairs */
    uint64_t nlocal_pages; /* pages with local viewers */
    uint64_t local_digest; /* presence_digest summed over our own counts (tier.c's own entry) */
    uint64_t max_views;
    bool local_changed; /* our own counts changed since the last announce */
    /* The presence_hash of each page whose local count changed since the
     * last announce (owned; each once, up to PRESENCE_CHANGES_MAX), unless
     * changed_all: more changed than that. */
    uint64_t *changed;
    uint32_t nchanged, changed_cap, changed_gen;
    bool changed_all;
    /* The presence_hash of each page whose sum for one of our units
     * changed (scope.c), until presence_scope_sync; scope_all: more than
     * PRESENCE_SCOPE_MAX, every page. Kept for our scope_levels units (0:
     * none): a page's parts count the origins of the levels below the top
     * one, which alone our units' sums are made of. */
    uint64_t *scope_changed;
    uint32_t nscope_changed, scope_changed_cap, scope_gen;
    uint8_t scope_levels;
    bool scope_all;
};

void presence_init(struct tally_presence *pr, uint64_t max_views);
void presence_free(struct tally_presence *pr);
int presence_view(struct tally_presence *pr, const char *client, const char *page, size_t len,
                  bool *added);
void presence_unview(struct tally_presence *pr, const char *client, const char *page, size_t len);
void presence_drop_client(struct tally_presence *pr, const char *client);
/* Calls fn for each page with local viewers (for announcing our counts). */
void presence_each_local(struct tally_presence *pr,
                         void (*fn)(const char *page, size_t len, uint64_t n, void *ud), void *ud);
/* The same, for the pages of one presence_hash only (an edge's UP of changes). */
void presence_each_local_of_hash(const struct tally_presence *pr, uint64_t hash,
                                 void (*fn)(const char *page, size_t len, uint64_t n, void *ud),
                                 void *ud);
struct tally_origin *presence_origin(struct tally_presence *pr, const char *node_id);
/* Where a page falls in the announcements' ranges (wire.c, PRESENCE). */
uint64_t presence_hash(const char *page, size_t len);
bool presence_in_range(const char *page, size_t len, uint64_t lo, uint64_t hi);
/* Starts replacing origin's counts for the pages whose presence_hash is in
 * [lo, hi]: they become 0 unless presence_origin_set gives them again. */
void presence_origin_begin(struct tally_presence *pr, struct tally_origin *o, uint64_t lo,
                           uint64_t hi);
int presence_origin_set(struct tally_presence *pr, struct tally_origin *o, const char *page,
                        size_t len, uint64_t n);
struct wire_presence;
struct wire_presence_edge;
int presence_apply(struct tally_presence *pr, struct tally_origin *o,
                   const struct wire_presence *wp, bool *taken);
void presence_origin_expire(struct tally_presence *pr, struct tally_origin *o);
/* One page's share of an origin's digest: the digest of a set of counts is
 * the sum (mod 2^64) of the shares of its non-zero counts. */
uint64_t presence_digest(const char *page, size_t len, uint64_t count);
/* The key of a listing entry, summed into a hub's carried set (tier.c). */
uint64_t presence_entry_key(const struct wire_presence_edge *e);
/* A hub listed o (one of its edges): o is alive as of age_ms ago, and its
 * carrier holds the counts of digest as of its relay seq. */
void presence_origin_listed(struct tally_origin *o, const struct wire_presence_edge *l,
                            uint64_t now_ms);
/* Whether o's counts here differ from what its newest listing says its
 * carrier holds, and are not newer: a relay was lost, or never came. Only
 * while o is alive (heard within timeout_ms): a dead edge is wanted no more;
 * and, if nothing of o was ever taken here, not within a heartbeat of its
 * first listing, while the replay of a neighbour that saw us restart is on
 * its way (presence_replay). */
bool presence_origin_wanted(const struct tally_origin *o, uint64_t now_ms, uint64_t timeout_ms);
/* To a neighbour that restarted (repl_replay_due): each origin held here as
 * its newest listing says its carrier holds it (alive, same incarnation, seq
 * and digest), or as we carry it (our own edge's, o->carried), but skip (the
 * neighbour itself), as the one PRESENCE of that
 * seq covering every hash, with the origin's listing entry, if it fits in
 * max_bytes; each is handed to emit. In steps: the origins of most slots
 * from *from, which becomes the next step's, or UINT32_MAX after the last
 * (a broker loop's work stays bounded, plugin.c's replay_tick). Returns
 * the number sent (presence.c, "Replay to a neighbour that restarted").
 * Each names the hub whose carried set holds its entry, self for our own
 * edges (tier.c, "The carrier's keepalive"). */
uint32_t presence_replay(struct tally_presence *pr, const char *self, const char *skip,
                         uint64_t now_ms, uint64_t timeout_ms, size_t max_bytes, uint32_t *from,
                         uint32_t most, struct wire_buf *b,
                         void (*emit)(const struct wire_buf *msg, void *ud), void *ud);
/* Our own counts as PRESENCE messages of at most max_bytes, over consecutive
 * ranges of presence_hash covering all of it, numbered first_seq, first_seq
 * + 1, ...; each is handed to emit. Returns the number of messages, or 0
 * when out of memory. */
uint32_t presence_announce(struct tally_presence *pr, const char *origin, uint64_t incarnation,
                           uint64_t first_seq, size_t max_bytes, struct wire_buf *b,
                           void (*emit)(const struct wire_buf *msg, void *ud), void *ud);
/* Our counts that changed since the last announcement, each changed
 * presence_hash h alone in a PRESENCE covering [h, h] with our pages of that
 * hash (none: the page left), numbered first_seq, first_seq + 1, ...; each
 * is handed to emit. Returns the number of messages, or 0 (nothing sent)
 * when a full announcement (presence_announce) is the better one: too many
 * changes, or too few pages to be worth it. No listing of edges: that is the
 * heartbeat's (tier_hub_heartbeat). */
uint32_t presence_announce_changes(struct tally_presence *pr, const char *origin,
                                   uint64_t incarnation, uint64_t first_seq, struct wire_buf *b,
                                   void (*emit)(const struct wire_buf *msg, void *ud), void *ud);
/* Whether nchanged changed hashes are worth sending alone, each in a range
 * of its own, rather than every page (the rule above; presence.c,
 * changes_worth_alone; an edge's UP takes it too, tier.c). */
bool presence_changes_worth_alone(const struct tally_presence *pr, uint64_t nchanged);
/* Our counts went where they go without an announcement (an edge's UP):
 * the changes start again from none. */
void presence_changes_clear(struct tally_presence *pr);
/* Walks pages whose cluster total changed; fn gets the new total. A page
 * published less than page_interval_ms(its local viewers, budget) before
 * now_ms stays dirty for a later flush. */
void presence_flush(struct tally_presence *pr, uint64_t now_ms, uint64_t budget,
                    void (*fn)(const char *page, size_t len, uint64_t total, void *ud), void *ud);
uint64_t presence_total(const struct tally_presence *pr, const char *page, size_t len);
/* Sets our own count of a page (a group's or region's sum, scope.c: no
 * viewers of its own), as presence_view would. */
int presence_set_local(struct tally_presence *pr, const char *page, size_t len, uint64_t n);
/* to's counts become from's sums for our group (level 1: our own viewers
 * and those of our group's nodes) or region (2: and of the other groups of
 * it): of the pages whose sums changed since presence_scope_taken, or all. */
int presence_scope_sync(const struct tally_presence *from, struct tally_presence *to, int level,
                        bool all);
/* Forgets which sums changed (after every level took them). */
void presence_scope_taken(struct tally_presence *pr);

/* ==== Interest: who watches which counter (interest.c) ==== */

/* What one subscription filter watches among <prefix>/<name> (totals) or
 * <prefix>/<name>/state (state documents). */
enum interest_scope { INTEREST_NONE, INTEREST_ONE, INTEREST_ALL };

struct interest_name;
struct interest_client;

struct tally_interest {
    struct interest_name *names;     /* counters named by some filter */
    struct interest_client *clients; /* each client's filters that watch */
    uint32_t all_totals, all_states; /* filters watching every total / state */
    size_t prefix_len;
    char prefix[128];
};

/* Told, after a subscription change, of the counter `name` whose watchers may
 * have changed, or (name NULL) that every state document went from watched
 * to unwatched or back. */
typedef void interest_fn(const char *name, size_t len, void *ud);

bool topic_matches(const char *filter, const char *topic);
void interest_init(struct tally_interest *in, const char *prefix);
void interest_free(struct tally_interest *in);
/* Returns TALLY_OK or TALLY_E_NOMEM; sets *added if the filter watches a
 * counter and is new for client. fn may be NULL. Strings are borrowed
 * (copied if kept). */
int interest_subscribe(struct tally_interest *in, const char *client, const char *filter,
                       interest_fn *fn, void *ud, bool *added);
void interest_unsubscribe(struct tally_interest *in, const char *client, const char *filter,
                          interest_fn *fn, void *ud);
void interest_drop_client(struct tally_interest *in, const char *client, interest_fn *fn, void *ud);
bool interest_total_watched(const struct tally_interest *in, const char *name, size_t len);
bool interest_state_watched(const struct tally_interest *in, const char *name, size_t len);
/* Whether a filter naming name (no wildcard in its name level) watches its
 * total or state document: what holds an edge's view of it (tier.c). */
bool interest_named(const struct tally_interest *in, const char *name, size_t len);

/* ==== The output scheduler (schedule.c) ==== */

/* Counters whose outputs wait for the publish budget, oldest first. The ring
 * borrows the counters: one about to be freed must be refresh_forget'ed. */
struct tally_refresh {
    struct tally_counter **ring;
    size_t cap, head, len;
    uint64_t milli_tokens, last_ms;
    uint32_t rate; /* publishes a second */
};

void refresh_init(struct tally_refresh *r, uint32_t rate, uint64_t now_ms);
void refresh_free(struct tally_refresh *r);
/* Queues c unless it is queued already (it keeps its place). */
int refresh_push(struct tally_refresh *r, struct tally_counter *c);
struct tally_counter *refresh_pop(struct tally_refresh *r);
void refresh_forget(struct tally_refresh *r, struct tally_counter *c);
/* Publishes the budget allows now; refresh_spend takes what was used. */
uint32_t refresh_grant(struct tally_refresh *r, uint64_t now_ms);
void refresh_spend(struct tally_refresh *r, uint32_t publishes);
/* Least time between two publishes of a page with `viewers` local viewers,
 * for at most `budget` deliveries a second. */
uint64_t page_interval_ms(uint64_t viewers, uint64_t budget);

/* ==== The write buffer and JSON text (buf.c) ==== */

struct wire_buf {
    uint8_t *data;
    size_t len, cap;
    bool failed; /* out of memory, or a value that could not be written: unusable */
};

/* Grows *arrp (entries of `size` bytes, room for *cap) to hold index i,
 * new entries zeroed: by doubling, from 64. */
int array_reserve(void *arrp, uint32_t *cap, uint32_t i, size_t size);
void wbuf_free(struct wire_buf *b);
void wbuf_reset(struct wire_buf *b);
void wbuf_bytes(struct wire_buf *b, const void *p, size_t n);
void wbuf_u8(struct wire_buf *b, uint8_t v);
void wbuf_u64(struct wire_buf *b, uint64_t v);
void wbuf_varint(struct wire_buf *b, uint64_t v);
void wbuf_str8(struct wire_buf *b, const char *s, size_t n);
void wbuf_str(struct wire_buf *b, const char *s);
void wbuf_dec(struct wire_buf *b, int64_t v); /* v as a decimal integer */
size_t fmt_i64(char out[21], int64_t v);      /* the same into out, no NUL; returns length */
/* printf into the buffer, whole: a value is never cut short (failed instead). */
void wbuf_printf(struct wire_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void wbuf_json_str(struct wire_buf *b, const char *s, size_t len);

/* ==== Replication wire format (wire.c) ==== */

#define WIRE_VERSION 2      /* UP, DOWN: 2 added past lives (UP) and the watermark (DOWN) */
#define WIRE_DOWN_VERSION 3 /* 3 names the hub's group (group.c), written by a hub in one */
/* SYNC: 2 added bases (reset.c), 3 the stream (repl.c), 4 folds (fold.c), 5 replicas
 * numbered per stream; DIGEST: 2 added the stream and repair requests, 3 the numbers wanted,
 * 4 the seq a repair is asked from, 5 the neighbours heard, 6 how far it heard each (rule 5) */
#define WIRE_SYNC_VERSION 5
#define WIRE_DIGEST_VERSION 6
#define WIRE_PRESENCE_VERSION                                                                      \
    4 /* 2 added the range [lo, hi], 3 a hub's listing, 4 its carried set; 1 to 3 are read */
enum wire_type {
    WIRE_SYNC = 1,
    WIRE_DIGEST = 2,
    WIRE_PRESENCE = 3,
    WIRE_UP = 4,
    WIRE_DOWN = 5,
    WIRE_CONTROL = 6 /* a control request through the tree, or its answer (tier.c) */
};

struct wire_reader {
    const uint8_t *p, *end;
    bool bad;
};
uint8_t wr_u8(struct wire_reader *r);
uint64_t wr_u64(struct wire_reader *r);
uint64_t wr_varint(struct wire_reader *r);
/* Returns a pointer into the message (not NUL-terminated) and its length. */
const char *wr_str8(struct wire_reader *r, size_t *len);

/* Which replicas a SYNC stream has named, by registry index (version 5: a
 * stream names a replica once, then gives its number alone; repl.c). */
struct wire_names {
    uint8_t *named;
    uint32_t cap;
};

/* A SYNC message under construction: counters are appended to body while the
 * replicas and devices they name are collected into per-message dictionaries. */
struct wire_sync_writer {
    struct wire_buf dict, body, out; /* dict: each replica's name, in message order */
    size_t nums_len;                 /* bytes of the replicas' numbers (version 5) */
    int32_t *rep_ref, *dev_ref;      /* registry index -> dictionary position, -1 if absent */
    uint32_t rep_cap, dev_cap;
    uint32_t *rep_used, *dev_used;
    uint32_t nrep, ndev, ncounters;
    struct wire_buf dev_dict;
    /* Set by the caller to have messages split: no message grows past
     * max_bytes; when the next entry would not fit, full(w, full_ctx) is
     * called to finish and send the message so far. max_bytes 0: one message,
     * which the caller finishes. */
    size_t max_bytes;
    int (*full)(struct wire_sync_writer *w, void *ctx);
    void *full_ctx;
    /* Set by the caller for a message of its numbered stream: replicas it
     * has named go by number alone, and those it names are marked. NULL: the
     * message names every replica (a message outside the stream). */
    struct wire_names *names;
};

/* Which entries of a counter a SYNC carries: those for which keep(pending,
 * sent, ctx) holds (their tally_slot / tally_dev marks). */
typedef bool sync_keep_fn(uint16_t pending, uint16_t sent, void *ctx);

void sync_writer_free(struct wire_sync_writer *w);
int sync_writer_add(struct wire_sync_writer *w, const struct tally_table *t,
                    const struct tally_counter *c);
size_t sync_writer_size(const struct wire_sync_writer *w);
bool sync_writer_empty(const struct wire_sync_writer *w);
int sync_writer_add_delta(struct wire_sync_writer *w, const struct tally_table *t,
                          const struct tally_counter *c, sync_keep_fn *keep, void *ctx);
/* Whether sync_writer_add_delta would write anything of c: an entry keep
 * holds, or a base or fold entries (which go with every delta). */
bool sync_writer_owes(const struct tally_table *t, const struct tally_counter *c,
                      sync_keep_fn *keep, void *ctx);
/* Assembles the message into w->out, as message `seq` of the sender's
 * stream `session`, and resets the writer for the next one. */
int sync_writer_finish(struct wire_sync_writer *w, const char *sender, uint64_t session,
                       uint64_t seq);

struct wire_sync_counter {
    const char *name;
    size_t name_len;
    uint32_t nslots, ndevs;
    uint32_t first_slot, first_dev; /* into wire_sync.slots / devs */
    /* the counter's base (version 2), when it has one */
    bool based;
    uint64_t deleted, reset;
    uint32_t nbase_slots, nbase_devs;
    uint32_t first_base_slot, first_base_dev; /* into wire_sync.base_slots / base_devs */
    uint32_t nfolds, first_fold;              /* into wire_sync.folds (version 4) */
};
struct wire_sync_slot {
    uint32_t replica_ref;
    uint64_t p, n;
};
struct wire_sync_dev {
    uint32_t device_ref;
    uint64_t total;
};
struct wire_sync_replica {
    const char *node_id; /* NULL: not named, only numbered */
    size_t len;
    uint64_t incarnation;
    bool numbered; /* version 5 on: no is the sender's number for it */
    uint32_t no;
};
struct wire_sync_device {
    const char *id;
    size_t len;
};

/* A decoded SYNC message. Strings point into the message bytes (borrowed);
 * arrays are owned: wire_sync_free releases them. */
struct wire_sync {
    const char *sender;
    size_t sender_len;
    uint64_t session, seq; /* 0, 0 from a version 1 sender */
    struct wire_sync_replica *replicas;
    struct wire_sync_device *devices;
    struct wire_sync_counter *counters;
    struct wire_sync_slot *slots;
    struct wire_sync_dev *devs;
    struct wire_sync_slot *base_slots;
    struct wire_sync_dev *base_devs;
    struct tally_fold *folds; /* replica: a ref into replicas */
    uint32_t nreplicas, ndevices, ncounters, nslots, ndevs, nbase_slots, nbase_devs, nfolds;
};

int wire_peek_type(const void *msg, size_t len);
int wire_decode_sync(const void *msg, size_t len, struct wire_sync *out);
void wire_sync_free(struct wire_sync *s);

#define WIRE_MAX_REQUESTS 64
#define WIRE_MAX_NAMES 32 /* numbers a DIGEST asks one neighbour to name again */
#define WIRE_MAX_HEARS 64 /* neighbours a DIGEST says its sender hears (repl.c, rule 2a) */
struct wire_id {
    const char *id; /* borrowed */
    size_t len;
};
struct wire_node_ref {
    const char *id; /* borrowed */
    size_t len;
    uint32_t nnames; /* version 3 on: replica numbers of its stream we cannot resolve */
    uint32_t names[WIRE_MAX_NAMES];
    /* version 4 on: the first and the last seq of its stream we lack, and
     * that stream's session; since 0 asks for everything (nothing else is
     * sent) */
    uint64_t since, until, session;
};
/* A DIGEST. Decoded, its strings point into the message (borrowed). */
struct wire_digest {
    const char *sender;
    size_t sender_len;
    uint64_t session, seq; /* the sender's SYNC stream: the last seq it sent */
    uint32_t nrequests;    /* neighbours asked to send what differs, at once */
    struct wire_node_ref requests[WIRE_MAX_REQUESTS];
    uint64_t digest[TALLY_BUCKETS];
    uint32_t nhears; /* version 5 on: the neighbours whose streams it hears */
    struct wire_id hears[WIRE_MAX_HEARS];
    /* Version 6 on: how far it heard each of them, the session and last seq
     * of hears[i]'s stream (0, 0: not said, from an older sender). */
    struct wire_stream {
        uint64_t session, seq;
    } heard[WIRE_MAX_HEARS];
};
void wire_encode_digest(struct wire_buf *b, const struct wire_digest *d);
int wire_decode_digest(const void *msg, size_t len, struct wire_digest *out);

struct wire_presence_page {
    const char *page;
    size_t len;
    uint64_t count;
};
/* An edge a hub carries, as its heartbeat lists it (tier.c). */
struct wire_presence_edge {
    const char *id;
    size_t len;
    uint64_t incarnation, seq; /* of the hub's latest relay of its viewers */
    uint64_t digest;           /* presence_digest of its viewers as the hub holds them */
    uint64_t age_ms;           /* since the hub last heard it */
};
/* An origin whose viewers the sender lacks (it asks their carrier for them). */
struct wire_presence_want {
    const char *id;
    size_t len;
};
struct wire_presence {
    const char *origin;
    size_t origin_len;
    uint64_t incarnation, seq;
    uint64_t lo, hi; /* the range of presence_hash the message covers (lo > hi: none) */
    uint32_t npages, nlisted, nwants;
    struct wire_presence_page *pages;  /* owned */
    struct wire_presence_edge *listed; /* owned, with wants (one block) */
    struct wire_presence_want *wants;
    /* A hub's listing (version 4) ends with its carried set: the edges it
     * heard within carried_age_ms, how many, and the sum of their entries'
     * keys (presence_entry_key); flags: WIRE_LISTING_*. A replay's
     * (presence.c) names instead the hub whose set holds its one entry. */
    bool has_carried;
    uint8_t listing_flags;
    uint64_t listing_stamp, carried_digest, carried_age_ms;
    uint32_t ncarried;
    const char *carrier;
    size_t carrier_len;
};
#define WIRE_LISTING_LAST 1    /* the listing's last part: the set is to compare */
#define WIRE_LISTING_FULL 2    /* it names every edge the hub carries */
#define WIRE_LISTING_CARRIER 4 /* a replay: the carrier alone */
/* The origin a PRESENCE names (its length; 0 if msg is none). */
size_t wire_presence_origin(const void *msg, size_t len, const char **origin);
void wire_presence_begin(struct wire_buf *b, const char *origin, uint64_t incarnation, uint64_t seq,
                         uint64_t lo, uint64_t hi, uint32_t npages);
void wire_presence_page(struct wire_buf *b, const char *page, size_t len, uint64_t count);
/* The optional listing after the pages (version 3): the count of edges, each
 * edge, then the count of wants, each want. */
void wire_presence_count(struct wire_buf *b, uint32_t n);
void wire_presence_edge(struct wire_buf *b, const struct wire_presence_edge *e);
void wire_presence_want(struct wire_buf *b, const char *id, size_t len);
/* After the wants (version 4): a hub's carried set, in its heartbeat; or in
 * a replay, the carrier of the entry (set->carrier, WIRE_LISTING_CARRIER). */
void wire_presence_carried(struct wire_buf *b, const struct wire_presence *set);
int wire_decode_presence(const void *msg, size_t len, struct wire_presence *out);
void wire_presence_free(struct wire_presence *p);

/* ==== Tiers: edges and hubs (tier.c) ==== */

struct tier_mine;
struct tier_view;
struct tier_page;
struct tier_page_change;
struct tier_watch;
struct tier_child;

/* An edge: its own slots live in an ordinary table (the caller's); this
 * holds what goes up and what came down. */
struct tier_edge {
    struct tier_mine *mine;  /* counters written here */
    struct tier_view *views; /* counters watched here: the rest of the world */
    struct tier_page *pages; /* pages viewed here: the others' viewers */
    uint64_t incarnation;
    uint64_t seq;   /* of the next UP */
    uint64_t acked; /* highest UP seq the current hub has merged */
    uint64_t last_up_ms;
    uint64_t watch_sent_seq, pages_sent_seq; /* the UP part that ended the list */
    bool watch_changed;
    bool pages_changed; /* viewers changed: the next UP takes presence.c's changes */
    bool pages_all;     /* the whole page list is owed (tier.c, "Edge: the pages that changed") */
    /* The pages changed since the whole list, each until an UP that carried
     * it is acknowledged (tier.c) */
    struct tier_page_change *page_changes;
    uint32_t npage_changes;
    uint32_t nidle;       /* views without a watcher, lingering */
    uint64_t hub_session; /* as the current hub's DOWNs name it */
    uint64_t hub_changes; /* times the edge found itself on a new hub */
    uint64_t below;       /* its lives below this are retired (fold.c), as DOWN says */
    uint64_t first_up;    /* the last part of its first UP, which carried every counter */
    char hub[TALLY_NODE_ID_MAX + 1];
    char node_id[TALLY_NODE_ID_MAX + 1];
    /* The group of hubs its count is in: the first a DOWN named ("" until
     * then); its UPs name it, and a hub of another group refuses them. */
    char group[TALLY_NODE_ID_MAX + 1];
};

/* first_seq: the seq of its first UP, above any of an earlier run of the
 * same incarnation (plugin.c gives the wall clock in ms; tier.c says why). */
void tier_edge_init(struct tier_edge *e, const char *node_id, uint64_t incarnation,
                    uint64_t first_seq);
/* Whether a hub has merged everything this edge held when it started (its
 * past lives' slots among it): only then may it drop what the hubs retired. */
bool tier_edge_started_up(const struct tier_edge *e);
void tier_edge_free(struct tier_edge *e);
/* The edge's own slot of `name` changed (after table_add on it). */
int tier_edge_wrote(struct tier_edge *e, const char *name, size_t len);
/* A counter's total starts (on) or stops being watched by the edge's clients;
 * its view lingers TIER_VIEW_LINGER_MS (tier.c) after the last watcher. */
int tier_edge_watch(struct tier_edge *e, const char *name, size_t len, bool on);
/* The edge's local viewer counts changed (presence.c's local_changed). */
void tier_edge_pages_changed(struct tier_edge *e);
/* Called with each message (part) written into out, for the caller to send. */
typedef void tier_emit_fn(const struct wire_buf *msg, void *ud);
/* When an UP is due (something unacknowledged and every_ms since the last,
 * or heartbeat_ms since the last), writes it into out, in as many parts of
 * at most max_bytes as it needs, each passed to emit; returns TALLY_OK or a
 * tally_err. t holds the edge's own slots; pr its local viewers. */
int tier_edge_up(struct tier_edge *e, struct tally_table *t, struct tally_presence *pr,
                 uint64_t now_ms, uint64_t every_ms, uint64_t heartbeat_ms, size_t max_bytes,
                 struct wire_buf *out, tier_emit_fn *emit, void *ud);
/* Called for each watched counter whose shown total may have changed. */
typedef void tier_changed_fn(const char *name, size_t len, void *ud);
int tier_edge_apply_down(struct tier_edge *e, const void *msg, size_t len, tier_changed_fn *fn,
                         void *ud);
/* What the edge shows: its own part (from t) plus the rest of the world, as
 * the parts a hub's table_sums gives (P, N, devices after resets) and their
 * total (value); tier_edge_value is that total. */
void tier_edge_sums(const struct tier_edge *e, struct tally_table *t, const char *name, size_t len,
                    struct tally_sums *out);
int64_t tier_edge_value(const struct tier_edge *e, struct tally_table *t, const char *name,
                        size_t len);
/* Whether the edge follows name: holds a view of it that a DOWN has filled.
 * Only then is its total (tier_edge_value) the cluster's, and shown. */
bool tier_edge_follows(const struct tier_edge *e, const char *name, size_t len);
/* The total an answer to an increment of name reports: tier_edge_value while
 * the edge follows it; otherwise its own part plus the figures of the last
 * view it held of it (kept for the counters it writes), a lower bound of the
 * truth never below the last total it showed but for its own decrements. */
int64_t tier_edge_answer(const struct tier_edge *e, struct tally_table *t, const char *name,
                         size_t len);
/* A page's viewers: the edge's own (from pr) plus the others'. */
uint64_t tier_edge_page_total(const struct tier_edge *e, const struct tally_presence *pr,
                              const char *page, size_t len);

/* A hub: its edges, what each watches and was last told. */
struct tier_hub {
    struct tier_child *children;
    struct tier_watch *watches;     /* counters some child watches */
    struct tier_watch *page_totals; /* pages some child views: totals this tick */
    uint64_t session, children_made;
    uint64_t gen;        /* tier_hub_tick's count: figures computed once a tick */
    bool listing_owed;   /* the next heartbeat lists every child (the first; a hub wants it) */
    bool all_pages_owed; /* the next heartbeat announces them all (the first; tier_hub_owe_pages) */
    struct persist *persist; /* folds of adopted past lives are logged here (or NULL) */
    char node_id[TALLY_NODE_ID_MAX + 1];
    char group[TALLY_NODE_ID_MAX + 1]; /* its group of hubs, named in its DOWNs ("": none) */
    /* A group's or region's stream (scope.c): its heartbeat's wants are of
     * the origins of level wants_level and up held in wants_of. */
    struct tally_presence *wants_of;
    int wants_level;
};

void tier_hub_init(struct tier_hub *h, const char *node_id, uint64_t session);
void tier_hub_free(struct tier_hub *h);
/* Merges an UP into t (the edge's slots) and pr (its viewers, as the
 * presence origin named after it); *from is the child it came from. */
int tier_hub_apply_up(struct tier_hub *h, struct tally_table *t, struct tally_presence *pr,
                      const void *msg, size_t len, uint64_t now_ms, struct tier_child **from);
/* Starts a new round of DOWNs: counter figures are computed again. */
void tier_hub_tick(struct tier_hub *h);
/* Writes the DOWN owed to child ch, if any, into out, in as many parts of at
 * most max_bytes as it needs, each passed to emit; returns TALLY_OK or a
 * tally_err. Every heartbeat_ms a DOWN carries all the child watches. */
int tier_hub_down(struct tier_hub *h, struct tally_table *t, const struct tally_presence *pr,
                  struct tier_child *ch, uint64_t now_ms, uint64_t heartbeat_ms, size_t max_bytes,
                  struct wire_buf *out, tier_emit_fn *emit, void *ud);
/* The child's viewers as PRESENCE messages from its own origin (in as many
 * parts of at most max_bytes as they need, each passed to emit), for the
 * other hubs: the range that changed since the last relay, or all of them
 * when a hub wants them (tier_hub_heard), each part ending with the child's
 * own listing entry as of now_ms; the child's origin in pr then holds them
 * at the relay's seq. Returns TALLY_OK or a tally_err. */
int tier_hub_relay(struct tier_child *ch, struct tally_presence *pr, size_t max_bytes,
                   uint64_t now_ms, struct wire_buf *out, tier_emit_fn *emit, void *ud);
/* Whether the heartbeat at now_ms lists all our children: the first one
 * (last_ms 0), and then every timeout_ms / 3; in between, those relayed
 * since. */
/* The next heartbeat announces all our pages: a change could not go alone,
 * a node was heard anew (it may hold none of them), or one wants them. */
void tier_hub_owe_pages(struct tier_hub *h);
/* The hub's presence heartbeat (every node's, tiers or not): its own viewers
 * (presence_announce, from first_seq on) the first time and when owed, else
 * its changes not yet sent (presence_announce_changes) and a keepalive (a
 * PRESENCE of no range: alive, no count touched), with its own entry (the
 * digest of its viewers), the listing of its children (all of them every
 * timeout_ms / 3, else those relayed since) and its wants appended (tier.c,
 * "the heartbeat's listing"), in as many parts of at most max_bytes as it
 * needs, each passed to emit; *sent: how many. Returns TALLY_OK or a
 * tally_err. */
int tier_hub_heartbeat(struct tier_hub *h, struct tally_presence *pr, uint64_t incarnation,
                       uint64_t first_seq, uint64_t now_ms, uint64_t timeout_ms, size_t max_bytes,
                       struct wire_buf *out, tier_emit_fn *emit, void *ud, uint32_t *sent);
/* Whether a new PRESENCE from o says it is alive now: a hub's own does, a
 * relay of an edge (listed, or a child of ours) does not. */
bool tier_hub_says_alive(struct tier_hub *h, const struct tally_origin *o);
/* Takes another hub's listing from its heartbeat (already decoded, new here):
 * the liveness of the edges it lists, and the relays it wants of ours. */
int tier_hub_heard(struct tier_hub *h, struct tally_presence *pr, const struct wire_presence *wp,
                   uint64_t now_ms);
struct tier_child *tier_hub_child(struct tier_hub *h, const char *id);
/* The child after ch (NULL: the first), NULL after the last. */
struct tier_child *tier_hub_next(struct tier_hub *h, struct tier_child *ch);
/* Calls fn for each page the edge's viewers watch, with the others' viewers. */
typedef void tier_page_fn(const char *page, size_t len, uint64_t others, void *ud);
void tier_edge_each_page(const struct tier_edge *e, tier_page_fn *fn, void *ud);
/* Sizes, for stats: a hub's children; the entries a hub holds for them
 * (children, watched counters, viewed pages); an edge's written, watched and
 * viewed entries. */
size_t tier_hub_children(const struct tier_hub *h);
size_t tier_hub_entries(const struct tier_hub *h);
size_t tier_edge_entries(const struct tier_edge *e);
const char *tier_child_id(const struct tier_child *ch);
/* The connection (its bridge's client id at the hub) the child's last UP
 * came over: where its DOWNs go. NULL until one is set. */
int tier_child_set_conn(struct tier_child *ch, const char *conn);
const char *tier_child_conn(const struct tier_child *ch);
uint64_t tier_child_incarnation(const struct tier_child *ch);
/* Forgets children silent for timeout_ms (their slots stay in the table). */
void tier_hub_expire(struct tier_hub *h, uint64_t now_ms, uint64_t timeout_ms);

/* A control API request an edge passes to its hub, or (TIER_CONTROL_ANSWER)
 * the hub's answer, in parts; data borrowed from the message. */
enum { TIER_CONTROL_ADMIN = 1, TIER_CONTROL_ANSWER = 2 };
struct tier_control {
    const char *node; /* the sender */
    size_t node_len;
    uint64_t id;
    uint8_t flags;
    uint32_t part, parts;
    const uint8_t *data;
    size_t len;
};
/* Writes data as CONTROL messages of at most max_bytes into out, each passed
 * to emit; returns TALLY_OK or a tally_err. */
int tier_control_write(const struct tier_control *c, size_t max_bytes, struct wire_buf *out,
                       tier_emit_fn *emit, void *ud);
int tier_control_read(const void *msg, size_t len, struct tier_control *out);
/* ==== Replication between neighbours (repl.c) ==== */

#define REPL_MAX_NEIGHBOURS 4096
/* Replica numbers a receiver learns (a neighbour's map: 64 MB at most); a
 * replica numbered above is resolved by its name alone, which the sender
 * gives again each time it is asked. */
#define REPL_MAX_NUMBER (1u << 24)

/* One bridge connection, keyed by the client id Mosquitto gives it. */
struct repl_neighbour {
    char node[TALLY_NODE_ID_MAX + 1]; /* its node id, "" until it sends */
    uint64_t session, seq;            /* its SYNC stream, as far as seen */
    bool want_repair;                 /* ask it in our next DIGEST */
    bool new_session;                 /* restarted (repl_replay_due) */
    uint64_t replayed_ms;             /* when a replay to it was last owed */
    bool replayed_restart;            /* ... for a restart, not a first meeting */
    uint32_t replay_from;             /* the replay under way: presence_replay's *from */
    bool replaying;
    bool have_prev;
    uint64_t prev_theirs[TALLY_BUCKETS], prev_ours[TALLY_BUCKETS]; /* at its last DIGEST */
    uint32_t *map, map_cap; /* its stream's replica numbers -> our registry index + 1 */
    uint32_t lack[WIRE_MAX_NAMES], nlack; /* numbers to ask it to name again */
    uint64_t lack_from, lack_until;       /* the seqs of its stream to ask for (from 0: all) */
    bool asked_open;                      /* asked, and no repair or equal digest since */
    /* Rule 2a (repl.c): when we last heard it (repl_heard), and whether we
     * no longer say we do; the hashes of the node ids its last DIGEST said
     * it hears; whether every other neighbour of ours hears it. */
    uint64_t heard_ms;
    bool unheard;
    bool covered;
    uint32_t nhears;
    uint64_t hears[WIRE_MAX_HEARS];
    uint64_t node_hash; /* of node */
    /* Per bucket: the seq of its stream (this session) of the last SYNC that
     * changed the bucket here. Rule 2a may have left that change to its own
     * SYNC to our other neighbours (repl.c, rule 5). */
    uint64_t bucket_learned[TALLY_BUCKETS];
    char conn[];
};

struct repl {
    struct repl_neighbour **nb;
    uint32_t n, cap;
    uint64_t session, seq;   /* our own SYNC stream: seq of the last one sent */
    bool learned;            /* a change owed to a neighbour came from another */
    uint64_t asked;          /* repairs asked of neighbours (gaps, new sessions) */
    uint64_t unnamed;        /* SYNCs not applied: a replica number we could not resolve */
    uint64_t outer_ms;       /* a flood last came over a connection of no neighbour (2b) */
    struct wire_names names; /* the replicas our stream has named */
    uint64_t failed;         /* counters that could not be written (memory) */
    /* A bit per seq mod 2^16: that SYNC ended within a counter, whose entries
     * in it are marked with a later seq (repl.c, rule 4a); allocated at the
     * first such SYNC. continued_lost: the bits could not be kept. */
    uint8_t *continued;
    bool continued_lost;
    /* Per bucket: the seq of our last SYNC that carried a change in it. A
     * neighbour whose DIGEST says it heard our stream that far has all we
     * sent there (repl.c, rule 5). */
    uint64_t bucket_sent[TALLY_BUCKETS];
};

/* Where and how SYNCs leave: plugin.c publishes them. to_one: they reach one
 * neighbour alone (a repair sent to its asker), outside the numbered stream. */
struct repl_out {
    const char *self;
    size_t max_bytes;
    void (*send)(const struct wire_buf *msg, void *ctx);
    void *ctx;
    bool to_one;
};

struct persist;

void repl_init(struct repl *r, uint64_t session);
void repl_free(struct repl *r);
/* The index of the neighbour behind connection `conn` (created if new). */
int repl_neighbour(struct repl *r, const char *conn, uint16_t *out);
/* True if a slot marked `pending` is owed to some neighbour (ctx: the repl). */
bool repl_owed(uint16_t pending, void *ctx);
/* Merges a SYNC from neighbour k into t (and the log p, if any). */
int repl_apply_sync(struct repl *r, struct tally_table *t, struct persist *p,
                    const struct wire_sync *s, uint16_t k);
/* The SYNCs of our stream a repair covers, [since, until]; since 0: all. */
struct repl_span {
    uint64_t since, until;
};
/* Takes a DIGEST from neighbour k; sets in dump (TALLY_BUCKETS bits) the
 * buckets to repair and in *span the SYNCs of our stream whose entries the
 * repair holds, and returns how many buckets. */
unsigned repl_digest_seen(struct repl *r, uint16_t k, const struct wire_digest *d,
                          const uint64_t *ours, const char *self, uint64_t *dump,
                          struct repl_span *span);
bool repl_wants_repair(const struct repl *r);
/* How the caller heard neighbour k anew (repl_replay_due). */
enum repl_anew {
    REPL_ANEW_NO,        /* it did not: only k's SYNC stream may tell */
    REPL_ANEW_HEARD,     /* first heard, or heard again after it went silent */
    REPL_ANEW_RESTARTED, /* a new life of a node we knew (a new incarnation,
                          * its stats numbered from 1 again) */
};
/* How a node's own PRESENCE of incarnation tells it anew, o being its
 * origin as held before that PRESENCE: a new life of a node we knew, first
 * heard or heard again after it expired, or neither. */
enum repl_anew repl_anew_of(const struct tally_origin *o, uint64_t incarnation);
/* Whether a replay of the viewer counts we hold (presence_replay) to
 * neighbour k begins now (replaying, from slot 0; the caller sends it on in
 * steps). It is owed when k has started another SYNC stream than the one we
 * knew (it restarted; one first heard is a link that came up, or a new
 * node, which its own PRESENCE tells), or anew (the caller heard it restart
 * or appear another way: its own PRESENCE of a new incarnation or first
 * heard, its stats numbered from 1 again), and none was owed it within
 * every_ms (two signs of one restart), or only a first meeting was. A
 * first meeting begins one only if we started (started_ms) every_ms ago or
 * more: before, every neighbour is new to us, and what we hold they have
 * just sent us. A restart begins one however young we are: k holds
 * nothing, and we hold what it had sent us. Clears the mark either way. */
bool repl_replay_due(struct repl *r, uint16_t k, enum repl_anew anew, uint64_t now_ms,
                     uint64_t every_ms, uint64_t started_ms);
/* The neighbour behind connection conn, if its node id is node (so that
 * what node sent itself came straight over its bridge): its index, or -1. */
int repl_find(const struct repl *r, const char *conn, const char *node, size_t len);
/* The node ids of the neighbours heard lately (repl_hearing), at most max
 * of them, into ids; returns how many. */
uint32_t repl_alive(const struct repl *r, const char **ids, uint32_t max);
/* Our DIGEST into d, naming (and clearing) the repairs we ask for, and the
 * neighbours we hear (repl_hearing). d's strings borrow from r and self. */
void repl_digest(struct repl *r, struct wire_digest *d, const char *self, const uint64_t *digest);
/* Neighbour k was heard now: a message it sent itself came over its own
 * connection (a SYNC, a DIGEST, its own PRESENCE heartbeat). */
void repl_heard(struct repl *r, uint16_t k, uint64_t now_ms);
/* A neighbour not heard for quiet_ms is one we no longer say we hear, and
 * those that said they heard it are asked for a repair (repl.c, rule 2a);
 * one heard again is said to be heard again. */
void repl_hearing(struct repl *r, uint64_t now_ms, uint64_t quiet_ms);
/* Whether every other neighbour said it hears neighbour k (rule 2a): what
 * k sent them itself, we do not send on. */
bool repl_covered(const struct repl *r, uint16_t k);
/* Rule 2b (repl.c): a flood (a group's or region's sums or viewer sums)
 * came in over connection conn; one that is no neighbour's is a bridge to
 * another group or region, and a hub that has one floods on. */
void repl_outer_heard(struct repl *r, const char *conn, uint64_t now_ms);
/* Whether a flood new here, in over conn, is sent on: not when conn is a
 * neighbour every other one hears (each had it from that neighbour) and,
 * for a flood the other groups take (quiet_ms not 0), no bridge to another
 * group or region was heard within quiet_ms. */
bool repl_flood_on(const struct repl *r, const char *conn, uint64_t now_ms, uint64_t quiet_ms);
/* Sends the pending slots of at most budget counters of the replication
 * list; returns how many counters it took. */
size_t repl_send_deltas(struct repl *r, struct tally_table *t, struct wire_sync_writer *w,
                        const struct repl_out *out, size_t budget);
/* Sends the state of every counter in the buckets set in mask: whole if span
 * is NULL or since 0, else the entries whose last carrier was a SYNC of the
 * span, with bases and fold entries; returns how many counters it sent. */
size_t repl_send_buckets(struct repl *r, struct tally_table *t, struct wire_sync_writer *w,
                         const struct repl_out *out, const uint64_t *mask,
                         const struct repl_span *span);

/* ==== Groups of hubs (group.c) ==== */

/* A group's replica in the table of a hub of another group: node id "."
 * and the group's name (no node id starts with '.': options refuses it),
 * one life. */
#define GROUP_MARK '.'
#define GROUP_INCARNATION 1
/* The rest of the tree at level k, at the hubs of a group with light hubs
 * (group.c, "Light hubs"): TALLY_LEVELS + 1 marks and the digit k, which
 * no unit's replica is (a unit's name does not start with a mark). */
#define REST_ID_LEN (TALLY_LEVELS + 2)
#define REST_REQUEST 'a' /* a request's replica: the marks and 'a' + k - 1 */
#define GROUP_NAME_MAX (TALLY_NODE_ID_MAX - 1)
#define WIRE_GSUM 7
#define WIRE_RSUM 8         /* a region's sums: a GSUM one level up */
#define WIRE_GSUM_VERSION 3 /* 3: in a region (names it), and RSUMs */
#define WIRE_GWANT 9        /* a hub asks a speaker for its GSUMs it lacks (version 3) */
#define WIRE_RWANT 10       /* the same for RSUMs */
/* What a hub keeps of each stream of sums, its own and those it saw, to
 * send them again to a neighbour that asks (group.c, "Sums lost on the
 * way"): the last GROUP_KEEP messages, what a hub's window of seqs holds,
 * GROUP_KEEP_BYTES at most; a hub asks at most GROUP_WANT_TRIES times for
 * the same gap. */
#define GROUP_KEEP 64
#define GROUP_KEEP_BYTES (256u * 1024)
#define GROUP_WANT_TRIES 3
/* The refresh, every counter again, goes once GROUP_REFRESH_CALM refresh
 * intervals, since asks heal what is lost, and under a budget out of the
 * speaker's share; a tenth of an interval after the last began, at once,
 * when a node is heard anew, or a hub calls for it. */
#define GROUP_REFRESH_CALM 10
/* Under a budget, a refresh's own pace (beside what the rest leave it): a
 * tenth of the speaker's share. */
#define GROUP_REFRESH_TRICKLE 10

/* A stream's last GROUP_KEEP messages, by seq % GROUP_KEEP: sent again when
 * a neighbour asks (due), at most once a half heartbeat each. */
struct group_kept {
    uint64_t seq, resent_ms; /* resent_ms: when last sent again, plus 1 (0: never) */
    uint8_t *data;
    size_t len, cap;
    bool due;
};
struct group_ring {
    struct group_kept k[GROUP_KEEP];
    size_t bytes; /* the lengths kept, at most GROUP_KEEP_BYTES */
};

/* A device maximum and its base (reset.c) as we last announced them, or
 * heard them announced. */
struct group_dev {
    uint32_t device; /* index into the table's device registry */
    bool owed;       /* rose here since we last announced it */
    bool heard;      /* it came from a GSUM: not ours to announce again */
    uint64_t total, base;
};

/* The base of a group's replica (another group's, or our own) as we last
 * announced it, or heard it: what a reset observed of that group's sum. */
struct group_base {
    uint32_t replica; /* index into the table's replica registry */
    bool owed, heard; /* as group_dev's */
    uint64_t p, n;
};

/* A counter as our group's announcements know it: our group's sum as last
 * noted (group_note), and its device maxima. */
struct group_entry {
    UT_hash_handle hh;
    struct group_entry *next; /* on the queue of entries owed */
    /* On the queue of echoes (group.c, "The last sums again"): since
     * echo_ms; sent_ms, when its sums last went. */
    struct group_entry *echo_next;
    uint64_t echo_ms, sent_ms;
    bool echo_queued;
    uint64_t p, n, bp, bn;
    uint64_t deleted, reset;  /* the counter's stamps (reset.c) */
    struct group_dev *devs;   /* sorted by device */
    struct group_base *bases; /* sorted by replica */
    uint32_t ndevs, nbases;
    bool queued;
    bool ours;        /* the counter holds a slot of a node of our group */
    bool noted;       /* ... and we have queued it since (a counter made at 0 is news) */
    bool stamps_owed; /* its stamps rose here since we last announced them */
    uint8_t name_len;
    char name[];
};

/* The GSUMs of one node seen here: its session and the 64 seqs below the
 * highest (flooded messages arrive over many paths, out of order). */
struct group_origin {
    UT_hash_handle hh;
    uint64_t session, high, seen;
    uint64_t heard_ms; /* when its sums were last new here */
    bool other;        /* it speaks for another unit than ours: a stream we take */
    /* Sums lost on the way (group.c): seqs at or below `floor` are not
     * asked for (sent before we heard of it); a gap was seen since we last
     * looked (gap); we ask for what is missing at want_ms (0: nothing to
     * ask), `tries` times for the same gap at most; what we saw of it,
     * for a neighbour that lacks it. */
    uint64_t floor, want_ms;
    uint8_t tries;
    bool gap;
    /* What no neighbour holds (seqs before the window: first heard past it,
     * or a gap wider than it; or asked for in vain): we call for its
     * speaker's refresh (call), at most once a refresh interval (called_ms,
     * plus 1); speaks: it sent us sums, so it has a refresh to send. */
    bool late, call, speaks;
    uint64_t called_ms;
    struct group_ring ring;
    char id[TALLY_NODE_ID_MAX + 1];
};

struct tally_group {
    char name[GROUP_NAME_MAX + 1]; /* "" when this hub is in no group */
    size_t len;
    /* 1: a group of hubs, whose sums go to the other groups (of its region,
     * if in one); 2: a region, a group of groups, whose sums go to the
     * other regions (of the region above it, if any); and so on up to
     * TALLY_LEVELS. A replica of a level-k unit is k marks and its name. */
    int level;
    char up[GROUP_NAME_MAX + 1]; /* the unit one level up it is in ("": none) */
    size_t up_len;
    struct group_entry *entries, *cursor; /* cursor: the refresh under way */
    struct group_entry *queue, **queue_tail;
    struct group_entry *echo, **echo_tail;
    struct group_origin *origins;
    uint64_t session, seq, refresh_ms, refresh_due, refresh_began;
    /* One hub of a group speaks for it: the first in order of node id that
     * the others have heard within quiet_ms (its GSUMs, at least three a
     * quiet_ms); clock_ms: group_announce's last now_ms. */
    uint64_t quiet_ms, clock_ms, senior_ms, sent_ms;
    bool senior, quiet; /* heard one before us in order; not speaking */
    /* Our own unit's hub we last heard speak for it (its sums): where a
     * light hub passes a reset (plugin.c). */
    char speaker[TALLY_NODE_ID_MAX + 1];
    /* Set as we begin to speak after keeping quiet: the last speaker may
     * have died with rest slots unsent, so the caller brings every
     * counter's up to date (group_rest) and clears it. */
    bool took_over;
    uint64_t announced, learned, stale, refused; /* counters sent and taken, messages dropped */
    /* of those refused, the sums of a hub whose tree has other levels than
     * ours (plugin_opt_group, plugin_opt_region): a misconfiguration, under
     * which the two never count each other */
    uint64_t mismatched;
    uint64_t echoed; /* counters sent again as they went still */
    /* Gaps seen in the sums streams of other hubs, the last at hole_ms: the
     * evidence that sums are lost on the way, without which none is echoed */
    uint64_t holes, hole_ms;
    /* A budget of sums (group.c): records a second a hub takes of this
     * level's sums, 0 for no bound (plugin_opt_sums_budget); our share
     * saved up, in thousandths of a record, as of share_ms, and a
     * heartbeat's worth of it (share_batch); announces that left sums that
     * rose waiting for it */
    uint64_t sums_budget, share, share_ms, share_batch, budget_held;
    /* The refresh under a budget (group.c, "The refresh under a budget"):
     * the pass under way goes at what is left of our share (paced), and a
     * tenth of it of its own, saved up in refresh_share, a heartbeat's
     * worth of that at least; one a node heard anew or a call asked
     * for goes at once (urgent: the next pass); about how many entries the
     * pass has left (new ones are added after the cursor); how long the
     * last took */
    bool refresh_paced, refresh_urgent;
    uint64_t refresh_share, refresh_rest, refresh_took;
    uint64_t queued;          /* entries on the queue */
    uint64_t viewers_refused; /* PRESENCE of another group or region dropped (scope.c) */
    /* Our own stream's last messages, for a neighbour that lacks them, and
     * whether one of any ring is due to go again (resend); the asks we
     * sent, the messages we sent again (ours and others'), our calls. */
    struct group_ring ring;
    bool resend;
    uint64_t wants, resent, calls;
};

void group_init(struct tally_group *gr, const char *name, uint64_t session, uint64_t refresh_ms);
/* Makes gr the unit of level `level` (1: a group; 2: a region, ...), in
 * unit `up` one level up (NULL: none): before group_bind. */
void group_scope(struct tally_group *gr, int level, const char *up);
/* Names our group's replica in t (t->group), once group_init named a group
 * and before t is summed: the base a reset elsewhere put on it lowers our
 * group's part of every total (reset.c). */
int group_bind(const struct tally_group *gr, struct tally_table *t);
/* A group's name: a node id of at most GROUP_NAME_MAX bytes (its replica's
 * id is "." and the name). TALLY_OK or the reason it is refused. */
int group_name_check(const char *name, size_t len);
/* A level-k unit's (1: a group, 2: a region, ...): k bytes shorter than a
 * node id (its replica's id is k marks and it), not starting with a mark. */
int unit_name_check(int level, const char *name, size_t len);
/* plugin_opt_region (plen bytes): our region's name, then the names of
 * the regions above it, '/' between them ("eu-west/eu"), into names
 * (level 2 up). How many (0 for ""), or -1 if a name is empty or not a
 * unit's of its level, or more than TALLY_LEVELS - 1 are given. */
int region_path(const char *path, size_t plen, char names[TALLY_LEVELS - 1][GROUP_NAME_MAX + 1]);
/* How many marks an id begins with, at most TALLY_LEVELS: 0 for a node,
 * k for the replica or viewer origin of a unit of level k. */
int unit_marks(const char *id, size_t len);
/* The sums budget of each level (records a second a hub takes of it): the
 * option, if set (> 0); by default 1,000 a level, and in a tree of more than
 * two levels the 2,000 of two shared among them (667 at three, 500 at
 * four), so that a level more costs a hub no more sums a second. */
uint64_t group_sums_budget(long long option, int levels);
void group_free(struct tally_group *gr);
static inline bool group_on(const struct tally_group *gr)
{
    return gr->len != 0;
}
/* A presence heartbeat, a third of quiet_ms: the speaker sends at least one
 * a heartbeat, and echoes a sum a heartbeat after it went still. */
static inline uint64_t group_heartbeat_ms(const struct tally_group *gr)
{
    return gr->quiet_ms / 3;
}
/* How often a speaker's sums go (plugin_opt_sums_interval_ms, sums_ms; 0:
 * every publish interval): at most a heartbeat, so that its keepalives
 * keep the others of its group quiet. */
static inline uint64_t group_sums_every(const struct tally_group *gr, uint64_t sums_ms,
                                        uint64_t publish_ms)
{
    uint64_t every = sums_ms ? sums_ms : publish_ms;
    return every < group_heartbeat_ms(gr) ? every : group_heartbeat_ms(gr);
}
/* How long a bridge out of our group counts as heard (repl.c, rule 2b:
 * repl_flood_on's window for what the other groups take): two quiet
 * times, so that a bridge out whose traffic pauses still gets it. */
static inline uint64_t group_outer_ms(const struct tally_group *gr)
{
    return 2 * gr->quiet_ms;
}
/* Every counter again soon (at most ten refreshes an interval), at once
 * whatever the budget: a node heard anew (a bridge back after its peers
 * expired, a restart) may have missed GSUMs, or a hub called for it. A
 * paced pass under way is given up for it. */
static inline void group_refresh_now(struct tally_group *gr)
{
    uint64_t soon = gr->refresh_began + gr->refresh_ms / 10;
    if (gr->cursor && gr->refresh_paced)
        gr->cursor = NULL;
    gr->refresh_urgent = true;
    if (gr->refresh_due > soon)
        gr->refresh_due = soon; /* a tenth of the interval after the last began */
}
/* A flooded stream's seqs seen here: the highest, and the 64 below it (copies
 * arrive over many paths, out of order). True the first time seq is seen. */
bool seq_window_first(uint64_t *high, uint64_t *seen, uint64_t seq);
/* True if replica stands for a whole group or region (an id starting with '.'). */
bool group_replica(const struct tally_table *t, uint32_t replica);
/* 0 for a node, 1 for a group's replica, 2 for a region's, and so on up:
 * the marks its id starts with. */
int group_level(const struct tally_table *t, uint32_t replica);
/* Our group's part of c: the sum of every node's slot, less what folds moved
 * (fold.c), and of its bases (reset.c); group replicas and devices apart. */
void group_sum(const struct tally_table *t, const struct tally_counter *c, uint64_t *p, uint64_t *n,
               uint64_t *bp, uint64_t *bn);
/* At a hub of a group with light hubs that is not one (t->lean, not
 * t->light): c's rest slots from the other units' slots it holds, level by
 * level (a split hub: of the levels it holds), and their bases from those
 * slots' (group.c, "Light hubs"); at a split hub, a reset's part at each
 * level it holds (group.c, "Split hubs"), logged to p (NULL: none). Call
 * after c changed. TALLY_OK or a tally_err. */
int group_rest(struct tally_table *t, struct persist *p, struct tally_counter *c);
/* Split hubs (group.c): the levels, of the first `levels`, that the hub
 * self keeps among the n hubs alive of its group (ids, self among them or
 * not), as bits 1 to TALLY_LEVELS. */
uint8_t group_holds(const char *self, const char *const *ids, uint32_t n, int levels);
/* Drops every slot of another unit of level k (a split hub that no longer
 * holds the level: its rest slot keeps their sum). */
void group_drop_level(struct tally_table *t, int k);
/* A split hub's levels (t->holds) among the n hubs of its group alive
 * (group_holds), its units of each level at units[k - 1] (as many as are
 * on): for a level it comes to hold, a call for its streams' refresh; for
 * one it no longer holds, its units' slots dropped. True when it came to
 * hold one: every counter's rest slots are then owed (took_over). */
bool group_split_levels(struct tally_table *t, struct tally_group *const units[TALLY_LEVELS],
                        const char *self, const char *const *alive, uint32_t n);
/* After c changed: queues it for our next GSUM when our group's sum or one
 * of its device maxima rose. */
int group_note(struct tally_group *gr, const struct tally_table *t, const struct tally_counter *c);
/* Writes what neighbours asked for again and our asks for what we lack,
 * then what is owed, and the next `budget` counters of the refresh (every
 * counter again once GROUP_REFRESH_CALM refresh_ms), in GSUMs of at most
 * max_bytes, each handed to emit; returns how many it wrote. */
uint32_t group_announce(struct tally_group *gr, const struct tally_table *t, const char *self,
                        uint64_t now_ms, size_t max_bytes, size_t budget, struct wire_buf *b,
                        void (*emit)(const struct wire_buf *msg, void *ud), void *ud);
/* A GSUM: another group's sums and device maxima into t (logged to p).
 * *fresh when it was new here: the caller floods it on. An ask (GWANT,
 * RWANT) of a neighbour's is taken, never fresh: it goes no further. */
int group_apply(struct tally_group *gr, struct tally_table *t, struct persist *p, const char *self,
                const void *msg, size_t len, bool *fresh);

/* ==== Viewers summed per group and region (scope.c) ==== */

/* The units of a hub, as the topic of what it publishes names them: its
 * unit of level k at [k - 1] (its group, its region, ...), "" above its
 * top (or all "": in no group). */
struct scope_name {
    const char *name[TALLY_LEVELS];
    size_t len[TALLY_LEVELS];
};
/* Ours, from our units of level 1 up (NULL, or not on: none). */
void scope_name_of(const struct tally_group *const units[TALLY_LEVELS], struct scope_name *out);

/* What a hub does with a PRESENCE, by its origin and the units of the hub
 * that published it (its topic). */
enum scope_take {
    SCOPE_TAKE,   /* count it, flood it on if new */
    SCOPE_PASS,   /* our own group's or region's sums: flood it on if new */
    SCOPE_REFUSE, /* another scope's, which its sums count here */
};
enum scope_take scope_take(const struct scope_name *ours, const char *origin, size_t len,
                           const struct scope_name *from);

/* The topic kind of a PRESENCE of an origin of level k, $tally/v1/<kind>/:
 * a node's on presence/, a group's sums on gviews/, a region's on rviews/
 * (one of level k above it on rviews<k>/). */
extern const char *const scope_kinds[TALLY_LEVELS + 1];
/* Whether a PRESENCE of origin may come on topic $tally/v1/<kind>...: on
 * its level's (scope_kinds), or replayed on replay/ (scope.c). */
bool scope_topic_fits(const char *kind, const char *origin, size_t len);
/* The units a PRESENCE of `origin` is published under, as a hub of units
 * `ours` holds it: ours for a node's, ours with g for ".g", with r for
 * "..r", and so on (a replay names the origin's scope, scope.c). */
void scope_of_origin(const struct scope_name *ours, const char *origin, size_t len,
                     struct scope_name *out);

/* Every speaker of a group's (region's) sums sends them under this one. */
#define SCOPE_INCARNATION 1

/* Our group's (level 1), region's (2) or higher unit's viewer sums as a
 * PRESENCE stream of origin ".g" ("..r", "...z"), sent while we speak for
 * it (group.c). */
struct scope_stream {
    struct tally_presence pr; /* the sums, as its own counts */
    struct tier_hub hub;      /* its heartbeat (no children) */
    int level;
    bool speaking;
    bool wants_owed;     /* a want of another scope's to carry (scope_wants) */
    uint64_t high, seen; /* seqs of it sent or heard: the highest, and the 64 below */
};

void scope_init(struct scope_stream *s, const struct tally_group *gr, struct tally_presence *main);
void scope_free(struct scope_stream *s);
/* Once a publish interval, after group_announce: whether we speak for gr
 * (!gr->quiet); speaking, the sums are brought up to date from main (all
 * of them when we begin), else forgotten. Then presence_scope_taken(main). */
int scope_follow(struct scope_stream *s, const struct tally_presence *main, bool speaking);
/* Whether a stream we speak for has something to send now: changes, all
 * its pages owed, or wants to carry. */
bool scope_due(const struct scope_stream *s);
/* Sends the stream, numbered from clock_seq (or above every seq of it seen
 * here): with changes, what changed alone when that is cheaper, else (or
 * at a heartbeat) all its pages or a keepalive, with its wants, each part
 * of at most max_bytes handed to emit. TALLY_OK or a tally_err. */
int scope_announce(struct scope_stream *s, bool changes, uint64_t clock_seq, uint64_t now_ms,
                   uint64_t timeout_ms, size_t max_bytes, struct wire_buf *out, tier_emit_fn *emit,
                   void *ud);
/* Our own group's (region's) sums from another of its hubs (SCOPE_PASS):
 * true the first time its seq is seen here (flood it on), and its wants
 * taken (scope_wants). */
bool scope_pass(struct scope_stream *const streams[TALLY_LEVELS], struct tally_presence *main,
                const struct wire_presence *wp);
/* The wants of a taken or passed PRESENCE: of our stream (all its pages
 * owed), or of another scope's, owed in our stream one level up. streams:
 * our units' of level 1 up (NULL: none). */
void scope_wants(struct scope_stream *const streams[TALLY_LEVELS], struct tally_presence *main,
                 const struct wire_presence *wp);

/* ==== JSON views of the state and the control API (control.c) ==== */

/* What a node has counted since it started: its stats. */
struct tally_stats {
    uint64_t applied, duplicates, reports, reports_stale;
    uint64_t rejected[TALLY_E__COUNT];
    uint64_t repl_msgs_in, repl_bytes_in, repl_msgs_out, repl_bytes_out;
    uint64_t repl_rejected, repl_too_large, repair_counters;
    uint64_t presence_replayed;  /* origins sent to a neighbour that restarted */
    uint64_t floods_held;        /* new floods not sent on: each neighbour had them (2a, 2b) */
    uint64_t repl_dropped_large; /* ours, over max_message_bytes: not sent */
    uint64_t logins_refused;     /* by protect_clientids */
    uint64_t log_suppressed;
};

/* Everything $tally/stats/<node> shows; all borrowed for the call. */
struct stats_view {
    const struct fold_gc *fold;      /* say what fold.c collects (NULL at an edge) */
    const struct tally_group *group; /* its figures, when this hub is in a group (group.c) */
    /* ... and in a region, and in each region above it (NULL: none) */
    const struct tally_group *regions[TALLY_LEVELS - 1];
    const char *node_id, *persist; /* persist: the state_dir, or "memory" */
    uint64_t incarnation, seq, time_ms, uptime_ms;
    const struct tally_stats *st;
    const struct tally_table *table;
    const struct tally_dedup *dedup;
    const struct tally_presence *presence; /* what each peer's origin last did */
    /* The peers listed: this node's direct neighbours only (the other ends
     * of its bridges, its edges, its hub), so that a document flooded to
     * every node is O(neighbours), not O(cluster). Sorted by strcmp; a repeat
     * (two bridges to one node) is listed once. */
    const char *const *peer_ids;
    size_t npeers;
    uint64_t repairs_asked;
    uint64_t unnamed; /* SYNCs taken as lost: a replica number not yet named to us */
    uint32_t neighbours;
    long long max_counters, max_devices, max_viewers;
    long long peer_timeout_ms, stats_interval_ms; /* so readers judge by this node's own */
    bool over_counters, over_devices;
    uint64_t now_ms;  /* the monotonic clock of the origins' last_heard_ms */
    size_t max_bytes; /* the peers listed are those that fit in it */
};
/* The stats document into b (reset first): at most v->max_bytes, peers past
 * it counted in "peers_omitted". Every origin heard, neighbour or not, is
 * counted in "nodes" {"heard","alive","counting"}: the rest of the cluster
 * in O(1). */
void node_stats_json(struct wire_buf *b, const struct stats_view *v);

/* What of a counter's devices its state document lists, and its bound: the
 * dev_from-th device on, in the document's order (largest total first, ties
 * by name in natural order), at most dev_count of them (UINT32_MAX: all),
 * and no more than keep the document within max_bytes. */
struct state_page {
    size_t max_bytes;
    uint32_t dev_from, dev_count;
};
/* counters/<name>/state into b (reset first); sums are c's (counter_sums).
 * value, p, n and devices_total are exact; "nodes" and "devices" hold the
 * largest shares that fit in pg->max_bytes, nodes_omitted and
 * devices_omitted count the rest (see control.c). Returns the number of
 * devices listed; b is marked failed when out of memory. */
uint32_t counter_state_json(struct wire_buf *b, const struct tally_table *t,
                            const struct tally_counter *c, const struct tally_sums *sums,
                            const char *node_id, uint64_t updated_ms, const struct state_page *pg);
/* What an increment or report did, as its publisher's Response Topic hears. */
enum tally_result { RESULT_APPLIED, RESULT_DUPLICATE, RESULT_UNCHANGED, RESULT_REFUSED };

/* The answer to an increment or report into b (reset first):
 * {"name","result","value"}, or {"name","result":"refused","reason"} where
 * reason is tally_strerror(reason). name is NULL when the name itself was
 * refused (it is then left out); value is the counter's total after it. */
void answer_json(struct wire_buf *b, const char *name, size_t len, enum tally_result result,
                 int64_t value, int reason);

/* Natural order of names: runs of ASCII digits compare by their numeric
 * value ("c2" before "c10"), everything else byte by byte; names equal in
 * that order ("c01", "c1") fall back to byte order. Returns <0, 0 or >0. */
int name_natural_cmp(const char *a, size_t alen, const char *b, size_t blen);
/* True if every command of a $CONTROL/tally/v1 request only reads
 * (listCounters, getCounter, topCounters): what reader_usernames may send. */
bool control_read_only(const void *payload, size_t len);

/* One $CONTROL/tally/v1 request: the table (resetCounter and deleteCounter
 * change it), who asks, and the counters the request reset or deleted, for
 * plugin.c to write to disk (changed is owned by the caller: free it). */
struct control_req {
    struct tally_table *t;
    const char *node_id;
    uint64_t now_ms;  /* wall clock, for the state document */
    size_t max_bytes; /* max_message_bytes: what one getCounter answer may take */
    bool admin;
    struct fold_gc *fold; /* removeNode (NULL at an edge) */
    struct persist *persist;
    uint64_t mono_ms;
    bool (*heard)(const char *node); /* removeNode: heard of lately (an edge too) */
    struct tally_counter **changed;
    size_t nchanged;
};
/* Runs the commands of one request; returns the response JSON (caller
 * frees) or NULL when out of memory. */
char *control_process(const void *payload, size_t len, struct control_req *rq);
/* The response to a request none of whose commands could run: each gets
 * `error` (caller frees; NULL when out of memory). */
char *control_error_all(const void *payload, size_t len, const char *error);
/* Whether a request holds a resetCounter or deleteCounter: one a light hub
 * passes to a full hub of its group (group.c, "Light hubs"). */
bool control_resets(const void *payload, size_t len);

#endif
