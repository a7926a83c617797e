/*
 * scope.c - viewers summed per group and per region, so that a hub hears
 * the viewers of its own group's nodes, and one count per page of each
 * other group of its region and of each other region, not every edge's.
 * A region above regions (group.c, "Regions of regions") is one level more
 * of the same: "...z", its sums on rviews3/ (level 4: "....w", rviews4/),
 * taken by the other units of the unit above it, passed on by its own.
 *
 * ---- Why ----
 *
 * Counters' sums go between groups as one slot per group (group.c). Viewer
 * counts did not: every edge's counts (its hub's relays) and every hub's
 * heartbeat reached every hub of the tree. At 10,200 nodes in 10 regions
 * that was 840 MB of the 1,740 MB between hubs in 20 s of load (tests/sim,
 * README), and grew with the number of edges.
 *
 * ---- The streams ----
 *
 * The hub that speaks for its group's sums (group.c: the first alive in
 * order of node id) also speaks for its group's viewers: it announces, as
 * the presence origin ".g" (g its group), its group's count of each page,
 * our own viewers plus every origin of level 0 it holds (its group's hubs
 * and their edges: no other level-0 origin is taken, below). The region's
 * speaker announces "..r": its group's count plus each other group of the
 * region's ".g". These are ordinary PRESENCE streams, made by the code every
 * node's own counts go through: a second struct tally_presence whose own
 * counts are the sums (presence_set_local), and a struct tier_hub of no
 * children whose heartbeat is the stream's (tier.c, "the heartbeat's
 * pages"): changes alone when that is cheaper, all the pages the first time
 * and when a receiver wants them, keepalives between, each with the digest
 * of the sums, so that a receiver holding other counts asks for them all.
 * The main table notes which pages' sums changed (presence.c,
 * scope_changed), so that a publish interval costs what changed.
 *
 * ---- Who takes what (scope_take) ----
 *
 * A group's sums go on $tally/v1/gviews/, a region's on rviews/, each node's
 * own on presence/ as before (scope_topic_fits refuses one on another's
 * topic): so the bridges between groups carry gviews/# and rviews/#, and
 * between regions rviews/#, as they carry gsum/# and rsum/#, and no node's
 * own counts cross them. Every hub names its group and region in the topic
 * of what it publishes there and under replay/ ("<node>@<group>[@<region>]"),
 * so that a receiver knows whose stream it is before it reads it (a bridge
 * that carries all of $tally/ brings the rest):
 *   - a node's own stream, or an edge's relayed by its hub (level 0), is
 *     taken in its group only, and refused (not taken, not flooded on)
 *     elsewhere: the group's ".g" counts it there;
 *   - ".g" is taken by the other groups of its region, refused by other
 *     regions (their "..r" counts it), and passed on by g's own hubs, which
 *     hold what it was summed from: flooded on, so that it reaches the
 *     bridges out of g whatever the topology, and not counted;
 *   - "..r" is taken by the other regions and passed on by r's hubs.
 * A hub in no group takes every stream as before (an ungrouped hub sees no
 * scope stream); a stream of a hub in no group is refused by hubs in one,
 * as SYNCs are (group.c): a tree is grouped throughout, or not at all. A
 * replay to a neighbour that restarted (presence.c) names the scope of the
 * origin it carries, not the replaying hub's (scope_of_origin): ".g" is
 * g's, of our region, "..r" is r's.
 *
 * ---- Speakers change ----
 *
 * Every speaker of g sends ".g" under one incarnation (SCOPE_INCARNATION),
 * each message numbered above the highest seq of ".g" it sent or heard (g's
 * hubs pass them all, scope_seen), so a hub that takes over goes on where
 * the last stopped, and its first heartbeat has all the pages, since the
 * last may have died with changes unsent. Two speaking at once (at start,
 * or while a cut heals) compute the same sums once the group converged:
 * each message replaces the counts of its range, the receivers' digests
 * differ for a while, and they ask for them all again. The receivers keep
 * ".g" alive by its heartbeats, and expire it peer_timeout_ms after the
 * last, like a node: a group of which no hub is left.
 *
 * ---- Wants cross the scopes ----
 *
 * A receiver that holds other counts of ".g" than the digest says puts it
 * among the wants of its heartbeat; but its heartbeat is a level-0 stream,
 * which stays in its group. So wants of a scope origin climb: a want heard
 * in a stream of level k, of an origin of level j > k, is owed in each of
 * our own streams of levels k + 1 to j that we speak for (tally_origin.
 * scope_wanted, sent by tier.c's listing_build at the next publish
 * interval, with each such origin we lack ourselves). A want of ".g" from
 * a hub of group h goes from h's level-0 stream into ".h", which reaches
 * g's speaker; a want of "..r" from group h in region s goes into ".h",
 * then "..s" (at once, if h's speaker speaks for s too: it never hears its
 * own ".h"), which reaches r's speaker. A want heard at level 2 is r's
 * speaker's alone: none loops. The speaker that finds its stream wanted
 * owes all its pages, and sends them at its next publish interval
 * (scope_wants).
 *
 * ---- What a dead edge costs now ----
 *
 * Its viewers leave its own group's counts peer_timeout_ms after its
 * carrier last heard it, as before, and the other groups' when the speaker
 * that expired it sends the changed sums: a publish interval and the
 * bridges' delay later (README, contract proposal).
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

void scope_name_of(const struct tally_group *const units[TALLY_LEVELS], struct scope_name *out)
{
    for (int k = 0; k < TALLY_LEVELS; k++) {
        bool on = units[k] && group_on(units[k]);
        out->name[k] = on ? units[k]->name : "";
        out->len[k] = on ? units[k]->len : 0;
    }
}

static bool same_at(const struct scope_name *a, const struct scope_name *b, int level)
{
    return name_same(a->name[level - 1], a->len[level - 1], b->name[level - 1], b->len[level - 1]);
}

enum scope_take scope_take(const struct scope_name *ours, const char *origin, size_t len,
                           const struct scope_name *from)
{
    int level = unit_marks(origin, len);
    bool named = false;
    for (int k = 0; k < TALLY_LEVELS; k++)
        named = named || from->len[k];
    if (!ours->len[0] && !named)
        return level ? SCOPE_REFUSE : SCOPE_TAKE;
    /* from a hub of another unit above the origin's level: that unit's
     * sums count it here (or none do: a tree grouped throughout, or not) */
    for (int k = level + 1; k <= TALLY_LEVELS; k++)
        if (!same_at(from, ours, k))
            return SCOPE_REFUSE;
    if (!level) /* a node's, of our group */
        return same_at(from, ours, 1) ? SCOPE_TAKE : SCOPE_REFUSE;
    /* "." x level and the name of a unit of the hub that published it */
    if ((level >= 2 && !ours->len[level - 1]) ||
        !name_same(origin + level, len - (size_t)level, from->name[level - 1],
                   from->len[level - 1]))
        return SCOPE_REFUSE;
    return same_at(from, ours, level) ? SCOPE_PASS : SCOPE_TAKE;
}

const char *const scope_kinds[TALLY_LEVELS + 1] = {"presence", "gviews", "rviews", "rviews3",
                                                   "rviews4"};

bool scope_topic_fits(const char *kind, const char *origin, size_t len)
{
    const char *want = scope_kinds[unit_marks(origin, len)];
    size_t n = strlen(want);
    return strncmp(kind, "replay/", 7) == 0 || (strncmp(kind, want, n) == 0 && kind[n] == '/');
}

void scope_of_origin(const struct scope_name *ours, const char *origin, size_t len,
                     struct scope_name *out)
{
    int level = unit_marks(origin, len);
    *out = *ours;
    if (level) {
        out->name[level - 1] = origin + level;
        out->len[level - 1] = len - (size_t)level;
    }
}

void scope_init(struct scope_stream *s, const struct tally_group *gr, struct tally_presence *main)
{
    char id[TALLY_NODE_ID_MAX + 1];
    memset(s, 0, sizeof(*s));
    s->level = gr->level;
    memset(id, GROUP_MARK, (size_t)gr->level);
    memcpy(id + gr->level, gr->name, gr->len);
    id[gr->level + gr->len] = '\0';
    presence_init(&s->pr, 0);
    tier_hub_init(&s->hub, id, SCOPE_INCARNATION);
    s->hub.wants_of = main;
    s->hub.wants_level = gr->level;
}

void scope_free(struct scope_stream *s)
{
    presence_free(&s->pr);
    tier_hub_free(&s->hub);
}

/* Our sums, forgotten while another hub speaks: taken again in full when
 * we speak, as a new speaker's must be. */
static void scope_clear(struct scope_stream *s)
{
    presence_free(&s->pr);
    presence_init(&s->pr, 0);
    tier_hub_owe_pages(&s->hub);
}

int scope_follow(struct scope_stream *s, const struct tally_presence *main, bool speaking)
{
    if (!speaking) {
        if (s->speaking)
            scope_clear(s);
        s->speaking = false;
        return TALLY_OK;
    }
    bool all = !s->speaking;
    s->speaking = true;
    if (all)
        tier_hub_owe_pages(&s->hub);
    return presence_scope_sync(main, &s->pr, s->level, all);
}

static bool scope_seen(struct scope_stream *s, uint64_t seq)
{
    return seq_window_first(&s->high, &s->seen, seq);
}

bool scope_due(const struct scope_stream *s)
{
    return s->speaking && (s->pr.local_changed || s->hub.all_pages_owed || s->wants_owed);
}

int scope_announce(struct scope_stream *s, bool changes, uint64_t clock_seq, uint64_t now_ms,
                   uint64_t timeout_ms, size_t max_bytes, struct wire_buf *out, tier_emit_fn *emit,
                   void *ud)
{
    /* above every seq of the stream seen here: a hub taking over goes on
     * where the last speaker stopped, whatever their clocks */
    uint64_t first = clock_seq > s->high ? clock_seq : s->high + 1;
    uint32_t n = 0;
    int rc = TALLY_OK;
    if (changes && !s->hub.all_pages_owed && !s->wants_owed &&
        !(n = presence_announce_changes(&s->pr, s->hub.node_id, SCOPE_INCARNATION, first, out, emit,
                                        ud)))
        tier_hub_owe_pages(&s->hub); /* not worth sending alone: all of them */
    if (!n)
        rc = tier_hub_heartbeat(&s->hub, &s->pr, SCOPE_INCARNATION, first, now_ms, timeout_ms,
                                max_bytes, out, emit, ud, &n);
    for (uint32_t i = 0; i < n; i++)
        scope_seen(s, first + i); /* ours, back through a ring, is not passed on */
    s->wants_owed = false;
    return rc;
}

bool scope_pass(struct scope_stream *const streams[TALLY_LEVELS], struct tally_presence *main,
                const struct wire_presence *wp)
{
    int level = unit_marks(wp->origin, wp->origin_len);
    struct scope_stream *s = level ? streams[level - 1] : NULL;
    if (!s || !scope_seen(s, wp->seq))
        return false;
    scope_wants(streams, main, wp);
    return true;
}

void scope_wants(struct scope_stream *const streams[TALLY_LEVELS], struct tally_presence *main,
                 const struct wire_presence *wp)
{
    int from = unit_marks(wp->origin, wp->origin_len);
    char id[TALLY_NODE_ID_MAX + 1];
    for (uint32_t i = 0; i < wp->nwants; i++) {
        size_t len = wp->wants[i].len;
        int level = unit_marks(wp->wants[i].id, len);
        if (!level)
            continue;
        memcpy(id, wp->wants[i].id, len);
        id[len] = '\0';
        struct scope_stream *ours = streams[level - 1];
        if (ours && ours->speaking && strcmp(id, ours->hub.node_id) == 0) {
            tier_hub_owe_pages(&ours->hub); /* a receiver lacks some of our sums */
            continue;
        }
        struct tally_origin *o = NULL;
        HASH_FIND_STR(main->origins, id, o);
        /* our streams of the levels above the message's, up to the origin's
         * (none for one heard at the origin's level or above: for its
         * speaker only, so none loops): a hub that speaks for its region
         * too carries it there at once */
        for (int k = from + 1; o && k <= o->level; k++) {
            struct scope_stream *up = streams[k - 1];
            if (!up)
                continue;
            o->scope_wanted |= (uint8_t)(1u << k);
            up->wants_owed = true; /* carried at once, not at the next heartbeat */
        }
    }
}
