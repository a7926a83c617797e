/*
 * schedule.c - the output scheduler: what tally publishes when, under two
 * budgets, so that outputs cost what is watched, not what changes.
 *
 * Totals. A counter's retained total is *stale* from its change until it is
 * published (the stale bit, set by table.c when it marks the counter dirty).
 * A watched total is published at the flush after its change (plugin.c,
 * within publish_interval_ms). An unwatched one is pushed on the *refresh
 * queue*, a FIFO of counters in the order their totals went stale, drained
 * oldest first at no more than `unwatched_publish_budget` publishes a second
 * (a token bucket, below). So with K counters changing, an unwatched total is
 * at most K / budget seconds old (plus one interval), whatever the ingest
 * rate, and the broker spends at most that budget on totals nobody receives.
 * The same queue carries state documents to publish or to clear when a
 * wildcard watching every state document comes or goes (plugin.c decides what
 * a counter lacks when it comes off the queue: "reconcile").
 *
 * Representation: a growable ring of counter pointers; a counter's `queued`
 * bit says it is in the ring, so it is there at most once and keeps the place
 * of its oldest unpublished change. A counter published in the meantime
 * (someone subscribed) stays in the ring and costs nothing when it comes off.
 * Invariants: len <= cap; c->queued <=> c is in ring[head .. head+len) once.
 * Memory: 8 bytes per queued counter, nothing per idle one.
 *
 * The token bucket earns rate tokens a second and holds at most a tenth of a
 * second's worth (at least one), so over any window of T seconds at most
 * rate x (T + 0.1) publishes are granted. Tokens are counted in thousandths to
 * stay exact in integers.
 *
 * Pages. One publish of a page's count costs one delivery per viewer, so a
 * page with A viewers is published at most once every A x 1000 / budget ms
 * (`presence_delivery_budget` deliveries a second): ten viewers see every
 * change within publish_interval_ms, ten thousand a count a second (as
 * Twitch and YouTube refresh theirs every few seconds), and a page's last
 * change is always published, so the count is exact at rest (presence.c).
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

/* ==== The refresh queue ==== */

void refresh_init(struct tally_refresh *r, uint32_t rate, uint64_t now_ms)
{
    memset(r, 0, sizeof(*r));
    r->rate = rate;
    r->last_ms = now_ms;
}

void refresh_free(struct tally_refresh *r)
{
    free(r->ring); /* borrowed counters: the table frees them */
    memset(r, 0, sizeof(*r));
}

/* Doubles the ring, unwrapping it so head is 0. */
static int ring_grow(struct tally_refresh *r)
{
    size_t cap = r->cap ? r->cap * 2 : 1024;
    struct tally_counter **ring = malloc(cap * sizeof(*ring));
    if (!ring)
        return TALLY_E_NOMEM;
    for (size_t i = 0; i < r->len; i++)
        ring[i] = r->ring[(r->head + i) % r->cap];
    free(r->ring);
    r->ring = ring;
    r->cap = cap;
    r->head = 0;
    return TALLY_OK;
}

int refresh_push(struct tally_refresh *r, struct tally_counter *c)
{
    if (c->queued)
        return TALLY_OK;
    if (r->len == r->cap && ring_grow(r) != TALLY_OK)
        return TALLY_E_NOMEM;
    r->ring[(r->head + r->len) % r->cap] = c;
    r->len++;
    c->queued = 1;
    return TALLY_OK;
}

struct tally_counter *refresh_pop(struct tally_refresh *r)
{
    while (r->len) {
        struct tally_counter *c = r->ring[r->head];
        r->head = (r->head + 1) % r->cap;
        r->len--;
        if (c) { /* NULL: a counter forgotten while queued */
            c->queued = 0;
            return c;
        }
    }
    return NULL;
}

void refresh_forget(struct tally_refresh *r, struct tally_counter *c)
{
    if (!c->queued)
        return;
    for (size_t i = 0; i < r->len; i++)
        if (r->ring[(r->head + i) % r->cap] == c)
            r->ring[(r->head + i) % r->cap] = NULL;
    c->queued = 0;
}

/* ==== The token bucket ==== */

uint32_t refresh_grant(struct tally_refresh *r, uint64_t now_ms)
{
    uint64_t cap = (uint64_t)r->rate * 100; /* a tenth of a second, in thousandths */
    if (cap < 1000)
        cap = 1000;
    if (now_ms > r->last_ms) {
        uint64_t earned = (now_ms - r->last_ms) * r->rate;
        r->milli_tokens = r->milli_tokens + earned > cap ? cap : r->milli_tokens + earned;
        r->last_ms = now_ms;
    }
    return (uint32_t)(r->milli_tokens / 1000);
}

void refresh_spend(struct tally_refresh *r, uint32_t publishes)
{
    uint64_t cost = (uint64_t)publishes * 1000;
    r->milli_tokens = cost > r->milli_tokens ? 0 : r->milli_tokens - cost;
}

/* ==== Pages ==== */

uint64_t page_interval_ms(uint64_t viewers, uint64_t budget)
{
    return budget ? viewers * 1000 / budget : 0;
}
