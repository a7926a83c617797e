/*
 * fuzz_gsum.c - a GSUM or RSUM (group.c), or an ask for one (GWANT, RWANT),
 * from a hostile or broken hub of another group or region, or flooded over
 * many bridges, read by a hub of group g2 in no region, by one of g2 in
 * region r2, by the region r2 itself (level 2), in no region above it and
 * in z2, and by z2 (level 3), by a light hub of g2 in r2, which takes
 * no other group's slot at all, and by split hubs of g2 in r2 that hold
 * level 1 (as a plain hub) and level 2 alone (as a light one: group.c,
 * "Split hubs"). group_apply must refuse
 * it whole or take only another group's (region's) sums: every counter it
 * makes holds one slot, of a group replica, and values in range; the same
 * bytes again are not fresh and change nothing; and the hub announces none
 * of it again (its flood carries it to every hub already).
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

static void check_counters(const struct tally_table *t)
{
    for (const struct tally_counter *c = t->counters; c; c = c->hh.next) {
        check(name_check(c->name, c->name_len) == TALLY_OK);
        check(c->nslots <= 1u);
        for (uint32_t i = 0; i < c->nslots; i++) {
            check(group_replica(t, c->slots[i].replica));
            /* none at a light hub, or a split hub that does not hold its level */
            check(!table_unheld(t, c->slots[i].replica));
            check(t->replicas[c->slots[i].replica]->incarnation == GROUP_INCARNATION);
        }
        int64_t v = table_value(t, c);
        check(v >= -TALLY_MAX_SAFE && v <= TALLY_MAX_SAFE);
        /* our group's sum: nothing, we hold no node's slot */
        uint64_t p, n, bp, bn;
        group_sum(t, c, &p, &n, &bp, &bn);
        check(p == 0 && n == 0 && bp == 0 && bn == 0);
    }
}

/* What hub b1 announces after taking the GSUM: nothing but, once a second,
 * the speaker's keepalive, an empty GSUM, and an ask for what it lacks of
 * the stream the GSUM began (a life seen first past its seq 1), or a call
 * for its speaker's refresh (past its seq 64). It holds no slot of a node of its
 * group, and the device maxima it learned from the flood are not its own to
 * send again, neither as owed nor in the refresh. A hub of a third group
 * takes the keepalive as fresh, and nothing of it. */
static void keepalive_only(const struct wire_buf *msg, void *ud)
{
    const struct tally_group *from = ud;
    struct tally_table third;
    struct tally_group g3;
    bool fresh;
    table_init(&third, 1u << 20, 1);
    static const char *const third_unit[] = {"g3", "r3", "z3"};
    group_init(&g3, third_unit[from->level - 1], 1, 1000);
    group_scope(&g3, from->level, from->up);
    check(group_apply(&g3, &third, NULL, "c1", msg->data, msg->len, &fresh) == TALLY_OK);
    struct wire_reader r = {msg->data + 4, msg->data + msg->len, false};
    size_t olen;
    wr_str8(&r, &olen);
    wr_u64(&r);
    bool in_stream = wr_varint(&r) != 0; /* all but an ask, which is for a neighbour */
    check(fresh == in_stream && third.ncounters == 0);
    group_free(&g3);
    table_free(&third);
}

static void announce(struct tally_group *g, struct tally_table *t)
{
    struct wire_buf b = {0};
    for (const struct tally_counter *c = t->counters; c; c = c->hh.next)
        check(group_note(g, t, c) == TALLY_OK);
    /* a call for the refresh of a stream first heard past its window, at once */
    check(group_announce(g, t, "b1", 1, 1024, 1u << 20, &b, keepalive_only, g) <= 1);
    /* and, a quarter heartbeat after a gap, an ask of its neighbours */
    check(group_announce(g, t, "b1", 1000, 1024, 1u << 20, &b, keepalive_only, g) <= 2);
    check(!b.failed);
    wbuf_free(&b);
}

/* A plain hub, a light one (group.c, "Light hubs"), or a split one that
 * holds level 1, or level 2 alone ("Split hubs"). */
enum kind { PLAIN, LIGHT, SPLIT_1, SPLIT_2 };

/* The message at a hub of that kind, at its unit of level `level` named
 * `name` (1: group g2; 2: region r2; 3: z2), in unit `up` one level up if
 * not NULL; returns group_apply's answer. */
static int receive(int level, const char *name, const char *up, enum kind kind, const uint8_t *data,
                   size_t size)
{
    static struct tally_table t;
    static struct tally_group g;
    uint64_t digest[TALLY_BUCKETS];
    bool fresh = true, again = true;
    struct wire_buf b = {0};
    table_init(&t, 1u << 20, 1);
    t.light = kind == LIGHT;
    t.split = kind == SPLIT_1 || kind == SPLIT_2;
    t.lean = kind != PLAIN;
    t.holds = (uint8_t)(kind == SPLIT_1 ? 1u << 1 : 1u << 2);
    group_init(&g, name, 1, 1000);
    group_scope(&g, level, up);
    check(group_bind(&g, &t) == TALLY_OK); /* replica .g2: what resets elsewhere saw of us */
    /* nothing to say yet: the refresh is due at 1000 */
    check(group_announce(&g, &t, "b1", 0, 1024, 100, &b, keepalive_only, &g) == 0);
    wbuf_free(&b);
    int rc = group_apply(&g, &t, NULL, "b1", data, size, &fresh);
    check(rc == TALLY_OK || rc == TALLY_E_WIRE);
    if (rc != TALLY_OK) {
        /* refused whole */
        check(!fresh && t.ncounters == 0 && t.ndevices == 0 && t.nreplicas == 1);
    } else {
        /* not fresh: our own (origin b1), taken as seen; nothing of it taken */
        check(fresh || t.ncounters == 0);
        check_counters(&t);
        memcpy(digest, t.digest, sizeof(digest));
        size_t ncounters = t.ncounters;
        check(group_apply(&g, &t, NULL, "b1", data, size, &again) == TALLY_OK);
        check(!again);
        check(memcmp(digest, t.digest, sizeof(digest)) == 0 && t.ncounters == ncounters);
        announce(&g, &t);
    }
    /* a hub in no group (region) reads it (or refuses it) alike, and takes nothing */
    struct tally_group alone;
    struct tally_table empty;
    table_init(&empty, 1u << 20, 1);
    group_init(&alone, NULL, 1, 1000);
    group_scope(&alone, level, NULL);
    check(group_apply(&alone, &empty, NULL, "n1", data, size, &again) == rc);
    check(!again && empty.ncounters == 0 && empty.nreplicas == 0);
    group_free(&alone);
    table_free(&empty);
    group_free(&g);
    table_free(&t);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int plain = receive(1, "g2", NULL, PLAIN, data, size);
    int in_region = receive(1, "g2", "r2", PLAIN, data, size);
    int light = receive(1, "g2", "r2", LIGHT, data, size);
    int split1 = receive(1, "g2", "r2", SPLIT_1, data, size);
    int split2 = receive(1, "g2", "r2", SPLIT_2, data, size);
    int region = receive(2, "r2", NULL, PLAIN, data, size);
    int in_zone = receive(2, "r2", "z2", PLAIN, data, size);
    receive(3, "z2", NULL, PLAIN, data, size);
    /* a GSUM reads alike; what is taken differs */
    check(plain == in_region && light == in_region && split1 == in_region && split2 == in_region);
    check(region == in_zone); /* an RSUM likewise */
    return 0;
}
