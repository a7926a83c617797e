/*
 * counter.c - the PN-counter: a counter that many brokers update at once,
 * without coordination, and that still converges to the exact total.
 *
 * ---- The structure ----
 *
 * A PN-counter (Shapiro, Preguica, Baquero, Zawirski, "A comprehensive study
 * of Convergent and Commutative Replicated Data Types", INRIA RR-7506, 2011,
 * section 3.1.2) is a map from replica to a pair (P, N): P is the sum of every
 * increment that replica applied, N the sum of every decrement. Only the owner
 * of a slot ever writes it, and only upwards. The value is
 *
 *     value = sum(P) - sum(N) + sum(D)
 *
 * where D is tally's second family of slots: for each device that reports a
 * running total (a meter, a people counter), the largest total it reported.
 *
 * ---- The merge law ----
 *
 * Merging a remote state into a local one takes, slot by slot, the maximum:
 * P[r] = max(P[r], P'[r]), N[r] = max(N[r], N'[r]), D[d] = max(D[d], D'[d]).
 * Maximum is commutative, associative and idempotent, so the states form a
 * join semilattice: whatever order messages arrive in, however often they are
 * repeated or replayed, and whatever is lost as long as a later state gets
 * through, every replica that has seen the same updates holds the same state.
 * This is why replication in tally can ride on best-effort MQTT bridges.
 *
 * ---- Invariants (asserted, and checked by tests/unit) ----
 *
 *   1. A slot never decreases: merge and add only raise P, N and D. The one
 *      exception is fold.c, which drops a retired incarnation's slot once
 *      its value is counted in its node's running slot (counter_drop_slot).
 *   2. 0 <= P, N, D <= 2^53-1 for every slot, and an add that would break
 *      that, or would take the sums or the value outside +-(2^53-1), is
 *      refused (TALLY_E_OVERFLOW) and changes nothing: totals are exact in a
 *      browser's JavaScript, never wrapped.
 *   3. slots[] is sorted by replica and devs[] by device, without repeats.
 *
 * ---- Replicas and restarts ----
 *
 * A replica is one life of a node, (node_id, incarnation), not the node
 * itself. A node that comes back without its state must not reuse its old
 * slot: its peers still hold the old (larger) values, and the maximum would
 * hide the node's new increments until they exceeded the old ones (Riak's
 * kv679). A fresh incarnation gives it a fresh slot, while the old one lives on
 * in the peers and flows back. Reports from the same node sum over its lives.
 *
 * ---- Representation ----
 *
 * A counter is one allocation (the hash handle, two array pointers, counts and
 * the name inline) plus one small array of 24-byte slots, usually of length 1
 * on a single broker and of length "number of nodes" in a cluster. Arrays are
 * small and kept sorted, so lookups are a short scan; a binary search would
 * only pay for itself with hundreds of nodes.
 */
#include <assert.h>
#include <stddef.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

/* ==== Low level: sorted small arrays ==== */

/* A counter's two arrays (slots by replica, devs by device) are sorted arrays
 * of entries that start with their uint32_t key: one search and one insert
 * serve both. */
_Static_assert(offsetof(struct tally_slot, replica) == 0, "slots are keyed by their first field");
_Static_assert(offsetof(struct tally_dev, device) == 0, "devs are keyed by their first field");

static uint32_t key_at(const void *arr, size_t size, uint32_t i)
{
    uint32_t key;
    memcpy(&key, (const uint8_t *)arr + (size_t)i * size, sizeof(key));
    return key;
}

/* Position of key in the array, or where it would be inserted: a binary
 * search, as a counter may hold up to max_devices devices. */
static uint32_t lower_bound(const void *arr, uint32_t n, size_t size, uint32_t key)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (key_at(arr, size, mid) < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* How many entries an array of n has room for: exactly n up to 8 (a counter's
 * slots, one a node, stay tight), then n rounded up to a power of two, so
 * that a counter taking thousands of devices one by one reallocates log n
 * times, not n (each realloc may copy the array). A function of n alone, so
 * no field holds it; an array that lost entries (fold.c) may hold more room
 * than its n says, which growing never relies on. */
static size_t entry_room(size_t n)
{
    if (n <= 8)
        return n;
    size_t room = 16;
    while (room < n)
        room *= 2;
    return room;
}

/* sorted_entry for n entries that start head bytes into *block (after a
 * header, zeroed when the block is made); *added tells the caller to count
 * the entry made. New devices take ever larger registry indexes, so they are
 * usually appended: no move. */
static void *entry_in(void **block, size_t head, uint32_t n, size_t size, uint32_t key, bool create,
                      bool *added)
{
    uint8_t *arr = *block ? (uint8_t *)*block + head : NULL;
    uint32_t i = lower_bound(arr, n, size, key);
    *added = false;
    if (i < n && key_at(arr, size, i) == key)
        return arr + (size_t)i * size;
    if (!create || n == UINT32_MAX)
        return NULL;
    uint8_t *grown = *block;
    if (!grown || (size_t)n + 1 > entry_room(n)) {
        grown = realloc(*block, head + entry_room((size_t)n + 1) * size);
        if (!grown)
            return NULL;
        if (!*block)
            memset(grown, 0, head);
    }
    *block = grown;
    arr = grown + head;
    memmove(arr + ((size_t)i + 1) * size, arr + (size_t)i * size, (size_t)(n - i) * size);
    memset(arr + (size_t)i * size, 0, size);
    memcpy(arr + (size_t)i * size, &key, sizeof(key));
    *added = true;
    /* invariant 3, by induction: a new entry sits between a smaller and a larger */
    assert(i == 0 || key_at(arr, size, i - 1) < key);
    assert(i == n || key_at(arr, size, i + 1) > key);
    return arr + (size_t)i * size;
}

void *sorted_entry(void **arr, uint32_t *n, size_t size, uint32_t key, bool create)
{
    bool added;
    void *e = entry_in(arr, 0, *n, size, key, create, &added);
    *n += added;
    return e;
}

static struct tally_slot *slot_find(struct tally_counter *c, uint32_t replica, bool create)
{
    return sorted_entry((void **)&c->slots, &c->nslots, sizeof(*c->slots), replica, create);
}

static struct tally_dev *dev_find(struct tally_counter *c, uint32_t device, bool create)
{
    bool added;
    struct tally_dev *d = entry_in((void **)&c->devs, offsetof(struct tally_devs, d),
                                   counter_ndevs(c), sizeof(*d), device, create, &added);
    if (added)
        c->devs->n++;
    return d;
}

/* Saturating sum of non-negative parts: a cluster whose slots were each
 * accepted locally could in theory sum past 2^63; the value is clamped to the
 * contract's range instead of wrapping. */
static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

int64_t clamp_safe(int64_t v)
{
    if (v > TALLY_MAX_SAFE)
        return TALLY_MAX_SAFE;
    if (v < -TALLY_MAX_SAFE)
        return -TALLY_MAX_SAFE;
    return v;
}

/* ==== The counter API ==== */

void counter_sums(const struct tally_counter *c, struct tally_sums *out)
{
    int64_t p = 0, n = 0;
    for (uint32_t i = 0; i < c->nslots; i++) {
        p = sat_add(p, (int64_t)c->slots[i].p);
        n = sat_add(n, (int64_t)c->slots[i].n);
    }
    /* kept by counter_merge_device: summing the devices here made every
     * increment or report to a counter of 100,000 devices cost 100,000
     * additions (its first 100,000 reports took the broker 11 s, against
     * 1.6 s from one device) */
    uint64_t total = c->devs ? c->devs->total : 0;
    int64_t d = total > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)total;
    out->p = clamp_safe(p);
    out->n = clamp_safe(n);
    out->devices = clamp_safe(d);
    out->value = clamp_safe(sat_add(sat_add(p, -n), d));
}

int64_t counter_value(const struct tally_counter *c)
{
    struct tally_sums s;
    counter_sums(c, &s);
    return s.value;
}

/* ==== Recent rate ==== */

/* Time constant of the decay, in table clock ticks (tenths of a second). */
#define RATE_TAU_DS 100.0f

static float rate_sum_at(const struct tally_counter *c, uint32_t now_ds)
{
    if (now_ds <= c->rate_ds)
        return c->rate;
    return c->rate * expf(-(float)(now_ds - c->rate_ds) / RATE_TAU_DS);
}

void counter_rate_add(struct tally_counter *c, uint64_t amount, uint32_t now_ds)
{
    if (now_ds == 0 || amount == 0)
        return;
    c->rate = rate_sum_at(c, now_ds) + (float)amount;
    c->rate_ds = now_ds;
}

double counter_rate(const struct tally_counter *c, uint32_t now_ds)
{
    return (double)rate_sum_at(c, now_ds) / (RATE_TAU_DS / 10.0f);
}

const struct tally_slot *counter_slot(const struct tally_counter *c, uint32_t replica)
{
    return slot_find((struct tally_counter *)c, replica, false);
}

const struct tally_dev *counter_device(const struct tally_counter *c, uint32_t device)
{
    return dev_find((struct tally_counter *)c, device, false);
}

/* What the replica's slot would hold after a local increment (delta > 0
 * raises P, delta < 0 raises N), in *next, without changing anything; or the
 * reason the increment is refused. Lets the caller log the new state to disk
 * before applying it. */
int counter_add_preview(const struct tally_counter *c, uint32_t replica, int64_t delta,
                        struct tally_slot *next)
{
    if (delta < -TALLY_MAX_SAFE || delta > TALLY_MAX_SAFE)
        return TALLY_E_DELTA_RANGE;
    const struct tally_slot *have = counter_slot(c, replica);
    *next = have ? *have : (struct tally_slot){.replica = replica};
    if (delta == 0)
        return TALLY_OK;
    struct tally_sums s;
    counter_sums(c, &s);
    uint64_t mag = delta > 0 ? (uint64_t)delta : (uint64_t)-delta;
    int64_t total_side = delta > 0 ? s.p : s.n;
    if ((int64_t)mag > TALLY_MAX_SAFE - total_side)
        return TALLY_E_OVERFLOW;
    int64_t value = s.value + delta; /* both within 2^53: no overflow */
    if (value > TALLY_MAX_SAFE || value < -TALLY_MAX_SAFE)
        return TALLY_E_OVERFLOW;
    if (delta > 0)
        next->p += mag;
    else
        next->n += mag;
    return TALLY_OK;
}

/* Applies a local increment to the replica's own slot. All-or-nothing: on
 * error nothing changed. A 0 increment to a counter that holds nothing
 * gives it a zero slot: the counter exists from its first accepted
 * increment (CONTRACT.md), and the slot is what is published, replicated
 * and persisted. */
int counter_add(struct tally_counter *c, uint32_t replica, int64_t delta)
{
    struct tally_slot next;
    int rc = counter_add_preview(c, replica, delta, &next);
    if (rc != TALLY_OK || (delta == 0 && (c->nslots || counter_ndevs(c))))
        return rc;
    struct tally_slot *slot = slot_find(c, replica, true);
    if (!slot)
        return TALLY_E_NOMEM;
    assert(next.p >= slot->p && next.n >= slot->n); /* invariant 1: a slot only grows */
    *slot = next;
    assert(slot->p <= (uint64_t)TALLY_MAX_SAFE && slot->n <= (uint64_t)TALLY_MAX_SAFE);
    return TALLY_OK;
}

/* Merges a remote view of one slot. *changed tells whether the slot rose or
 * is new (a zero slot is new: it says the counter exists). */
int counter_merge_slot(struct tally_counter *c, uint32_t replica, uint64_t p, uint64_t n,
                       bool *changed)
{
    *changed = false;
    if (p > (uint64_t)TALLY_MAX_SAFE || n > (uint64_t)TALLY_MAX_SAFE)
        return TALLY_E_OVERFLOW;
    const struct tally_slot *have = counter_slot(c, replica);
    if (have && have->p >= p && have->n >= n)
        return TALLY_OK;
    struct tally_slot *slot = slot_find(c, replica, true);
    if (!slot)
        return TALLY_E_NOMEM;
    if (p > slot->p)
        slot->p = p;
    if (n > slot->n)
        slot->n = n;
    assert(!have || (slot->p >= p && slot->n >= n)); /* invariant 1 */
    *changed = true;
    return TALLY_OK;
}

/* Merges a device's running total: the maximum wins. Same as above. */
int counter_merge_device(struct tally_counter *c, uint32_t device, uint64_t total, bool *changed)
{
    *changed = false;
    if (total > (uint64_t)TALLY_MAX_SAFE)
        return TALLY_E_OVERFLOW;
    const struct tally_dev *have = counter_device(c, device);
    if (have && have->total >= total)
        return TALLY_OK;
    struct tally_dev *dev = dev_find(c, device, true);
    if (!dev)
        return TALLY_E_NOMEM;
    assert(total > dev->total || dev->total == 0); /* invariant 1: a maximum only grows */
    if (__builtin_add_overflow(c->devs->total, total - dev->total, &c->devs->total))
        c->devs->total = UINT64_MAX; /* a sum of maxima only grows: saturating is exact */
    dev->total = total;
    *changed = true;
    return TALLY_OK;
}

/* Checks a device's report taken locally: *raises tells whether it raises
 * the device's maximum; TALLY_E_OVERFLOW when the value would leave the
 * contract's range. Changes nothing. */
int counter_report_check(const struct tally_counter *c, uint32_t device, uint64_t total,
                         bool *raises)
{
    *raises = false;
    if (total > (uint64_t)TALLY_MAX_SAFE)
        return TALLY_E_OVERFLOW;
    const struct tally_dev *have = counter_device(c, device);
    uint64_t old = have ? have->total : 0;
    if (have && total <= old)
        return TALLY_OK;
    struct tally_sums s;
    counter_sums(c, &s);
    if (total - old > (uint64_t)(TALLY_MAX_SAFE - s.devices) ||
        s.value + (int64_t)(total - old) > TALLY_MAX_SAFE)
        return TALLY_E_OVERFLOW;
    *raises = true;
    return TALLY_OK;
}

/* A device's report taken locally: like a merge, but refused when it would
 * take the value outside the contract's range. */
int counter_report(struct tally_counter *c, uint32_t device, uint64_t total, bool *changed)
{
    int rc = counter_report_check(c, device, total, changed);
    return rc != TALLY_OK || !*changed ? rc : counter_merge_device(c, device, total, changed);
}

/* Removes replica's slot (fold.c: folded away); false if there was none. */
bool counter_drop_slot(struct tally_counter *c, uint32_t replica, struct tally_slot *was)
{
    uint32_t i = lower_bound(c->slots, c->nslots, sizeof(*c->slots), replica);
    if (i == c->nslots || c->slots[i].replica != replica)
        return false;
    *was = c->slots[i];
    memmove(&c->slots[i], &c->slots[i + 1], (size_t)(c->nslots - i - 1) * sizeof(*c->slots));
    c->nslots--;
    return true;
}

void counter_free(struct tally_counter *c)
{
    if (!c)
        return;
    free(c->slots);
    free(c->devs);
    free(c);
}
