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
 *     watched again within the linger never steps back. Only a view a
 *     DOWN has filled is shown (tier_edge_follows): without one the total
 *     would be the edge's own part alone, a step back from the cluster's
 *     figure it left retained, so plugin.c publishes nothing then, and the
 *     retained total stays the last cluster-wide one it showed. A view
 *     dropped keeps its figures in the edge's own counter, made for it if
 *     the edge only watched it (a few words beside the retained total and
 *     the table entry the edge holds anyway, edge_keep): the answer to an
 *     increment reports own part plus those (tier_edge_answer), and a view
 *     made again starts from them, so a hub that knows less cannot take the
 *     first total shown below the retained one;
 *   - for each page its viewers watch, the count the hub reports for the
 *     others.
 * It shows its clients: own P + view P - own N - view N + max(own D, view D),
 * less what resets took away (view tP, tN, tD), for a counter; own viewers +
 * the others' for a page.
 *
 * ---- The messages ----
 *
 * UP, edge -> its hub, on $tally/up/<edge> (topic $tally/up/# out 1 on the
 * edge's bridge), or $tally/up/<edge>@<group> once a DOWN named the group
 * of hubs its count is in (a hub of another group refuses it, plugin.c: its
 * count would be in two groups' sums), in parts of at most
 * max_message_bytes (see "Parts" below):
 *     edge id, incarnation, seq, the session it was built under, flags,
 *     group (the seq of the UP's first part),
 *     counters: name, own P, own N, own device maxima (absolute values),
 *               [version 2] the slots of its past lives, at most TIER_PAST
 *               (see "Past lives" below),
 *     [watch list: a range of hashes, the counter names in it]   (flag 1)
 *     [page list: a range of hashes, the pages in it, with counts] (flag 2)
 * An UP carries every counter whose last change went out in an UP the hub
 * has not acknowledged. Its parts are numbered group, group + 1, ...; so the
 * hub, holding the parts group..s of an UP built under the session it gave
 * the edge, holds every change the edge made up to s, and s is its
 * acknowledgement (hub_ack): a part lost or out of order stops the ack
 * before it, and what it held goes again in the next UP. The watch and page
 * lists ride the same way; the hub takes a list's range only from a part
 * newer than any it has seen (it replaces that range), slots from any (they
 * are maxima). The watch list goes whole when it changed; the page list
 * goes whole when owed (the first UP, a new hub or session) and until an
 * UP holding it is acknowledged, and between those as the pages that
 * changed, each hash in a range of its own ("Edge: the pages that
 * changed"): a page churning among thousands costs its own range, not the
 * list. An edge sends an UP when it has something unacknowledged, at
 * most once a publish interval (an UP not yet acknowledged is so resent once
 * an interval, not once a broker loop), and at least every heartbeat_ms, so
 * that its hub knows it is alive.
 *
 * DOWN, hub -> one edge, on $tally/down/<edge> (topic $tally/down/<edge>/#
 * in 1 on the edge's bridge, so an edge hears nothing else; plugin.c sends
 * it to the connection the edge's last UP came over, tier_child_conn, so
 * that hubs bridged to this one never carry it), in parts of at most
 * max_message_bytes, each with the whole header:
 *     hub id, session, the ack, [version 2] the edge's watermark (fold.c:
 *     its lives below it are retired), [version 3, from a hub in a group]
 *     the hub's group (group.c; the edge keeps the first it hears of),
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
 * CONTROL, either way: a control API request an edge passes to its hub, and
 * the answer (see "The control API through the tree", at the end).
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
 *     peer_timeout_ms (below). Its slot stays until an admin removes it
 *     (removeNode at a hub: fold.c adopts it into that hub's slot). An edge
 *     restarted without its state starts a new life; its hub adopts the
 *     past ones (fold.c, "Edges' past lives"), so the hubs hold one slot per
 *     edge per counter whatever the number of restarts.
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
 * ---- Past lives ----
 *
 * An edge with a state_dir that starts a new life (after a machine reboot
 * inside the fsync window, persist.c) loads its past lives' slots. They are
 * not its own to show: it shows its running life's slot only, and the past
 * lives are the hub's to count, in the view (the rest of the world). So
 * its UPs carry those slots, merged at the hub by maximum as any slot (what
 * the edge acknowledged and no hub had yet is counted once it arrives), and
 * its hub adopts those lives as it adopts the lives of an edge restarted
 * without its state (fold.c, "Edges' past lives"). The DOWN's watermark
 * tells the edge when they are retired; it drops them then, and only once a
 * hub has acknowledged its first UP, which carried them.
 *
 * ---- What handoff counters would save, and what they would take ----
 *
 * Almeida and Baquero's handoff counters (Distributed Computing 32, 2019)
 * give identities only to the tier that needs them: a node of tier k hands
 * its count to one of tier k-1 by a two-phase exchange (slot, token, ack)
 * that moves the value into the parent's own slot exactly once, after which
 * both forget the child's identity. Hubs would then hold a slot per hub, not
 * per edge, and an edge's slot would be transient. What stands in the way
 * here is a hub lost for good: its slot, as the other hubs hold it, includes
 * some prefix of each of its edges' counts, and the hub that takes an edge
 * over must know that prefix exactly, or it counts the rest twice or loses
 * it. The least protocol we found that keeps that exact:
 *   - custody: a hub sends, per edge and counter, how much of the edge its
 *     slot absorbed, tagged with the version of its slot, to the other hubs
 *     of that edge's failover list (its own neighbours, not every hub);
 *   - two phases: a hub publishes a version of its slot to all hubs only
 *     once every such hub has acknowledged the custody of that version;
 *   - finalisation: once a hub is declared dead, the hubs holding its
 *     custody agree on the highest version any of them holds (a claim
 *     settled by all of them, as fold.c settles adoptions), publish the
 *     dead hub's slot at that version and take each edge over from the
 *     prefix that version names; a finalised hub that comes back starts a
 *     new life from those prefixes;
 *   - a live handover for an edge that moves while both hubs live (release
 *     by the old hub, then absorption by the new one).
 * Resets then observe hub slots, not edge slots, unchanged; viewer counts
 * need the same custody (a hub's sum of its edges' viewers). Even so a hub
 * holds a slot per hub: state flat in the number of brokers needs hubs in a
 * hierarchy, the same handoff at each level. No protocol does better among
 * hubs that are peers: Burckhardt, Gotsman, Yang and Zawirski ("Replicated
 * data types: specification, verification, optimality", POPL 2014) prove
 * that a state-based counter replicated over n replicas holds Omega(n lg m)
 * bits at a replica in the worst case (m updates), which the per-replica
 * vector meets. So with every hub a replica of the whole state, a hub holds
 * at least a slot per hub in a counter every hub writes: 200 hubs hold 5
 * times what 40 do, however edges hand off. Here the guarantees follow from
 * the maximum alone, at the cost above (a slot per edge).
 *
 * A cheaper road to the same bound (built: group.c, up to four levels) asks
 * one thing of the deployment: that an edge's failover list name the hubs
 * of one group only (a few hubs that share their edges, today's cluster
 * among themselves).
 * Then a group's sum (its edges' and hubs' slots added) is a function of
 * state every hub of the group holds and converges on, and each term only
 * grows: any hub of the group may send it to the other groups as the slot
 * of a replica named after the group, merged by maximum, and no custody is
 * needed, since no edge's count is ever in two groups' sums. A hub would
 * hold its group's slots plus one per group; groups of groups, summed the
 * same way, make that flat. What it takes besides: bridges between groups
 * carrying only the groups' sums; resets taking a group's sum as the slot
 * they observe (min of sums: still a lower bound that converges to the same
 * figure); device maxima left whole (they grow with devices, not brokers);
 * and one announcer per group for its viewer counts (the live hub of the
 * group first in its list), since those are registers, not maxima. What it
 * costs: a group whose hubs all die leaves its edges nowhere to go. group.c
 * builds the sums, their bridges, the device maxima and resets (a base on
 * a group's replica, taken from that group's own part at its hubs), and
 * groups of groups (regions, the same one level up, and regions of
 * regions); viewers are summed per group and region too (scope.c).
 *
 * ---- Presence through the tree ----
 *
 * The UP's page list is the edge's viewers per page, a last-writer-wins
 * register ordered by (incarnation, seq) like any node's presence
 * announcement. Its hub applies it as the presence origin named after the
 * edge, and floods it to the other hubs as a PRESENCE from that origin with
 * the edge's incarnation and seq (tier_hub_relay), when it changed: a list
 * sent again unchanged (its UP not yet acknowledged) is not relayed. A
 * page's count at a hub is then the sum over every edge (and hub) origin.
 * When an edge moves, its new hub announces the same origin with a higher
 * seq: it replaces the old one, nothing is counted under both hubs. When
 * the new hub holds already what the edge sends it (its old hub's relays
 * reached it, or a replay), it announces only that seq, in its listing,
 * and the hubs holding the same counts take it (tier_hub_relay).
 * Liveness and repair ride on each hub's own heartbeat: its carried set
 * keeps the edges it hears alive at every hub ("the carrier's keepalive",
 * below), and each relay that answers a want ends with its edge's entry of
 * the listing: an edge stays counted while a live hub vouches for it, and
 * an edge that goes silent leaves every count peer_timeout_ms after its hub
 * last heard it, and is counted again once heard (by its hub from its
 * record, by the others wanting its pages). A hub that dies has its own
 * viewers expired, not its edges': they are their own origins, in their
 * new hub's set once they have moved. A hub that restarts has every edge's
 * viewers from its neighbours, each over its own bridge (presence.c,
 * "Replay to a neighbour that restarted"), not from a relay of each edge
 * flooded to every hub; each neighbour replays its own edges too, as it
 * holds them from their UPs. In a tree of groups of hubs, all of this stays
 * inside the edge's group: the other groups count it in its group's sum of
 * each page, one origin per group, sent by the hub that speaks for the
 * group (scope.c).
 *
 * ---- Invariants ----
 *
 *   - An edge's table holds only its own replica's slots and its own devices.
 *   - mine->sent_seq > acked means the hub may lack that counter's latest
 *     value: it is in every UP until acknowledged.
 *   - A view only grows; the edge's own part never comes from the hub.
 *   - A hub's ack for an edge is the seq of a part it holds, with every part
 *     of the same UP before it (hub_ack): it never covers a part it lacks.
 *   - The relays of a child's pages have seqs in [RELAY_SEQ(s), RELAY_SEQ(s
 *     + 1)) for the newest UP seq s the hub holds, and only grow: a hub the
 *     edge has left can never outrank the relays of its new hub.
 *   - A hub's listing of a child names the seq of its last relay part and
 *     the digest of the pages that relay left (child_digest): a hub holding
 *     that seq or an older one, with another digest, lacks a relay.
 *   - An edge in a hub's carried set was heard by it within timeout_ms / 3,
 *     and the receivers that vouch for it hold its entry as the hub's set
 *     does (the sums agree).
 */
#include <stdlib.h>
#include <string.h>

#include <utlist.h>

#include "tally.h"

/* The rest of the world's figures for one counter, as its hub said: the
 * others' P and N, every device maximum, and what resets took away from
 * those (reset.c). Each only grows. */
enum { F_P, F_N, F_D, F_TP, F_TN, F_TD, NFIGURES };

/* The counters the edge writes or has shown: when their latest value last
 * went up (never, for one only shown), and the figures of the last view it
 * held of them (see tier_edge_answer, edge_keep). */
struct tier_mine {
    UT_hash_handle hh;
    uint64_t sent_seq; /* the UP that carried the latest value; 0: not sent */
    uint64_t kept[NFIGURES];
    bool changed;
    uint8_t len;
    char name[];
};

/* A view stays this long after its last watcher leaves (see above). */
#define TIER_VIEW_LINGER_MS 30000

/* What the edge knows of the rest of the world for one watched counter. */
struct tier_view {
    UT_hash_handle hh;
    uint64_t f[NFIGURES];
    uint64_t idle_since_ms; /* unwatched since (0: not yet stamped by tier_edge_up) */
    bool idle;              /* no watcher: dropped TIER_VIEW_LINGER_MS later */
    bool filled;            /* a DOWN has carried it: its total may be shown */
    uint8_t len;
    char name[];
};

/* The others' viewers of a page the edge's viewers watch. */
struct tier_page {
    UT_hash_handle hh;
    uint64_t hash; /* presence_hash(name) */
    uint64_t others;
    bool listed; /* in the page list last sent (edge_follow_pages) */
    uint8_t len;
    char name[];
};

/* A page hash whose viewers changed ("Edge: the pages that changed"),
 * kept until the hub acknowledges an UP that carried it. */
struct tier_page_change {
    uint64_t hash;
    uint64_t sent_seq; /* the UP part that carried it last; 0: none since it changed */
};

/* A counter watched by some child of a hub, with its figures this tick. */
struct tier_watch {
    UT_hash_handle hh;
    uint32_t refs;
    uint64_t hash; /* presence_hash(name): an UP's watch list is by ranges of it */
    uint64_t gen;  /* hub->gen when the figures were computed */
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
    uint64_t hash, count, sent_total, sent_mine; /* kept in hash order */
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

static void write_header(struct wire_buf *b, uint8_t version, enum wire_type type)
{
    const uint8_t h[4] = {'T', 'L', version, (uint8_t)type};
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

/* A hub takes an UP's lists, and acknowledges it, only if its seq is above
 * every one it holds from the edge's incarnation; an edge restarted with its
 * state keeps its incarnation, so its seqs must go on from above the last
 * run's, or the hub would ignore its watch and page lists and never
 * acknowledge it for as long as that run had been sending. */
void tier_edge_init(struct tier_edge *e, const char *node_id, uint64_t incarnation,
                    uint64_t first_seq)
{
    memset(e, 0, sizeof(*e));
    strncpy(e->node_id, node_id, TALLY_NODE_ID_MAX);
    e->incarnation = incarnation;
    e->seq = first_seq ? first_seq : 1;
    /* Both lists go in the first UP, empty ones too: a hub that still holds
     * the last run's (the same incarnation) would go on counting viewers
     * who died with it, and sending what nobody watches any more. */
    e->watch_changed = true;
    e->pages_all = true;
}

bool tier_edge_started_up(const struct tier_edge *e)
{
    return e->first_up && e->acked >= e->first_up;
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
    free(e->page_changes);
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

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* Each figure is a sum of terms that only grow: the maximum of what any hub
 * said is a lower bound of the truth, and the truth once hubs converge. */
static bool figures_raise(uint64_t to[NFIGURES], const uint64_t f[NFIGURES])
{
    bool raised = false;
    for (int i = 0; i < NFIGURES; i++) {
        raised |= f[i] > to[i];
        to[i] = max_u64(to[i], f[i]);
    }
    return raised;
}

static bool figures_zero(const uint64_t f[NFIGURES])
{
    for (int i = 0; i < NFIGURES; i++)
        if (f[i])
            return false;
    return true;
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
        /* a counter of ours starts from its last view's figures: the hub that
         * fills it may know less (a failover), and its first total is not
         * below the one the edge left retained */
        struct tier_mine *m = NULL;
        HASH_FIND(hh, e->mine, name, len, m);
        if (m)
            figures_raise(v->f, m->kept);
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

/* Keeps a shown view's figures past it, in the edge's own counter, made for
 * a counter only watched here (never sent up: nothing of it is unacknowledged).
 * Its total went out retained; a view made again starts from them, so the
 * first total after a failover to a hub that knows less is not below it. The
 * cost is a few words per counter ever shown, beside its retained message
 * and its entry in the table, which the edge holds anyway. */
static int edge_keep(struct tier_edge *e, const struct tier_view *v)
{
    struct tier_mine *m = NULL;
    HASH_FIND(hh, e->mine, v->name, v->len, m);
    if (!m && figures_zero(v->f))
        return TALLY_OK; /* a name nobody writes: never shown (tier_edge_apply_down) */
    if (!m) {
        m = named_new(sizeof(*m), v->name, v->len, offsetof(struct tier_mine, name));
        if (!m)
            return TALLY_E_NOMEM;
        m->len = v->len;
        HASH_ADD(hh, e->mine, name, m->len, m);
    }
    figures_raise(m->kept, v->f);
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
            if (v->filled && edge_keep(e, v) != TALLY_OK)
                continue; /* out of memory: it lingers, and is tried again */
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

static bool changes_unacked(const struct tier_edge *e)
{
    for (uint32_t i = 0; i < e->npage_changes; i++)
        if (unacked(e, !e->page_changes[i].sent_seq, e->page_changes[i].sent_seq))
            return true;
    return false;
}

static bool up_due(const struct tier_edge *e, uint64_t now_ms, uint64_t every_ms,
                   uint64_t heartbeat_ms)
{
    if (now_ms - e->last_up_ms >= heartbeat_ms || e->last_up_ms == 0)
        return true;
    if (now_ms - e->last_up_ms < every_ms)
        return false; /* one UP an interval: it carries all that is unacknowledged */
    if (unacked(e, e->watch_changed, e->watch_sent_seq) || e->pages_changed ||
        unacked(e, e->pages_all, e->pages_sent_seq) || changes_unacked(e))
        return true;
    for (struct tier_mine *m = e->mine; m; m = m->hh.next)
        if (unacked(e, m->changed, m->sent_seq))
            return true;
    return false;
}

/* ==== Parts: a message cut at max_bytes ====
 *
 * UP and DOWN hold sections of entries (UP: counters, a watch list, a page
 * list; DOWN: counters, pages). One that would pass max_bytes goes as
 * several parts, each a whole message with its own share of each section,
 * so that each applies alone: a counter entry is a maximum (a counter with
 * many devices may even be spread over parts), and an UP's list section
 * names the range of name hashes (presence_hash) it replaces, the parts of
 * one list covering [0, UINT64_MAX] between them, in hash order, as
 * PRESENCE does (or, for the pages that changed, each its own [h, h]:
 * parts_add_range). */

enum { SEC_COUNTERS, SEC_WATCH, SEC_PAGES, SEC_N };

/* What a section adds to a part besides its entries: a count (a varint of
 * at most 5 bytes), and for a list its range. */
#define SEC_COUNT_BYTES 5
#define SEC_RANGE_BYTES (SEC_COUNT_BYTES + 16)

struct parts {
    size_t max_bytes, head; /* head: the bytes of a part's header, at most */
    bool ranged;            /* UP: the sections past the first are lists */
    struct wire_buf sec[SEC_N];
    uint32_t n[SEC_N];
    bool open[SEC_N];   /* (lists) in this part */
    uint64_t lo[SEC_N]; /* (lists) this part's range; the last's ends at */
    uint64_t hi[SEC_N]; /* UINT64_MAX (parts_close_list) */
    uint32_t sent;      /* parts sent so far */
    int rc;
    int (*send)(const struct parts *p, void *ctx); /* writes and sends one part */
    void *ctx;
};

static bool is_list(const struct parts *p, int s)
{
    return p->ranged && s != SEC_COUNTERS;
}

static size_t parts_size(const struct parts *p)
{
    size_t size = p->head;
    for (int s = 0; s < SEC_N; s++)
        size += p->sec[s].len + (!is_list(p, s) ? SEC_COUNT_BYTES
                                 : p->open[s]   ? SEC_RANGE_BYTES
                                                : 0);
    return size;
}

static bool parts_used(const struct parts *p)
{
    for (int s = 0; s < SEC_N; s++)
        if (p->n[s] || p->open[s])
            return true;
    return false;
}

static void parts_send(struct parts *p)
{
    if (p->rc == TALLY_OK)
        p->rc = p->send(p, p->ctx);
    p->sent++;
    for (int s = 0; s < SEC_N; s++) {
        wbuf_reset(&p->sec[s]);
        p->n[s] = 0;
        if (p->open[s])
            p->lo[s] = p->hi[s] + 1; /* a closed list takes no more entries */
        p->open[s] = false;
    }
}

/* Appends one entry (e, of section s; hash: its name's, for a list), first
 * sending the part if e would take it past max_bytes. Entries of a list
 * with equal hashes stay in one part (a range cannot part them): past
 * max_bytes only where 64-bit hashes collide, and then the sender's last
 * guard drops it (logged and counted). */
static void parts_add(struct parts *p, int s, const struct wire_buf *e, uint64_t hash)
{
    size_t extra = is_list(p, s) && !p->open[s] ? SEC_RANGE_BYTES : 0;
    bool inseparable = is_list(p, s) && p->n[s] && hash == p->hi[s];
    if (!inseparable && parts_used(p) && parts_size(p) + extra + e->len > p->max_bytes)
        parts_send(p);
    wbuf_bytes(&p->sec[s], e->data, e->len);
    if (e->failed)
        p->sec[s].failed = true;
    p->n[s]++;
    p->open[s] = true;
    p->hi[s] = hash;
}

/* The list of section s is complete: the current part's range of it runs
 * to UINT64_MAX (an empty list is one empty range). */
static void parts_close_list(struct parts *p, int s)
{
    if (!p->open[s] && parts_used(p) && parts_size(p) + SEC_RANGE_BYTES > p->max_bytes)
        parts_send(p);
    p->open[s] = true;
    p->hi[s] = UINT64_MAX;
}

/* The range [h, h] of list s alone, with the k entries of e (all of hash
 * h; none replaces what the hub held there), in the current part if it
 * fits, which goes now: its range ends at h. The list must not be open. */
static void parts_add_range(struct parts *p, int s, const struct wire_buf *e, uint32_t k,
                            uint64_t h)
{
    if (parts_used(p) && parts_size(p) + SEC_RANGE_BYTES + e->len > p->max_bytes)
        parts_send(p);
    wbuf_bytes(&p->sec[s], e->data, e->len);
    if (e->failed)
        p->sec[s].failed = true;
    p->n[s] = k;
    p->open[s] = true;
    p->lo[s] = p->hi[s] = h;
    parts_send(p);
}

/* Sends what is left (at least one part if `always`); returns TALLY_OK or
 * the first error. */
static int parts_finish(struct parts *p, bool always)
{
    if (parts_used(p) || (always && p->sent == 0))
        parts_send(p);
    for (int s = 0; s < SEC_N; s++)
        wbuf_free(&p->sec[s]);
    return p->rc;
}

static void parts_write(struct wire_buf *out, const struct parts *p, int s)
{
    if (is_list(p, s)) {
        if (!p->open[s])
            return;
        wbuf_u64(out, p->lo[s]);
        wbuf_u64(out, p->hi[s]);
    }
    wbuf_varint(out, p->n[s]);
    wbuf_bytes(out, p->sec[s].data, p->sec[s].len);
    if (p->sec[s].failed)
        out->failed = true;
}

/* ==== Edge: UP ==== */

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* An UP's counter entry carries at most TIER_PAST slots of the edge's past
 * lives (up_past), in at most TIER_PAST_BYTES. */
#define TIER_PAST 8
#define TIER_PAST_BYTES (SEC_COUNT_BYTES + TIER_PAST * (8 + 10 + 10))

/* How many of c's devices from the i-th on fit in an empty part beside the
 * counter's name and slot; at least one. */
static uint32_t devices_that_fit(const struct parts *p, const struct tally_table *t,
                                 const struct tally_counter *c, uint32_t i)
{
    size_t fixed = p->head + SEC_COUNT_BYTES + 2 * SEC_RANGE_BYTES +
                   (1 + c->name_len + 10 + 10 + SEC_COUNT_BYTES) + TIER_PAST_BYTES;
    size_t room = p->max_bytes > fixed ? p->max_bytes - fixed : 0;
    uint32_t k = 0;
    for (size_t used = 0; i + k < counter_ndevs(c); k++) {
        const struct tally_dev *dv = &counter_devs(c)[i + k];
        used += 1 + strlen(t->devices[dv->device]->id) + varint_len(dv->total);
        if (used > room && k > 0)
            break;
    }
    return k;
}

static bool is_past(const struct tally_table *t, uint32_t self, uint32_t r)
{
    return r != self && !t->replicas[r]->retired;
}

/* c's slots of the edge's past lives (loaded from its state_dir after a
 * start that drew a new life): at most TIER_PAST a counter (the lowest
 * first; the rest go once those are retired), with the first entry. */
static void up_past(struct wire_buf *e, const struct tally_table *t, uint32_t self,
                    const struct tally_counter *c)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->nslots; i++)
        n += is_past(t, self, c->slots[i].replica);
    n = n < TIER_PAST ? n : TIER_PAST;
    wbuf_varint(e, n);
    uint64_t after = 0;
    for (uint32_t k = 0; k < n; k++) {
        const struct tally_slot *low = NULL;
        uint64_t inc = 0;
        for (uint32_t i = 0; i < c->nslots; i++) {
            const struct tally_slot *s = &c->slots[i];
            uint64_t x = t->replicas[s->replica]->incarnation;
            if (is_past(t, self, s->replica) && (k == 0 || x > after) && (!low || x < inc)) {
                low = s;
                inc = x;
            }
        }
        wbuf_u64(e, inc);
        wbuf_varint(e, low->p);
        wbuf_varint(e, low->n);
        after = inc;
    }
}

/* c's own slot and device maxima: one entry, or several when its devices
 * do not fit in one part (each a maximum, merged alone); the first also
 * carries its past lives' slots (up_past). */
static void up_counter(struct parts *p, struct wire_buf *e, const struct tally_table *t,
                       uint32_t self, const struct tally_counter *c)
{
    const struct tally_slot *s = counter_slot(c, self);
    uint32_t i = 0;
    do {
        uint32_t k = devices_that_fit(p, t, c, i);
        wbuf_reset(e);
        wbuf_str8(e, c->name, c->name_len);
        wbuf_varint(e, s ? s->p : 0);
        wbuf_varint(e, s ? s->n : 0);
        wbuf_varint(e, k);
        for (uint32_t j = i; j < i + k; j++) {
            const struct tally_dev *dv = &counter_devs(c)[j];
            const struct tally_device *d = t->devices[dv->device];
            wbuf_str8(e, d->id, strlen(d->id));
            wbuf_varint(e, dv->total);
        }
        if (i == 0)
            up_past(e, t, self, c);
        else
            wbuf_varint(e, 0);
        parts_add(p, SEC_COUNTERS, e, 0);
        i += k;
    } while (i < counter_ndevs(c));
}

/* A list entry in hash order: a watched counter, or a viewed page. */
struct hashed {
    uint64_t hash, count;
    const char *name;
    size_t len;
};

static int by_hash(const void *a, const void *b)
{
    const struct hashed *x = a, *y = b;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

struct hashed_list {
    struct hashed *v;
    size_t n;
};

static void list_page(const char *page, size_t len, uint64_t n, void *ud)
{
    struct hashed_list *l = ud;
    l->v[l->n++] = (struct hashed){presence_hash(page, len), n, page, len};
}

/* The list (names borrowed), sorted, into section s: pages carry counts. */
static void up_list(struct parts *p, struct wire_buf *e, int s, struct hashed_list *l)
{
    qsort(l->v, l->n, sizeof(*l->v), by_hash);
    for (size_t i = 0; i < l->n; i++) {
        wbuf_reset(e);
        wbuf_str8(e, l->v[i].name, l->v[i].len);
        if (s == SEC_PAGES)
            wbuf_varint(e, l->v[i].count);
        parts_add(p, s, e, l->v[i].hash);
    }
    parts_close_list(p, s);
}

struct up_ctx {
    struct tier_edge *e;
    uint64_t group; /* the seq of the UP's first part */
    struct wire_buf *out;
    tier_emit_fn *emit;
    void *ud;
};

/* One part: seq group, group + 1, ...; the flags say which lists it holds. */
static int up_send(const struct parts *p, void *ctx)
{
    struct up_ctx *u = ctx;
    struct wire_buf *out = u->out;
    wbuf_reset(out);
    write_header(out, WIRE_VERSION, WIRE_UP);
    wbuf_str8(out, u->e->node_id, strlen(u->e->node_id));
    wbuf_u64(out, u->e->incarnation);
    wbuf_varint(out, u->e->seq++);
    wbuf_u64(out, u->e->hub_session);
    wbuf_u8(out, (uint8_t)((p->open[SEC_WATCH] ? 1 : 0) | (p->open[SEC_PAGES] ? 2 : 0)));
    wbuf_varint(out, u->group);
    for (int s = 0; s < SEC_N; s++)
        parts_write(out, p, s);
    if (out->failed)
        return TALLY_E_NOMEM;
    u->emit(out, u->ud);
    return TALLY_OK;
}

static void count_page(const char *page, size_t len, uint64_t n, void *ud)
{
    (void)page;
    (void)len;
    (void)n;
    ++*(size_t *)ud;
}

static int by_change(const void *a, const void *b)
{
    const struct tier_page_change *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return x->sent_seq < y->sent_seq ? -1 : x->sent_seq > y->sent_seq;
}

static int by_change_hash(const void *a, const void *b)
{
    const struct tier_page_change *x = a, *y = b;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

/* The pages whose others' viewers the edge keeps are those of the page list
 * it sends: its hub sends a page's figure only while the edge's list holds
 * it, so one the edge's viewers left is forgotten here, or its last figure
 * would be shown for as long as the edge lives; a DOWN still carrying it
 * does not bring it back (tier_edge_apply_down). l replaces the whole list,
 * or with changes, only the pages of those n hashes. */
static int edge_follow_pages(struct tier_edge *e, const struct hashed_list *l,
                             const struct tier_page_change *changes, uint32_t n)
{
    struct tier_page *pg, *pt;
    for (pg = e->pages; pg; pg = pg->hh.next) {
        struct tier_page_change key = {pg->hash, 0};
        pg->listed = changes && !bsearch(&key, changes, n, sizeof(key), by_change_hash);
    }
    for (size_t i = 0; i < l->n; i++) {
        HASH_FIND(hh, e->pages, l->v[i].name, l->v[i].len, pg);
        if (!pg) {
            pg =
                named_new(sizeof(*pg), l->v[i].name, l->v[i].len, offsetof(struct tier_page, name));
            if (!pg)
                return TALLY_E_NOMEM;
            pg->len = (uint8_t)l->v[i].len;
            pg->hash = l->v[i].hash;
            HASH_ADD(hh, e->pages, name, pg->len, pg);
        }
        pg->listed = true;
    }
    HASH_ITER(hh, e->pages, pg, pt)
    {
        if (!pg->listed) {
            HASH_DEL(e->pages, pg);
            free(pg);
        }
    }
    return TALLY_OK;
}

/* ==== Edge: the pages that changed ====
 *
 * Between whole lists, an UP's page list is the pages that changed: each
 * changed presence_hash h in a part of its own whose range is [h, h], with
 * the edge's pages of that hash (none: the page left, and the empty range
 * replaces it), which the hub takes as it takes any range. Two changed
 * hashes never share a range, as that range would list every page between
 * them. As its counters do, an UP carries every change the hub has not
 * acknowledged: a hash is kept, with the part that last carried it, until
 * the hub acknowledges that part, so a lost UP loses no change. The whole
 * list goes when it is owed (the first UP, a new hub or session, as
 * before), until an UP that holds it is acknowledged, and in place of
 * changes not worth sending alone (presence.c's rule, presence_changes_worth_alone:
 * more than PRESENCE_CHANGES_MAX hashes or a quarter of the pages, or fewer
 * than PRESENCE_CHANGES_MIN_PAGES pages). A change then costs a part of
 * about 60 bytes plus its page's, not every page the edge views. A hub
 * takes a change only under the session it gave the edge (hub_read_pages):
 * an edge that moved sends its changes until it hears its new hub's
 * session, and that hub may lack the rest of its list. */

/* Takes presence.c's changed hashes (and clears them there) into the edge's
 * own, in hash order, once each (the least sent_seq: 0 if it changed since
 * an UP carried it), less those acknowledged; past PRESENCE_CHANGES_MAX, or
 * out of memory, the whole list is owed instead. */
static void edge_take_changes(struct tier_edge *e, struct tally_presence *pr)
{
    if (e->pages_changed && !pr->local_changed)
        e->pages_all = true; /* changes no longer known */
    e->pages_changed = false;
    if (pr->local_changed && (pr->changed_all || e->pages_all)) {
        e->pages_all = true;
    } else if (pr->local_changed) {
        uint32_t n = e->npage_changes + pr->nchanged;
        struct tier_page_change *c = realloc(e->page_changes, (n + 1) * sizeof(*c));
        if (!c) {
            e->pages_all = true;
        } else {
            for (uint32_t i = 0; i < pr->nchanged; i++)
                c[e->npage_changes++] = (struct tier_page_change){pr->changed[i], 0};
            e->page_changes = c;
        }
    }
    presence_changes_clear(pr);
    struct tier_page_change *c = e->page_changes;
    if (e->npage_changes)
        qsort(c, e->npage_changes, sizeof(*c), by_change);
    uint32_t k = 0;
    for (uint32_t i = 0; i < e->npage_changes; i++) {
        if (i > 0 && c[i].hash == c[i - 1].hash)
            continue; /* the first has the least sent_seq */
        if (unacked(e, !c[i].sent_seq, c[i].sent_seq))
            c[k++] = c[i];
    }
    e->npage_changes = k;
    if (k > PRESENCE_CHANGES_MAX)
        e->pages_all = true;
}

/* Each unacknowledged change in a part of its own (above). */
static int up_changes(struct tier_edge *e, struct tally_presence *pr, struct parts *p,
                      struct wire_buf *ent)
{
    struct tier_page_change *c = e->page_changes;
    size_t n = 0;
    for (uint32_t i = 0; i < e->npage_changes; i++)
        presence_each_local_of_hash(pr, c[i].hash, count_page, &n);
    struct hashed_list l = {malloc((n + 1) * sizeof(*l.v)), 0};
    if (!l.v)
        return TALLY_E_NOMEM;
    for (uint32_t i = 0; i < e->npage_changes; i++) {
        size_t first = l.n;
        presence_each_local_of_hash(pr, c[i].hash, list_page, &l);
        wbuf_reset(ent);
        for (size_t j = first; j < l.n; j++) {
            wbuf_str8(ent, l.v[j].name, l.v[j].len);
            wbuf_varint(ent, l.v[j].count);
        }
        parts_add_range(p, SEC_PAGES, ent, (uint32_t)(l.n - first), c[i].hash);
        c[i].sent_seq = e->seq - 1; /* the part just sent */
    }
    int rc = edge_follow_pages(e, &l, c, e->npage_changes);
    free(l.v);
    return rc;
}

static int up_lists(struct tier_edge *e, struct tally_presence *pr, struct parts *p,
                    struct wire_buf *ent, bool watch, bool pages)
{
    size_t n = watch ? HASH_COUNT(e->views) : 0, npages = 0;
    if (pages)
        presence_each_local(pr, count_page, &npages);
    struct hashed_list l = {malloc((n + npages + 1) * sizeof(*l.v)), 0};
    if (!l.v)
        return TALLY_E_NOMEM;
    if (watch) {
        for (struct tier_view *v = e->views; v; v = v->hh.next)
            l.v[l.n++] = (struct hashed){presence_hash(v->name, v->len), 0, v->name, v->len};
        up_list(p, ent, SEC_WATCH, &l);
        e->watch_changed = false;
        e->watch_sent_seq = e->seq; /* the part its range's end is in */
    }
    int rc = TALLY_OK;
    if (pages) {
        l.n = 0;
        presence_each_local(pr, list_page, &l);
        up_list(p, ent, SEC_PAGES, &l);
        rc = edge_follow_pages(e, &l, NULL, 0);
        e->pages_all = false;
        e->pages_sent_seq = e->seq;
        e->npage_changes = 0; /* the list holds them */
    }
    free(l.v);
    if (rc == TALLY_OK && !pages && e->npage_changes)
        rc = up_changes(e, pr, p, ent);
    return rc;
}

int tier_edge_up(struct tier_edge *e, struct tally_table *t, struct tally_presence *pr,
                 uint64_t now_ms, uint64_t every_ms, uint64_t heartbeat_ms, size_t max_bytes,
                 struct wire_buf *out, tier_emit_fn *emit, void *ud)
{
    if (e->nidle)
        edge_drop_idle(e, now_ms);
    if (!up_due(e, now_ms, every_ms, heartbeat_ms))
        return TALLY_OK;
    uint32_t self;
    int rc = table_replica(t, e->node_id, strlen(e->node_id), e->incarnation, &self);
    if (rc != TALLY_OK)
        return rc;
    struct up_ctx u = {e, e->seq, out, emit, ud};
    struct parts p = {.max_bytes = max_bytes,
                      .head = 4 + 1 + strlen(e->node_id) + 8 + 10 + 8 + 1 + 10,
                      .ranged = true,
                      .send = up_send,
                      .ctx = &u};
    bool watch = unacked(e, e->watch_changed, e->watch_sent_seq);
    edge_take_changes(e, pr);
    bool pages = unacked(e, e->pages_all, e->pages_sent_seq) ||
                 (e->npage_changes && !presence_changes_worth_alone(pr, e->npage_changes));
    struct wire_buf ent = {0};
    for (struct tier_mine *m = e->mine; m; m = m->hh.next) {
        struct tally_counter *c = table_find(t, m->name, m->len);
        if (!unacked(e, m->changed, m->sent_seq) || !c)
            continue;
        up_counter(&p, &ent, t, self, c);
        m->changed = false;
        m->sent_seq = e->seq; /* the part it is in (its last, if spread) */
    }
    rc = up_lists(e, pr, &p, &ent, watch, pages);
    wbuf_free(&ent);
    int sent = parts_finish(&p, true);
    if (sent != TALLY_OK)
        e->pages_all = true; /* a part not sent may have held a change */
    if (!e->first_up && e->seq > u.group)
        e->first_up = e->seq - 1;
    e->last_up_ms = now_ms;
    return rc != TALLY_OK ? rc : sent;
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

int tier_edge_apply_down(struct tier_edge *e, const void *msg, size_t len, tier_changed_fn *fn,
                         void *ud)
{
    struct wire_reader r;
    size_t hlen, nlen;
    if (!read_header(&r, msg, len, WIRE_DOWN))
        return TALLY_E_WIRE;
    const char *hub = wr_str8(&r, &hlen), *group = NULL;
    uint64_t session = wr_u64(&r), ack = wr_varint(&r);
    int version = ((const uint8_t *)msg)[2];
    uint64_t below = version >= 2 ? wr_u64(&r) : 0;
    size_t glen = 0;
    if (version >= 3)
        group = wr_str8(&r, &glen);
    if (r.bad || node_id_check(hub, hlen) != TALLY_OK ||
        (group && group_name_check(group, glen) != TALLY_OK))
        return TALLY_E_WIRE;
    e->below = max_u64(e->below, below);
    if (group && !e->group[0]) /* our count is in this group's sum from now on */
        memcpy(e->group, group, glen);
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
        if (!v) /* no longer watched */
            continue;
        const uint64_t f[NFIGURES] = {p - mp, n - mn, d, tp, tn, td};
        bool first = !v->filled;
        v->filled = true;
        /* A hub says zeros of a name it holds nothing of: such a view is
         * news only for a counter the edge writes (its own part is the
         * total) or has shown. Any other waits for a figure, or the edge
         * would hold and show a total 0 of every name its clients ever
         * watched, and keep it (edge_keep). */
        struct tier_mine *m = NULL;
        if (first)
            HASH_FIND(hh, e->mine, name, nlen, m);
        if ((figures_raise(v->f, f) || m) && fn)
            fn(name, nlen, ud);
    }
    uint64_t npages = wr_varint(&r);
    for (uint64_t i = 0; i < npages && !r.bad; i++) {
        const char *name = wr_name(&r, &nlen);
        uint64_t total = wr_varint(&r), mine = wr_varint(&r);
        if (r.bad || mine > total)
            return TALLY_E_WIRE;
        struct tier_page *pg = NULL;
        HASH_FIND(hh, e->pages, name, nlen, pg);
        if (pg) /* !pg: its viewers left (edge_follow_pages) */
            pg->others = total - mine;
    }
    return r.bad || r.p != r.end ? TALLY_E_WIRE : TALLY_OK;
}

/* A saturated sum, never below 0: a + b - c for a, b, c >= 0. */
static int64_t part(int64_t a, uint64_t b, uint64_t c)
{
    uint64_t v = (uint64_t)a + b;
    v = v > c ? v - c : 0;
    return v > (uint64_t)TALLY_MAX_SAFE ? TALLY_MAX_SAFE : (int64_t)v;
}

/* The edge's own part of name (from t) plus the rest of the world's figures
 * f, as the parts of the total a hub shows (P, N and devices after resets).
 * None goes below 0: each DOWN's P (every slot but the edge's, as the hub
 * holds them) with the edge's own P, which the hub's copy never passes, is
 * at least what resets took from P, and so for N and D. */
static void edge_sums(const struct tier_edge *e, struct tally_table *t, const char *name,
                      size_t len, const uint64_t f[NFIGURES], struct tally_sums *out)
{
    /* P and N: the running life's slot only; a past life's (loaded from the
     * state_dir after a start that drew a new life) is the hub's to count, in
     * the view. D: the device maxima reported here, all of them the edge's. */
    int64_t own_p = 0, own_n = 0, own_d = 0;
    const struct tally_counter *c = table_find(t, name, len);
    uint32_t self;
    if (c) {
        struct tally_sums all;
        counter_sums(c, &all);
        own_d = all.devices;
        const struct tally_slot *s =
            table_replica(t, e->node_id, strlen(e->node_id), e->incarnation, &self) == TALLY_OK
                ? counter_slot(c, self)
                : NULL;
        own_p = s ? (int64_t)s->p : 0;
        own_n = s ? (int64_t)s->n : 0;
    }
    out->p = part(own_p, f[F_P], f[F_TP]);
    out->n = part(own_n, f[F_N], f[F_TN]);
    out->devices = part(0, max_u64((uint64_t)own_d, f[F_D]), f[F_TD]);
    out->value = clamp_safe(out->p - out->n + out->devices);
}

static const uint64_t no_figures[NFIGURES];

void tier_edge_sums(const struct tier_edge *e, struct tally_table *t, const char *name, size_t len,
                    struct tally_sums *out)
{
    const struct tier_view *v = NULL;
    HASH_FIND(hh, e->views, name, len, v);
    edge_sums(e, t, name, len, v ? v->f : no_figures, out);
}

int64_t tier_edge_value(const struct tier_edge *e, struct tally_table *t, const char *name,
                        size_t len)
{
    struct tally_sums s;
    tier_edge_sums(e, t, name, len, &s);
    return s.value;
}

bool tier_edge_follows(const struct tier_edge *e, const char *name, size_t len)
{
    const struct tier_view *v = NULL;
    HASH_FIND(hh, e->views, name, len, v);
    return v && v->filled;
}

int64_t tier_edge_answer(const struct tier_edge *e, struct tally_table *t, const char *name,
                         size_t len)
{
    if (tier_edge_follows(e, name, len))
        return tier_edge_value(e, t, name, len);
    const struct tier_view *v = NULL;
    const struct tier_mine *m = NULL;
    HASH_FIND(hh, e->views, name, len, v);
    HASH_FIND(hh, e->mine, name, len, m);
    uint64_t f[NFIGURES] = {0};
    if (v) /* seeded from m->kept, and what a DOWN said since */
        figures_raise(f, v->f);
    if (m)
        figures_raise(f, m->kept);
    struct tally_sums s;
    edge_sums(e, t, name, len, f, &s);
    return s.value;
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
    uint64_t session;        /* what the child is told: new whenever this record is */
    uint64_t ack;            /* highest seq of an UP built under that session */
    uint64_t group, next;    /* that UP's first part, and the part awaited next */
    uint64_t relay_next;     /* the seq of the next relay part: relays only grow */
    bool relay_owed;         /* a hub wants its pages: all of them go at the next relay */
    bool list_owed;          /* relayed since the hub's last listing named it, or new */
    bool carried;            /* in our carried set, as of the last listing (child_carried) */
    bool in_set;             /* as the last listing of it named it */
    bool moved;              /* another hub's set holds it, newer: until we hear it again */
    uint64_t set_key;        /* the key of its entry in our carried set, as last listed */
    bool pages_new;          /* its page list changed since the last relay, */
    uint64_t new_lo, new_hi; /* within this range of hashes */
    bool held;               /* when it began to: its origin here was alive, */
    uint64_t held_digest;    /* of its life, with this digest (tier_hub_relay) */
    uint32_t replica;
    struct tier_sub *subs;
    uint32_t nsubs;
    struct tier_child_page *pages;
    uint32_t npages;
    bool ack_owed;
    char *conn; /* the connection its last UP came over (plugin.c) */
    char id[TALLY_NODE_ID_MAX + 1];
};

void tier_hub_init(struct tier_hub *h, const char *node_id, uint64_t session)
{
    memset(h, 0, sizeof(*h));
    strncpy(h->node_id, node_id, TALLY_NODE_ID_MAX);
    h->session = session;
    h->gen = 1;
    h->all_pages_owed = true; /* the first heartbeat carries them all */
    h->listing_owed = true;   /* and names every child */
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
    free(c->conn);
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
        w->hash = presence_hash(name, len);
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
    c->list_owed = true; /* the other hubs learn that we carry it */
    HASH_ADD_STR(h->children, id, c);
    return c;
}

/* The slots of the edge's past lives an UP carries (version 2): maxima, as
 * any slot; one of a life this hub adopted is folded at once (fold.c). */
static int hub_merge_past(struct tier_hub *h, struct tally_table *t, struct tier_child *ch,
                          struct tally_counter *c, struct wire_reader *r)
{
    uint64_t n = wr_varint(r);
    if (n > TIER_PAST)
        r->bad = true;
    bool adopted = false;
    for (uint64_t i = 0; i < n && !r->bad; i++) {
        uint64_t inc = wr_u64(r), p = wr_safe(r), neg = wr_safe(r);
        uint32_t replica;
        bool changed;
        if (r->bad || inc >= ch->incarnation)
            return TALLY_E_WIRE; /* a past life is below the running one */
        int rc = table_replica(t, ch->id, strlen(ch->id), inc, &replica);
        if (rc != TALLY_OK)
            return rc;
        if (table_merge_slot(t, c, replica, p, neg, &changed) != TALLY_OK)
            return TALLY_E_OVERFLOW;
        adopted |= changed && t->replicas[replica]->adopted;
    }
    return r->bad ? TALLY_E_WIRE : adopted ? fold_counter_logged(t, h->persist, c) : TALLY_OK;
}

static int hub_merge_counter(struct tier_hub *h, struct tally_table *t, struct tier_child *ch,
                             struct wire_reader *r, int version)
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
    return version >= 2 ? hub_merge_past(h, t, ch, c, r) : TALLY_OK;
}

/* A list section's range and count; the count is bounded by the bytes
 * left (each entry takes at least min_entry). */
static bool read_range(struct wire_reader *r, uint64_t *lo, uint64_t *hi, uint64_t *n,
                       size_t min_entry)
{
    *lo = wr_u64(r);
    *hi = wr_u64(r);
    *n = wr_varint(r);
    return !r->bad && *lo <= *hi && *n <= (uint64_t)(r->end - r->p) / min_entry;
}

/* Drops the child's watched counters whose hash is in [lo, hi]. */
static void child_drop_subs(struct tier_hub *h, struct tier_child *c, uint64_t lo, uint64_t hi)
{
    uint32_t kept = 0;
    for (uint32_t i = 0; i < c->nsubs; i++) {
        struct tier_watch *w = c->subs[i].w;
        if (w->hash >= lo && w->hash <= hi)
            watch_unref(h, w);
        else
            c->subs[kept++] = c->subs[i];
    }
    c->nsubs = kept;
}

/* A range of the child's watch list: replaces what it held there, if this
 * part is the newest the child sent (apply). */
static int hub_read_watch(struct tier_hub *h, struct tier_child *ch, struct wire_reader *r,
                          bool apply)
{
    uint64_t lo, hi, n;
    if (!read_range(r, &lo, &hi, &n, 2))
        return TALLY_E_WIRE;
    if (apply) {
        child_drop_subs(h, ch, lo, hi);
        struct tier_sub *grown = realloc(ch->subs, (ch->nsubs + n + 1) * sizeof(*grown));
        if (!grown)
            return TALLY_E_NOMEM;
        ch->subs = grown;
    }
    for (uint64_t i = 0; i < n; i++) {
        size_t len;
        const char *name = wr_name(r, &len);
        if (r->bad || !presence_in_range(name, len, lo, hi))
            return TALLY_E_WIRE;
        if (!apply)
            continue;
        struct tier_watch *w = watch_ref(h, name, len);
        if (!w)
            return TALLY_E_NOMEM;
        ch->subs[ch->nsubs++] = (struct tier_sub){.w = w, .p = UINT64_MAX};
    }
    return TALLY_OK;
}

static int by_page_hash(const void *a, const void *b)
{
    const struct tier_child_page *x = a, *y = b;
    return x->hash < y->hash ? -1 : x->hash > y->hash;
}

/* Whether two lists of a child's pages (in hash order) hold the same counts;
 * pages of equal hashes in another order are taken as a change. */
static bool pages_same(const struct tier_child_page *a, uint32_t na,
                       const struct tier_child_page *b, uint32_t nb)
{
    if (na != nb)
        return false;
    for (uint32_t i = 0; i < na; i++)
        if (a[i].hash != b[i].hash || a[i].count != b[i].count || a[i].len != b[i].len ||
            memcmp(a[i].name, b[i].name, a[i].len) != 0)
            return false;
    return true;
}

/* A range of the child's viewers per page: replaces what it held there, if
 * this part is the newest the child sent (*apply); a range that changed is
 * relayed (tier_hub_relay). A part built under another session than this
 * record's comes from an edge that has not heard of the record yet (it
 * moved here, or the record is new): a range of one hash there is a change
 * since the whole list some other record acknowledged ("Edge: the pages
 * that changed"), which this record may never have had, and taken alone it
 * would stand for all the edge's pages here. It is not taken (*apply
 * false): the edge sends its whole list once it hears this session. */
static int hub_read_pages(struct tier_child *ch, struct wire_reader *r, bool *apply, bool foreign)
{
    uint64_t lo, hi, n;
    if (!read_range(r, &lo, &hi, &n, 3))
        return TALLY_E_WIRE;
    if (foreign && lo == hi)
        *apply = false;
    struct tier_child_page *pages = calloc(ch->npages + n + 1, sizeof(*pages));
    if (!pages)
        return TALLY_E_NOMEM;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < ch->npages; i++)
        if (ch->pages[i].hash < lo || ch->pages[i].hash > hi)
            pages[kept++] = ch->pages[i];
    for (uint64_t i = 0; i < n; i++) {
        size_t len;
        const char *name = wr_name(r, &len);
        uint64_t count = wr_varint(r);
        if (r->bad || count > UINT32_MAX || !presence_in_range(name, len, lo, hi)) {
            free(pages);
            return TALLY_E_WIRE;
        }
        struct tier_child_page *pg = &pages[kept++];
        memcpy(pg->name, name, len);
        pg->len = (uint8_t)len;
        pg->hash = presence_hash(name, len);
        pg->count = count;
        pg->sent_total = UINT64_MAX;
    }
    if (!*apply) {
        free(pages);
        return TALLY_OK;
    }
    qsort(pages, kept, sizeof(*pages), by_page_hash);
    bool same = pages_same(ch->pages, ch->npages, pages, kept);
    free(ch->pages);
    ch->pages = pages;
    ch->npages = kept;
    if (same)
        return TALLY_OK; /* sent again, unacknowledged yet: nothing to relay */
    ch->new_lo = ch->pages_new && ch->new_lo < lo ? ch->new_lo : lo;
    ch->new_hi = ch->pages_new && ch->new_hi > hi ? ch->new_hi : hi;
    ch->pages_new = true;
    return TALLY_OK;
}

/* The seq of a child's PRESENCE: the seq of its newest UP part, times 2^16
 * so that a relay cut in parts (tier_hub_relay) numbers them after it, and
 * relays that answer wants between two UPs after those (ch->relay_next). */
#define RELAY_SEQ(seq) ((seq) << 16)
#define RELAY_PARTS_MAX 0xffff
/* RELAY_SEQ's room: edges number UPs from the wall clock in ms (plugin.c's
 * edge_start), which reaches it in the year 6429 */
#define UP_SEQ_MAX ((uint64_t)1 << 47)

/* The child's viewers as its presence origin, after a part that changed
 * them, or once it is heard again after its origin expired. plugin.c expires
 * a silent origin at every tick, and the child's record (tier_hub_expire) at
 * most once a publish interval: a child heard in between keeps its record,
 * its session and its acknowledgements, so it does not send its page list
 * again, and the record's list is all there is to count. When the part
 * began a change of the record's pages (began), what the origin held then
 * is noted for tier_hub_relay: a change that leaves it so is not relayed. */
static int hub_apply_presence(struct tally_presence *pr, struct tier_child *ch, bool pages,
                              bool began, uint64_t now_ms)
{
    struct tally_origin *o = presence_origin(pr, ch->id);
    if (!o)
        return TALLY_E_NOMEM;
    o->last_heard_ms = now_ms;
    if (began) {
        ch->held = o->alive && o->incarnation == ch->incarnation;
        ch->held_digest = o->digest;
    }
    if (!pages && o->alive)
        return TALLY_OK;
    if (o->incarnation == ch->incarnation && RELAY_SEQ(ch->seq) <= o->seq)
        return TALLY_OK;
    o->incarnation = ch->incarnation;
    o->seq = RELAY_SEQ(ch->seq);
    if (ch->relay_next <= o->seq) /* our listing names the seq we hold, as a replay does */
        ch->relay_next = o->seq + 1;
    o->carried = true;                           /* replayed as such (presence.c) */
    presence_origin_begin(pr, o, 0, UINT64_MAX); /* ch->pages: all the child's pages */
    for (uint32_t i = 0; i < ch->npages; i++)
        if (presence_origin_set(pr, o, ch->pages[i].name, ch->pages[i].len, ch->pages[i].count) !=
            TALLY_OK)
            return TALLY_E_NOMEM;
    return TALLY_OK;
}

/* The ack is the highest seq s such that this record holds every part of
 * s's UP (parts group, group + 1, ...) up to s: an UP carries everything
 * unacknowledged, so that is every change the edge made up to s. Parts out
 * of order do not count: a list part older than the newest is not taken. */
static void hub_ack(struct tier_child *ch, uint64_t seq, uint64_t group, bool newer)
{
    if (group > ch->group) {
        ch->group = group;
        ch->next = group;
    }
    if (group != ch->group || seq != ch->next || !newer)
        return;
    ch->next++;
    if (seq > ch->ack) {
        ch->ack = seq;
        ch->ack_owed = true;
    }
}

/* Slots are maxima: merged from any part, however late. The lists replace
 * ranges of the previous ones: only from a part newer than any seen. */
static int hub_read_up_body(struct tier_hub *h, struct tally_table *t, struct tier_child *ch,
                            struct wire_reader *r, uint8_t flags, bool newer, bool foreign,
                            bool *pages, int version)
{
    *pages = newer && (flags & 2);
    uint64_t ncounters = wr_varint(r);
    int rc = r->bad ? TALLY_E_WIRE : TALLY_OK;
    for (uint64_t i = 0; i < ncounters && rc == TALLY_OK; i++)
        rc = hub_merge_counter(h, t, ch, r, version);
    if (rc == TALLY_OK && (flags & 1))
        rc = hub_read_watch(h, ch, r, newer);
    if (rc == TALLY_OK && (flags & 2))
        rc = hub_read_pages(ch, r, pages, foreign);
    return rc == TALLY_OK && r->p != r->end ? TALLY_E_WIRE : rc;
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
    uint64_t group = wr_varint(&r);
    if (r.bad || node_id_check(id, idlen) != TALLY_OK || group == 0 || group > seq ||
        seq > UP_SEQ_MAX)
        return TALLY_E_WIRE;
    struct tier_child *ch = child_get(h, t, id, idlen, incarnation);
    if (!ch)
        return TALLY_E_NOMEM;
    bool newer = seq > ch->seq, pages, changing = ch->pages_new;
    int rc = hub_read_up_body(h, t, ch, &r, flags, newer, session != ch->session, &pages,
                              ((const uint8_t *)msg)[2]);
    if (rc != TALLY_OK)
        return rc;
    ch->last_heard_ms = now_ms;
    ch->moved = false;
    /* Only an UP built under the session this record gave the edge holds
     * everything the edge had not had acknowledged by this record. */
    if (session == ch->session)
        hub_ack(ch, seq, group, newer);
    if (newer)
        ch->seq = seq;
    rc = hub_apply_presence(pr, ch, pages, !changing && ch->pages_new, now_ms);
    *from = ch;
    return rc;
}

/* A new tick: figures are computed again. The page totals no DOWN asked for
 * in the last tick go: kept, the cache would hold every page any edge's
 * viewers ever watched (a client viewing page after page grew it without
 * bound). */
void tier_hub_tick(struct tier_hub *h)
{
    struct tier_watch *w, *wt;
    HASH_ITER(hh, h->page_totals, w, wt)
    {
        if (w->gen != h->gen) {
            HASH_DEL(h->page_totals, w);
            free(w);
        }
    }
    h->gen++;
}

static void watch_figures(struct tier_hub *h, struct tier_watch *w, struct tally_table *t)
{
    if (w->gen == h->gen)
        return;
    struct tally_sums raw = {0}, after = {0};
    const struct tally_counter *c = table_find(t, w->name, w->len);
    if (c) {
        table_raw(t, c, &raw);
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

struct down_ctx {
    struct tier_hub *h;
    const struct tally_table *t;
    struct tier_child *ch;
    struct wire_buf *out;
    tier_emit_fn *emit;
    void *ud;
};

/* One part: each carries the ack, and figures that only grow. */
static int down_send(const struct parts *p, void *ctx)
{
    struct down_ctx *d = ctx;
    struct wire_buf *out = d->out;
    wbuf_reset(out);
    /* version 3 names our group; a hub in none writes 2, which edges of
     * every version read */
    write_header(out, d->h->group[0] ? WIRE_DOWN_VERSION : WIRE_VERSION, WIRE_DOWN);
    wbuf_str8(out, d->h->node_id, strlen(d->h->node_id));
    wbuf_u64(out, d->ch->session);
    wbuf_varint(out, d->ch->ack);
    wbuf_u64(out, fold_below_of(d->t, d->ch->id, strlen(d->ch->id)));
    if (d->h->group[0])
        wbuf_str8(out, d->h->group, strlen(d->h->group));
    parts_write(out, p, SEC_COUNTERS);
    parts_write(out, p, SEC_PAGES);
    if (out->failed)
        return TALLY_E_NOMEM;
    d->ch->ack_owed = false;
    d->emit(out, d->ud);
    return TALLY_OK;
}

/* The child's watched counters whose figures changed (all when full). */
static void down_counters(struct tier_hub *h, struct tally_table *t, struct tier_child *ch,
                          bool full, struct parts *p, struct wire_buf *e)
{
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
        wbuf_reset(e);
        wbuf_str8(e, w->name, w->len);
        const uint64_t f[8] = {w->p, w->n, w->d, mp, mn, w->tp, w->tn, w->td};
        for (int k = 0; k < 8; k++)
            wbuf_varint(e, f[k]);
        parts_add(p, SEC_COUNTERS, e, 0);
    }
}

static void down_pages(struct tier_hub *h, const struct tally_presence *pr, struct tier_child *ch,
                       bool full, struct parts *p, struct wire_buf *e)
{
    for (uint32_t i = 0; i < ch->npages; i++) {
        struct tier_child_page *pg = &ch->pages[i];
        uint64_t total = page_figure(h, pr, pg->name, pg->len);
        uint64_t mine = total < pg->count ? total : pg->count;
        if (!full && pg->sent_total == total && pg->sent_mine == mine)
            continue;
        pg->sent_total = total;
        pg->sent_mine = mine;
        wbuf_reset(e);
        wbuf_str8(e, pg->name, pg->len);
        wbuf_varint(e, total);
        wbuf_varint(e, mine);
        parts_add(p, SEC_PAGES, e, 0);
    }
}

int tier_hub_down(struct tier_hub *h, struct tally_table *t, const struct tally_presence *pr,
                  struct tier_child *ch, uint64_t now_ms, uint64_t heartbeat_ms, size_t max_bytes,
                  struct wire_buf *out, tier_emit_fn *emit, void *ud)
{
    bool full = now_ms - ch->last_full_ms >= heartbeat_ms || ch->last_full_ms == 0;
    struct down_ctx d = {h, t, ch, out, emit, ud};
    struct parts p = {.max_bytes = max_bytes,
                      .head = 4 + 1 + strlen(h->node_id) + 8 + 10 + 8,
                      .send = down_send,
                      .ctx = &d};
    struct wire_buf e = {0};
    down_counters(h, t, ch, full, &p, &e);
    down_pages(h, pr, ch, full, &p, &e);
    wbuf_free(&e);
    if (full)
        ch->last_full_ms = now_ms;
    return parts_finish(&p, full || ch->ack_owed);
}

/* How many of the child's pages from the i-th on (up to end) fit in a
 * PRESENCE of max_bytes with a header of head bytes; pages of equal hashes
 * are not parted (see parts_add). */
static uint32_t relay_pages_that_fit(const struct tier_child *ch, uint32_t i, uint32_t end,
                                     size_t head, size_t max_bytes)
{
    uint32_t j = i;
    for (size_t used = head; j < end; j++) {
        used += 1 + ch->pages[j].len + varint_len(ch->pages[j].count);
        if (used > max_bytes && j > i)
            break;
    }
    while (j < end && j > i + 1 && ch->pages[j].hash == ch->pages[j - 1].hash)
        j--;
    while (j < end && j > i && ch->pages[j].hash == ch->pages[j - 1].hash)
        j++;
    return j - i;
}

static uint64_t child_digest(const struct tier_child *ch)
{
    uint64_t d = 0;
    for (uint32_t i = 0; i < ch->npages; i++)
        d += presence_digest(ch->pages[i].name, ch->pages[i].len, ch->pages[i].count);
    return d;
}

/* The child's pages whose hash is in [lo, hi] (ch->pages is in hash order),
 * as PRESENCE parts covering that range, numbered on from ch->relay_next but
 * never past the seqs of the child's next UP: a relay answering a want
 * (below) at a hub the edge has left cannot pass its new hub's. With entry
 * (a relay answering a want), each part ends with the child's own entry of
 * the heartbeat's listing (the seq of the relay's last part, the digest,
 * how long ago the child was heard): such a relay goes up to
 * peer_timeout_ms after the child was last heard (it may be dead by then),
 * and a hub with no listing of it yet (restarted, or its listings lost)
 * would take the relay's arrival as its hearing and count a dead edge's
 * viewers for up to another peer_timeout_ms (seen in tests/sim, 0.5% of
 * fault schedules); with the entry, every hub takes the carrier's time
 * (presence_origin_listed). A relay of a change leaves as the UP that made
 * it arrives (plugin.c's on_up), so its arrival is its hearing: it goes
 * without, 40 bytes and an id less a part. */
static int relay_range(struct tier_child *ch, uint64_t lo, uint64_t hi, bool entry,
                       size_t max_bytes, uint64_t now_ms, struct wire_buf *out, tier_emit_fn *emit,
                       void *ud)
{
    /* header, origin, four u64 and the page count; the listing: two counts,
     * the entry (id, incarnation and digest, two varints of at most 10) */
    size_t idlen = strlen(ch->id);
    size_t head = 4 + 1 + idlen + 4 * 8 + 5 + (entry ? 2 + 1 + idlen + 2 * 8 + 2 * 10 : 0);
    uint64_t seq = RELAY_SEQ(ch->seq) > ch->relay_next ? RELAY_SEQ(ch->seq) : ch->relay_next;
    uint32_t i = 0, end, nparts = 0;
    while (i < ch->npages && ch->pages[i].hash < lo)
        i++;
    for (end = i; end < ch->npages && ch->pages[end].hash <= hi;)
        end++;
    for (uint32_t j = i; entry && (nparts == 0 || j < end); nparts++)
        j += relay_pages_that_fit(ch, j, end, head, max_bytes); /* the entry's seq */
    struct wire_presence_edge self = {ch->id,
                                      idlen,
                                      ch->incarnation,
                                      seq + nparts - 1,
                                      entry ? child_digest(ch) : 0,
                                      now_ms - ch->last_heard_ms};
    for (uint32_t part = 0; part == 0 || i < end; part++, seq++) {
        if (seq - RELAY_SEQ(ch->seq) > RELAY_PARTS_MAX)
            return TALLY_E_TOO_LARGE;
        uint32_t k = relay_pages_that_fit(ch, i, end, head, max_bytes);
        uint64_t part_hi = i + k == end ? hi : ch->pages[i + k - 1].hash;
        wire_presence_begin(out, ch->id, ch->incarnation, seq, lo, part_hi, k);
        for (uint32_t j = i; j < i + k; j++)
            wire_presence_page(out, ch->pages[j].name, ch->pages[j].len, ch->pages[j].count);
        if (entry) {
            wire_presence_count(out, 1);
            wire_presence_edge(out, &self);
            wire_presence_count(out, 0);
        }
        if (out->failed)
            return TALLY_E_NOMEM;
        emit(out, ud);
        ch->relay_next = seq + 1;
        ch->list_owed = true;
        lo = part_hi + 1;
        i += k;
    }
    return TALLY_OK;
}

/* What changed goes at once, only its range (an UP part's share of the
 * list); everything when a hub wants it. A change that leaves the pages as
 * this hub held them when it began goes nowhere: an edge that moved here
 * sends its whole list, which the relays of its last hub (or a replay) left
 * here already, and so at every hub they reached. Flooded again, it cost a
 * message per edge at every bridge for each move: 13% of the PRESENCE
 * messages of tests/sim's tree of 2,040 nodes with 4 hubs lost and 4
 * restarted (their edges move away and back). The next listing names the
 * edge with the seq a relay would have had and the digest; a hub holding
 * the same digest takes that seq as its own (presence_origin_listed), one
 * holding another wants the pages, as for a relay lost. */
int tier_hub_relay(struct tier_child *ch, struct tally_presence *pr, size_t max_bytes,
                   uint64_t now_ms, struct wire_buf *out, tier_emit_fn *emit, void *ud)
{
    bool all = ch->relay_owed;
    if (!ch->pages_new && !all)
        return TALLY_OK;
    ch->pages_new = false;
    ch->relay_owed = false;
    if (!all && ch->held && child_digest(ch) == ch->held_digest) {
        if (ch->relay_next <= RELAY_SEQ(ch->seq))
            ch->relay_next = RELAY_SEQ(ch->seq) + 1;
        ch->list_owed = true;
        return TALLY_OK;
    }
    int rc = all ? relay_range(ch, 0, UINT64_MAX, true, max_bytes, now_ms, out, emit, ud)
                 : relay_range(ch, ch->new_lo, ch->new_hi, false, max_bytes, now_ms, out, emit, ud);
    /* Our origin of the child holds the pages relayed (hub_apply_presence),
     * and now at the relay's seq: the relay, back to us around a ring of
     * hubs, is not newer here (presence_apply). our_own_relay drops its
     * entry only while we have the child: one that came back after we forgot
     * a dead edge was taken, and its entry, ours aged as it left, counted
     * the edge again for its time on the way (tests/sim with groups of hubs:
     * 969 ms over six bridges, 1 of 2,001 schedules). */
    struct tally_origin *o = NULL;
    HASH_FIND_STR(pr->origins, ch->id, o);
    if (rc == TALLY_OK && o && o->alive && o->incarnation == ch->incarnation &&
        o->digest == child_digest(ch) && o->seq < ch->relay_next - 1)
        o->seq = ch->relay_next - 1;
    return rc;
}

/* ==== Hub: the heartbeat's listing ====
 *
 * A hub's own presence heartbeat (its PRESENCE, every peer_timeout_ms / 5 at
 * most a second: all its pages or a keepalive, below) ends with a listing:
 * its own entry ("the heartbeat's own entry", below), entries of edges it
 * carries, each as (id, incarnation, seq of its latest relay, digest of its
 * pages, ms since it was last heard), the origins whose pages this hub
 * wants, and its carried set ("the carrier's keepalive", below). Each entry
 * stands alone. Each hub applies a listing (tier_hub_heard): a listed edge
 * is alive as of when its carrier last heard it (presence_origin_listed),
 * so its viewers stay while some live hub vouches for it and leave
 * peer_timeout_ms after the last hub that heard it did; and a digest that
 * differs from what is held, with no newer relay held, puts the edge among
 * the wants (while it is alive), and its carrier relays all its pages at
 * its next tick, each part with the edge's entry (relay_range). Relays are
 * sent when a list changes, and again only where one was lost: a hub's
 * presence traffic is the changes plus one heartbeat per hub, not one relay
 * per edge. The listing is appended to the heartbeat's last part while it
 * fits, in parts of its own (no page range) after that, each part ending
 * with the carried set.
 *
 * ---- The carrier's keepalive ----
 *
 * Until 2026-12-03 the listing named every edge every peer_timeout_ms / 3,
 * so that the others kept its edges alive: about 30 bytes an edge, flooded
 * to every hub, 78% of the PRESENCE bytes of tests/sim's tree of 2,040
 * nodes and 74% at 10,040 (README): a cost per edge of the whole tree at
 * rest. Now the carrier's own heartbeat stands for its edges. Its carried
 * set is the edges it heard within timeout_ms / 3 that have viewers and
 * that it has announced (child_carried), given as their count, the sum of
 * their entries' keys (presence_entry_key: id, incarnation, seq, digest)
 * and the age of the one heard longest ago (carried_age_ms). The listing
 * names an edge only when its entry or its place in or out of the set
 * changed since it last did, when it is new, or when the hub owes its full
 * listing (the first heartbeat, or a hub that asked); and an edge with
 * viewers out of the set (unheard lately, or moved) at every heartbeat,
 * with its age, as every edge was before, so that its viewers leave each
 * count peer_timeout_ms after its carrier last heard it. An entry out of
 * the set is given an age above carried_age_ms, so that an entry is of the
 * set if and only if its age is at most that (carry_entry).
 *
 * Each receiver keeps, for each hub, the edges whose newest entry from that
 * hub put them in its set, with their keys (o->carrier, hub->carries). At
 * the listing's last part it compares that set with the hub's. The same:
 * each edge of it was heard by the hub at most carried_age_ms ago, and is
 * alive as of then here (carried_check), which is what its entry would
 * have said, or earlier. Another (an entry lost, a link cut, a receiver
 * or a hub restarted): it vouches for none of them and asks for the hub's
 * full listing in its next heartbeat, from a heartbeat after it first
 * heard the hub (a restarted hub has the entries of its neighbours'
 * replays by then, each naming its carrier, presence.c). The full listing
 * names every edge, and takes out of the set held here each one it does
 * not name, once its last part has come (its stamp, the heartbeat's first
 * seq): a stale link cannot keep a dead edge alive. An edge that moves
 * leaves its old carrier's set as soon as that carrier hears the new one's
 * set hold it with a newer seq or another life (child_moved), and the old
 * carrier's next listing names it out of its set: receivers that took the
 * new carrier's entry and those that did not yet agree with both hubs.
 *
 * What stays exact: an edge is vouched for only by a hub whose set, as
 * summed here, is the hub's own; a dead edge leaves its carrier's set
 * timeout_ms / 3 after it was last heard, and each count peer_timeout_ms
 * after that hearing, as before. What it costs: a receiver whose set
 * differs keeps no edge of that hub alive until the full listing comes, at
 * most a heartbeat or two; a hub that restarts takes every hub's full
 * listing that its neighbours' replays did not make whole (a replay lost on
 * its way). A collision of the 64-bit sum would hide a lost entry: at 2^-64
 * a comparison, not guarded. */

/* Holds back the last part of the announcement, to append the listing. */
struct held {
    struct wire_buf last;
    uint32_t n;
    tier_emit_fn *emit;
    void *ud;
};

static void hold_part(const struct wire_buf *msg, void *ud)
{
    struct held *hd = ud;
    if (hd->n++)
        hd->emit(&hd->last, hd->ud);
    wbuf_reset(&hd->last);
    wbuf_bytes(&hd->last, msg->data, msg->len);
}

/* The listing's entries, each encoded alone (ends[i]: where entry i ends);
 * the first nlisted are edges, the rest wants; set: the carried set. */
struct listing {
    struct wire_buf ent;
    size_t *ends;
    uint32_t n, nlisted;
    struct wire_presence set;
};

/* The carried set's bytes at most: flags, stamp, digest, count, age. */
#define CARRIED_MAX (1 + 8 + 8 + 5 + 10)

/* Whether our next heartbeat asks hub for its full listing: while it is
 * alive and the carried sets differ, from a heartbeat after we first heard
 * it (a node that restarted has the entries from its neighbours' replays
 * by then, presence.c). */
static bool listing_wanted(const struct tally_origin *hub, uint64_t now_ms, uint64_t timeout_ms)
{
    uint64_t grace = timeout_ms / 5 < 1000 ? timeout_ms / 5 : 1000;
    return hub->listing_wanted && hub->alive && now_ms - hub->last_heard_ms <= timeout_ms &&
           now_ms - hub->first_listed_ms >= grace;
}

static void carry_unlink(struct tally_origin *o)
{
    if (!o->carrier)
        return;
    DL_DELETE2(o->carrier->carries, o, carry_prev, carry_next);
    o->carrier = NULL;
}

static struct wire_presence_edge child_entry(const struct tier_child *ch, uint64_t now_ms)
{
    return (struct wire_presence_edge){ch->id,           strlen(ch->id),
                                       ch->incarnation,  ch->relay_next ? ch->relay_next - 1 : 0,
                                       child_digest(ch), now_ms - ch->last_heard_ms};
}

/* Whether a child is of our carried set: heard lately; with viewers (one
 * with none needs no keeping alive); announced (a child
 * not relayed yet is listed with seq 0, which a hub holding its pages from
 * its last carrier takes for that of a carrier it left, presence_origin_
 * listed); and not listed since by another hub as of its own set, newer. */
static bool child_carried(const struct tier_child *ch, uint64_t age_ms, uint64_t timeout_ms)
{
    return age_ms <= timeout_ms / 3 && ch->relay_next && !ch->moved && ch->npages;
}

static int listing_build(struct tier_hub *h, struct tally_presence *pr,
                         const struct wire_presence_edge *own, uint64_t now_ms, uint64_t timeout_ms,
                         struct listing *l)
{
    struct tally_origin *wanting = (h->wants_of ? h->wants_of : pr)->origins;
    size_t cap = HASH_COUNT(h->children) + HASH_COUNT(wanting) + 2;
    bool full = h->listing_owed;
    l->ends = malloc(cap * sizeof(*l->ends));
    if (!l->ends)
        return TALLY_E_NOMEM;
    l->set.listing_flags = full ? WIRE_LISTING_FULL : 0;
    wire_presence_edge(&l->ent, own);
    l->ends[l->n++] = l->ent.len;
    l->nlisted++;
    for (struct tier_child *ch = h->children; ch; ch = ch->hh.next) {
        struct wire_presence_edge e = child_entry(ch, now_ms);
        ch->carried = child_carried(ch, e.age_ms, timeout_ms);
        struct tally_origin *o = NULL;
        HASH_FIND_STR(pr->origins, ch->id, o);
        if (o && ch->carried) { /* what a replay names us the carrier of (presence.c) */
            carry_unlink(o);
            o->carry_key = presence_entry_key(&e);
        } else if (o && !o->carrier) {
            o->carry_key = 0; /* nobody's, as far as we know */
        }
        if (ch->carried) {
            l->set.carried_digest += presence_entry_key(&e);
            l->set.ncarried++;
            if (e.age_ms > l->set.carried_age_ms)
                l->set.carried_age_ms = e.age_ms;
        }
    }
    for (struct tier_child *ch = h->children; ch; ch = ch->hh.next) {
        struct wire_presence_edge e = child_entry(ch, now_ms);
        uint64_t key = presence_entry_key(&e);
        /* in or out of the set, or another entry in it, since we last
         * listed it; out of it with viewers, it is kept alive by its own
         * entry, as before the set */
        bool changed = ch->carried != ch->in_set || (ch->carried && key != ch->set_key);
        if (!full && !ch->list_owed && !changed && (ch->carried || !ch->npages))
            continue;
        ch->in_set = ch->carried;
        ch->set_key = key;
        if (!ch->carried && e.age_ms <= l->set.carried_age_ms)
            e.age_ms = l->set.carried_age_ms + 1; /* not of the set: older than its age */
        wire_presence_edge(&l->ent, &e);
        l->ends[l->n++] = l->ent.len;
        l->nlisted++;
        ch->list_owed = false;
    }
    /* A group's or region's stream (scope.c) asks for the sums of the
     * others that its hub lacks, or that a hub it speaks for asked for. */
    uint8_t carry = (uint8_t)(1u << h->wants_level);
    for (struct tally_origin *o = wanting; o; o = o->hh.next) {
        if (o->level < h->wants_level)
            continue;
        bool asked = h->wants_of && (o->scope_wanted & carry);
        o->scope_wanted &= (uint8_t)~carry;
        if (!asked && !presence_origin_wanted(o, now_ms, timeout_ms) &&
            !listing_wanted(o, now_ms, timeout_ms))
            continue;
        wire_presence_want(&l->ent, o->node_id, strlen(o->node_id));
        l->ends[l->n++] = l->ent.len;
    }
    if (l->ent.failed)
        return TALLY_E_NOMEM;
    h->listing_owed = false;
    return TALLY_OK;
}

/* Appends to part the entries from *i on that fit in max_bytes (at least
 * one), as the two counted sections, then the carried set. */
static void listing_append(struct listing *l, uint32_t *i, struct wire_buf *part, size_t max_bytes)
{
    size_t start = *i ? l->ends[*i - 1] : 0, room = part->len + 10 + CARRIED_MAX;
    uint32_t j = *i;
    while (j < l->n && (j == *i || room + l->ends[j] - start <= max_bytes))
        j++;
    uint32_t edges_end = j < l->nlisted ? j : l->nlisted;
    uint32_t edges = *i < edges_end ? edges_end - *i : 0;
    size_t mid = edges_end > *i ? l->ends[edges_end - 1] : start;
    wire_presence_count(part, edges);
    wbuf_bytes(part, l->ent.data + start, mid - start);
    wire_presence_count(part, j - *i - edges);
    wbuf_bytes(part, l->ent.data + mid, l->ends[j - 1] - mid);
    if (j == l->n)
        l->set.listing_flags |= WIRE_LISTING_LAST;
    wire_presence_carried(part, &l->set);
    *i = j;
}

/* ==== Hub: the heartbeat's pages ====
 *
 * Every node's heartbeat (a flat cluster's too: plugin.c runs this one for
 * every node that is not an edge) carries all its pages only the first time
 * and when owed; otherwise it is its changes not yet sent, if any, and a
 * keepalive, a PRESENCE of no range (lo > hi) with the listing: receivers
 * take it as "alive" and touch no count (presence_origin_begin of no range).
 *
 * The heartbeat's own entry. The listing starts with an entry for the node
 * itself, as for an edge it carries: (its id, incarnation, the seq of the
 * part the entry rides, the digest of its own counts, age 0). A receiver
 * takes it as it takes any entry (tier_hub_heard, presence_origin_listed):
 * the node is alive as of now, and a receiver that holds the seq named or
 * an older one, with another digest of the node's counts (presence_origin_
 * wanted), lacks some of them, and puts the node among the wants of its
 * own next heartbeat. A node that finds itself among a heartbeat's wants
 * owes all its pages (tier_hub_heard), and its next heartbeat carries them.
 * The digest is of counts sent: changes still unsent go ahead of the
 * keepalive, in the same heartbeat, so they never make a receiver want us
 * for nothing. This is PRESENCE version 3 as it was: a node of the version
 * before takes our entry and asks the same way (it already computes wants
 * from listings); we take its full announcements as before.
 *
 * What it buys. At rest a node costs its peers a keepalive of 70-80 bytes
 * a heartbeat, however many pages it holds: at 40,000 views a full
 * announcement is about 0.33 MB, and it went every timeout_ms / 3 before
 * (once a second before that). And every way a receiver can come to hold
 * other counts than ours is healed within two or three of our heartbeats
 * (2-3 s), where it waited for the next full announcement before (up to
 * timeout_ms / 3, 5 s by default): a change lost on its way or overtaken
 * and dropped; a receiver that restarted, or that expired us while we
 * still heard it (one direction of a path lost for a while: then it does
 * not hear us anew, and we owe it nothing we know of). The older ways
 * stay for a node that sends no entry of its own (the version before) and
 * for a node first heard: heard anew (first heard, a new incarnation,
 * alive again after it expired; plugin.c's on_presence) or restarted with
 * its state (on_stats), it is owed our pages at once. A node that has sent
 * its entry is listed (tier_hub_says_alive): it is alive as its entries
 * say, and asks for what it lacks itself. What stays exact: a change goes
 * at once, and a receiver holds an origin's counts until a newer message
 * replaces them or the origin expires.
 *
 * What it costs: a receiver whose wants cannot reach us (one direction of
 * every path lost) keeps what it holds until they can, where a periodic
 * full announcement would have reached it; it hears from us, so its
 * counts are at worst those of a change ago. A digest that differs
 * because of a collision of presence_digest (64 bits) would hide a lost
 * change: at 2^-64 a comparison, not guarded. */

void tier_hub_owe_pages(struct tier_hub *h)
{
    h->all_pages_owed = true;
}

/* All our pages (held back in hd, to append the listing), or a keepalive. */
static uint32_t heartbeat_pages(struct tier_hub *h, struct tally_presence *pr, uint64_t incarnation,
                                uint64_t first_seq, size_t max_bytes, struct wire_buf *out,
                                struct held *hd)
{
    uint32_t sent = 0;
    if (!h->all_pages_owed) {
        /* What changed goes first, so that the digest of our own entry is
         * of counts the receivers have been sent. */
        if (pr->local_changed)
            sent = presence_announce_changes(pr, h->node_id, incarnation, first_seq, out, hd->emit,
                                             hd->ud);
        if (!pr->local_changed) {
            wire_presence_begin(&hd->last, h->node_id, incarnation, first_seq + sent, 1, 0, 0);
            return sent + 1;
        }
    }
    sent = presence_announce(pr, h->node_id, incarnation, first_seq, max_bytes, out, hold_part, hd);
    if (sent)
        h->all_pages_owed = false;
    return sent;
}

int tier_hub_heartbeat(struct tier_hub *h, struct tally_presence *pr, uint64_t incarnation,
                       uint64_t first_seq, uint64_t now_ms, uint64_t timeout_ms, size_t max_bytes,
                       struct wire_buf *out, tier_emit_fn *emit, void *ud, uint32_t *sent)
{
    struct held hd = {.emit = emit, .ud = ud};
    struct listing l = {.set.listing_stamp = first_seq};
    *sent = heartbeat_pages(h, pr, incarnation, first_seq, max_bytes, out, &hd);
    /* Our own entry names the part it rides: the last of our pages if it
     * fits there, else the first part of the listing alone. */
    struct wire_presence_edge own = {
        h->node_id, strlen(h->node_id), incarnation, first_seq + *sent - 1, pr->local_digest, 0};
    wire_presence_edge(&l.ent, &own);
    if (hd.last.len + 10 + CARRIED_MAX + l.ent.len > max_bytes)
        own.seq++;
    wbuf_reset(&l.ent);
    int rc = *sent ? listing_build(h, pr, &own, now_ms, timeout_ms, &l) : TALLY_E_NOMEM;
    /* The last part takes what fits, from our own entry on. */
    uint32_t i = 0;
    if (rc == TALLY_OK && hd.last.len + 10 + CARRIED_MAX + l.ends[0] <= max_bytes)
        listing_append(&l, &i, &hd.last, max_bytes);
    if (*sent)
        emit(&hd.last, ud);
    while (rc == TALLY_OK && i < l.n) {
        wire_presence_begin(out, h->node_id, incarnation, first_seq + (*sent)++, 1, 0, 0);
        listing_append(&l, &i, out, max_bytes);
        emit(out, ud);
    }
    if (rc == TALLY_OK && (hd.last.failed || out->failed))
        rc = TALLY_E_NOMEM;
    wbuf_free(&hd.last);
    wbuf_free(&l.ent);
    free(l.ends);
    return rc;
}

/* Whether wp is a relay of an edge of ours that we sent (its seq below our
 * next), back to us around a ring of hubs. Its entry of the edge is ours,
 * aged as it left: taken as news at its arrival, it put our last hearing
 * of the edge later by its time on the way (567 ms around a simulated ring
 * of 8 hubs), and kept a dead edge counted that much past peer_timeout_ms. */
static bool our_own_relay(struct tier_hub *h, const struct wire_presence *wp)
{
    char id[TALLY_NODE_ID_MAX + 1];
    memcpy(id, wp->origin, wp->origin_len);
    id[wp->origin_len] = '\0';
    const struct tier_child *ch = tier_hub_child(h, id);
    return ch && ch->incarnation == wp->incarnation && wp->seq < ch->relay_next;
}

/* ==== The carrier's keepalive, received ====
 *
 * hub->carries lists the edges that hub's listings last named as heard
 * lately (o->carrier is hub), each with the key of that entry. An entry
 * from its carrier of the same edge, or a newer one from another hub,
 * moves it; an entry of it unheard takes it off. */

static void carry_link(struct tally_origin *hub, struct tally_origin *o,
                       const struct wire_presence_edge *e, uint64_t stamp)
{
    if (o->carrier != hub) {
        carry_unlink(o);
        DL_APPEND2(hub->carries, o, carry_prev, carry_next);
        o->carrier = hub;
    }
    o->carry_key = presence_entry_key(e);
    o->carry_stamp = stamp;
}

static void carry_entry(struct tally_origin *hub, struct tally_origin *o,
                        const struct wire_presence_edge *e, bool stale,
                        const struct wire_presence *wp)
{
    bool replay = wp->listing_flags & WIRE_LISTING_CARRIER; /* as the replaying node held it */
    if (stale || (!replay && e->age_ms > wp->carried_age_ms)) {
        if (o->carrier == hub)
            carry_unlink(o);
        return;
    }
    carry_link(hub, o, e, replay ? 0 : wp->listing_stamp);
}

/* A child of ours that another hub's set holds, of another life or with a
 * relay newer than any of ours, has moved there: it leaves our set now,
 * not once we have not heard it for timeout_ms / 3, so that our set and
 * what the other hubs hold of it agree (its entry in our listings, out of
 * the set, takes it off at each of them, carry_entry). */
static void child_moved(struct tier_child *ch, const struct wire_presence_edge *e,
                        const struct wire_presence *wp)
{
    if (ch && ch->relay_next && e->age_ms <= wp->carried_age_ms &&
        (e->incarnation != ch->incarnation || e->seq >= ch->relay_next))
        ch->moved = true;
}

/* The listing's last part: the carried set held here is compared with the
 * hub's. The same: each of its edges is alive as of carried_age_ms ago, as
 * its entry would have said. Another: nothing is vouched for, and our next
 * heartbeat asks for the hub's full listing, which names every edge it
 * carries; once it has come whole, an edge of the set here that it did not
 * name is taken off. */
static void carried_check(struct tally_origin *hub, const struct wire_presence *wp, uint64_t now_ms)
{
    struct tally_origin *o, *tmp;
    uint64_t sum = 0;
    uint32_t n = 0;
    DL_FOREACH_SAFE2(hub->carries, o, tmp, carry_next)
    {
        if ((wp->listing_flags & WIRE_LISTING_FULL) && o->carry_stamp != wp->listing_stamp) {
            carry_unlink(o);
            continue;
        }
        sum += o->carry_key;
        n++;
    }
    hub->listing_wanted = sum != wp->carried_digest || n != wp->ncarried;
    if (hub->listing_wanted)
        return;
    uint64_t heard = now_ms > wp->carried_age_ms ? now_ms - wp->carried_age_ms : 0;
    DL_FOREACH2(hub->carries, o, carry_next)
    {
        if (heard > o->last_heard_ms)
            o->last_heard_ms = heard;
    }
}

/* A hub's heartbeat, new here: its edges are alive as of when it heard them,
 * and the edges it wants that we carry are relayed whole at our next tick. */
int tier_hub_heard(struct tier_hub *h, struct tally_presence *pr, const struct wire_presence *wp,
                   uint64_t now_ms)
{
    char id[TALLY_NODE_ID_MAX + 1];
    uint32_t nlisted = our_own_relay(h, wp) ? 0 : wp->nlisted;
    /* the hub whose carried set the listing shows, or the carrier a
     * replay names (not us: a life of ours before a restart) */
    struct tally_origin *hub = NULL;
    if (wp->has_carried) {
        bool replay = wp->listing_flags & WIRE_LISTING_CARRIER;
        size_t len = replay ? wp->carrier_len : wp->origin_len;
        memcpy(id, replay ? wp->carrier : wp->origin, len);
        id[len] = '\0';
        if (strcmp(id, h->node_id) != 0 && !(hub = presence_origin(pr, id)))
            return TALLY_E_NOMEM;
    }
    for (uint32_t i = 0; i < nlisted; i++) {
        const struct wire_presence_edge *e = &wp->listed[i];
        memcpy(id, e->id, e->len);
        id[e->len] = '\0';
        if (strcmp(id, h->node_id) == 0)
            continue;
        struct tally_origin *o = presence_origin(pr, id);
        if (!o)
            return TALLY_E_NOMEM;
        bool stale = o->listed && e->incarnation == o->listed_incarnation && e->seq < o->listed_seq;
        presence_origin_listed(o, e, now_ms);
        if (hub && o != hub)
            carry_entry(hub, o, e, stale, wp);
        if (hub && !(wp->listing_flags & WIRE_LISTING_CARRIER))
            child_moved(tier_hub_child(h, id), e, wp);
    }
    if (hub && (wp->listing_flags & WIRE_LISTING_LAST)) {
        carried_check(hub, wp, now_ms);
    }
    for (uint32_t i = 0; i < wp->nwants; i++) {
        memcpy(id, wp->wants[i].id, wp->wants[i].len);
        id[wp->wants[i].len] = '\0';
        struct tier_child *ch = tier_hub_child(h, id);
        if (ch)
            ch->relay_owed = true;
        else if (strcmp(id, h->node_id) == 0) {
            h->all_pages_owed = true; /* a node that lacks some of our counts */
            h->listing_owed = true;   /* or some of our edges */
        }
    }
    return TALLY_OK;
}

/* Whether a new PRESENCE from o tells that o is alive now: a node's own
 * does until its own entry has listed it ("the heartbeat's own entry"),
 * and then its entries tell, each as of the part it rides. One from an
 * edge's origin is a hub's relay of it, which a want or an echo
 * over a ring brings long after the edge was last heard: such an origin, one
 * a hub has listed or a child of ours, is alive as of when its hub last heard
 * it (the listings, or its UPs), or a dead edge's viewers stayed another
 * peer_timeout_ms at every hub. A relay ends with its carrier's entry
 * (relay_range), which tier_hub_heard then applies: the arrival's guess for
 * an origin not listed here yet gives way to the carrier's time. */
bool tier_hub_says_alive(struct tier_hub *h, const struct tally_origin *o)
{
    return !o->listed && !tier_hub_child(h, o->node_id);
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

size_t tier_hub_entries(const struct tier_hub *h)
{
    return HASH_COUNT(h->children) + HASH_COUNT(h->watches) + HASH_COUNT(h->page_totals);
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

int tier_child_set_conn(struct tier_child *ch, const char *conn)
{
    if (ch->conn && strcmp(ch->conn, conn) == 0)
        return TALLY_OK;
    char *copy = strdup(conn);
    if (!copy)
        return TALLY_E_NOMEM;
    free(ch->conn);
    ch->conn = copy;
    return TALLY_OK;
}

const char *tier_child_conn(const struct tier_child *ch)
{
    return ch->conn;
}

uint64_t tier_child_incarnation(const struct tier_child *ch)
{
    return ch->incarnation;
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

/* ==== The control API through the tree ====
 *
 * CONTROL, edge -> hub on $tally/up/<edge> (a request its client sent to the
 * edge's $CONTROL/tally/v1, which the edge has already allowed), and hub ->
 * edge on $tally/down/<edge> (the answer, in as many parts as max_bytes
 * needs):
 *     node id (the sender), request id, flags (TIER_CONTROL_*), part, parts,
 *     and the rest of the message: bytes of the JSON request or answer.
 * The hub runs the request as if it had been sent to it: a reset or delete
 * is then the cluster's, and a listing is the cluster's table, where the
 * edge holds only what its clients use. */

#define CONTROL_HEAD (4 + 1 + TALLY_NODE_ID_MAX + 8 + 1 + 5 + 5)

int tier_control_write(const struct tier_control *c, size_t max_bytes, struct wire_buf *out,
                       tier_emit_fn *emit, void *ud)
{
    size_t chunk = max_bytes > CONTROL_HEAD ? max_bytes - CONTROL_HEAD : 1;
    size_t parts = c->len ? (c->len + chunk - 1) / chunk : 1;
    if (parts > UINT32_MAX)
        return TALLY_E_TOO_LARGE;
    for (size_t i = 0; i < parts; i++) {
        size_t off = i * chunk, n = c->len - off < chunk ? c->len - off : chunk;
        wbuf_reset(out);
        write_header(out, WIRE_VERSION, WIRE_CONTROL);
        wbuf_str8(out, c->node, c->node_len);
        wbuf_u64(out, c->id);
        wbuf_u8(out, c->flags);
        wbuf_varint(out, i);
        wbuf_varint(out, parts);
        wbuf_bytes(out, c->data + off, n);
        if (out->failed)
            return TALLY_E_NOMEM;
        emit(out, ud);
    }
    return TALLY_OK;
}

int tier_control_read(const void *msg, size_t len, struct tier_control *out)
{
    struct wire_reader r;
    memset(out, 0, sizeof(*out));
    if (!read_header(&r, msg, len, WIRE_CONTROL))
        return TALLY_E_WIRE;
    out->node = wr_str8(&r, &out->node_len);
    out->id = wr_u64(&r);
    out->flags = wr_u8(&r);
    uint64_t part = wr_varint(&r), parts = wr_varint(&r);
    if (r.bad || node_id_check(out->node, out->node_len) != TALLY_OK || parts == 0 ||
        parts > UINT32_MAX || part >= parts ||
        (out->flags & ~(TIER_CONTROL_ADMIN | TIER_CONTROL_ANSWER)))
        return TALLY_E_WIRE;
    out->part = (uint32_t)part;
    out->parts = (uint32_t)parts;
    out->data = r.p;
    out->len = (size_t)(r.end - r.p);
    return TALLY_OK;
}
