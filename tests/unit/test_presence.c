/*
 * test_presence.c - viewer counts (presence.c): local views per distinct
 * client, other nodes' announced counts, expiry, and what a flush publishes.
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tally.h"

/* What the last change under test reported (the functions' *changed). */
static bool changed;

static struct tally_presence pr;
static uint64_t now_ms, budget; /* presence_flush's clock and budget; 0: no budget */

static void setup(void)
{
    presence_init(&pr, 100000);
    now_ms = budget = 0;
}

static void teardown(void)
{
    presence_free(&pr);
}

static uint64_t total(const char *page)
{
    return presence_total(&pr, page, strlen(page));
}

/* Whether (client, page) is a new view. */
static bool view(const char *client, const char *page)
{
    bool added;
    ck_assert_int_eq(presence_view(&pr, client, page, strlen(page), &added), TALLY_OK);
    return added;
}

static void unview(const char *client, const char *page)
{
    presence_unview(&pr, client, page, strlen(page));
}

/* What one presence_flush published. */
struct flushed {
    int n;
    char page[16][32];
    uint64_t total[16];
};

static void record(const char *page, size_t len, uint64_t n, void *ud)
{
    struct flushed *f = ud;
    ck_assert_int_lt(f->n, 16);
    memcpy(f->page[f->n], page, len);
    f->page[f->n][len] = '\0';
    f->total[f->n++] = n;
}

static struct flushed flush(void)
{
    struct flushed f = {0};
    presence_flush(&pr, now_ms, budget, record, &f);
    return f;
}

static uint64_t flushed_total(const struct flushed *f, const char *page)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->page[i], page) == 0)
            return f->total[i];
    ck_abort_msg("page %s was not published", page);
    return 0;
}

START_TEST(test_views_counted_once)
{
    ck_assert(view("a", "p"));
    ck_assert(!view("a", "p"));
    ck_assert(view("b", "p"));
    ck_assert(view("a", "q"));
    ck_assert_uint_eq(total("p"), 2);
    ck_assert_uint_eq(total("q"), 1);
    ck_assert_uint_eq(total("none"), 0);
    ck_assert_uint_eq(pr.nviews, 3);
    ck_assert(pr.local_changed);

    unview("a", "p");
    ck_assert_uint_eq(total("p"), 1);
    unview("a", "p"); /* not viewing any more: nothing to undo */
    unview("zz", "p");
    ck_assert_uint_eq(total("p"), 1);
    ck_assert_uint_eq(total("q"), 1);

    ck_assert(view("b", "q"));
    presence_drop_client(&pr, "b");
    presence_drop_client(&pr, "b");
    ck_assert_uint_eq(total("p"), 0);
    ck_assert_uint_eq(total("q"), 1);
    ck_assert_uint_eq(pr.nviews, 1);
    /* A client that comes back counts again. */
    ck_assert(view("b", "p"));
    ck_assert_uint_eq(total("p"), 1);
}
END_TEST

START_TEST(test_max_views)
{
    struct tally_presence small;
    presence_init(&small, 2);
    ck_assert_int_eq(presence_view(&small, "a", "p", 1, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(presence_view(&small, "b", "p", 1, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(presence_view(&small, "c", "p", 1, &changed), TALLY_E_MAX_VIEWERS);
    ck_assert_int_eq(presence_view(&small, "a", "q", 1, &changed), TALLY_E_MAX_VIEWERS);
    ck_assert_int_eq(presence_view(&small, "a", "p", 1, &changed), TALLY_OK);
    ck_assert(!changed); /* already counted */
    ck_assert_uint_eq(presence_total(&small, "p", 1), 2);
    ck_assert_uint_eq(small.nviews, 2);
    presence_unview(&small, "a", "p", 1);
    ck_assert_int_eq(presence_view(&small, "c", "p", 1, &changed), TALLY_OK);
    ck_assert(changed);
    presence_free(&small);
}
END_TEST

static void each_local(const char *page, size_t len, uint64_t n, void *ud)
{
    record(page, len, n, ud);
}

START_TEST(test_each_local)
{
    view("a", "p");
    view("b", "p");
    view("a", "q");
    unview("a", "q");
    struct tally_origin *o = presence_origin(&pr, "n2");
    presence_origin_begin(&pr, o, 0, UINT64_MAX);
    presence_origin_set(&pr, o, "r", 1, 9);
    struct flushed f = {0};
    presence_each_local(&pr, each_local, &f);
    ck_assert_int_eq(f.n, 1); /* only pages with local viewers, only ours */
    ck_assert_str_eq(f.page[0], "p");
    ck_assert_uint_eq(f.total[0], 2);
}
END_TEST

START_TEST(test_origins_summed_and_replaced)
{
    view("a", "p");
    struct tally_origin *n2 = presence_origin(&pr, "n2"), *n3 = presence_origin(&pr, "n3");
    ck_assert_ptr_nonnull(n2);
    ck_assert_ptr_eq(presence_origin(&pr, "n2"), n2);
    ck_assert_uint_ne(n2->slot, n3->slot);
    presence_origin_begin(&pr, n2, 0, UINT64_MAX);
    ck_assert_int_eq(presence_origin_set(&pr, n2, "p", 1, 5), TALLY_OK);
    ck_assert_int_eq(presence_origin_set(&pr, n2, "q", 1, 2), TALLY_OK);
    presence_origin_begin(&pr, n3, 0, UINT64_MAX);
    ck_assert_int_eq(presence_origin_set(&pr, n3, "p", 1, 10), TALLY_OK);
    ck_assert(n2->alive && n3->alive);
    ck_assert_uint_eq(total("p"), 16);
    ck_assert_uint_eq(total("q"), 2);

    /* n2's next announcement replaces all its counts: q missing means 0. */
    presence_origin_begin(&pr, n2, 0, UINT64_MAX);
    ck_assert_int_eq(presence_origin_set(&pr, n2, "p", 1, 1), TALLY_OK);
    ck_assert_uint_eq(total("p"), 12);
    ck_assert_uint_eq(total("q"), 0);

    /* n3 falls silent: its viewers are dropped, n2's and ours stay. */
    presence_origin_expire(&pr, n3);
    ck_assert(!n3->alive);
    ck_assert_uint_eq(total("p"), 2);
    presence_origin_expire(&pr, n2);
    ck_assert_uint_eq(total("p"), 1);
    /* It comes back. */
    presence_origin_begin(&pr, n3, 0, UINT64_MAX);
    presence_origin_set(&pr, n3, "p", 1, 4);
    ck_assert_uint_eq(total("p"), 5);
}
END_TEST

START_TEST(test_flush_reports_changes_only)
{
    view("a", "p");
    view("b", "p");
    view("a", "q");
    struct flushed f = flush();
    ck_assert_int_eq(f.n, 2);
    ck_assert_uint_eq(flushed_total(&f, "p"), 2);
    ck_assert_uint_eq(flushed_total(&f, "q"), 1);
    ck_assert_int_eq(flush().n, 0);

    /* A change undone before the flush publishes nothing. */
    view("c", "p");
    unview("c", "p");
    ck_assert_int_eq(flush().n, 0);

    /* A remote count that changes the total is published. */
    struct tally_origin *o = presence_origin(&pr, "n2");
    presence_origin_begin(&pr, o, 0, UINT64_MAX);
    presence_origin_set(&pr, o, "p", 1, 3);
    f = flush();
    ck_assert_int_eq(f.n, 1);
    ck_assert_uint_eq(flushed_total(&f, "p"), 5);
    /* The same announcement again: no change, nothing published. */
    presence_origin_begin(&pr, o, 0, UINT64_MAX);
    presence_origin_set(&pr, o, "p", 1, 3);
    ck_assert_int_eq(flush().n, 0);
}
END_TEST

START_TEST(test_flush_frees_zero_pages)
{
    view("a", "p");
    struct tally_origin *o = presence_origin(&pr, "n2");
    presence_origin_begin(&pr, o, 0, UINT64_MAX);
    presence_origin_set(&pr, o, "r", 1, 2);
    flush();
    ck_assert_ptr_nonnull(pr.pages);
    presence_drop_client(&pr, "a");
    presence_origin_expire(&pr, o);
    struct flushed f = flush();
    ck_assert_int_eq(f.n, 2);
    ck_assert_uint_eq(flushed_total(&f, "p"), 0);
    ck_assert_uint_eq(flushed_total(&f, "r"), 0);
    ck_assert_ptr_null(pr.pages); /* both pages freed once their 0 went out */
    ck_assert_ptr_null(pr.viewers);
    /* A page that is created and emptied before any flush is freed quietly
     * or published as 0, never left behind. */
    view("x", "tmp");
    unview("x", "tmp");
    flush();
    ck_assert_ptr_null(pr.pages);
    /* A zero count for an unknown page creates nothing. */
    presence_origin_begin(&pr, o, 0, UINT64_MAX);
    ck_assert_int_eq(presence_origin_set(&pr, o, "ghost", 5, 0), TALLY_OK);
    ck_assert_ptr_null(pr.pages);
}
END_TEST

START_TEST(test_many_pages_and_clients)
{
    char client[16], page[16];
    for (int c = 0; c < 200; c++) {
        snprintf(client, sizeof(client), "cl%d", c);
        for (int p = 0; p <= c % 10; p++) {
            snprintf(page, sizeof(page), "pg%d", p);
            ck_assert(view(client, page));
        }
    }
    for (int p = 0; p < 10; p++) {
        snprintf(page, sizeof(page), "pg%d", p);
        ck_assert_uint_eq(total(page), (uint64_t)(200 - 20 * p));
    }
    for (int c = 0; c < 200; c++) {
        snprintf(client, sizeof(client), "cl%d", c);
        presence_drop_client(&pr, client);
    }
    ck_assert_uint_eq(pr.nviews, 0);
    flush();
    ck_assert_ptr_null(pr.pages);
}
END_TEST

static void count_published(const char *page, size_t len, uint64_t n, void *ud)
{
    (void)page, (void)len, (void)n;
    (*(uint64_t *)ud)++;
}

/* One client viewing a great many pages (one anonymous client may hold every
 * view max_views allows): each view, unview and repeat is a lookup, not a
 * walk of the client's pages. With the walk these 200,000 views ran past the
 * test's timeout (4 s); they take about half a second. */
START_TEST(test_one_client_viewing_many_pages)
{
    enum { PAGES = 200000 };
    char page[16];
    presence_free(&pr);
    presence_init(&pr, PAGES + 1);
    for (int p = 0; p < PAGES; p++) {
        snprintf(page, sizeof(page), "p%d", p);
        ck_assert(view("hog", page));
    }
    ck_assert(!view("hog", "p0") && !view("hog", "p199999"));
    ck_assert_uint_eq(pr.nviews, PAGES);
    ck_assert(view("other", "p7"));
    ck_assert_uint_eq(total("p7"), 2);
    ck_assert_uint_eq(total("p12345"), 1);
    unview("hog", "p7");
    unview("hog", "p7");
    unview("nobody", "p8");
    ck_assert_uint_eq(total("p7"), 1);
    ck_assert_uint_eq(total("p8"), 1);
    ck_assert(view("hog", "p7"));
    presence_drop_client(&pr, "hog");
    ck_assert_uint_eq(pr.nviews, 1);
    ck_assert_uint_eq(total("p7"), 1);
    ck_assert_uint_eq(total("p8"), 0);
    uint64_t published = 0;
    presence_flush(&pr, now_ms, budget, count_published, &published);
    ck_assert_uint_eq(published, PAGES); /* every page once: p7 at 1, the others at 0 */
    published = 0;
    presence_each_local(&pr, count_published, &published);
    ck_assert_uint_eq(published, 1);
    ck_assert(view("hog", "p8")); /* a dropped client views anew */
}
END_TEST

START_TEST(test_flush_paces_a_large_audience)
{
    char client[16];
    budget = 1000; /* deliveries a second: 100 viewers get a count every 100 ms */
    for (int c = 0; c < 100; c++) {
        snprintf(client, sizeof(client), "cl%d", c);
        view(client, "big");
    }
    view("solo", "small");
    now_ms = 1000;
    struct flushed f = flush();
    ck_assert_int_eq(f.n, 2);
    ck_assert_uint_eq(flushed_total(&f, "big"), 100);
    view("late", "big");
    view("late", "small");
    now_ms = 1050; /* within big's 100 ms: small is published, big waits */
    f = flush();
    ck_assert_int_eq(f.n, 1);
    ck_assert_uint_eq(flushed_total(&f, "small"), 2);
    ck_assert_ptr_nonnull(pr.dirty_head);
    unview("late", "big");
    view("later", "big");
    now_ms = 1099;
    ck_assert_int_eq(flush().n, 0);
    now_ms = 1101; /* the last change, whatever happened meanwhile, is published */
    f = flush();
    ck_assert_int_eq(f.n, 1);
    ck_assert_uint_eq(flushed_total(&f, "big"), 101);
    ck_assert_ptr_null(pr.dirty_head);
    /* back to the published value before the time is up: nothing to publish */
    view("x", "big");
    unview("x", "big");
    now_ms = 1102;
    ck_assert_int_eq(flush().n, 0);
    ck_assert_ptr_null(pr.dirty_head);
}
END_TEST

/* ==== Replay to a neighbour that restarted ==== */

/* origin's PRESENCE of seq covering every hash, with n of pages, as p
 * receives it. */
static struct tally_origin *announce(struct tally_presence *p, const char *origin, uint64_t inc,
                                     uint64_t seq, const char *const *pages, const uint64_t *counts,
                                     uint32_t n)
{
    struct wire_buf b = {0};
    struct wire_presence wp;
    bool taken;
    wire_presence_begin(&b, origin, inc, seq, 0, UINT64_MAX, n);
    for (uint32_t i = 0; i < n; i++)
        wire_presence_page(&b, pages[i], strlen(pages[i]), counts[i]);
    ck_assert_int_eq(wire_decode_presence(b.data, b.len, &wp), TALLY_OK);
    struct tally_origin *o = presence_origin(p, origin);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(presence_apply(p, o, &wp, &taken), TALLY_OK);
    ck_assert(taken);
    wire_presence_free(&wp);
    wbuf_free(&b);
    return o;
}

/* A hub's listing of o, heard at now. */
static void listed(struct tally_origin *o, uint64_t inc, uint64_t seq, uint64_t digest,
                   uint64_t age_ms, uint64_t now)
{
    struct wire_presence_edge e = {o->node_id, strlen(o->node_id), inc, seq, digest, age_ms};
    presence_origin_listed(o, &e, now);
}

struct replayed {
    int n;
    struct wire_buf msg[4];
};

static void keep(const struct wire_buf *msg, void *ud)
{
    struct replayed *r = ud;
    ck_assert_int_lt(r->n, 4);
    r->msg[r->n] = (struct wire_buf){0};
    wbuf_bytes(&r->msg[r->n++], msg->data, msg->len);
}

START_TEST(test_replay_sends_each_origin_held_as_listed)
{
    const char *const pages[] = {"p", "q"};
    const uint64_t counts[] = {3, 2};
    struct tally_origin *e1 = announce(&pr, "e1", 7, 40, pages, counts, 2);
    listed(e1, 7, 40, e1->digest, 300, 10000); /* as its carrier holds it: replayed */
    struct tally_origin *e2 = announce(&pr, "e2", 7, 12, pages, counts, 1);
    listed(e2, 7, 13, 0xbad, 0, 10000); /* a relay lost: wanted here, not replayed */
    struct tally_origin *e3 = announce(&pr, "e3", 1, 5, pages + 1, counts + 1, 1);
    listed(e3, 1, 5, e3->digest, 0, 10000);
    presence_origin_expire(&pr, e3); /* dead */
    struct tally_origin *h = announce(&pr, "h", 2, 9, pages, counts, 2);
    listed(h, 2, 9, h->digest, 0, 10000);        /* the neighbour itself */
    announce(&pr, "e4", 1, 1, pages, counts, 2); /* never listed */
    struct tally_origin *e5 = announce(&pr, "e5", 1, 3, pages, counts, 1);
    listed(e5, 1, 3, e5->digest, 9000, 10000); /* last heard at 1,000: silent too long at 20,000 */
    ck_assert_uint_eq(total("p"), 5 * 3);      /* e1, e2, h, e4, e5 */

    struct wire_buf b = {0};
    struct replayed r = {0};
    uint32_t from = 0;
    ck_assert_uint_eq(presence_replay(&pr, "n1", "h", 20000, 15000, 4096, &from, 100, &b, keep, &r),
                      1);
    ck_assert_uint_eq(from, UINT32_MAX); /* every origin seen */
    ck_assert_int_eq(r.n, 1);
    struct wire_presence wp;
    ck_assert_int_eq(wire_decode_presence(r.msg[0].data, r.msg[0].len, &wp), TALLY_OK);
    ck_assert_uint_eq(wp.origin_len, 2);
    ck_assert_mem_eq(wp.origin, "e1", 2);
    const char *origin;
    ck_assert_uint_eq(wire_presence_origin(r.msg[0].data, r.msg[0].len, &origin), 2);
    ck_assert_mem_eq(origin, "e1", 2);
    ck_assert_uint_eq(wp.incarnation, 7);
    ck_assert_uint_eq(wp.seq, 40);
    ck_assert(wp.lo == 0 && wp.hi == UINT64_MAX);
    ck_assert_uint_eq(wp.npages, 2);
    ck_assert_uint_eq(wp.nlisted, 1);
    ck_assert_uint_eq(wp.nwants, 0);
    ck_assert(wp.listed[0].incarnation == 7 && wp.listed[0].seq == 40);
    ck_assert_uint_eq(wp.listed[0].digest, e1->digest);
    ck_assert_uint_eq(wp.listed[0].age_ms, 20000 - 9700);

    /* The restarted node takes it: e1's counts, its digest, its carrier's
     * time of hearing, and nothing to want. */
    struct tally_presence rx;
    bool taken;
    presence_init(&rx, 1000);
    struct tally_origin *o = presence_origin(&rx, "e1");
    ck_assert_int_eq(presence_apply(&rx, o, &wp, &taken), TALLY_OK);
    ck_assert(taken);
    presence_origin_listed(o, &wp.listed[0], 20000);
    ck_assert_uint_eq(presence_total(&rx, "p", 1), 3);
    ck_assert_uint_eq(presence_total(&rx, "q", 1), 2);
    ck_assert_uint_eq(o->digest, e1->digest);
    ck_assert_uint_eq(o->last_heard_ms, 9700);
    ck_assert(!presence_origin_wanted(o, 20000, 15000));
    /* One that holds a newer message of e1 keeps it. */
    struct tally_presence newer;
    presence_init(&newer, 1000);
    const uint64_t one[] = {1};
    announce(&newer, "e1", 7, 41, pages, one, 1);
    o = presence_origin(&newer, "e1");
    ck_assert_int_eq(presence_apply(&newer, o, &wp, &taken), TALLY_OK);
    ck_assert(!taken);
    ck_assert_uint_eq(presence_total(&newer, "p", 1), 1);
    wire_presence_free(&wp);
    presence_free(&newer);
    presence_free(&rx);

    /* One that does not fit in a message is left to the wants. */
    from = 0;
    ck_assert_uint_eq(presence_replay(&pr, "n1", "h", 20000, 15000, 40, &from, 100, &b, keep, &r),
                      0);
    ck_assert_int_eq(r.n, 1);
    /* In steps of two origins' slots: e1 (slot 0) in the first, none in the
     * next two, and the last step says so. */
    from = 0;
    ck_assert_uint_eq(e1->slot, 0);
    ck_assert_uint_eq(presence_replay(&pr, "n1", "h", 20000, 15000, 4096, &from, 2, &b, keep, &r),
                      1);
    ck_assert_uint_eq(from, 2);
    wbuf_free(&r.msg[1]);
    ck_assert_uint_eq(presence_replay(&pr, "n1", "h", 20000, 15000, 4096, &from, 2, &b, keep, &r),
                      0);
    ck_assert_uint_eq(from, 4);
    ck_assert_uint_eq(presence_replay(&pr, "n1", "h", 20000, 15000, 4096, &from, 2, &b, keep, &r),
                      0);
    ck_assert_uint_eq(from, UINT32_MAX); /* six origins: slots 4 and 5 were the last */
    ck_assert_uint_eq(presence_replay(&pr, "n1", "h", 20000, 15000, 4096, &from, 2, &b, keep, &r),
                      0);
    ck_assert_int_eq(r.n, 2);
    wbuf_free(&r.msg[0]);
    wbuf_free(&b);
}
END_TEST

/* A hub holds an origin per edge of the tree, and each page a cell per
 * origin that counts it: not a column per origin up to the last that did.
 * With columns these 5,000 pages, each counted at two of 20,000 edges (one
 * among the last), took some 800 MB and ran past the test's timeout; with
 * cells they take what they hold. The counts: each page's total is its
 * origins' sum; an origin expired, set to 0 or announcing all its pages
 * anew leaves the pages it no longer counts (its list of them, not a walk
 * of every page); a page at 0 is freed; a replay of the last origin
 * carries its page. */
START_TEST(test_a_page_holds_only_the_origins_counting_it)
{
    enum { ORIGINS = 20000, PAGES = 5000 };
    static struct tally_origin *o[ORIGINS];
    char id[16], page[16];
    for (int i = 0; i < ORIGINS; i++) {
        snprintf(id, sizeof(id), "e%d", i);
        o[i] = presence_origin(&pr, id);
        ck_assert_ptr_nonnull(o[i]);
    }
    size_t heap = mallinfo2().uordblks;
    for (int p = 0; p < PAGES; p++) {
        int len = snprintf(page, sizeof(page), "p%d", p);
        ck_assert_int_eq(
            presence_origin_set(&pr, o[(p * 7) % ORIGINS], page, (size_t)len, 1 + (uint64_t)p % 3),
            TALLY_OK);
        ck_assert_int_eq(presence_origin_set(&pr, o[ORIGINS - 1 - p], page, (size_t)len, 10),
                         TALLY_OK);
    }
    size_t grew = mallinfo2().uordblks - heap;
    ck_assert_uint_lt(grew, 8u << 20); /* about 2 MB: pages, names, two cells each */
    ck_assert_uint_eq(total("p0"), 1 + 10);
    ck_assert_uint_eq(total("p4000"), 1 + 4000 % 3 + 10);
    /* e0 counts p0 alone: the same count again changes nothing */
    ck_assert_int_eq(presence_origin_set(&pr, o[0], "p0", 2, 1), TALLY_OK);
    ck_assert_uint_eq(total("p0"), 11);
    /* the last origin expires: only its page loses its count */
    presence_origin_expire(&pr, o[ORIGINS - 1]);
    ck_assert_uint_eq(o[ORIGINS - 1]->digest, 0);
    ck_assert_uint_eq(total("p0"), 1);
    ck_assert_uint_eq(total("p1"), 2 + 10);
    /* an announcement of all its pages replaces e7's counts: it counts p1,
     * and p2 to p5 too, then announces p3 alone */
    for (int p = 2; p <= 5; p++) {
        int len = snprintf(page, sizeof(page), "p%d", p);
        ck_assert_int_eq(presence_origin_set(&pr, o[7], page, (size_t)len, 5), TALLY_OK);
    }
    ck_assert_uint_eq(o[7]->ncounted, 5);
    presence_origin_begin(&pr, o[7], 0, UINT64_MAX);
    ck_assert_uint_eq(o[7]->ncounted, 0);
    ck_assert_uint_eq(o[7]->digest, 0);
    ck_assert_int_eq(presence_origin_set(&pr, o[7], "p3", 2, 6), TALLY_OK);
    ck_assert_uint_eq(total("p1"), 10);
    ck_assert_uint_eq(total("p2"), 3 + 10);
    ck_assert_uint_eq(total("p3"), 1 + 10 + 6);
    ck_assert_uint_eq(total("p5"), 3 + 10);
    /* e0 sets its count to 0: p0 goes to 0, and the flush frees it */
    ck_assert_int_eq(presence_origin_set(&pr, o[0], "p0", 2, 0), TALLY_OK);
    ck_assert_uint_eq(o[0]->digest, 0);
    ck_assert_uint_eq(total("p0"), 0);
    uint64_t published = 0;
    presence_flush(&pr, now_ms, budget, count_published, &published);
    ck_assert_uint_eq(published, PAGES); /* p0 as 0, and freed */
    ck_assert_int_eq(presence_origin_set(&pr, o[5], "p0", 2, 4), TALLY_OK);
    ck_assert_uint_eq(total("p0"), 4); /* made again, with no cell of before */
    /* the origin of the second-last slot, held as its carrier lists it, is
     * replayed with its one page */
    struct tally_origin *last = o[ORIGINS - 2];
    last->alive = true;
    last->incarnation = 1;
    last->seq = 1;
    listed(last, 1, 1, last->digest, 0, 10000);
    struct wire_buf b = {0};
    struct replayed r = {0};
    uint32_t from = ORIGINS - 2;
    ck_assert_uint_eq(presence_replay(&pr, "n1", "h", 10000, 15000, 4096, &from, 1, &b, keep, &r),
                      1);
    struct wire_presence wp;
    ck_assert_int_eq(wire_decode_presence(r.msg[0].data, r.msg[0].len, &wp), TALLY_OK);
    ck_assert_uint_eq(wp.npages, 1);
    ck_assert_uint_eq(wp.pages[0].len, 2);
    ck_assert_mem_eq(wp.pages[0].page, "p1", 2);
    ck_assert_uint_eq(wp.pages[0].count, 10);
    wire_presence_free(&wp);
    wbuf_free(&r.msg[0]);
    wbuf_free(&b);
}
END_TEST

/* Regression (simulator, groups of hubs, seed 1000 of tests/sim/run.sh's
 * groups mix): a carrier lists a dead edge at every heartbeat until it
 * forgets it, and each copy reaches a hub by its own way, its age as when
 * it left. Taken as a raise from each, the slowest counted: 711 ms past the
 * carrier's hearing, from a copy that crossed five bridges, and the edge
 * stayed counted past peer_timeout_ms. A copy whose hearing is no later
 * than the arrival of the entry the hearing held was taken from tells of
 * no later hearing; the current carrier's may lower it. */
START_TEST(test_later_copies_of_a_hearing_do_not_raise_it)
{
    const char *const pages[] = {"p"};
    const uint64_t counts[] = {2};
    struct tally_origin *o = announce(&pr, "e1", 1, 40, pages, counts, 1);
    listed(o, 1, 40, o->digest, 785, 17093); /* straight from its carrier */
    ck_assert_uint_eq(o->last_heard_ms, 16308);
    listed(o, 1, 0, 0, 11785, 28233); /* a carrier not relayed yet: only raises */
    ck_assert_uint_eq(o->last_heard_ms, 16308);
    listed(o, 1, 40, o->digest, 12785, 29795); /* five bridges */
    ck_assert_uint_eq(o->last_heard_ms, 16308);
    listed(o, 1, 40, o->digest, 13790, 30095); /* the current carrier, sooner */
    ck_assert_uint_eq(o->last_heard_ms, 16305);
    listed(o, 1, 40, o->digest, 100, 31000); /* heard again */
    ck_assert_uint_eq(o->last_heard_ms, 30900);
}
END_TEST

Suite *presence_suite(void)
{
    Suite *s = suite_create("presence");
    TCase *tc = tcase_create("presence");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_views_counted_once);
    tcase_add_test(tc, test_max_views);
    tcase_add_test(tc, test_each_local);
    tcase_add_test(tc, test_origins_summed_and_replaced);
    tcase_add_test(tc, test_flush_reports_changes_only);
    tcase_add_test(tc, test_flush_frees_zero_pages);
    tcase_add_test(tc, test_many_pages_and_clients);
    tcase_add_test(tc, test_a_page_holds_only_the_origins_counting_it);
    tcase_add_test(tc, test_one_client_viewing_many_pages);
    tcase_add_test(tc, test_flush_paces_a_large_audience);
    tcase_add_test(tc, test_replay_sends_each_origin_held_as_listed);
    tcase_add_test(tc, test_later_copies_of_a_hearing_do_not_raise_it);
    suite_add_tcase(s, tc);
    return s;
}
