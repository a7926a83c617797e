/*
 * sim.c - a discrete-event simulation of a tree of tally brokers, running the
 * plugin's own pure core: thousands of nodes in one process.
 *
 * What is real and what is simulated. Every node holds a real tally_table and
 * tally_presence; edges run tier.c's edge side, hubs its hub side and repl.c
 * among themselves; every message is the bytes those modules write (UP,
 * DOWN, SYNC, DIGEST, PRESENCE) and is decoded by them on arrival. What the
 * simulation stands in for is Mosquitto: the bridges (a message from one node
 * to a neighbour arrives after a delay, or is lost), the broker loop (a pass
 * every TICK_MS when idle, and one after each message a hub reads), and the
 * glue plugin.c has around these modules: when to call them, the flooding
 * of presence between hubs (apply if newer, send on to the other
 * neighbours), which is ten lines there too, and the replay of viewer
 * counts to a neighbour that restarted (presence_replay), in its steps.
 * With --groups, group.c too: GSUM messages between groups, flooded as
 * presence is (group_apply says whether one is new here), and scope.c's
 * viewer sums: the hub that speaks for a group (a region) sends its sums as
 * a PRESENCE stream of its own, and every hub takes or drops a PRESENCE by
 * its origin and the group and region of the hub that published it (which
 * plugin.c reads in its topic, and a message here carries, msg.pub).
 * The glue keeps plugin.c's cadences, which differ: a hub expires a silent origin at every loop
 * pass (expire_peers), but its records of its edges (tier_hub_expire) and its DOWNs at most once a
 * publish interval (hub_tick), so a message can land between the two (b38098a was such a gap). An
 * edge shows what plugin.c publishes: its own viewers plus its hub's origin, set at each DOWN and
 * expired once its hub is silent for peer_timeout_ms.
 *
 * The model of a deployment: H hubs in a ring with chords (each hub bridged to the hubs 1 and
 * sqrt(H) away on either side, so that one lost hub leaves the rest connected), or with --mesh
 * each hub bridged to every other (a few central brokers, as most deployments have them), E edges
 * per hub. Or with --groups G, groups of hubs (group.c): G groups of H/G consecutive hubs, each
 * a full mesh; hub j of group k bridged to hub j of group k + 1 (a ring of groups; with
 * --group-bridges B, only the first B hubs of each group), and from 9 groups on of group
 * k + sqrt(G) too. SYNC and DIGEST stay inside a group (plugin.c refuses another group's);
 * every bridge carries PRESENCE and GSUM, its group's sums as the hub that speaks for it sends
 * them (group_note of every counter off its dirty list, group_announce once a publish
 * interval), which hubs of the other groups hold as one slot per group. With --regions R too,
 * R regions of G/R consecutive groups (group.c, "Regions"): the groups of a region in a ring as
 * above, the regions in a ring (chords from 9 on) joined by the second hub of each region's
 * first group (one that never dies); GSUMs stay inside a region, RSUMs (a region's sums, the
 * speaker of each region's) cross every bridge. With --zones Z too, Z level-3 regions of R/Z
 * consecutive regions (group.c, "Regions of regions"; plugin_opt_region "r/z"): the regions of
 * each in a ring as above, the zones in a ring of their own joined the same way; RSUMs of
 * regions stay inside a zone, the zones' (rsum3) cross every bridge. With --worlds W too, W
 * level-4 units of Z/W consecutive zones ("r/z/w"), the zones of each in a ring, the worlds in a
 * ring of their own; a zone's RSUMs stay inside its world, the worlds' (rsum4) cross every
 * bridge. With --light N, the last
 * N hubs of each group are light (group.c, "Light hubs"): each holds its group's nodes' slots and
 * one rest slot a level, which its group's speaker keeps (group_rest), and the report gives their
 * figures apart; a reset (--reset) runs at a full hub. With --split, every hub of each group is a
 * split hub ("Split hubs"): the levels are given out among the hubs each hears (split_levels).
 * The report gives, beside each kind's mean, the most one node holds and moves. Each edge's bridge
 * lists two addresses: its home hub and the next one (of its group, with groups), and goes back to
 * its home once that is up again (Mosquitto's bridge with round_robin false). Each edge writes to
 * the counter every edge writes ("c0", a like button on the front page) and to one of K-1 others,
 * which it also watches; one viewer of "home" and two of one of P pages are connected to it.
 *
 * Faults: every message is lost with probability --loss and delayed by 1 to
 * --delay ms; --kill-hubs hubs die for good in the middle of the load,
 * --kill-edges edges too (they stop writing 3 s before, and die once a hub
 * not lost for good holds all they wrote: an edge that dies with unsent
 * increments loses them with its disk, as any node does, and so does one
 * whose increments only a hub lost for good held, and the truth here would
 * not know it; with a publish interval of a second and heavy loss, 3 s was
 * not always enough); --restart-hubs hubs die and
 * come back with their state 10 s later (their edges move away and back);
 * with groups, only hubs at an even place in their group with one after
 * them die, so that the next of each (its edges' backup) never does and
 * every group keeps a live hub;
 * --link-failures hub-to-hub links go down for 2 to 10 s each. --tier-bytes
 * cuts UP, DOWN and relays at that size (a few entries a part when small),
 * so that lost parts are part of the run. --freeze-edges edges stop (SIGSTOP)
 * once each during the load for peer_timeout_ms +- 2 s: they neither tick nor
 * read, what is sent to them waits, and their hub expires them, or is about
 * to, when they thaw. --publish-interval sets plugin_opt_publish_interval_ms
 * (hubs' DOWNs and record expiry, edges' UPs), which widens that gap;
 * --sums-interval plugin_opt_sums_interval_ms (how often a speaker sends
 * its group's and region's sums), --sums-budget plugin_opt_sums_budget
 * (records a second a hub takes of each level's sums; 0, no bound, by
 * default here, where the plugin's default is 1000).
 *
 * After the load stops and the faults heal, it waits until every hub and
 * every live edge shows the exact totals (every increment made, counted
 * once) and the exact viewer counts (every live edge's viewers, no dead
 * one's), and prints the convergence time, each kind of node's state and
 * traffic, and exits 0 only if everything converged (--check), no edge
 * showed a total go down, no hub counted a dead edge of its own group past
 * peer_timeout_ms (late_viewers_seen) and, with groups, none showed more
 * viewers than the live edges and those dead lately (far_viewers_seen).
 */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

#define TICK_MS 100
#define HEARTBEAT_MS 1000
#define DIGEST_MS 1000
#define PEER_TIMEOUT_MS 15000
#define RECONNECT_MS 1000
#define BACK_HOME_MS 5000
#define MAX_MESSAGE 65536
#define GROUP_REFRESH_MS (10 * DIGEST_MS) /* every counter's group sum again */

/* K_REPLAY: a PRESENCE replayed to a neighbour that restarted, on its own
 * topic (plugin.c's emit_replay), which that neighbour takes and does not
 * send on. K_GVIEWS, K_RVIEWS: a PRESENCE of a group's (region's) viewer
 * sums, on its own topic (scope.c). */
enum kind {
    K_UP,
    K_DOWN,
    K_SYNC,
    K_DIGEST,
    K_PRESENCE,
    K_REPLAY,
    K_GSUM,
    K_RSUM,
    K_GVIEWS,
    K_RVIEWS,
    K_ZSUM,   /* a zone's sums (--zones): an RSUM of level 3, on rsum3/ */
    K_ZVIEWS, /* a zone's viewer sums, on rviews3/ */
    K_WSUM,   /* a world's sums (--worlds): an RSUM of level 4, on rsum4/ */
    K_WVIEWS, /* a world's viewer sums, on rviews4/ */
    K__COUNT
};
static const char *kind_name[K__COUNT] = {"up",     "down",    "sync",  "digest", "presence",
                                          "replay", "gsum",    "rsum",  "gviews", "rviews",
                                          "rsum3",  "rviews3", "rsum4", "rviews4"};

static bool flooded(enum kind k)
{
    return k == K_PRESENCE || k == K_GVIEWS || k == K_RVIEWS || k == K_ZVIEWS || k == K_WVIEWS;
}

struct msg {
    uint32_t from, to;
    uint32_t pub; /* the hub that published it (a flood keeps it: its topic) */
    uint8_t kind;
    size_t len;
    uint8_t data[];
};

/* An event: a node's tick (m NULL) or a message's arrival. */
struct event {
    uint64_t at, order;
    uint32_t node;
    struct msg *m;
};

struct link {
    uint32_t to;
    uint64_t down_until;
    uint64_t last_at; /* the last arrival sent this way: a bridge is one TCP stream */
};

struct traffic {
    uint64_t msgs_in, bytes_in, msgs_out, bytes_out;
};

struct node {
    bool hub, alive;
    char id[16];
    struct tally_table t;
    struct tally_presence pr;
    struct traffic tr, at_load; /* at_load: tr as the load stopped */
    /* hub */
    struct tier_hub tier;
    struct repl repl;
    struct wire_sync_writer w;
    struct tally_group gr;                  /* its group (--groups), else off */
    struct tally_group rg;                  /* its region (--regions), else off */
    struct tally_group zg;                  /* its region's zone (--zones: level 3), else off */
    struct tally_group wg;                  /* its zone's world (--worlds: level 4), else off */
    struct scope_stream sc[TALLY_LEVELS];   /* its group's, region's, ... viewer sums */
    struct scope_stream *scs[TALLY_LEVELS]; /* (scope.c): each, or NULL */
    uint64_t scope_seq;                     /* plugin.c's wall clock for them */
    uint64_t last_group;                    /* its last GSUM: at most once a publish interval */
    uint64_t last_sums;                     /* ... and once a sums interval */
    uint64_t gsession;                      /* the session of its GSUMs: grows at every start */
    struct link *links;
    uint32_t nlinks;
    uint64_t last_digest, revive_at, started;
    uint64_t last_tier;   /* plugin.c's hub_tick: at most once a publish interval */
    uint64_t origins_due; /* no origin can expire before: skips expire_peers' scan */
    uint64_t presence_seq, last_heartbeat; /* its PRESENCE heartbeats */
    /* edge */
    struct tier_edge edge;
    uint32_t addr[2], at; /* bridge addresses; the connected one, or UINT32_MAX */
    uint64_t reconnect_at, on_backup_since, quiet_from, dies_at, died_at;
    uint64_t frozen_from, frozen_until; /* stopped (SIGSTOP) in [from, until) */
    struct tally_origin *hub_origin;    /* the others' viewers (plugin.c's HUB_ORIGIN) */
    uint64_t up_last_at, down_last_at;  /* as link.last_at, for its bridge */
    uint32_t own[2];                    /* the counters it writes */
    int64_t last_shown[2];              /* what it showed of them: never less later */
    bool reset_pending;                 /* --reset made: its totals may go down, once, to 0 */
    uint32_t page;                      /* its pages: "home" and page */
};

static struct {
    uint32_t hubs, edges_per_hub, counters, pages;
    uint64_t load_ms, max_ms, seed;
    double loss;
    uint32_t delay_ms, kill_hubs, kill_edges, restart_hubs, link_failures, freeze_edges;
    uint64_t publish_ms; /* plugin_opt_publish_interval_ms */
    uint64_t sums_ms;    /* plugin_opt_sums_interval_ms (0: publish_ms) */
    /* plugin_opt_sums_budget, a level (0: none, the default here; the
     * plugin's is group_sums_budget's) */
    uint64_t sums_budget;
    bool check, quiet, mesh;
    bool reset;             /* --reset: once exact, a hub resets every counter (resetCounter) */
    uint32_t groups;        /* --groups: that many groups of hubs / groups hubs each (0: none) */
    uint32_t group_bridges; /* --group-bridges: between two neighbouring groups (0: a hub each) */
    uint32_t regions;       /* --regions: that many regions of groups / regions groups each */
    uint32_t zones;         /* --zones: that many zones (level 3) of regions / zones each */
    uint32_t worlds;        /* --worlds: that many worlds (level 4) of zones / worlds each */
    uint32_t light;         /* --light: the last that many hubs of each group are light */
    bool split;             /* --split: every hub is a split hub (group.c, "Split hubs") */
    double rate;            /* increments a second per edge */
    size_t tier_bytes; /* UP, DOWN and relays are cut at this (the plugin's max_message_bytes) */
} opt = {.hubs = 40,
         .edges_per_hub = 50,
         .counters = 100,
         .pages = 20,
         .load_ms = 20000,
         .max_ms = 300000,
         .seed = 1,
         .delay_ms = 20,
         .publish_ms = TICK_MS,
         .rate = 2.0,
         .tier_bytes = MAX_MESSAGE};

static struct node *nodes;
static uint32_t nnodes;
static struct event *heap;
static size_t nheap, capheap;
static uint64_t now, order;
static uint64_t *truth; /* increments made, per counter */
static uint64_t rng_state;
static struct traffic by_kind[K__COUNT];
static struct traffic by_kind_at_load[K__COUNT]; /* by_kind as the load stopped */
static uint64_t steps_back; /* an edge showed a total below one it showed before */
static uint64_t reset_at;   /* when --reset made its reset (0: not yet) */
/* A live hub counted a dead edge's viewers past peer_timeout_ms after it died
 * (and a few ticks): seen at the once-a-second look of late_viewers_seen. */
static uint64_t late_viewers;
/* A hub showed more viewers than live edges and those dead lately have
 * (far_viewers_seen). */
static uint64_t far_viewers, far_late_ms;
static uint64_t repaired;     /* counters sent in repairs by hubs after a DIGEST */
static uint64_t repair_bytes; /* the SYNC bytes of those repairs */
static uint64_t replayed;     /* origins' counts sent to a neighbour that restarted */
/* Listing entries in the PRESENCE messages sent (every bridge a copy), and
 * in those of full listings (tier.c, "The carrier's keepalive"). */
static uint64_t listed_sent, listed_full_sent;
/* PRESENCE copies refused as another group's or region's (scope.c), and
 * the messages of groups' and regions' viewer sums sent (every bridge a copy) */
static uint64_t scope_refused, scope_msgs;

/* ==== Groups of hubs (--groups) ==== */

/* Hub h's group: groups of hubs / groups consecutive hubs (0 with none). */
static uint32_t group_of(uint32_t h)
{
    return opt.groups ? h / (opt.hubs / opt.groups) : 0;
}

/* Hub h's region: regions of groups / regions consecutive groups. */
/* A light hub (group.c, "Light hubs"): one of the last opt.light of its
 * group. */
static bool is_light(uint32_t h)
{
    uint32_t size = opt.groups ? opt.hubs / opt.groups : 0;
    return opt.light && h < opt.hubs && h % size >= size - opt.light;
}

static uint32_t region_of(uint32_t h)
{
    return opt.regions ? group_of(h) / (opt.groups / opt.regions) : 0;
}

/* The hub after h in its group, wrapping inside it (h + 1 with no groups):
 * an edge's backup, so that its failover list never leaves its group. */
static uint32_t next_in_group(uint32_t h)
{
    if (!opt.groups)
        return (h + 1) % opt.hubs;
    uint32_t size = opt.hubs / opt.groups, first = h - h % size;
    return first + (h - first + 1) % size;
}

/* The name of hub h's group, as plugin_opt_group would give it. */
static void group_name(uint32_t h, char out[16])
{
    snprintf(out, 16, "g%u", group_of(h));
}

/* Hub h's zone: zones of regions / zones consecutive regions. */
static uint32_t zone_of(uint32_t h)
{
    return opt.zones ? region_of(h) / (opt.regions / opt.zones) : 0;
}

/* Hub h's world: worlds of zones / worlds consecutive zones. */
static uint32_t world_of(uint32_t h)
{
    return opt.worlds ? zone_of(h) / (opt.zones / opt.worlds) : 0;
}

/* Hub h's region's name, "" with no regions, its zone's and its world's:
 * as plugin_opt_region would give them ("r1/z0/w0"). */
static void region_name(uint32_t h, char out[16], char zone[16], char world[16])
{
    out[0] = zone[0] = world[0] = '\0';
    if (opt.regions)
        snprintf(out, 16, "r%u", region_of(h));
    if (opt.zones)
        snprintf(zone, 16, "z%u", zone_of(h));
    if (opt.worlds)
        snprintf(world, 16, "w%u", world_of(h));
}

/* Hub n's unit of level k + 1 (0: its group, 1: its region, ...). */
static struct tally_group *unit_of(struct node *n, int k)
{
    struct tally_group *u[TALLY_LEVELS] = {&n->gr, &n->rg, &n->zg, &n->wg};
    return u[k];
}

/* The kinds of each level's sums and viewer sums (k: unit_of's). */
static const enum kind sums_kind[TALLY_LEVELS] = {K_GSUM, K_RSUM, K_ZSUM, K_WSUM};
static const enum kind views_kind[TALLY_LEVELS] = {K_GVIEWS, K_RVIEWS, K_ZVIEWS, K_WVIEWS};

/* Hub n's units' names, as its topics give them (scope.c). */
static void names_of(struct node *n, struct scope_name *out)
{
    const struct tally_group *units[TALLY_LEVELS];
    for (int k = 0; k < TALLY_LEVELS; k++)
        units[k] = unit_of(n, k);
    scope_name_of(units, out);
}

/* ==== Random numbers (xorshift64*, seeded: runs repeat exactly) ==== */

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static double rnd01(void)
{
    return (double)(rnd() >> 11) / 9007199254740992.0;
}

/* ==== The event queue (a binary heap by time, then order) ==== */

static bool before(const struct event *a, const struct event *b)
{
    return a->at < b->at || (a->at == b->at && a->order < b->order);
}

static void push(uint64_t at, uint32_t node, struct msg *m)
{
    if (nheap == capheap) {
        capheap = capheap ? capheap * 2 : 1024;
        heap = realloc(heap, capheap * sizeof(*heap));
        if (!heap)
            abort();
    }
    size_t i = nheap++;
    heap[i] = (struct event){at, order++, node, m};
    while (i && before(&heap[i], &heap[(i - 1) / 2])) {
        struct event tmp = heap[i];
        heap[i] = heap[(i - 1) / 2];
        heap[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
}

static struct event pop(void)
{
    struct event top = heap[0];
    heap[0] = heap[--nheap];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < nheap && before(&heap[l], &heap[m]))
            m = l;
        if (r < nheap && before(&heap[r], &heap[m]))
            m = r;
        if (m == i)
            break;
        struct event tmp = heap[i];
        heap[i] = heap[m];
        heap[m] = tmp;
        i = m;
    }
    return top;
}

/* ==== Sending ==== */

static struct link *link_to(struct node *n, uint32_t to)
{
    for (uint32_t i = 0; i < n->nlinks; i++)
        if (n->links[i].to == to)
            return &n->links[i];
    return NULL;
}

/* The bridge between two nodes carries messages now. */
static bool connected(uint32_t a, uint32_t b)
{
    struct node *na = &nodes[a], *nb = &nodes[b];
    if (!na->alive || !nb->alive)
        return false;
    if (!na->hub)
        return na->at == b;
    if (!nb->hub)
        return nb->at == a;
    struct link *l = link_to(na, b);
    return l && l->down_until <= now;
}

static uint64_t *last_at(uint32_t from, uint32_t to)
{
    if (!nodes[from].hub)
        return &nodes[from].up_last_at;
    if (!nodes[to].hub)
        return &nodes[to].down_last_at;
    return &link_to(&nodes[from], to)->last_at;
}

static void count_listing(const struct wire_buf *b)
{
    struct wire_presence wp;
    if (wire_decode_presence(b->data, b->len, &wp) != TALLY_OK)
        abort();
    listed_sent += wp.nlisted;
    if (wp.listing_flags & WIRE_LISTING_FULL)
        listed_full_sent += wp.nlisted;
    wire_presence_free(&wp);
}

/* While a hub floods a message on: who published it (UINT32_MAX: the sender). */
static uint32_t flood_pub = UINT32_MAX;

static void send(uint32_t from, uint32_t to, enum kind kind, const struct wire_buf *b)
{
    if (!connected(from, to))
        return;
    nodes[from].tr.msgs_out++;
    nodes[from].tr.bytes_out += b->len;
    by_kind[kind].msgs_out++;
    by_kind[kind].bytes_out += b->len;
    if (kind == K_PRESENCE)
        count_listing(b);
    if (rnd01() < opt.loss)
        return;
    struct msg *m = malloc(sizeof(*m) + b->len);
    if (!m)
        abort();
    *m = (struct msg){from, to, flood_pub == UINT32_MAX ? from : flood_pub, (uint8_t)kind, b->len};
    memcpy(m->data, b->data, b->len);
    /* Delayed, but in order: nothing overtakes on one bridge. */
    uint64_t at = now + 1 + rnd() % opt.delay_ms, *last = last_at(from, to);
    at = at > *last ? at : *last;
    *last = at;
    push(at, to, m);
}

/* A hub's publish under $tally/: every bridge carries it, but SYNC, DIGEST
 * and a node's own PRESENCE only those inside its group (the bridges between
 * groups carry $tally/v1/gsum/# and gviews/#, never sync/# or presence/#:
 * plugin.c refuses another group's), GSUM and a group's viewer sums only
 * those inside its region (between regions: rsum/# and rviews/#), and RSUM
 * and a region's viewer sums only those inside its zone (between zones:
 * rsum3/# and rviews3/#), and a zone's only those inside its world (between
 * worlds: rsum4/# and rviews4/#). */
static void broadcast(uint32_t from, enum kind kind, const struct wire_buf *b, uint32_t except)
{
    struct node *n = &nodes[from];
    bool in_group = kind == K_SYNC || kind == K_DIGEST || kind == K_PRESENCE,
         in_region = kind == K_GSUM || kind == K_GVIEWS,
         in_zone = kind == K_RSUM || kind == K_RVIEWS,
         in_world = kind == K_ZSUM || kind == K_ZVIEWS;
    for (uint32_t i = 0; i < n->nlinks; i++) {
        uint32_t to = n->links[i].to;
        if (to != except && !(in_group && group_of(to) != group_of(from)) &&
            !(in_region && region_of(to) != region_of(from)) &&
            !(in_zone && zone_of(to) != zone_of(from)) &&
            !(in_world && world_of(to) != world_of(from)))
            send(from, to, kind, b);
    }
}

static uint32_t sending_hub;

/* To every bridge, or (ctx: the neighbour's node + 1) to one, as plugin.c's
 * publish to a connection. */
static void send_sync(const struct wire_buf *msg, void *ctx)
{
    uintptr_t to = (uintptr_t)ctx;
    if (to) {
        send(sending_hub, (uint32_t)(to - 1), K_SYNC, msg);
        repair_bytes += msg->len;
    } else {
        broadcast(sending_hub, K_SYNC, msg, UINT32_MAX);
    }
}

/* SYNCs from hub to all its neighbours, or to neighbour `to` alone (a
 * repair to its asker; UINT32_MAX: all). */
static struct repl_out repl_out(uint32_t hub, uint32_t to)
{
    sending_hub = hub;
    bool one = to != UINT32_MAX;
    return (struct repl_out){nodes[hub].id, MAX_MESSAGE, send_sync,
                             one ? (void *)(uintptr_t)(to + 1) : NULL, one};
}

/* ==== Hubs ==== */

static uint16_t neighbour(struct node *n, uint32_t from)
{
    uint16_t k;
    if (repl_neighbour(&n->repl, nodes[from].id, &k) != TALLY_OK)
        abort();
    return k;
}

static void replay_to(struct node *n, uint16_t k, enum repl_anew anew);

static void hub_on_sync(struct node *n, const struct msg *m)
{
    struct wire_sync s;
    if (wire_decode_sync(m->data, m->len, &s) != TALLY_OK)
        abort();
    uint16_t k = neighbour(n, m->from);
    repl_heard(&n->repl, k, now);
    if (repl_apply_sync(&n->repl, &n->t, NULL, &s, k) != TALLY_OK)
        abort();
    wire_sync_free(&s);
    replay_to(n, k, REPL_ANEW_NO);
}

static void hub_on_digest(struct node *n, const struct msg *m)
{
    static struct wire_digest d;
    uint64_t dump[TALLY_BUCKETS / 64];
    if (wire_decode_digest(m->data, m->len, &d) != TALLY_OK)
        abort();
    uint16_t k = neighbour(n, m->from);
    repl_heard(&n->repl, k, now);
    struct repl_span span;
    if (repl_digest_seen(&n->repl, k, &d, n->t.digest, n->id, dump, &span)) {
        struct repl_out out = repl_out((uint32_t)(n - nodes), m->from);
        repaired += repl_send_buckets(&n->repl, &n->t, &n->w, &out, dump, &span);
    }
    replay_to(n, k, REPL_ANEW_NO);
}

static void origin_due(struct node *n, const struct tally_origin *o)
{
    if (o->alive && o->last_heard_ms + PEER_TIMEOUT_MS < n->origins_due)
        n->origins_due = o->last_heard_ms + PEER_TIMEOUT_MS;
}

/* As plugin.c's on_presence: presence_apply, and send it on if it was taken. */
static void hub_on_presence(struct node *n, const struct msg *m)
{
    struct wire_presence wp;
    if (wire_decode_presence(m->data, m->len, &wp) != TALLY_OK)
        abort();
    char origin[TALLY_NODE_ID_MAX + 1];
    memcpy(origin, wp.origin, wp.origin_len);
    origin[wp.origin_len] = '\0';
    if (strcmp(origin, n->id) == 0) { /* our own, back through a ring: plugin.c's is_self */
        wire_presence_free(&wp);
        return;
    }
    /* plugin.c's scope_counts: another group's or region's stream, or our own
     * group's (region's) sums, sent on and not counted */
    struct scope_name ours, pub, sn;
    names_of(n, &ours);
    names_of(&nodes[m->pub], &pub);
    scope_of_origin(&pub, m->kind == K_REPLAY ? wp.origin : "",
                    m->kind == K_REPLAY ? wp.origin_len : 0, &sn);
    enum scope_take st = scope_take(&ours, wp.origin, wp.origin_len, &sn);
    static const char *topic[K__COUNT] = {
        [K_PRESENCE] = "presence/", [K_REPLAY] = "replay/",  [K_GVIEWS] = "gviews/",
        [K_RVIEWS] = "rviews/",     [K_ZVIEWS] = "rviews3/", [K_WVIEWS] = "rviews4/"};
    if (!scope_topic_fits(topic[m->kind], wp.origin, wp.origin_len))
        abort(); /* the simulator sends each on its own topic */
    /* plugin.c's on_presence: a sum's flood goes on to other groups, a
     * node's own counts stay in its group (repl.c, rules 2a and 2b) */
    const char *conn = nodes[m->from].id;
    bool sums =
        m->kind == K_GVIEWS || m->kind == K_RVIEWS || m->kind == K_ZVIEWS || m->kind == K_WVIEWS;
    if (sums)
        repl_outer_heard(&n->repl, conn, now);
    bool flood_on =
        flooded(m->kind) && repl_flood_on(&n->repl, conn, now, sums ? group_outer_ms(&n->gr) : 0);
    if (st != SCOPE_TAKE) {
        if (st == SCOPE_PASS && scope_pass(n->scs, &n->pr, &wp) && flood_on) {
            struct wire_buf b = {.data = (uint8_t *)m->data, .len = m->len};
            flood_pub = m->pub;
            broadcast((uint32_t)(n - nodes), m->kind, &b, m->from);
            flood_pub = UINT32_MAX;
        }
        if (st == SCOPE_REFUSE)
            scope_refused++;
        wire_presence_free(&wp);
        return;
    }
    struct tally_origin *o = presence_origin(&n->pr, origin);
    enum repl_anew how = repl_anew_of(o, wp.incarnation);
    bool taken, anew = how != REPL_ANEW_NO;
    int k = repl_find(&n->repl, nodes[m->from].id, wp.origin, wp.origin_len);
    if (k >= 0) /* its own heartbeat, straight over its link: as plugin.c's take_presence */
        repl_heard(&n->repl, (uint16_t)k, now);
    if (presence_apply(&n->pr, o, &wp, &taken) != TALLY_OK)
        abort();
    if (taken && tier_hub_says_alive(&n->tier, o)) {
        o->last_heard_ms = now;
        if (anew)
            tier_hub_owe_pages(&n->tier); /* its next heartbeat has all its pages */
    }
    if (taken) {
        struct wire_buf b = {.data = (uint8_t *)m->data, .len = m->len};
        if (flood_on) { /* a replay is not sent on (plugin.c's on_replay) */
            flood_pub = m->pub;
            broadcast((uint32_t)(n - nodes), m->kind, &b, m->from);
            flood_pub = UINT32_MAX;
        }
        if (tier_hub_heard(&n->tier, &n->pr, &wp, now) != TALLY_OK)
            abort();
        scope_wants(n->scs, &n->pr, &wp);
        if (anew && k >= 0)
            replay_to(n, (uint16_t)k, how);
        /* a node heard anew may lack our group's sums: plugin.c's
         * take_presence has our next refresh come soon */
        if (anew && group_on(&n->gr))
            group_refresh_now(&n->gr);
    }
    /* An edge's origin is alive as of when its hub last heard it: made or
     * revived here, it may be due before the next scan (hub_expire_origins). */
    origin_due(n, o);
    for (uint32_t i = 0; i < wp.nlisted; i++) {
        memcpy(origin, wp.listed[i].id, wp.listed[i].len);
        origin[wp.listed[i].len] = '\0';
        struct tally_origin *l = NULL;
        HASH_FIND_STR(n->pr.origins, origin, l);
        if (l)
            origin_due(n, l);
    }
    wire_presence_free(&wp);
}

/* As plugin.c's on_gsum: another group's sums taken (group_apply), and the
 * message flooded on to every other bridge when it was new here and a
 * neighbour may lack it (repl.c, rule 2b), as PRESENCE is; one seen before
 * is dropped. */
static void hub_on_sums(struct node *n, const struct msg *m)
{
    bool fresh;
    int k = 0;
    while (sums_kind[k] != m->kind)
        k++;
    struct tally_group *gr = unit_of(n, k);
    repl_outer_heard(&n->repl, nodes[m->from].id, now);
    if (group_apply(gr, &n->t, NULL, n->id, m->data, m->len, &fresh) != TALLY_OK)
        abort();
    if (fresh && repl_flood_on(&n->repl, nodes[m->from].id, now, group_outer_ms(&n->gr))) {
        struct wire_buf b = {.data = (uint8_t *)m->data, .len = m->len};
        broadcast((uint32_t)(n - nodes), m->kind, &b, m->from);
    }
}

/* Where a tier message's parts go: (from, to), or to every hub but from. */
struct route {
    uint32_t from, to;
    enum kind kind;
};

/* Where a hub's sums go (ud: a struct route): to every bridge. */
static void emit_sums(const struct wire_buf *msg, void *ud)
{
    const struct route *r = ud;
    broadcast(r->from, r->kind, msg, UINT32_MAX);
}

/* As plugin.c's publish_due and its GSUM, once a publish interval: every
 * counter off the dirty list (outputs, here none) noted for our group's
 * sums (group_note), then the sums that rose, and the refresh's share,
 * to every bridge. */
static void hub_scope_tick(struct node *n);

/* plugin.c's split_levels: the levels a split hub holds, among the hubs of
 * its group it hears. */
static void split_levels(struct node *n)
{
    static const char *ids[REPL_MAX_NEIGHBOURS];
    struct tally_group *units[TALLY_LEVELS];
    if (!n->t.split || now - n->started < 2 * n->gr.quiet_ms)
        return;
    for (int k = 0; k < TALLY_LEVELS; k++)
        units[k] = unit_of(n, k);
    uint32_t alive = repl_alive(&n->repl, ids, REPL_MAX_NEIGHBOURS);
    if (group_split_levels(&n->t, units, n->id, ids, alive))
        n->gr.took_over = true;
}

static void hub_group_tick(uint32_t i)
{
    struct node *n = &nodes[i];
    if (!group_on(&n->gr) || now - n->last_group < opt.publish_ms)
        return;
    n->last_group = now;
    split_levels(n);
    for (struct tally_counter *c; (c = n->t.dirty_head);) {
        if (((n->t.split || !n->gr.quiet) && group_rest(&n->t, NULL, c) != TALLY_OK) ||
            !table_pop_dirty(&n->t))
            abort();
        for (int k = 0; k < TALLY_LEVELS; k++)
            if (group_on(unit_of(n, k)) && group_note(unit_of(n, k), &n->t, c) != TALLY_OK)
                abort();
    }
    struct wire_buf b = {0};
    if (now - n->last_sums >= group_sums_every(&n->gr, opt.sums_ms, opt.publish_ms)) {
        for (int k = 0; k < TALLY_LEVELS; k++) {
            struct route r = {i, UINT32_MAX, sums_kind[k]};
            if (group_on(unit_of(n, k)))
                group_announce(unit_of(n, k), &n->t, n->id, now, MAX_MESSAGE, 1000, &b, emit_sums,
                               &r);
            /* plugin.c's rest_all, after our group's */
            for (struct tally_counter *c = n->t.counters; !k && n->gr.took_over && c;
                 c = c->hh.next)
                if (group_rest(&n->t, NULL, c) != TALLY_OK)
                    abort();
            n->gr.took_over = false;
        }
        n->last_sums = now;
    }
    wbuf_free(&b);
    hub_scope_tick(n);
}

static void route_part(const struct wire_buf *msg, void *ud)
{
    const struct route *r = ud;
    if (msg->len > opt.tier_bytes)
        abort();
    if (flooded(r->kind) && r->to == UINT32_MAX)
        broadcast(r->from, r->kind, msg, UINT32_MAX);
    else
        send(r->from, r->to, r->kind, msg);
}

/* As plugin.c's replay_begin: a neighbour that restarted (a new SYNC stream,
 * or its own PRESENCE of a new incarnation straight from it) is owed the
 * viewer counts held here as their listings say (presence.c, "Replay to a
 * neighbour that restarted"; repl_replay_due decides). hub_replay_tick
 * sends it. */
static void replay_to(struct node *n, uint16_t k, enum repl_anew anew)
{
    repl_replay_due(&n->repl, k, anew, now, PEER_TIMEOUT_MS, n->started);
}

/* As plugin.c's replay_tick: REPLAY_STEP origins a neighbour a loop pass. */
#define REPLAY_STEP 1000

static void hub_replay_tick(struct node *n)
{
    struct wire_buf b = {0};
    for (uint32_t k = 0; k < n->repl.n; k++) {
        struct repl_neighbour *nb = n->repl.nb[k];
        if (!nb->replaying)
            continue;
        /* a neighbour is a hub, its connection named by its id, h<i> */
        struct route r = {(uint32_t)(n - nodes), (uint32_t)atoi(nb->conn + 1), K_REPLAY};
        replayed += presence_replay(&n->pr, n->id, nb->node, now, PEER_TIMEOUT_MS, opt.tier_bytes,
                                    &nb->replay_from, REPLAY_STEP, &b, route_part, &r);
        nb->replaying = nb->replay_from != UINT32_MAX;
    }
    wbuf_free(&b);
}

static void hub_relay(struct node *n, struct tier_child *ch)
{
    struct wire_buf b = {0};
    struct route r = {(uint32_t)(n - nodes), UINT32_MAX, K_PRESENCE};
    if (tier_hub_relay(ch, &n->pr, opt.tier_bytes, now, &b, route_part, &r) != TALLY_OK)
        abort();
    wbuf_free(&b);
}

static void scope_part(const struct wire_buf *msg, void *ud)
{
    scope_msgs++;
    route_part(msg, ud);
}

/* As plugin.c's scope_send: our group's (region's) viewer sums. */
static void scope_send(struct node *n, struct scope_stream *sc, bool changes)
{
    struct wire_buf b = {0};
    struct route r = {(uint32_t)(n - nodes), UINT32_MAX, views_kind[sc->level - 1]};
    if (scope_announce(sc, changes, now * 1000, now, PEER_TIMEOUT_MS, opt.tier_bytes, &b,
                       scope_part, &r) != TALLY_OK)
        abort();
    wbuf_free(&b);
}

/* As plugin.c's scope_tick, after the sums. */
static void hub_scope_tick(struct node *n)
{
    for (int k = 0; k < TALLY_LEVELS; k++)
        if (n->scs[k] && scope_follow(n->scs[k], &n->pr, !unit_of(n, k)->quiet) != TALLY_OK)
            abort();
    presence_scope_taken(&n->pr);
    for (int k = 0; k < TALLY_LEVELS; k++)
        if (n->scs[k] && scope_due(n->scs[k]))
            scope_send(n, n->scs[k], true);
}

/* As plugin.c's announce_presence: the hub's own viewers (none here), its
 * own entry and the listing of its edges, every HEARTBEAT_MS; and the
 * viewer sums we speak for. */
static void hub_heartbeat(struct node *n)
{
    struct wire_buf b = {0};
    struct route r = {(uint32_t)(n - nodes), UINT32_MAX, K_PRESENCE};
    uint32_t sent;
    if (tier_hub_heartbeat(&n->tier, &n->pr, 1, n->presence_seq + 1, now, PEER_TIMEOUT_MS,
                           opt.tier_bytes, &b, route_part, &r, &sent) != TALLY_OK)
        abort();
    n->presence_seq += sent;
    n->last_heartbeat = now;
    wbuf_free(&b);
    for (int k = 0; k < TALLY_LEVELS; k++)
        if (n->scs[k] && n->scs[k]->speaking)
            scope_send(n, n->scs[k], false);
}

static void hub_on_up(struct node *n, const struct msg *m)
{
    struct tier_child *ch;
    if (tier_hub_apply_up(&n->tier, &n->t, &n->pr, m->data, m->len, now, &ch) != TALLY_OK)
        abort();
    /* Its viewers go to the other hubs under its own origin and seq when
     * they change; the hub's heartbeat keeps it alive there. */
    hub_relay(n, ch);
}

/* As plugin.c's expire_peers, at every loop pass: silent origins. Their
 * last hearing only moves on, so none expires before the earliest deadline
 * the last scan saw, or that of one made or revived since (origin_due). */
static void hub_expire_origins(struct node *n)
{
    if (now <= n->origins_due)
        return;
    n->origins_due = now + PEER_TIMEOUT_MS;
    for (struct tally_origin *o = n->pr.origins; o; o = o->hh.next) {
        if (!o->alive)
            continue;
        if (now - o->last_heard_ms > PEER_TIMEOUT_MS)
            presence_origin_expire(&n->pr, o);
        else if (o->last_heard_ms + PEER_TIMEOUT_MS < n->origins_due)
            n->origins_due = o->last_heard_ms + PEER_TIMEOUT_MS;
    }
}

/* As plugin.c's hub_tick, at most once a publish interval: silent children
 * forgotten, then the relays hubs want and the DOWNs. */
static void hub_tier_tick(uint32_t i)
{
    struct node *n = &nodes[i];
    if (now - n->last_tier < opt.publish_ms)
        return;
    n->last_tier = now;
    struct wire_buf b = {0};
    tier_hub_expire(&n->tier, now, PEER_TIMEOUT_MS);
    tier_hub_tick(&n->tier);
    for (struct tier_child *ch = NULL; (ch = tier_hub_next(&n->tier, ch));) {
        uint32_t e = opt.hubs + (uint32_t)atoi(tier_child_id(ch) + 1);
        hub_relay(n, ch); /* one a hub wants */
        struct route r = {i, e, K_DOWN};
        if (tier_hub_down(&n->tier, &n->t, &n->pr, ch, now, HEARTBEAT_MS, opt.tier_bytes, &b,
                          route_part, &r) != TALLY_OK)
            abort();
    }
    wbuf_free(&b);
}

/* What plugin.c's on_tick does at a hub on each loop pass, in its order. */
static void hub_pass(uint32_t i)
{
    struct node *n = &nodes[i];
    hub_expire_origins(n);
    if (now - n->last_heartbeat >= HEARTBEAT_MS)
        hub_heartbeat(n);
    hub_tier_tick(i);
    hub_group_tick(i);
}

/* A loop pass on the idle timer: replication, then what every pass does. */
static void hub_tick(uint32_t i)
{
    struct node *n = &nodes[i];
    static struct wire_digest d;
    struct wire_buf b = {0};
    struct repl_out out = repl_out(i, UINT32_MAX);
    repl_send_deltas(&n->repl, &n->t, &n->w, &out, 100000);
    repl_hearing(&n->repl, now, 3 * HEARTBEAT_MS);
    if (repl_wants_repair(&n->repl) || now - n->last_digest >= DIGEST_MS) {
        repl_digest(&n->repl, &d, n->id, n->t.digest);
        wire_encode_digest(&b, &d);
        broadcast(i, K_DIGEST, &b, UINT32_MAX);
        n->last_digest = now;
    }
    wbuf_free(&b);
    hub_replay_tick(n);
    hub_pass(i);
}

static void hub_start(uint32_t i)
{
    struct node *n = &nodes[i];
    n->alive = true;
    n->started = now;
    for (int l = 1; l <= TALLY_LEVELS; l++) /* as a plugin that starts, from its state_dir */
        if (n->t.holds & (1u << l))
            group_drop_level(&n->t, l);
    n->t.holds = 0; /* it holds no level yet */
    n->last_tier = 0;
    n->origins_due = 0;
    tier_hub_init(&n->tier, n->id, (rnd() << 16) | 1);
    repl_init(&n->repl, rnd() | 1);
    presence_init(&n->pr, 1000000);
    if (opt.groups) {
        /* plugin.c's session of its GSUMs: its incarnation, later than
         * every earlier life's (a receiver drops an earlier life's) */
        char name[16], region[16], zone[16], world[16];
        group_name(i, name);
        region_name(i, region, zone, world);
        n->gsession = tally_incarnation_new(now + 1, i, n->gsession);
        n->last_group = n->last_sums = 0;
        group_init(&n->gr, name, n->gsession, GROUP_REFRESH_MS);
        group_scope(&n->gr, 1, region);
        group_init(&n->rg, region, n->gsession, GROUP_REFRESH_MS);
        group_scope(&n->rg, 2, zone);
        group_init(&n->zg, zone, n->gsession, GROUP_REFRESH_MS);
        group_scope(&n->zg, 3, world);
        group_init(&n->wg, world, n->gsession, GROUP_REFRESH_MS);
        group_scope(&n->wg, 4, NULL);
        n->gr.sums_budget = n->rg.sums_budget = opt.sums_budget;
        n->zg.sums_budget = n->wg.sums_budget = opt.sums_budget;
        snprintf(n->tier.group, sizeof(n->tier.group), "%s", name); /* its DOWNs name it */
        n->pr.scope_levels = (uint8_t)(opt.worlds ? 4 : opt.zones ? 3 : opt.regions ? 2 : 1);
        for (int k = 0; k < TALLY_LEVELS; k++) {
            n->scs[k] = NULL;
            if (group_on(unit_of(n, k)))
                scope_init(n->scs[k] = &n->sc[k], unit_of(n, k), &n->pr);
            if (group_bind(unit_of(n, k), &n->t) != TALLY_OK)
                abort();
        }
        /* what it held at its stop is loaded dirty, and its first flush
         * notes it (plugin.c's start) */
        for (struct tally_counter *c = n->t.counters; c; c = c->hh.next) {
            if (group_rest(&n->t, NULL, c) != TALLY_OK)
                abort();
            for (int k = 0; k < TALLY_LEVELS; k++)
                if (group_on(unit_of(n, k)) && group_note(unit_of(n, k), &n->t, c) != TALLY_OK)
                    abort();
        }
    }
}

static void hub_stop(struct node *n)
{
    n->alive = false;
    group_free(&n->gr);
    group_free(&n->rg);
    group_free(&n->zg);
    group_free(&n->wg);
    for (int k = 0; k < TALLY_LEVELS; k++) {
        if (n->scs[k])
            scope_free(n->scs[k]);
        n->scs[k] = NULL;
    }
    tier_hub_free(&n->tier);
    repl_free(&n->repl);
    presence_free(&n->pr);
}

/* ==== Edges ==== */

static void name_of(uint32_t k, char *out, size_t *len)
{
    *len = (size_t)snprintf(out, 16, "c%u", k);
}

static void edge_increment(struct node *n)
{
    uint32_t k = n->own[rnd() % 2];
    char name[16];
    size_t len;
    name_of(k, name, &len);
    struct tally_counter *c;
    uint32_t self;
    bool changed;
    if (table_get(&n->t, name, len, TABLE_LOCAL, &c) != TALLY_OK ||
        table_replica(&n->t, n->id, strlen(n->id), n->edge.incarnation, &self) != TALLY_OK ||
        table_add(&n->t, c, self, 1, &changed) != TALLY_OK ||
        tier_edge_wrote(&n->edge, name, len) != TALLY_OK)
        abort();
    truth[k]++;
}

/* The bridge: reconnects to its first live address, and goes home. */
static void edge_bridge(struct node *n)
{
    if (n->at != UINT32_MAX && !nodes[n->at].alive) {
        n->at = UINT32_MAX;
        n->reconnect_at = now + RECONNECT_MS;
    }
    if (n->at == n->addr[1] && nodes[n->addr[0]].alive && now - n->on_backup_since >= BACK_HOME_MS)
        n->at = n->addr[0];
    if (n->at == UINT32_MAX && now >= n->reconnect_at) {
        for (int a = 0; a < 2 && n->at == UINT32_MAX; a++)
            if (nodes[n->addr[a]].alive)
                n->at = n->addr[a];
        if (n->at == n->addr[1])
            n->on_backup_since = now;
        n->reconnect_at = now + RECONNECT_MS;
    }
}

static int64_t shown_at(struct node *n, uint32_t k);

/* Totals only grow here (increments of +1): what an edge shows must too,
 * but for the one step down to 0 that --reset makes. */
static void edge_no_step_back(struct node *n)
{
    if (n->reset_pending) {
        if (shown_at(n, n->own[0]) != 0 || shown_at(n, n->own[1]) != 0)
            return;
        n->reset_pending = false;
        n->last_shown[0] = n->last_shown[1] = 0;
    }
    for (int k = 0; k < 2; k++) {
        int64_t v = shown_at(n, n->own[k]);
        steps_back += v < n->last_shown[k];
        n->last_shown[k] = v;
    }
}

/* Whether hub holds the edge's slot of the counters it writes as it does. */
static bool holds(struct node *hub, struct node *n)
{
    for (int k = 0; k < 2; k++) {
        char name[16];
        size_t len;
        uint32_t mine, theirs;
        name_of(n->own[k], name, &len);
        const struct tally_counter *c = table_find(&n->t, name, len);
        const struct tally_counter *hc = table_find(&hub->t, name, len);
        if (!c)
            continue;
        if (!hc || table_replica(&n->t, n->id, strlen(n->id), n->edge.incarnation, &mine) ||
            table_replica(&hub->t, n->id, strlen(n->id), n->edge.incarnation, &theirs))
            return false;
        const struct tally_slot *a = counter_slot(c, mine), *b = counter_slot(hc, theirs);
        if (a && (!b || b->p < a->p))
            return false;
    }
    return true;
}

/* An edge lost for good dies only once a hub that is not lost for good
 * holds what it wrote (a hub that restarts keeps its table, its disk): its
 * own hub may be one that dies for good at the same moment, or one cut off
 * from every other hub until then, and what only the two held is lost in
 * such a double failure, as in any cluster, and the truth here would not
 * know it. */
static bool edge_settled(struct node *n)
{
    for (uint32_t h = 0; h < opt.hubs; h++)
        /* with groups, only its own group's hubs ever hold its slots */
        if (nodes[h].revive_at != UINT64_MAX && group_of(h) == group_of(n->addr[0]) &&
            holds(&nodes[h], n))
            return true;
    return false;
}

#define HUB_ORIGIN "(hub)" /* as plugin.c's: the others' viewers at an edge */

static void edge_page_others(const char *page, size_t len, uint64_t others, void *ud)
{
    if (presence_origin_set(&((struct node *)ud)->pr, ((struct node *)ud)->hub_origin, page, len,
                            others) != TALLY_OK)
        abort();
}

/* As plugin.c's on_down: the others' viewers of every page the edge
 * follows, as the origin HUB_ORIGIN, heard now. */
static void edge_on_down(struct node *n, const struct msg *m)
{
    if (tier_edge_apply_down(&n->edge, m->data, m->len, NULL, NULL) != TALLY_OK)
        abort();
    n->hub_origin->last_heard_ms = now;
    presence_origin_begin(&n->pr, n->hub_origin, 0, UINT64_MAX);
    tier_edge_each_page(&n->edge, edge_page_others, n);
}

static void edge_tick(uint32_t i)
{
    struct node *n = &nodes[i];
    if (n->dies_at && now >= n->dies_at && edge_settled(n)) {
        n->alive = false;
        n->died_at = now;
        return;
    }
    if (now >= n->frozen_from && now < n->frozen_until)
        return;
    /* plugin.c's expire_peers at an edge: its hub silent for peer_timeout_ms */
    if (n->hub_origin->alive && now - n->hub_origin->last_heard_ms > PEER_TIMEOUT_MS)
        presence_origin_expire(&n->pr, n->hub_origin);
    edge_no_step_back(n);
    if (now < opt.load_ms && now < n->quiet_from && rnd01() < opt.rate * TICK_MS / 1000.0)
        edge_increment(n);
    edge_bridge(n);
    struct wire_buf b = {0};
    struct route r = {i, n->at, K_UP};
    if (n->at != UINT32_MAX &&
        tier_edge_up(&n->edge, &n->t, &n->pr, now, opt.publish_ms, HEARTBEAT_MS, opt.tier_bytes, &b,
                     route_part, &r) != TALLY_OK)
        abort();
    wbuf_free(&b);
}

static void edge_view(struct node *n, const char *client, const char *page)
{
    bool added;
    if (presence_view(&n->pr, client, page, strlen(page), &added) != TALLY_OK)
        abort();
}

static void edge_start(uint32_t i)
{
    struct node *n = &nodes[i];
    uint32_t e = i - opt.hubs, home = e / opt.edges_per_hub;
    n->alive = true;
    tier_edge_init(&n->edge, n->id, 1, now + 1);
    presence_init(&n->pr, 1000);
    n->hub_origin = presence_origin(&n->pr, HUB_ORIGIN);
    if (!n->hub_origin)
        abort();
    n->addr[0] = home;
    n->addr[1] = next_in_group(home);
    n->at = home;
    n->quiet_from = UINT64_MAX;
    n->frozen_from = n->frozen_until = UINT64_MAX;
    n->own[0] = 0;
    n->own[1] = 1 + e % (opt.counters - 1);
    n->page = e % opt.pages;
    char name[16], page[16];
    size_t len;
    for (int k = 0; k < 2; k++) {
        name_of(n->own[k], name, &len);
        if (tier_edge_watch(&n->edge, name, len, true) != TALLY_OK)
            abort();
    }
    snprintf(page, sizeof(page), "p%u", n->page);
    edge_view(n, "v1", "home");
    edge_view(n, "v2", page);
    edge_view(n, "v3", page);
    tier_edge_pages_changed(&n->edge);
}

/* ==== Setup and faults ==== */

static void add_link(uint32_t a, uint32_t b)
{
    if (a == b || link_to(&nodes[a], b))
        return;
    for (int side = 0; side < 2; side++) {
        struct node *n = &nodes[side ? b : a];
        n->links = realloc(n->links, (n->nlinks + 1) * sizeof(*n->links));
        if (!n->links)
            abort();
        n->links[n->nlinks++] = (struct link){.to = side ? a : b};
    }
}

/* Groups: a full mesh inside each, and hub j of group k bridged to hub j
 * of group k + 1 (a ring of groups, each pair of neighbouring groups joined
 * by a bridge per hub, or by the first --group-bridges hubs), and of group
 * k + sqrt(G) from 9 groups on (chords, as the ring of hubs has). */
static void build_groups(void)
{
    uint32_t size = opt.hubs / opt.groups, bridges = opt.group_bridges ? opt.group_bridges : size;
    uint32_t regions = opt.regions ? opt.regions : 1, per = opt.groups / regions;
    uint32_t zones = opt.zones ? opt.zones : 1, rper = regions / zones;
    uint32_t worlds = opt.worlds ? opt.worlds : 1, zper = zones / worlds;
    uint32_t chord = (uint32_t)sqrt((double)per), rchord = (uint32_t)sqrt((double)rper);
    uint32_t zchord = (uint32_t)sqrt((double)zper), wchord = (uint32_t)sqrt((double)worlds);
    for (uint32_t k = 0; k < opt.groups; k++)
        for (uint32_t a = 0; a < size; a++)
            for (uint32_t b = a + 1; b < size; b++)
                add_link(k * size + a, k * size + b);
    for (uint32_t k = 0; k < opt.groups && per > 1; k++) {
        uint32_t first = k - k % per, at = k % per; /* a ring of the groups of a region */
        for (uint32_t j = 0; j < bridges; j++) {
            add_link(k * size + j, (first + (at + 1) % per) * size + j);
            if (per >= 9)
                add_link(k * size + j, (first + (at + chord) % per) * size + j);
        }
    }
    /* regions: a ring of those of each zone (and chords from 9 on), the
     * second hub of each one's first group bridged to the next's (a hub
     * that never dies); zones: a ring of those of each world the same way,
     * by the second hub of each one's first group; worlds: a ring of them */
    for (uint32_t r = 0; r < regions && rper > 1; r++) {
        uint32_t first = r - r % rper, at = r % rper;
        add_link(r * per * size + 1, (first + (at + 1) % rper) * per * size + 1);
        if (rper >= 9)
            add_link(r * per * size + 1, (first + (at + rchord) % rper) * per * size + 1);
    }
    for (uint32_t z = 0, span = rper * per * size; z < zones && zper > 1; z++) {
        uint32_t first = z - z % zper, at = z % zper; /* a ring of the zones of a world */
        add_link(z * span + 1, (first + (at + 1) % zper) * span + 1);
        if (zper >= 9)
            add_link(z * span + 1, (first + (at + zchord) % zper) * span + 1);
    }
    for (uint32_t w = 0, span = zper * rper * per * size; w < worlds && worlds > 1; w++) {
        add_link(w * span + 1, (w + 1) % worlds * span + 1);
        if (worlds >= 9)
            add_link(w * span + 1, (w + wchord) % worlds * span + 1);
    }
}

static void build(void)
{
    nnodes = opt.hubs * (1 + opt.edges_per_hub);
    nodes = calloc(nnodes, sizeof(*nodes));
    truth = calloc(opt.counters, sizeof(*truth));
    if (!nodes || !truth)
        abort();
    for (uint32_t i = 0; i < nnodes; i++) {
        struct node *n = &nodes[i];
        n->hub = i < opt.hubs;
        snprintf(n->id, sizeof(n->id), n->hub ? "h%u" : "e%u", n->hub ? i : i - opt.hubs);
        table_init(&n->t, 1000000, 1000);
        table_set_clock(&n->t, 1);
        n->t.lean = n->hub && (opt.light || opt.split);
        n->t.split = n->hub && opt.split;
        n->t.light = is_light(i);
        if (n->hub)
            hub_start(i);
        else
            edge_start(i);
        push(rnd() % TICK_MS, i, NULL);
    }
    if (opt.groups) {
        build_groups();
        return;
    }
    for (uint32_t a = 0; a < opt.hubs && opt.mesh; a++)
        for (uint32_t b = a + 1; b < opt.hubs; b++)
            add_link(a, b);
    uint32_t chord = (uint32_t)sqrt((double)opt.hubs);
    for (uint32_t h = 0; h < opt.hubs && opt.hubs > 1 && !opt.mesh; h++) {
        add_link(h, (h + 1) % opt.hubs);
        if (chord > 1 && opt.hubs > 4)
            add_link(h, (h + chord) % opt.hubs);
    }
}

/* The hubs that may die with groups: those at an even place in their group
 * with one after them, spread over the groups. Their backups (the next of
 * their group) never die, so no group ever loses every hub. */
static uint32_t group_victim(uint32_t k, uint32_t victims)
{
    uint32_t size = opt.hubs / opt.groups, per = size / 2;
    uint32_t c = (uint32_t)((uint64_t)k * opt.groups * per / victims);
    return c / per * size + 2 * (c % per);
}

/* Distinct random hubs: killed ones are never a dead hub's backup. */
static void faults(void)
{
    uint64_t mid = opt.load_ms / 2;
    for (uint32_t k = 0; k < opt.kill_hubs + opt.restart_hubs; k++) {
        uint32_t h = (uint32_t)((2 * k * opt.hubs) / (2 * (opt.kill_hubs + opt.restart_hubs)));
        h = (h / 2) * 2; /* even: its backup, h + 1, stays */
        if (opt.groups)
            h = group_victim(k, opt.kill_hubs + opt.restart_hubs);
        struct node *n = &nodes[h];
        n->revive_at = k < opt.kill_hubs ? UINT64_MAX : mid + 10000;
        n->dies_at = mid;
    }
    for (uint32_t k = 0; k < opt.kill_edges; k++) {
        struct node *n = &nodes[opt.hubs + rnd() % (nnodes - opt.hubs)];
        n->quiet_from = mid - 3000;
        n->dies_at = mid;
    }
    /* Not one that dies: what it had not sent would be lost with it. */
    for (uint32_t k = 0, tries = 0; k < opt.freeze_edges && tries < 100 * opt.freeze_edges;
         tries++) {
        struct node *n = &nodes[opt.hubs + rnd() % (nnodes - opt.hubs)];
        if (n->dies_at)
            continue;
        k++;
        uint64_t last =
            opt.load_ms > PEER_TIMEOUT_MS + 4000 ? opt.load_ms - PEER_TIMEOUT_MS - 4000 : 0;
        n->frozen_from = 1000 + rnd() % (last + 1);
        n->frozen_until = n->frozen_from + PEER_TIMEOUT_MS - 2000 + rnd() % 4001;
    }
    for (uint32_t k = 0; k < opt.link_failures && opt.hubs > 1; k++) {
        struct node *n = &nodes[rnd() % opt.hubs];
        struct link *l = &n->links[rnd() % n->nlinks];
        uint64_t until = rnd() % opt.load_ms + 2000 + rnd() % 8000;
        l->down_until = until;
        link_to(&nodes[l->to], (uint32_t)(n - nodes))->down_until = until;
    }
}

static void hub_life(uint32_t i)
{
    struct node *n = &nodes[i];
    if (n->alive && n->dies_at && now >= n->dies_at) {
        hub_stop(n); /* its table stays: its disk */
        n->dies_at = 0;
    }
    if (!n->alive && n->revive_at != UINT64_MAX && now >= n->revive_at) {
        hub_start(i);
        n->revive_at = 0;
    }
}

/* ==== Convergence ==== */

static int64_t shown_at(struct node *n, uint32_t k)
{
    char name[16];
    size_t len;
    name_of(k, name, &len);
    if (n->hub) {
        struct tally_counter *c = table_find(&n->t, name, len);
        return c ? table_value(&n->t, c) : 0;
    }
    return tier_edge_value(&n->edge, &n->t, name, len);
}

static uint64_t viewers_truth(uint32_t page_or_home)
{
    uint64_t v = 0;
    for (uint32_t i = opt.hubs; i < nnodes; i++)
        if (nodes[i].alive)
            v += page_or_home == UINT32_MAX ? 1 : nodes[i].page == page_or_home ? 2 : 0;
    return v;
}

/* What a node publishes: at an edge, its own viewers and its hub's origin. */
static uint64_t viewers_at(struct node *n, const char *page)
{
    return presence_total(&n->pr, page, strlen(page));
}

/* Whether every live node shows the truth (of counters, or of viewers);
 * *wrong counts the nodes that do not. */
static bool exact(bool counters, uint32_t *wrong)
{
    uint64_t home = viewers_truth(UINT32_MAX);
    uint64_t *pages = calloc(opt.pages, sizeof(*pages));
    for (uint32_t p = 0; p < opt.pages; p++)
        pages[p] = viewers_truth(p);
    *wrong = 0;
    for (uint32_t i = 0; i < nnodes; i++) {
        struct node *n = &nodes[i];
        if (!n->alive)
            continue;
        bool ok = true;
        char page[16];
        if (counters && n->hub) {
            for (uint32_t k = 0; k < opt.counters && ok; k++)
                ok = shown_at(n, k) == (int64_t)truth[k];
        } else if (counters) {
            ok = shown_at(n, n->own[0]) == (int64_t)truth[n->own[0]] &&
                 shown_at(n, n->own[1]) == (int64_t)truth[n->own[1]];
        } else if (n->hub) {
            for (uint32_t p = 0; p < opt.pages && ok; p++) {
                snprintf(page, sizeof(page), "p%u", p);
                ok = viewers_at(n, page) == pages[p];
            }
        } else {
            snprintf(page, sizeof(page), "p%u", n->page);
            ok = viewers_at(n, page) == pages[n->page];
        }
        ok = ok && (counters || viewers_at(n, "home") == home);
        *wrong += !ok;
    }
    free(pages);
    return *wrong == 0;
}

/* The same through the other groups and regions, which count an edge in
 * its group's sums (scope.c). A hub cut off from a group keeps that group's
 * last sums until it hears it again, or for peer_timeout_ms; one that hears
 * its keepalives but holds other counts asks for them all every heartbeat,
 * and under run.sh's 20% loss a round trip (the want up through our group's
 * stream, the pages back, two bridges each way) fails more often than not:
 * seed 131 of the regions mix with --reset (2026-12-05) kept a dead edge in
 * a far group 20.5 s past peer_timeout_ms, the pages asked for lost five
 * times running and the wants between. So no hub may show more viewers of
 * "home" than the live edges and those dead within three peer_timeout_ms
 * (its carrier's, a cut's, a repair's: fifteen rounds in a row fail about
 * once in 2,000) and the time the sums take (a publish interval a level,
 * the bridges' delay on the way, FAR_HOPS of them at most as run.sh's trees
 * are laid out). A dead edge kept for good, or an edge counted twice, shows
 * here too, and at the end. How
 * late a dead edge left the other groups is measured, not checked: at
 * least now - peer_timeout_ms - the death of the k-th latest to die, for a
 * hub that shows k viewers too many (far_late_ms, the largest seen). */
#define FAR_HOPS 12

static int by_died_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void far_viewers_seen(void)
{
    uint64_t sums = 2 * TICK_MS +
                    2 * (opt.sums_ms > opt.publish_ms ? opt.sums_ms : opt.publish_ms) +
                    FAR_HOPS * opt.delay_ms;
    uint64_t live = 0, ndead = 0, within = 0;
    uint64_t *died = malloc(opt.hubs * opt.edges_per_hub * sizeof(*died) + 1);
    if (!died)
        abort();
    for (uint32_t i = opt.hubs; i < nnodes; i++) {
        if (nodes[i].alive) {
            live++;
        } else {
            died[ndead++] = nodes[i].died_at;
            within += now <= nodes[i].died_at + 3 * PEER_TIMEOUT_MS + sums;
        }
    }
    qsort(died, ndead, sizeof(*died), by_died_desc);
    for (uint32_t h = 0; h < opt.hubs; h++) {
        if (!nodes[h].alive)
            continue;
        uint64_t shown = viewers_at(&nodes[h], "home");
        if (shown > live && shown - live <= ndead) {
            uint64_t gone = died[shown - live - 1] + PEER_TIMEOUT_MS;
            if (now > gone && now - gone > far_late_ms)
                far_late_ms = now - gone;
        }
        if (shown > live + within && far_viewers++ < 3)
            fprintf(stderr,
                    "at %" PRIu64 " ms %s counts %" PRIu64 " viewers of home, at most %" PRIu64
                    "\n",
                    now, nodes[h].id, shown, live + within);
    }
    free(died);
}

/* Every live hub has expired each edge dead for peer_timeout_ms: its carrier
 * heard it last before it died, and every hub takes that time from the
 * listings (each relay carries its carrier's entry too, tier.c's relay_range),
 * not from a relay's arrival (tier_hub_says_alive). The slack is a
 * loop pass and the delay of a last UP. */
static void late_viewers_seen(void)
{
    for (uint32_t h = 0; h < opt.hubs; h++) {
        if (!nodes[h].alive)
            continue;
        for (const struct tally_origin *o = nodes[h].pr.origins; o; o = o->hh.next) {
            unsigned e;
            if (!o->alive || sscanf(o->node_id, "e%u", &e) != 1)
                continue;
            const struct node *n = &nodes[opt.hubs + e];
            if (!n->alive && now > n->died_at + PEER_TIMEOUT_MS + 2 * TICK_MS + opt.delay_ms) {
                if (late_viewers++ < 3)
                    fprintf(stderr,
                            "at %" PRIu64 " ms %s still counts %s, dead since %" PRIu64 "\n", now,
                            nodes[h].id, o->node_id, n->died_at);
            }
        }
    }
    if (opt.groups)
        far_viewers_seen();
}

/* ==== Report ==== */

struct figures {
    double msgs, bytes, slots, counters, entries;
    double load_msgs, load_bytes;       /* a second of the load alone, without the tail after it */
    double group_slots;                 /* of slots: other groups' replicas (--groups) */
    double most_slots, most_load_bytes; /* of the node that holds, or moves, the most */
    uint32_t n;
};

static void add_figures(struct figures *f, const struct node *n, double seconds)
{
    size_t slots = 0, counters = 0, group_slots = 0;
    for (const struct tally_counter *c = n->t.counters; c; c = c->hh.next) {
        slots += c->nslots;
        counters++;
        for (uint32_t k = 0; k < c->nslots && opt.groups; k++)
            group_slots += group_replica(&n->t, c->slots[k].replica);
    }
    f->group_slots += (double)group_slots;
    f->msgs += (double)(n->tr.msgs_in + n->tr.msgs_out) / seconds;
    f->bytes += (double)(n->tr.bytes_in + n->tr.bytes_out) / seconds;
    f->load_msgs += (double)(n->at_load.msgs_in + n->at_load.msgs_out) / seconds;
    f->load_bytes += (double)(n->at_load.bytes_in + n->at_load.bytes_out) / seconds;
    f->slots += (double)slots;
    f->most_slots = f->most_slots > (double)slots ? f->most_slots : (double)slots;
    double load_bytes = (double)(n->at_load.bytes_in + n->at_load.bytes_out) / seconds;
    f->most_load_bytes = f->most_load_bytes > load_bytes ? f->most_load_bytes : load_bytes;
    f->counters += (double)counters;
    f->entries += n->hub ? (double)(tier_hub_children(&n->tier) + HASH_COUNT(n->pr.origins))
                         : (double)tier_edge_entries(&n->edge);
    f->n++;
}

static void print_figures(const char *what, const struct figures *f)
{
    if (!f->n)
        return;
    printf("  %-5s x%-5u traffic in+out %9.1f msg/s %11.0f B/s   state: %8.0f counters "
           "%9.0f slots %7.0f children+origins (hub) / own+watched+pages (edge)\n",
           what, f->n, f->msgs / f->n, f->bytes / f->n, f->counters / f->n, f->slots / f->n,
           f->entries / f->n);
    printf("  %-5s        during the load %9.1f msg/s %11.0f B/s   (the line above: the whole run, "
           "the tail after the load too, over the load's seconds)\n",
           what, f->load_msgs / f->n, f->load_bytes / f->n);
    printf("  %-5s        the most of one: %9.0f slots, %11.0f B/s during the load\n", what,
           f->most_slots, f->most_load_bytes);
}

/* The live hubs' counters of sums of level k + 1 sent and taken, and
 * messages seen before. */
static void unit_figures(int k, uint64_t *announced, uint64_t *learned, uint64_t *stale)
{
    *announced = *learned = *stale = 0;
    for (uint32_t h = 0; h < opt.hubs; h++) {
        const struct tally_group *u = unit_of(&nodes[h], k);
        *announced += nodes[h].alive ? u->announced : 0;
        *learned += nodes[h].alive ? u->learned : 0;
        *stale += nodes[h].alive ? u->stale : 0;
    }
}

static void report(double load_seconds, const int64_t converged_ms[2], const uint32_t wrong[2])
{
    struct figures hubs = {0}, light = {0}, edges = {0};
    for (uint32_t i = 0; i < nnodes; i++)
        if (nodes[i].alive)
            add_figures(nodes[i].t.light ? &light
                        : nodes[i].hub   ? &hubs
                                         : &edges,
                        &nodes[i], load_seconds);
    uint64_t incs = 0;
    for (uint32_t k = 0; k < opt.counters; k++)
        incs += truth[k];
    printf("nodes %u (%u hubs x %u edges), %.0f s of load, %" PRIu64 " increments, loss %.3f, "
           "seed %" PRIu64 "\n",
           nnodes, opt.hubs, opt.edges_per_hub, load_seconds, incs, opt.loss, opt.seed);
    print_figures("hub", &hubs);
    print_figures("light", &light);
    if (opt.groups && hubs.n) {
        uint64_t announced, learned, stale;
        unit_figures(0, &announced, &learned, &stale);
        printf(
            "  groups: %u of %u hubs each; of a hub's slots %.0f are other groups' sums; live hubs "
            "announced %" PRIu64 " counters, learned %" PRIu64 ", dropped %" PRIu64
            " GSUMs seen before\n",
            opt.groups, opt.hubs / opt.groups, hubs.group_slots / hubs.n, announced, learned,
            stale);
        uint32_t speaking[TALLY_LEVELS] = {0};
        uint64_t echoed = 0, holes = 0, held = 0, wants = 0, resent = 0, calls = 0;
        for (uint32_t h = 0; h < opt.hubs; h++) {
            struct node *n = &nodes[h];
            for (int k = 0; k < TALLY_LEVELS && n->alive; k++) {
                const struct tally_group *u = unit_of(n, k);
                wants += u->wants;
                resent += u->resent;
                calls += u->calls;
                speaking[k] += group_on(u) && !u->quiet;
                echoed += u->echoed;
                holes += u->holes;
                held += u->budget_held;
            }
        }
        printf("  speaking at the end: %u for groups, %u for regions; live hubs echoed %" PRIu64
               " counters' sums, and saw %" PRIu64 " gaps in others' sums; the sums budget"
               " held sums back %" PRIu64 " times\n",
               speaking[0], speaking[1], echoed, holes, held);
        printf("  sums lost on the way: live hubs asked their neighbours %" PRIu64
               " times, sent %" PRIu64 " messages again, and called for %" PRIu64 " refreshes\n",
               wants, resent, calls);
        if (opt.regions) {
            unit_figures(1, &announced, &learned, &stale);
            printf("  regions: %u of %u groups each; live hubs announced %" PRIu64
                   " counters, learned %" PRIu64 ", dropped %" PRIu64 " RSUMs seen before\n",
                   opt.regions, opt.groups / opt.regions, announced, learned, stale);
        }
        /* levels 3 and 4: zones of regions, worlds of zones */
        static const char *const name[TALLY_LEVELS] = {"groups", "regions", "zones", "worlds"};
        const uint32_t count[TALLY_LEVELS] = {opt.groups, opt.regions, opt.zones, opt.worlds};
        for (int k = 2; k < TALLY_LEVELS && count[k]; k++) {
            unit_figures(k, &announced, &learned, &stale);
            printf("  %s: %u of %u %s each, %u speaking at the end; live hubs announced "
                   "%" PRIu64 " counters, learned %" PRIu64 ", dropped %" PRIu64
                   " %s' RSUMs seen before\n",
                   name[k], count[k], count[k - 1] / count[k], name[k - 1], speaking[k], announced,
                   learned, stale, name[k]);
        }
    }
    print_figures("edge", &edges);
    for (int k = 0; k < K__COUNT; k++)
        printf("  %-8s %10" PRIu64 " msgs %12" PRIu64 " bytes sent (%10" PRIu64 " msgs %12" PRIu64
               " bytes during the load)\n",
               kind_name[k], by_kind[k].msgs_out, by_kind[k].bytes_out, by_kind_at_load[k].msgs_out,
               by_kind_at_load[k].bytes_out);
    printf("  listing entries in presence: %" PRIu64 " (%" PRIu64 " in full listings)\n",
           listed_sent, listed_full_sent);
    if (opt.groups)
        printf("  viewer sums of groups and regions: %" PRIu64 " presence msgs; %" PRIu64
               " copies of another group's or region's refused\n",
               scope_msgs, scope_refused);
    static const char *what[2] = {"totals", "viewers"};
    for (int k = 0; k < 2; k++) {
        if (converged_ms[k] >= 0)
            printf("%s exact on every live node %" PRId64 " ms after the load stopped\n", what[k],
                   converged_ms[k]);
        else
            printf("%s NOT exact: %u live nodes still wrong at %" PRIu64 " ms\n", what[k], wrong[k],
                   now);
    }
    uint64_t asked = 0;
    for (uint32_t h = 0; h < opt.hubs; h++)
        asked += nodes[h].alive ? nodes[h].repl.asked : 0;
    printf("repairs: %" PRIu64 " asked by live hubs, %" PRIu64 " counters in them (%" PRIu64
           " SYNC bytes), %" PRIu64 " origins' viewers replayed to restarted hubs\n",
           asked, repaired, repair_bytes, replayed);
    if (reset_at && converged_ms[0] >= 0)
        printf("totals at 0 on every live node %" PRIu64 " ms after the reset\n",
               (uint64_t)converged_ms[0] + opt.load_ms - reset_at);
    printf("steps back seen at edges: %" PRIu64 "\n", steps_back);
    printf("dead edges' viewers counted past peer_timeout_ms: %" PRIu64 "\n", late_viewers);
    if (opt.groups)
        printf(
            "viewers of home counted past three peer_timeout_ms in other groups, or twice: %" PRIu64
            " (a dead edge left the last group at least %" PRIu64 " ms past peer_timeout_ms)\n",
            far_viewers, far_late_ms);
}

/* With groups, each live edge must have learned its home hub's group from
 * its DOWNs (tier.c), the group its UPs name; the others are counted. */
static uint32_t edges_astray(void)
{
    uint32_t astray = 0;
    for (uint32_t i = opt.hubs; opt.groups && i < nnodes; i++) {
        char name[16];
        group_name(nodes[i].addr[0], name);
        astray += nodes[i].alive && strcmp(nodes[i].edge.group, name) != 0;
    }
    if (astray)
        printf("edges that name another group than their hubs': %u\n", astray);
    return astray;
}

/* ==== Main loop ==== */

/* --reset: once every live node is exact, a live hub picked at random (of
 * any group) resets every counter, as resetCounter does there; the load
 * has stopped, so every node must come to show 0, each edge going down
 * once (edge_no_step_back). */
static void reset_everything(void)
{
    uint32_t h = (uint32_t)(rnd() % opt.hubs);
    while (!nodes[h].alive || nodes[h].t.light)
        h = (h + 1) % opt.hubs; /* a hub of every group lives, the second: not light */
    for (struct tally_counter *c = nodes[h].t.counters; c; c = c->hh.next)
        if (table_reset(&nodes[h].t, c, false) != TALLY_OK)
            abort();
    for (uint32_t k = 0; k < opt.counters; k++)
        truth[k] = 0;
    for (uint32_t i = opt.hubs; i < nnodes; i++)
        nodes[i].reset_pending = true;
    reset_at = now;
    if (!opt.quiet)
        printf("reset: every counter at %s, %" PRIu64 " ms after the load stopped\n", nodes[h].id,
               now - opt.load_ms);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: tally-sim [--hubs H] [--edges E per hub] [--counters K] [--pages P]\n"
            "  [--seconds S of load] [--rate R inc/s an edge] [--loss L] [--delay MS]\n"
            "  [--kill-hubs N] [--kill-edges N] [--restart-hubs N] [--link-failures N]\n"
            "  [--freeze-edges N] [--publish-interval MS] [--tier-bytes B] [--seed X]\n"
            "  [--mesh | --groups G [--group-bridges B] [--regions R [--zones Z [--worlds W]]]\n"
            "  [--sums-interval MS]\n"
            "  [--sums-budget RECORDS/S] [--light N of each group | --split]]\n"
            "  [--reset] [--check]\n");
    exit(2);
}

static void options(int argc, char **argv)
{
    static const struct option longs[] = {{"hubs", 1, 0, 'H'},
                                          {"edges", 1, 0, 'E'},
                                          {"counters", 1, 0, 'K'},
                                          {"pages", 1, 0, 'P'},
                                          {"seconds", 1, 0, 'S'},
                                          {"rate", 1, 0, 'r'},
                                          {"loss", 1, 0, 'l'},
                                          {"delay", 1, 0, 'd'},
                                          {"kill-hubs", 1, 0, 'k'},
                                          {"kill-edges", 1, 0, 'e'},
                                          {"restart-hubs", 1, 0, 'R'},
                                          {"link-failures", 1, 0, 'L'},
                                          {"seed", 1, 0, 's'},
                                          {"check", 0, 0, 'c'},
                                          {"tier-bytes", 1, 0, 'B'},
                                          {"freeze-edges", 1, 0, 'F'},
                                          {"publish-interval", 1, 0, 'I'},
                                          {"sums-interval", 1, 0, 'y'},
                                          {"sums-budget", 1, 0, 'u'},
                                          {"mesh", 0, 0, 'M'},
                                          {"groups", 1, 0, 'G'},
                                          {"group-bridges", 1, 0, 'b'},
                                          {"regions", 1, 0, 'Q'},
                                          {"zones", 1, 0, 'z'},
                                          {"worlds", 1, 0, 'X'},
                                          {"reset", 0, 0, 'Z'},
                                          {"light", 1, 0, 'W'},
                                          {"split", 0, 0, 'Y'},
                                          {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", longs, NULL)) != -1;) {
        switch (c) {
        case 'H':
            opt.hubs = (uint32_t)atoi(optarg);
            break;
        case 'E':
            opt.edges_per_hub = (uint32_t)atoi(optarg);
            break;
        case 'K':
            opt.counters = (uint32_t)atoi(optarg);
            break;
        case 'P':
            opt.pages = (uint32_t)atoi(optarg);
            break;
        case 'S':
            opt.load_ms = (uint64_t)(atof(optarg) * 1000);
            break;
        case 'r':
            opt.rate = atof(optarg);
            break;
        case 'l':
            opt.loss = atof(optarg);
            break;
        case 'd':
            opt.delay_ms = (uint32_t)atoi(optarg);
            break;
        case 'k':
            opt.kill_hubs = (uint32_t)atoi(optarg);
            break;
        case 'e':
            opt.kill_edges = (uint32_t)atoi(optarg);
            break;
        case 'R':
            opt.restart_hubs = (uint32_t)atoi(optarg);
            break;
        case 'L':
            opt.link_failures = (uint32_t)atoi(optarg);
            break;
        case 's':
            opt.seed = strtoull(optarg, NULL, 10);
            break;
        case 'c':
            opt.check = true;
            break;
        case 'B':
            opt.tier_bytes = (size_t)atol(optarg);
            break;
        case 'F':
            opt.freeze_edges = (uint32_t)atoi(optarg);
            break;
        case 'I':
            opt.publish_ms = (uint64_t)atoi(optarg);
            break;
        case 'y':
            opt.sums_ms = (uint64_t)atoi(optarg);
            break;
        case 'u':
            opt.sums_budget = (uint64_t)atoi(optarg);
            break;
        case 'M':
            opt.mesh = true;
            break;
        case 'G':
            opt.groups = (uint32_t)atoi(optarg);
            break;
        case 'b':
            opt.group_bridges = (uint32_t)atoi(optarg);
            break;
        case 'Q':
            opt.regions = (uint32_t)atoi(optarg);
            break;
        case 'z':
            opt.zones = (uint32_t)atoi(optarg);
            break;
        case 'X':
            opt.worlds = (uint32_t)atoi(optarg);
            break;
        case 'Z':
            opt.reset = true;
            break;
        case 'W':
            opt.light = (uint32_t)atoi(optarg);
            break;
        case 'Y':
            opt.split = true;
            break;
        default:
            usage();
        }
    }
    if (opt.hubs < 2 || !opt.edges_per_hub || opt.counters < 2 || !opt.pages || !opt.delay_ms ||
        !opt.publish_ms || 2 * (opt.kill_hubs + opt.restart_hubs) > opt.hubs)
        usage();
    /* groups of two hubs or more, and a hub of each that never dies */
    if (opt.groups &&
        (opt.mesh || opt.hubs % opt.groups || opt.hubs / opt.groups < 2 ||
         opt.kill_hubs + opt.restart_hubs > opt.groups * (opt.hubs / opt.groups / 2) ||
         opt.group_bridges > opt.hubs / opt.groups))
        usage();
    /* light hubs: never the second of a group, which never dies */
    if (opt.light && (!opt.groups || opt.light + 2 > opt.hubs / opt.groups))
        usage();
    if (opt.split && (!opt.groups || opt.light))
        usage();
    if ((opt.regions && (!opt.groups || opt.groups % opt.regions)) ||
        (opt.zones && (!opt.regions || opt.regions % opt.zones)) ||
        (opt.worlds && (!opt.zones || opt.zones % opt.worlds)))
        usage();
    /* with fewer bridges than hubs, a hub that dies could cut its group off
     * (a bridge here has no address list to fail over with) */
    if (opt.group_bridges && opt.group_bridges < opt.hubs / opt.groups &&
        (opt.kill_hubs || opt.restart_hubs))
        usage();
}

static void deliver(const struct event *ev)
{
    struct node *n = &nodes[ev->node];
    const struct msg *m = ev->m;
    /* A message in flight when its bridge went down is lost with it. */
    if (!connected(m->from, m->to))
        return;
    n->tr.msgs_in++;
    n->tr.bytes_in += m->len;
    switch (m->kind) {
    case K_UP:
        hub_on_up(n, m);
        break;
    case K_DOWN:
        edge_on_down(n, m);
        break;
    case K_SYNC:
        hub_on_sync(n, m);
        break;
    case K_DIGEST:
        hub_on_digest(n, m);
        break;
    case K_PRESENCE:
    case K_REPLAY:
    case K_GVIEWS:
    case K_RVIEWS:
    case K_ZVIEWS:
    case K_WVIEWS:
        hub_on_presence(n, m);
        break;
    case K_GSUM:
    case K_RSUM:
    case K_ZSUM:
    case K_WSUM:
        hub_on_sums(n, m);
        break;
    }
}

int main(int argc, char **argv)
{
    options(argc, argv);
    rng_state = opt.seed * 0x9E3779B97F4A7C15ULL + 1;
    build();
    faults();
    int64_t converged[2] = {-1, -1};
    uint32_t wrong[2] = {0, 0};
    uint64_t next_check = opt.load_ms, next_late = 1000;
    bool loaded = false;
    while (nheap && now <= opt.max_ms && (converged[0] < 0 || converged[1] < 0)) {
        struct event ev = pop();
        now = ev.at;
        struct node *to = &nodes[ev.node];
        if (ev.m && now >= to->frozen_from && now < to->frozen_until) {
            push(to->frozen_until, ev.node, ev.m); /* read once it thaws, in order */
        } else if (ev.m) {
            deliver(&ev);
            free(ev.m);
            if (to->hub && to->alive)
                hub_pass(ev.node); /* the loop pass after a read */
        } else {
            struct node *n = &nodes[ev.node];
            if (n->hub) {
                hub_life(ev.node);
                if (n->alive)
                    hub_tick(ev.node);
                push(now + TICK_MS, ev.node, NULL);
            } else if (n->alive) {
                edge_tick(ev.node);
                push(now + TICK_MS, ev.node, NULL);
            }
        }
        if (now >= next_late) {
            next_late = now + 1000;
            late_viewers_seen();
        }
        if (now >= opt.load_ms && !loaded) {
            loaded = true;
            for (uint32_t i = 0; i < nnodes; i++)
                nodes[i].at_load = nodes[i].tr;
            memcpy(by_kind_at_load, by_kind, sizeof(by_kind));
        }
        if (now >= next_check) {
            next_check = now + TICK_MS;
            for (int k = 0; k < 2; k++)
                if (converged[k] < 0 && exact(k == 0, &wrong[k]))
                    converged[k] = (int64_t)(now - opt.load_ms);
            if (opt.reset && !reset_at && converged[0] >= 0) {
                reset_everything();
                converged[0] = -1; /* again, at 0 */
            }
        }
    }
    report((double)opt.load_ms / 1000.0, converged, wrong);
    uint32_t astray = edges_astray();
    return opt.check && (converged[0] < 0 || converged[1] < 0 || steps_back || late_viewers ||
                         far_viewers || astray)
               ? 1
               : 0;
}
