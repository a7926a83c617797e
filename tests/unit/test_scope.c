/*
 * test_scope.c - viewers summed per group and region (scope.c): who takes
 * which stream, the sums a speaker sends, a change and a lost message
 * healed through wants that climb the scopes, and a speaker taking over.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tally.h"

#define TIMEOUT_MS 15000
#define MAX_BYTES 4096

/* A hub as plugin.c holds one: its viewers, its heartbeat, and its streams. */
struct hub {
    char id[16];
    struct tally_presence pr;
    struct tier_hub tier;
    struct tally_group g, r, z; /* its group, region, and the region above (a zone) */
    struct scope_stream sc[3], *scs[TALLY_LEVELS];
};

/* region: plugin_opt_region's path ("r1", "r1/z1", or NULL) */
static void hub_init(struct hub *h, const char *id, const char *group, const char *region)
{
    char names[TALLY_LEVELS - 1][GROUP_NAME_MAX + 1] = {{0}};
    struct tally_group *units[3] = {&h->g, &h->r, &h->z};
    memset(h, 0, sizeof(*h));
    snprintf(h->id, sizeof(h->id), "%s", id);
    presence_init(&h->pr, 1000);
    tier_hub_init(&h->tier, id, 1);
    ck_assert_int_ge(region_path(region ? region : "", region ? strlen(region) : 0, names), 0);
    for (int k = 0; k < 3; k++) {
        group_init(units[k], k ? names[k - 1] : group, 1, 10000);
        group_scope(units[k], k + 1, k < 2 ? names[k] : NULL);
    }
    h->pr.scope_levels = (uint8_t)(1 + (group_on(&h->r) ? 1 : 0) + (group_on(&h->z) ? 1 : 0));
    for (int k = 0; k < 3; k++)
        if (group_on(units[k]))
            scope_init(h->scs[k] = &h->sc[k], units[k], &h->pr);
}

static void hub_free(struct hub *h)
{
    for (int k = 0; k < TALLY_LEVELS; k++)
        if (h->scs[k])
            scope_free(h->scs[k]);
    tier_hub_free(&h->tier);
    group_free(&h->g);
    group_free(&h->r);
    group_free(&h->z);
    presence_free(&h->pr);
}

/* The names of h's units, as its topics give them. */
static struct scope_name names_of(const struct hub *h)
{
    const struct tally_group *units[TALLY_LEVELS] = {&h->g, &h->r, &h->z, NULL};
    struct scope_name sn;
    scope_name_of(units, &sn);
    return sn;
}

/* What h does with a PRESENCE of origin published by pub. */
static enum scope_take take(const struct hub *h, const char *origin, const struct hub *pub)
{
    struct scope_name ours = names_of(h), from = names_of(pub);
    return scope_take(&ours, origin, strlen(origin), &from);
}

/* A topic's units, from their names ("" or NULL: none). */
static struct scope_name named(const char *group, const char *region)
{
    struct scope_name sn = {{group ? group : "", region ? region : "", "", ""},
                            {group ? strlen(group) : 0, region ? strlen(region) : 0, 0, 0}};
    return sn;
}

/* Messages sent, each with the hub that published it (its topic). */
struct outbox {
    int n;
    struct wire_buf msg[64];
    const struct hub *pub[64];
    const struct hub *from;
};

static struct outbox out;

static void collect(const struct wire_buf *msg, void *ud)
{
    (void)ud;
    ck_assert_int_lt(out.n, 64);
    struct wire_buf *b = &out.msg[out.n];
    *b = (struct wire_buf){0};
    wbuf_bytes(b, msg->data, msg->len);
    out.pub[out.n++] = out.from;
}

static void out_clear(void)
{
    for (int i = 0; i < out.n; i++)
        wbuf_free(&out.msg[i]);
    out.n = 0;
}

/* plugin.c's scope_send: each stream h speaks for, its changes (alone if
 * cheaper) or, at a heartbeat, all its pages or a keepalive. */
static void streams(struct hub *h, uint64_t now, bool heartbeat)
{
    out.from = h;
    struct wire_buf b = {0};
    for (int k = 0; k < TALLY_LEVELS; k++) {
        struct scope_stream *s = h->scs[k];
        if (s && (heartbeat ? s->speaking : scope_due(s)))
            ck_assert_int_eq(scope_announce(s, !heartbeat, now * 1000, now, TIMEOUT_MS, MAX_BYTES,
                                            &b, collect, NULL),
                             TALLY_OK);
    }
    wbuf_free(&b);
}

/* plugin.c's scope_tick, with speaking as given. */
static void scope_tick(struct hub *h, bool speaking, uint64_t now)
{
    for (int k = 0; k < TALLY_LEVELS; k++)
        if (h->scs[k])
            ck_assert_int_eq(scope_follow(h->scs[k], &h->pr, speaking), TALLY_OK);
    presence_scope_taken(&h->pr);
    streams(h, now, false);
}

/* Its own heartbeat (its own viewers and wants). */
static void heartbeat(struct hub *h, uint64_t seq, uint64_t now)
{
    uint32_t n;
    struct wire_buf b = {0};
    out.from = h;
    ck_assert_int_eq(tier_hub_heartbeat(&h->tier, &h->pr, 1, seq, now, TIMEOUT_MS, MAX_BYTES, &b,
                                        collect, NULL, &n),
                     TALLY_OK);
    wbuf_free(&b);
}

/* plugin.c's take_presence: what h does with message i; true if taken or
 * passed (flooded on). */
static bool hear(struct hub *h, int i, uint64_t now)
{
    struct wire_presence wp;
    ck_assert_int_eq(wire_decode_presence(out.msg[i].data, out.msg[i].len, &wp), TALLY_OK);
    struct scope_name ours = names_of(h), from = names_of(out.pub[i]);
    enum scope_take st = scope_take(&ours, wp.origin, wp.origin_len, &from);
    bool taken = false;
    if (st == SCOPE_PASS) {
        taken = scope_pass(h->scs, &h->pr, &wp);
    } else if (st == SCOPE_TAKE) {
        char id[TALLY_NODE_ID_MAX + 1];
        snprintf(id, sizeof(id), "%.*s", (int)wp.origin_len, wp.origin);
        struct tally_origin *o = presence_origin(&h->pr, id);
        ck_assert_int_eq(presence_apply(&h->pr, o, &wp, &taken), TALLY_OK);
        if (taken) {
            o->last_heard_ms = now;
            ck_assert_int_eq(tier_hub_heard(&h->tier, &h->pr, &wp, now), TALLY_OK);
            scope_wants(h->scs, &h->pr, &wp);
        }
    }
    wire_presence_free(&wp);
    return taken;
}

static void hear_all(struct hub *h, uint64_t now)
{
    for (int i = 0; i < out.n; i++)
        if (out.pub[i] != h)
            hear(h, i, now);
}

static void set(struct hub *h, const char *origin, const char *page, uint64_t n)
{
    struct tally_origin *o = presence_origin(&h->pr, origin);
    o->alive = true;
    ck_assert_int_eq(presence_origin_set(&h->pr, o, page, strlen(page), n), TALLY_OK);
}

static uint64_t total(const struct hub *h, const char *page)
{
    return presence_total(&h->pr, page, strlen(page));
}

START_TEST(test_who_takes_which_stream)
{
    struct hub a, b, c;
    hub_init(&a, "a1", "g1", "r1");
    hub_init(&b, "b1", "g2", "r1");
    hub_init(&c, "c1", "g3", "r2");
    struct {
        const char *origin;
        const struct hub *pub;
        enum scope_take at_a;
    } cases[] = {
        {"a2", &a, SCOPE_TAKE},     {"e7", &a, SCOPE_TAKE},    /* our group's nodes and edges */
        {"b1", &b, SCOPE_REFUSE},   {"e9", &b, SCOPE_REFUSE},  /* another group's */
        {".g1", &a, SCOPE_PASS},    {".g2", &b, SCOPE_TAKE},   /* our group's sums; another's */
        {".g3", &c, SCOPE_REFUSE},  {"..r1", &a, SCOPE_PASS},  /* another region's group */
        {"..r2", &c, SCOPE_TAKE},   {".g2", &a, SCOPE_REFUSE}, /* not published by g2 */
        {"..r2", &b, SCOPE_REFUSE},                            /* not published in r2 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ck_assert_msg(take(&a, cases[i].origin, cases[i].pub) == cases[i].at_a, "%s from %s",
                      cases[i].origin, cases[i].pub->id);
    /* A replay from a1 to a hub of its group names the scope of what it
     * carries: g2's sums are taken, r2's too, a1's own edge's as ever */
    const char *replayed[] = {".g2", "..r2", "e7"};
    struct scope_name ours = names_of(&a);
    for (int i = 0; i < 3; i++) {
        struct scope_name sn;
        scope_of_origin(&ours, replayed[i], strlen(replayed[i]), &sn);
        ck_assert_msg(scope_take(&ours, replayed[i], strlen(replayed[i]), &sn) == SCOPE_TAKE,
                      "replay of %s", replayed[i]);
    }
    /* Each on its own topic: a node's on presence/, a group's sums on
     * gviews/, a region's on rviews/, any replayed */
    ck_assert(scope_topic_fits("presence/a1@g1@r1", "e7", 2));
    ck_assert(scope_topic_fits("gviews/a1@g1@r1", ".g1", 3));
    ck_assert(scope_topic_fits("rviews/a1@g1@r1", "..r1", 4));
    ck_assert(scope_topic_fits("replay/.g2@g2@r1", ".g2", 3));
    ck_assert(!scope_topic_fits("presence/a1@g1@r1", ".g1", 3));
    ck_assert(!scope_topic_fits("gviews/a1@g1@r1", "e7", 2));
    ck_assert(!scope_topic_fits("gviews/a1@g1@r1", "..r1", 4));
    ck_assert(!scope_topic_fits("rviews/a1@g1@r1", ".g1", 3));
    /* A hub in no group takes what hubs in none send, and nothing else. */
    struct scope_name none = named(NULL, NULL), g2 = named("g2", "r1"), g6 = named("g6", NULL);
    ck_assert(scope_take(&none, "n2", 2, &none) == SCOPE_TAKE);
    ck_assert(scope_take(&none, "b1", 2, &g2) == SCOPE_REFUSE);
    ck_assert(scope_take(&none, ".g2", 3, &g2) == SCOPE_REFUSE);
    ck_assert(scope_take(&ours, "n2", 2, &none) == SCOPE_REFUSE);
    /* Groups in no region take each other's sums. */
    struct hub p, q;
    hub_init(&p, "p1", "g5", NULL);
    hub_init(&q, "q1", "g6", NULL);
    struct scope_name at_p = names_of(&p);
    ck_assert(scope_take(&at_p, ".g6", 3, &g6) == SCOPE_TAKE);
    ck_assert(scope_take(&at_p, "q1", 2, &g6) == SCOPE_REFUSE);
    ck_assert(scope_take(&at_p, "..r1", 4, &g6) == SCOPE_REFUSE);
    hub_free(&a);
    hub_free(&b);
    hub_free(&c);
    hub_free(&p);
    hub_free(&q);
}
END_TEST

START_TEST(test_a_speaker_sends_its_groups_and_regions_sums)
{
    struct hub a, b, c;
    hub_init(&a, "a1", "g1", "r1");
    hub_init(&b, "b1", "g2", "r1");
    hub_init(&c, "c1", "g3", "r2");
    /* a1: an edge of its own (3 on home), a hub of its group (2), g2's sum
     * (5), and region r2's (7) */
    set(&a, "e1", "home", 3);
    set(&a, "a2", "home", 2);
    set(&a, ".g2", "home", 5);
    set(&a, "..r2", "home", 7);
    set(&a, "e1", "news", 1);
    ck_assert_uint_eq(total(&a, "home"), 17);
    scope_tick(&a, true, 1000);
    /* g1's sum goes to b1 (of r1), r1's to c1 (of r2); c1 refuses g1's */
    hear_all(&b, 1000);
    hear_all(&c, 1000);
    ck_assert_uint_eq(total(&b, "home"), 5);
    ck_assert_uint_eq(total(&b, "news"), 1);
    ck_assert_uint_eq(total(&c, "home"), 10);
    ck_assert_uint_eq(total(&c, "news"), 1);
    ck_assert_uint_eq(HASH_COUNT(c.pr.origins), 1); /* "..r1" alone */
    out_clear();
    /* The edge leaves news, a2's viewers go: changes alone or in full,
     * either way exact there */
    set(&a, "e1", "news", 0);
    set(&a, "a2", "home", 0);
    scope_tick(&a, true, 1100);
    ck_assert_int_gt(out.n, 0);
    hear_all(&b, 1100);
    hear_all(&c, 1100);
    ck_assert_uint_eq(total(&b, "home"), 3);
    ck_assert_uint_eq(total(&b, "news"), 0);
    ck_assert_uint_eq(total(&c, "home"), 8);
    ck_assert_uint_eq(total(&c, "news"), 0);
    out_clear();
    /* Nothing changed: nothing sent (keepalives go with the heartbeat) */
    scope_tick(&a, true, 1200);
    ck_assert_int_eq(out.n, 0);
    hub_free(&a);
    hub_free(&b);
    hub_free(&c);
}
END_TEST

START_TEST(test_a_lost_change_is_asked_for_up_the_scopes)
{
    /* r1: g1 (a1), g2 (b1, b2); r2: g3 (c1). a1 speaks for g1 and r1. */
    struct hub a, b, b2, c;
    hub_init(&a, "a1", "g1", "r1");
    hub_init(&b, "b1", "g2", "r1");
    hub_init(&b2, "b2", "g2", "r1");
    hub_init(&c, "c1", "g3", "r2");
    set(&a, "e1", "home", 4);
    scope_tick(&a, true, 1000);
    hear_all(&b, 1000);
    hear_all(&b2, 1000);
    hear_all(&c, 1000);
    out_clear();
    ck_assert_uint_eq(total(&b2, "home"), 4);
    ck_assert_uint_eq(total(&c, "home"), 4);
    /* a change, lost to b2 and c1 */
    set(&a, "e1", "home", 6);
    scope_tick(&a, true, 1100);
    hear_all(&b, 1100);
    out_clear();
    ck_assert_uint_eq(total(&b2, "home"), 4);
    /* a1's next heartbeats: keepalives whose digests b2 and c1 do not hold */
    uint64_t now = 2100;
    for (int i = 0; i < 2; i++, now += 1000) {
        streams(&a, now, true);
        hear_all(&b2, now);
        hear_all(&c, now);
        out_clear();
    }
    /* b2 wants ".g1" in its own heartbeat, which stays in g2: b1, which
     * speaks for g2, carries the want in ".g2"; c1 wants "..r1" in its
     * own, and speaks for g3 and r2: "..r2" carries it */
    heartbeat(&b2, 10, now);
    hear_all(&b, now);
    out_clear();
    ck_assert(b.scs[0]->wants_owed);
    heartbeat(&c, 10, now);
    out_clear();
    scope_tick(&b, true, now); /* at once, not at b1's next heartbeat */
    ck_assert(!b.scs[0]->wants_owed);
    scope_tick(&c, true, now); /* its first heartbeats, with its own wants */
    /* a1 hears both wants: its streams owe all their pages */
    a.scs[0]->hub.all_pages_owed = a.scs[1]->hub.all_pages_owed = false;
    hear_all(&a, now);
    ck_assert(a.scs[0]->hub.all_pages_owed);
    ck_assert(a.scs[1]->hub.all_pages_owed);
    out_clear();
    streams(&a, now + 1000, true);
    hear_all(&b2, now + 100);
    hear_all(&c, now + 100);
    ck_assert_uint_eq(total(&b2, "home"), 6);
    ck_assert_uint_eq(total(&c, "home"), 6);
    out_clear();
    hub_free(&a);
    hub_free(&b);
    hub_free(&b2);
    hub_free(&c);
}
END_TEST

START_TEST(test_a_hub_taking_over_goes_on_above_the_last_speakers_seqs)
{
    struct hub a1, a2, b;
    hub_init(&a1, "a1", "g1", NULL);
    hub_init(&a2, "a2", "g1", NULL);
    hub_init(&b, "b1", "g2", NULL);
    ck_assert_ptr_null(a1.scs[1]);
    set(&a1, "e1", "home", 4);
    set(&a2, "e1", "home", 4);
    /* a1's clock runs far ahead of a2's */
    scope_tick(&a1, true, 900000);
    for (int i = 0; i < out.n; i++) {
        ck_assert(hear(&a2, i, 1000)); /* passed on, the first time */
        ck_assert(!hear(&a2, i, 1000));
    }
    hear_all(&b, 1000);
    out_clear();
    ck_assert_uint_eq(total(&b, "home"), 4);
    ck_assert_uint_eq(total(&a2, "home"), 4); /* e1's, not g1's sum again */
    /* a1 dies: a2 speaks, in full, numbered above a1 */
    set(&a2, "e1", "home", 9);
    scope_tick(&a2, true, 4000);
    hear_all(&b, 4000);
    ck_assert_uint_eq(total(&b, "home"), 9);
    /* and stops when a1 is back: its sums forgotten */
    out_clear();
    scope_tick(&a2, false, 5000);
    ck_assert_int_eq(out.n, 0);
    ck_assert(!a2.scs[0]->speaking);
    ck_assert_uint_eq(a2.scs[0]->pr.nlocal_pages, 0);
    hub_free(&a1);
    hub_free(&a2);
    hub_free(&b);
}
END_TEST

START_TEST(test_the_sums_follow_every_page_even_past_the_notes)
{
    struct tally_presence main, sums;
    presence_init(&main, 1000);
    presence_init(&sums, 0);
    main.scope_levels = 2;
    struct tally_origin *e = presence_origin(&main, "e1"), *g = presence_origin(&main, ".g2");
    char page[16];
    for (int i = 0; i < 70000; i++) { /* past PRESENCE_SCOPE_MAX notes */
        snprintf(page, sizeof(page), "p%d", i);
        ck_assert_int_eq(presence_origin_set(&main, e, page, strlen(page), 1), TALLY_OK);
    }
    ck_assert(main.scope_all);
    ck_assert_int_eq(presence_origin_set(&main, g, "p0", 2, 5), TALLY_OK);
    ck_assert_int_eq(presence_scope_sync(&main, &sums, 1, false), TALLY_OK);
    presence_scope_taken(&main);
    ck_assert_uint_eq(sums.nlocal_pages, 70000);
    ck_assert_uint_eq(presence_total(&sums, "p0", 2), 1); /* g2's is not of our group's sum */
    /* a page that left: its sum goes to 0 and its page is freed */
    ck_assert_int_eq(presence_origin_set(&main, e, "p1", 2, 0), TALLY_OK);
    ck_assert_int_eq(main.nscope_changed, 1);
    ck_assert_int_eq(presence_scope_sync(&main, &sums, 1, false), TALLY_OK);
    ck_assert_uint_eq(sums.nlocal_pages, 69999);
    ck_assert_uint_eq(presence_total(&sums, "p1", 2), 0);
    /* the region's sum has g2's */
    struct tally_presence region;
    presence_init(&region, 0);
    ck_assert_int_eq(presence_scope_sync(&main, &region, 2, true), TALLY_OK);
    ck_assert_uint_eq(presence_total(&region, "p0", 2), 6);
    presence_free(&region);
    presence_free(&sums);
    presence_free(&main);
}
END_TEST

Suite *scope_suite(void)
{
    Suite *s = suite_create("scope");
    TCase *tc = tcase_create("viewers summed per group and region");
    tcase_add_test(tc, test_who_takes_which_stream);
    tcase_add_test(tc, test_a_speaker_sends_its_groups_and_regions_sums);
    tcase_add_test(tc, test_a_lost_change_is_asked_for_up_the_scopes);
    tcase_add_test(tc, test_a_hub_taking_over_goes_on_above_the_last_speakers_seqs);
    tcase_add_test(tc, test_the_sums_follow_every_page_even_past_the_notes);
    suite_add_tcase(s, tc);
    return s;
}
