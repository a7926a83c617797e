/*
 * test_control.c - the JSON that clients read: the answer on an MQTT v5
 * Response Topic (applied, duplicate, unchanged or refused; see README).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <cjson/cJSON.h>

#include "tally.h"

/* What the last change under test reported (the functions' *changed). */
static bool changed;

/* b's bytes as a NUL-terminated string (b is a test's own buffer). */
static const char *text(struct wire_buf *b)
{
    wbuf_u8(b, '\0');
    b->len--;
    return (const char *)b->data;
}

/* ==== Answers ==== */

START_TEST(test_answer_applied_duplicate_unchanged)
{
    struct wire_buf b = {0};
    answer_json(&b, "likes", 5, RESULT_APPLIED, 42, TALLY_OK);
    ck_assert_str_eq(text(&b), "{\"name\":\"likes\",\"result\":\"applied\",\"value\":42}");
    answer_json(&b, "likes", 5, RESULT_DUPLICATE, -7, TALLY_OK);
    ck_assert_str_eq(text(&b), "{\"name\":\"likes\",\"result\":\"duplicate\",\"value\":-7}");
    answer_json(&b, "m", 1, RESULT_UNCHANGED, TALLY_MAX_SAFE, TALLY_OK);
    ck_assert_str_eq(text(&b),
                     "{\"name\":\"m\",\"result\":\"unchanged\",\"value\":9007199254740991}");
    wbuf_free(&b);
}
END_TEST

START_TEST(test_answer_refused)
{
    struct wire_buf b = {0};
    answer_json(&b, "likes", 5, RESULT_REFUSED, 0, TALLY_E_DELTA_RANGE);
    ck_assert_str_eq(
        text(&b), "{\"name\":\"likes\",\"result\":\"refused\",\"reason\":\"delta_out_of_range\"}");
    /* An invalid name is left out: it may be anything a topic level holds. */
    answer_json(&b, NULL, 0, RESULT_REFUSED, 0, TALLY_E_NAME_DOLLAR);
    ck_assert_str_eq(text(&b), "{\"result\":\"refused\",\"reason\":\"name_starts_with_dollar\"}");
    wbuf_free(&b);
}
END_TEST

START_TEST(test_answer_escapes_the_name)
{
    struct wire_buf b = {0};
    answer_json(&b, "a\"b\\c", 5, RESULT_APPLIED, 1, TALLY_OK);
    ck_assert_str_eq(text(&b), "{\"name\":\"a\\\"b\\\\c\",\"result\":\"applied\",\"value\":1}");
    /* Only len bytes of the name are read (topic levels are not NUL-terminated). */
    answer_json(&b, "likes/inc", 5, RESULT_APPLIED, 1, TALLY_OK);
    ck_assert_str_eq(text(&b), "{\"name\":\"likes\",\"result\":\"applied\",\"value\":1}");
    wbuf_free(&b);
}
END_TEST

/* ==== Natural order ==== */

static int nat(const char *a, const char *b)
{
    int c = name_natural_cmp(a, strlen(a), b, strlen(b));
    return c < 0 ? -1 : c > 0;
}

START_TEST(test_natural_order)
{
    ck_assert_int_eq(nat("c2", "c10"), -1);
    ck_assert_int_eq(nat("c10", "c2"), 1);
    ck_assert_int_eq(nat("c10", "c10"), 0);
    ck_assert_int_eq(nat("a", "b"), -1);
    ck_assert_int_eq(nat("a", "a1"), -1);       /* a prefix comes first */
    ck_assert_int_eq(nat("9", "10"), -1);       /* whole names of digits */
    ck_assert_int_eq(nat("v1.9", "v1.10"), -1); /* several runs */
    ck_assert_int_eq(nat("x007", "x7"), -1);    /* equal numbers: byte order decides */
    ck_assert_int_eq(nat("x7", "x007"), 1);
    ck_assert_int_eq(nat("x08", "x7"), 1); /* leading zeros do not make it smaller */
    ck_assert_int_eq(nat("page-2b", "page-2a"), 1);
    ck_assert_int_eq(nat("a99999999999999999999999", "a100000000000000000000000"), -1);
    ck_assert_int_eq(nat("A", "a"), -1);             /* case-sensitive, as bytes */
    ck_assert_int_eq(nat("caf\xc3\xa9", "cafe"), 1); /* UTF-8 bytes are not digits */
    ck_assert_int_eq(nat("z", "\xc3\xa9"), -1);
}
END_TEST

/* ==== The control API ==== */

/* A table of the named counters, each counter i at value i + 1. */
static void fill(struct tally_table *t, const char *const *names, size_t n)
{
    uint32_t self;
    table_init(t, 1000, 10);
    ck_assert_int_eq(table_replica(t, "n1", strlen("n1"), 1, &self), TALLY_OK);
    table_set_clock(t, 0);
    for (size_t i = 0; i < n; i++) {
        struct tally_counter *c;
        ck_assert_int_eq(table_get(t, names[i], strlen(names[i]), TABLE_LOCAL, &c), TALLY_OK);
        ck_assert_int_eq(table_add(t, c, self, (int64_t)i + 1, &changed), TALLY_OK);
        ck_assert(changed);
    }
}

/* Runs one command; returns its "data" (or the response, on "error"). */
static cJSON *run(struct tally_table *t, const char *command, cJSON **whole)
{
    char req[512];
    snprintf(req, sizeof(req), "{\"commands\":[%s]}", command);
    struct control_req rq = {.t = t, .node_id = "n1", .max_bytes = 65536, .admin = true};
    char *out = control_process(req, strlen(req), &rq);
    free(rq.changed);
    ck_assert_ptr_nonnull(out);
    *whole = cJSON_Parse(out);
    free(out);
    cJSON *resp = cJSON_GetArrayItem(cJSON_GetObjectItem(*whole, "responses"), 0);
    cJSON *data = cJSON_GetObjectItem(resp, "data");
    return data ? data : resp;
}

/* The names listed in data's "counters", joined by spaces. */
/* One request holds at most 10 commands; a longer one runs none. */
START_TEST(test_a_request_holds_at_most_ten_commands)
{
    struct tally_table t;
    const char *names[] = {"a"};
    fill(&t, names, 1);
    for (int n = 10; n <= 11; n++) {
        char req[1024] = "{\"commands\":[";
        for (int i = 0; i < n; i++)
            strcat(req, i ? ",{\"command\":\"listCounters\"}" : "{\"command\":\"listCounters\"}");
        strcat(req, "]}");
        struct control_req rq = {.t = &t, .node_id = "n1", .max_bytes = 65536, .admin = true};
        char *out = control_process(req, strlen(req), &rq);
        cJSON *whole = cJSON_Parse(out);
        cJSON *responses = cJSON_GetObjectItem(whole, "responses");
        if (n == 10) {
            ck_assert_int_eq(cJSON_GetArraySize(responses), 10);
        } else {
            ck_assert_int_eq(cJSON_GetArraySize(responses), 1);
            ck_assert_str_eq(
                cJSON_GetObjectItem(cJSON_GetArrayItem(responses, 0), "error")->valuestring,
                "a request holds at most 10 commands");
        }
        cJSON_Delete(whole);
        free(out);
        free(rq.changed);
    }
    table_free(&t);
}
END_TEST

static const char *names_of(const cJSON *data, char *out, size_t len)
{
    const cJSON *item;
    out[0] = '\0';
    cJSON_ArrayForEach(item, cJSON_GetObjectItem(data, "counters"))
    {
        if (out[0])
            strncat(out, " ", len - strlen(out) - 1);
        strncat(out, cJSON_GetObjectItem(item, "name")->valuestring, len - strlen(out) - 1);
    }
    return out;
}

static const char *const mixed[] = {"c10", "c2", "c1", "b", "c100", "c9", "votes-3", "votes-20"};

START_TEST(test_list_natural_order_and_paging)
{
    struct tally_table t;
    cJSON *whole;
    char got[256];
    fill(&t, mixed, 8);
    cJSON *data = run(&t, "{\"command\":\"listCounters\"}", &whole);
    ck_assert_str_eq(names_of(data, got, sizeof(got)), "b c1 c2 c9 c10 c100 votes-3 votes-20");
    ck_assert_int_eq(cJSON_GetObjectItem(data, "totalCount")->valueint, 8);
    ck_assert_int_eq(cJSON_GetObjectItem(data, "matched")->valueint, 8);
    cJSON_Delete(whole);

    data = run(&t,
               "{\"command\":\"listCounters\",\"prefix\":\"c\",\"offset\":1,\"count\":3"
               "}",
               &whole);
    ck_assert_str_eq(names_of(data, got, sizeof(got)), "c2 c9 c10");
    ck_assert_int_eq(cJSON_GetObjectItem(data, "totalCount")->valueint, 8);
    ck_assert_int_eq(cJSON_GetObjectItem(data, "matched")->valueint, 5);
    ck_assert_int_eq(cJSON_GetObjectItem(data, "offset")->valueint, 1);
    /* values come with the names: c2 was the second added */
    ck_assert_int_eq(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(data, "counters"), 0), "value")
            ->valueint,
        2);
    cJSON_Delete(whole);

    /* The last page is short; past the end is empty. */
    data = run(&t,
               "{\"command\":\"listCounters\",\"prefix\":\"c\",\"offset\":3,\"count\":3"
               "}",
               &whole);
    ck_assert_str_eq(names_of(data, got, sizeof(got)), "c10 c100");
    cJSON_Delete(whole);
    data = run(&t, "{\"command\":\"listCounters\",\"offset\":8}", &whole);
    ck_assert_str_eq(names_of(data, got, sizeof(got)), "");
    ck_assert_int_eq(cJSON_GetObjectItem(data, "matched")->valueint, 8);
    cJSON_Delete(whole);

    /* Byte order on request; a prefix is case-sensitive. */
    data = run(&t, "{\"command\":\"listCounters\",\"prefix\":\"c1\",\"order\":\"name\"}", &whole);
    ck_assert_str_eq(names_of(data, got, sizeof(got)), "c1 c10 c100");
    cJSON_Delete(whole);
    data = run(&t, "{\"command\":\"listCounters\",\"prefix\":\"C\"}", &whole);
    ck_assert_int_eq(cJSON_GetObjectItem(data, "matched")->valueint, 0);
    cJSON_Delete(whole);
    data = run(&t, "{\"command\":\"listCounters\",\"order\":\"random\"}", &whole);
    ck_assert_ptr_nonnull(cJSON_GetObjectItem(data, "error"));
    cJSON_Delete(whole);
    table_free(&t);
}
END_TEST

START_TEST(test_list_pages_cover_everything_once)
{
    /* 2,500 counters in pages of the maximum size (1000): every name once,
     * in order, whatever order the hash table holds them in. */
    struct tally_table t;
    uint32_t self;
    table_init(&t, 10000, 10);
    ck_assert_int_eq(table_replica(&t, "n1", strlen("n1"), 1, &self), TALLY_OK);
    for (int i = 2499; i >= 0; i--) {
        char name[16];
        struct tally_counter *c;
        int len = snprintf(name, sizeof(name), "k%d", i);
        ck_assert_int_eq(table_get(&t, name, (size_t)len, TABLE_LOCAL, &c), TALLY_OK);
    }
    int seen = 0;
    for (int offset = 0; offset < 3000; offset += 1000) {
        char req[128];
        cJSON *whole;
        snprintf(req, sizeof(req), "{\"command\":\"listCounters\",\"offset\":%d,\"count\":5000}",
                 offset);
        cJSON *data = run(&t, req, &whole);
        const cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItem(data, "counters"))
        {
            char want[16];
            snprintf(want, sizeof(want), "k%d", seen++);
            ck_assert_str_eq(cJSON_GetObjectItem(item, "name")->valuestring, want);
        }
        cJSON_Delete(whole);
    }
    ck_assert_int_eq(seen, 2500);
    table_free(&t);
}
END_TEST

START_TEST(test_top_counters_by_recent_rate)
{
    struct tally_table t;
    uint32_t self;
    cJSON *whole;
    char got[256];
    table_init(&t, 100, 10);
    ck_assert_int_eq(table_replica(&t, "n1", strlen("n1"), 1, &self), TALLY_OK);
    const char *names[] = {"slow", "fast", "old", "idle"};
    struct tally_counter *c[4];
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(table_get(&t, names[i], strlen(names[i]), TABLE_LOCAL, &c[i]), TALLY_OK);
    /* "old" took 1000 a minute ago; then, for 20 s, "fast" 50 a second
     * (one -5 in ten: the total's absolute change counts) and "slow" 2. */
    table_set_clock(&t, 0);
    table_add(&t, c[2], self, 1000, &changed);
    for (int ds = 600; ds < 800; ds++) {
        table_set_clock(&t, (uint64_t)ds * 100);
        table_add(&t, c[1], self, ds % 10 == 0 ? -5 : 5, &changed);
        if (ds % 5 == 0)
            table_add(&t, c[0], self, 1, &changed);
    }
    cJSON *data = run(&t, "{\"command\":\"topCounters\"}", &whole);
    ck_assert_str_eq(names_of(data, got, sizeof(got)), "fast slow old");
    cJSON *list = cJSON_GetObjectItem(data, "counters");
    double fast = cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "rate")->valuedouble;
    double slow = cJSON_GetObjectItem(cJSON_GetArrayItem(list, 1), "rate")->valuedouble;
    double old = cJSON_GetObjectItem(cJSON_GetArrayItem(list, 2), "rate")->valuedouble;
    ck_assert_msg(fast > 40 && fast < 55, "fast %f", fast); /* 50/s for 2 time constants */
    ck_assert_msg(slow > 1.6 && slow < 2.2, "slow %f", slow);
    ck_assert_msg(old > 0 && old < 1.0, "old %f", old); /* 100/s decayed over 80 s */
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(list, 0), "value")->valueint, 50 * 16);
    cJSON_Delete(whole);
    data = run(&t, "{\"command\":\"topCounters\",\"count\":1}", &whole);
    ck_assert_str_eq(names_of(data, got, sizeof(got)), "fast");
    cJSON_Delete(whole);
    /* Five minutes later nothing is moving. */
    table_set_clock(&t, 380000);
    data = run(&t, "{\"command\":\"topCounters\"}", &whole);
    ck_assert_str_eq(names_of(data, got, sizeof(got)), "");
    cJSON_Delete(whole);
    table_free(&t);
}
END_TEST

START_TEST(test_read_only_requests)
{
    const char *yes[] = {
        "{\"commands\":[]}",
        "{\"commands\":[{\"command\":\"listCounters\"},{\"command\":\"getCounter\"},"
        "{"
        "\"command\":\"topCounters\"}]}",
    };
    const char *no[] = {
        "{\"commands\":[{\"command\":\"listCounters\"},{\"command\":\"resetCounter\"}]}",
        "{\"commands\":[{\"command\":\"deleteCounter\",\"name\":\"x\"}]}",
        "{\"commands\":[{\"command\":\"frobnicate\"}]}",
        "{\"commands\":[{}]}",
        "{\"commands\":{}}",
        "not json",
        "",
    };
    for (size_t i = 0; i < sizeof(yes) / sizeof(*yes); i++)
        ck_assert_msg(control_read_only(yes[i], strlen(yes[i])), "%s", yes[i]);
    for (size_t i = 0; i < sizeof(no) / sizeof(*no); i++)
        ck_assert_msg(!control_read_only(no[i], strlen(no[i])), "%s", no[i]);
}
END_TEST

/* The stats document (issue 11 #3): built by a pure function, read as JSON
 * whatever its order, bounded by max_message_bytes with the peers that do
 * not fit counted. */
START_TEST(test_stats_document)
{
    struct tally_table t;
    struct tally_dedup d;
    struct tally_presence pr;
    struct tally_stats st = {.applied = 7, .duplicates = 2};
    struct tally_counter *c;
    struct wire_buf b = {0};
    table_init(&t, 10, 10);
    ck_assert_int_eq(dedup_init(&d, 16), TALLY_OK);
    presence_init(&pr, 10);
    ck_assert_int_eq(table_get(&t, "a", 1, TABLE_LOCAL, &c), TALLY_OK);
    st.rejected[TALLY_E_ID] = 3;
    st.rejected[TALLY_E_TOO_LARGE] = 1;
    const char *ids[200];
    for (int i = 0; i < 200; i++) {
        char id[TALLY_NODE_ID_MAX + 1];
        snprintf(id, sizeof(id), "peer-%03d-%s", i, "long-node-name-of-a-big-cluster");
        struct tally_origin *o = presence_origin(&pr, id);
        o->alive = i % 2;
        o->last_heard_ms = 1000;
        ids[i] = o->node_id; /* a hub with 200 neighbours, in order */
    }
    struct stats_view v = {.node_id = "n1",
                           .persist = "/var/lib/\"tally\"",
                           .incarnation = 42,
                           .seq = 9,
                           .time_ms = 1700000000000ULL,
                           .uptime_ms = 5000,
                           .st = &st,
                           .table = &t,
                           .dedup = &d,
                           .presence = &pr,
                           .peer_ids = ids,
                           .npeers = 200,
                           .max_counters = 10,
                           .max_devices = 10,
                           .max_viewers = 10,
                           .peer_timeout_ms = 3000,
                           .stats_interval_ms = 1000,
                           .over_counters = true,
                           .now_ms = 1500,
                           .max_bytes = 4096};
    node_stats_json(&b, &v);
    ck_assert(!b.failed);
    ck_assert_uint_le(b.len, 4096);
    cJSON *doc = cJSON_ParseWithLength((const char *)b.data, b.len);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "incarnation")->valuestring, "42");
    ck_assert_int_eq(cJSON_GetObjectItem(doc, "seq")->valueint, 9);
    ck_assert_int_eq(cJSON_GetObjectItem(doc, "counters")->valueint, 1);
    /* readers (tally health) judge peers and staleness by this node's own settings */
    ck_assert_int_eq(cJSON_GetObjectItem(doc, "peer_timeout_ms")->valueint, 3000);
    ck_assert_int_eq(cJSON_GetObjectItem(doc, "stats_interval_ms")->valueint, 1000);
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "persist")->valuestring, "/var/lib/\"tally\"");
    const cJSON *rej = cJSON_GetObjectItem(doc, "rejected");
    ck_assert_int_eq(cJSON_GetArraySize(rej), TALLY_E__COUNT - 1);
    ck_assert_int_eq(cJSON_GetObjectItem(rej, "bad_id")->valueint, 3);
    ck_assert_int_eq(cJSON_GetObjectItem(rej, "message_too_large")->valueint, 1);
    ck_assert_int_eq(cJSON_GetObjectItem(doc, "rejected_total")->valueint, 4);
    const cJSON *over = cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "limits"), "over");
    ck_assert_int_eq(cJSON_GetArraySize(over), 1);
    ck_assert_str_eq(cJSON_GetArrayItem(over, 0)->valuestring, "max_counters");
    int listed = cJSON_GetArraySize(cJSON_GetObjectItem(doc, "peers"));
    int omitted = cJSON_GetObjectItem(doc, "peers_omitted")->valueint;
    ck_assert_int_gt(listed, 10);
    ck_assert_int_gt(omitted, 0);
    ck_assert_int_eq(listed + omitted, 200);
    const cJSON *nodes = cJSON_GetObjectItem(doc, "nodes");
    ck_assert_int_eq(cJSON_GetObjectItem(nodes, "heard")->valueint, 200);
    ck_assert_int_eq(cJSON_GetObjectItem(nodes, "alive")->valueint, 100);
    const cJSON *peer = cJSON_GetObjectItem(doc, "peers")->child;
    ck_assert_int_eq(cJSON_GetObjectItem(peer, "last_heard_ms")->valuedouble,
                     1700000000000.0 - 500);
    cJSON_Delete(doc);
    /* with room for all of them, none is left out */
    v.max_bytes = 100000;
    node_stats_json(&b, &v);
    doc = cJSON_ParseWithLength((const char *)b.data, b.len);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(doc, "peers")), 200);
    ck_assert_int_eq(cJSON_GetObjectItem(doc, "peers_omitted")->valueint, 0);
    cJSON_Delete(doc);
    wbuf_free(&b);
    presence_free(&pr);
    dedup_free(&d);
    table_free(&t);
}
END_TEST

/* Issue 12: stats are flooded to every node, and each listed every origin it
 * had heard, so N nodes sent N documents of N peers each. A document lists
 * this node's neighbours only (each once, a neighbour not heard yet left
 * out) and counts the rest: its size does not grow with the cluster. */
static size_t leaf_stats_len(int others, cJSON **doc)
{
    struct tally_table t;
    struct tally_dedup d;
    struct tally_presence pr;
    struct tally_stats st = {0};
    struct wire_buf b = {0};
    table_init(&t, 10, 10);
    ck_assert_int_eq(dedup_init(&d, 16), TALLY_OK);
    presence_init(&pr, 10);
    presence_origin(&pr, "hub")->alive = true;
    for (int i = 0; i < others; i++) {
        char id[TALLY_NODE_ID_MAX + 1];
        snprintf(id, sizeof(id), "leaf%d", i);
        presence_origin(&pr, id)->alive = i % 3 != 0;
    }
    /* two bridges to the hub, and a bridge whose node has not spoken yet */
    const char *ids[] = {"hub", "hub", "hub-2"};
    struct stats_view v = {.node_id = "leaf-self",
                           .persist = "memory",
                           .st = &st,
                           .table = &t,
                           .dedup = &d,
                           .presence = &pr,
                           .peer_ids = ids,
                           .npeers = 3,
                           .time_ms = 1700000000000ULL,
                           .max_bytes = 65536};
    node_stats_json(&b, &v);
    ck_assert(!b.failed);
    *doc = cJSON_ParseWithLength((const char *)b.data, b.len);
    ck_assert_ptr_nonnull(*doc);
    size_t len = b.len;
    wbuf_free(&b);
    presence_free(&pr);
    dedup_free(&d);
    table_free(&t);
    return len;
}

START_TEST(test_stats_list_only_neighbours)
{
    cJSON *small, *big;
    size_t small_len = leaf_stats_len(20, &small), big_len = leaf_stats_len(50, &big);
    /* 21 and 51 origins heard, 14 and 34 alive: not one byte more */
    ck_assert_uint_eq(big_len, small_len);
    const cJSON *peers = cJSON_GetObjectItem(big, "peers");
    ck_assert_int_eq(cJSON_GetArraySize(peers), 1);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(peers, "hub"), "alive")));
    ck_assert_int_eq(cJSON_GetObjectItem(big, "peers_omitted")->valueint, 0);
    const cJSON *nodes = cJSON_GetObjectItem(big, "nodes");
    ck_assert_int_eq(cJSON_GetObjectItem(nodes, "heard")->valueint, 51);
    ck_assert_int_eq(cJSON_GetObjectItem(nodes, "alive")->valueint, 1 + 33);
    nodes = cJSON_GetObjectItem(small, "nodes");
    ck_assert_int_eq(cJSON_GetObjectItem(nodes, "heard")->valueint, 21);
    ck_assert_int_eq(cJSON_GetObjectItem(nodes, "alive")->valueint, 1 + 13);
    cJSON_Delete(small);
    cJSON_Delete(big);
}
END_TEST

/* ==== The state document's bound ==== */

static int64_t json_int(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsNumber(v), "%s is not a number", key);
    return (int64_t)v->valuedouble;
}

/* A counter "big" with ndev devices dev-0.. (device i's total: i / 3 + 1, so
 * every total but the largest is shared by three devices and ties are
 * ordered by name) and nnodes nodes n0.. each +(i + 1) -1. */
static struct tally_counter *big_counter(struct tally_table *t, uint32_t ndev, uint32_t nnodes)
{
    struct tally_counter *c;
    table_init(t, 10, ndev + 1);
    ck_assert_int_eq(table_get(t, "big", 3, TABLE_LOCAL, &c), TALLY_OK);
    for (uint32_t i = 0; i < nnodes; i++) {
        char id[16];
        uint32_t r;
        int len = snprintf(id, sizeof(id), "n%u", i);
        ck_assert_int_eq(table_replica(t, id, (size_t)len, 1, &r), TALLY_OK);
        ck_assert_int_eq(table_add(t, c, r, (int64_t)i + 1, &changed), TALLY_OK);
        ck_assert_int_eq(table_add(t, c, r, -1, &changed), TALLY_OK);
    }
    for (uint32_t i = 0; i < ndev; i++) {
        char id[16];
        uint32_t d;
        int len = snprintf(id, sizeof(id), "dev-%u", i);
        ck_assert_int_eq(table_device(t, id, (size_t)len, DEVICE_LOCAL, &d), TALLY_OK);
        ck_assert_int_eq(table_merge_device(t, c, d, i / 3 + 1, true, &changed), TALLY_OK);
    }
    return c;
}

/* Device i's place in the document's order: largest total first, the three
 * of one total in natural order of their names (dev-3i, dev-3i+1, ...). */
static uint32_t device_rank(uint32_t i, uint32_t ndev)
{
    uint32_t groups = (ndev + 2) / 3, g = i / 3, before = 0;
    for (uint32_t k = g + 1; k < groups; k++)
        before += k * 3 + 3 <= ndev ? 3 : ndev - k * 3;
    return before + i % 3;
}

static cJSON *state_of(struct tally_table *t, struct tally_counter *c, struct state_page pg,
                       struct wire_buf *out, uint32_t *listed)
{
    struct tally_sums s;
    table_sums(t, c, &s);
    *listed = counter_state_json(out, t, c, &s, "hub-1", 1795828380135ULL, &pg);
    ck_assert(!out->failed);
    ck_assert_uint_le(out->len, pg.max_bytes);
    cJSON *doc = cJSON_ParseWithLength((const char *)out->data, out->len);
    ck_assert_msg(doc, "not JSON: %.*s", (int)out->len, (const char *)out->data);
    ck_assert_int_eq(json_int(doc, "value"), s.value);
    ck_assert_int_eq(json_int(doc, "p"), s.p);
    ck_assert_int_eq(json_int(doc, "n"), s.n);
    ck_assert_int_eq(json_int(doc, "devices_total"), s.devices);
    ck_assert_int_eq(json_int(doc, "devices_omitted"),
                     counter_ndevs(c) - cJSON_GetArraySize(cJSON_GetObjectItem(doc, "devices")));
    ck_assert_int_eq(*listed, cJSON_GetArraySize(cJSON_GetObjectItem(doc, "devices")));
    return doc;
}

/* Checks that doc's devices are the ranks from..from+listed of the order. */
static void check_device_page(const cJSON *doc, uint32_t from, uint32_t ndev)
{
    const cJSON *d;
    uint32_t k = from;
    cJSON_ArrayForEach(d, cJSON_GetObjectItem(doc, "devices"))
    {
        uint32_t i = (uint32_t)strtoul(d->string + strlen("dev-"), NULL, 10);
        ck_assert_int_eq(device_rank(i, ndev), k);
        ck_assert_int_eq((int64_t)d->valuedouble, i / 3 + 1);
        k++;
    }
}

START_TEST(test_state_document_within_max_bytes)
{
    /* 2,000 devices take about 25 KB listed whole: at 4096 bytes the
     * largest come first, as many as fit, and the rest are counted. */
    struct tally_table t;
    struct tally_counter *c = big_counter(&t, 2000, 3);
    struct wire_buf out = {0};
    uint32_t listed;
    cJSON *doc = state_of(&t, c, (struct state_page){4096, 0, UINT32_MAX}, &out, &listed);
    ck_assert_uint_gt(listed, 100);
    ck_assert_uint_lt(listed, 2000);
    ck_assert_uint_gt(out.len, 4096 - 40); /* stops only when the next does not fit */
    check_device_page(doc, 0, 2000);
    ck_assert_int_eq(json_int(doc, "devices_total"), 3 * (666 * 667 / 2) + 2 * 667);
    /* three nodes take little room: whole, largest first */
    ck_assert_int_eq(json_int(doc, "nodes_omitted"), 0);
    const cJSON *nodes = cJSON_GetObjectItem(doc, "nodes");
    ck_assert_int_eq(cJSON_GetArraySize(nodes), 3);
    ck_assert_str_eq(nodes->child->string, "n2");
    ck_assert_int_eq(json_int(nodes->child, "p"), 3);
    ck_assert_int_eq(json_int(nodes->child, "n"), 1);
    cJSON_Delete(doc);

    /* A large bound lists every device, and the same counter looks as it
     * did before the bound, apart from the two counts. */
    doc = state_of(&t, c, (struct state_page){1 << 20, 0, UINT32_MAX}, &out, &listed);
    ck_assert_int_eq(listed, 2000);
    ck_assert_int_eq(json_int(doc, "devices_omitted"), 0);
    check_device_page(doc, 0, 2000);
    cJSON_Delete(doc);
    wbuf_free(&out);
    table_free(&t);
}
END_TEST

START_TEST(test_state_document_bounds_nodes_too)
{
    /* A hub's counter written at 1,000 edges has 1,000 nodes: with 2,000
     * devices beside them, the nodes get half the room, the largest first,
     * and p and n stay the sums over all of them. */
    struct tally_table t;
    struct tally_counter *c = big_counter(&t, 2000, 1000);
    struct wire_buf out = {0};
    uint32_t listed;
    cJSON *doc = state_of(&t, c, (struct state_page){8192, 0, UINT32_MAX}, &out, &listed);
    ck_assert_int_eq(json_int(doc, "p"), 1000 * 1001 / 2);
    ck_assert_int_eq(json_int(doc, "n"), 1000);
    const cJSON *nodes = cJSON_GetObjectItem(doc, "nodes"), *e;
    int nlisted = cJSON_GetArraySize(nodes);
    ck_assert_int_gt(nlisted, 50);
    ck_assert_int_eq(json_int(doc, "nodes_omitted"), 1000 - nlisted);
    ck_assert_uint_gt(listed, 50);
    uint32_t want = 999;
    cJSON_ArrayForEach(e, nodes)
    {
        char id[16];
        snprintf(id, sizeof(id), "n%u", want--);
        ck_assert_str_eq(e->string, id);
    }
    check_device_page(doc, 0, 2000);
    cJSON_Delete(doc);

    /* Without devices the nodes take all the room. */
    struct tally_table t2;
    c = big_counter(&t2, 0, 1000);
    doc = state_of(&t2, c, (struct state_page){8192, 0, UINT32_MAX}, &out, &listed);
    ck_assert_int_gt(cJSON_GetArraySize(cJSON_GetObjectItem(doc, "nodes")), nlisted + 50);
    cJSON_Delete(doc);
    wbuf_free(&out);
    table_free(&t2);
    table_free(&t);
}
END_TEST

START_TEST(test_state_document_pages_cover_every_device_once)
{
    struct tally_table t;
    struct tally_counter *c = big_counter(&t, 2000, 2);
    struct wire_buf out = {0};
    uint32_t listed, from = 0;
    char seen[2000] = {0};
    while (from < 2000) {
        cJSON *doc = state_of(&t, c, (struct state_page){4096, from, 300}, &out, &listed);
        ck_assert_uint_gt(listed, 0);
        ck_assert_uint_le(listed, 300);
        check_device_page(doc, from, 2000);
        const cJSON *d;
        cJSON_ArrayForEach(d, cJSON_GetObjectItem(doc, "devices"))
        {
            uint32_t i = (uint32_t)strtoul(d->string + strlen("dev-"), NULL, 10);
            ck_assert_int_eq(seen[i]++, 0);
        }
        cJSON_Delete(doc);
        from += listed;
    }
    ck_assert_int_eq(from, 2000);
    /* past the end: none listed, all counted as omitted */
    cJSON *doc = state_of(&t, c, (struct state_page){4096, 5000, 300}, &out, &listed);
    ck_assert_int_eq(listed, 0);
    ck_assert_int_eq(json_int(doc, "devices_omitted"), 2000);
    cJSON_Delete(doc);
    wbuf_free(&out);
    table_free(&t);
}
END_TEST

/* getCounter pages the devices (deviceOffset, deviceCount: default 100, at
 * most 1000) and the replicas, and says how many there are of each. */
START_TEST(test_get_counter_pages)
{
    struct tally_table t;
    struct tally_counter *c = big_counter(&t, 2500, 250);
    (void)c;
    cJSON *whole;
    cJSON *data = run(&t, "{\"command\":\"getCounter\",\"name\":\"big\"}", &whole);
    ck_assert_int_eq(json_int(data, "deviceOffset"), 0);
    ck_assert_int_eq(json_int(data, "deviceTotalCount"), 2500);
    ck_assert_int_eq(json_int(data, "replicaOffset"), 0);
    ck_assert_int_eq(json_int(data, "replicaTotalCount"), 250);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(data, "replicas")), 100);
    const cJSON *doc = cJSON_GetObjectItem(data, "counter");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(doc, "devices")), 100);
    ck_assert_int_eq(json_int(doc, "devices_omitted"), 2400);
    check_device_page(doc, 0, 2500);
    cJSON_Delete(whole);

    char seen[2500] = {0}, req[160];
    uint32_t from = 0, pages = 0;
    while (from < 2500) {
        snprintf(req, sizeof(req),
                 "{\"command\":\"getCounter\",\"name\":\"big\",\"deviceOffset\":%u,"
                 "\"deviceCount\":5000}",
                 from);
        data = run(&t, req, &whole);
        doc = cJSON_GetObjectItem(data, "counter");
        const cJSON *d;
        uint32_t n = 0;
        check_device_page(doc, from, 2500);
        cJSON_ArrayForEach(d, cJSON_GetObjectItem(doc, "devices"))
        {
            ck_assert_int_eq(seen[strtoul(d->string + strlen("dev-"), NULL, 10)]++, 0);
            n++;
        }
        ck_assert_uint_gt(n, 0);
        ck_assert_uint_le(n, 1000);
        cJSON_Delete(whole);
        from += n;
        pages++;
    }
    ck_assert_uint_ge(pages, 3);

    uint32_t rseen = 0;
    for (uint32_t rfrom = 0; rfrom < 250;) {
        snprintf(req, sizeof(req),
                 "{\"command\":\"getCounter\",\"name\":\"big\",\"replicaOffset\":%u,"
                 "\"replicaCount\":1000,\"deviceCount\":0}",
                 rfrom);
        data = run(&t, req, &whole);
        int n = cJSON_GetArraySize(cJSON_GetObjectItem(data, "replicas"));
        ck_assert_int_gt(n, 0);
        const cJSON *r = cJSON_GetArrayItem(cJSON_GetObjectItem(data, "replicas"), 0);
        char id[16];
        snprintf(id, sizeof(id), "n%u", rfrom);
        ck_assert_str_eq(cJSON_GetObjectItem(r, "node")->valuestring, id);
        cJSON_Delete(whole);
        rfrom += (uint32_t)n;
        rseen += (uint32_t)n;
    }
    ck_assert_int_eq(rseen, 250);
    table_free(&t);
}
END_TEST

/* getCounter pages the folds too (foldOffset, foldCount), within an eighth
 * of max_message_bytes: a hub holding the past lives of 600 restarted edges
 * answered with all 600 in one message, whatever max_message_bytes. */
START_TEST(test_get_counter_pages_folds)
{
    struct tally_table t;
    struct tally_counter *c = big_counter(&t, 0, 0);
    for (uint32_t i = 0; i < 600; i++) {
        char id[24];
        uint32_t r;
        bool rose;
        int len = snprintf(id, sizeof(id), "edge-%04u", i);
        ck_assert_int_eq(table_replica(&t, id, (size_t)len, 1, &r), TALLY_OK);
        struct tally_fold f = {.replica = r, .p = i + 1, .n = 0};
        ck_assert_int_eq(table_merge_fold(&t, c, &f, &rose), TALLY_OK);
    }
    cJSON *whole;
    cJSON *data = run(&t, "{\"command\":\"getCounter\",\"name\":\"big\"}", &whole);
    ck_assert_int_eq(json_int(data, "foldOffset"), 0);
    ck_assert_int_eq(json_int(data, "foldTotalCount"), 600);
    int first = cJSON_GetArraySize(cJSON_GetObjectItem(data, "folds"));
    ck_assert_int_gt(first, 0);
    ck_assert_int_le(first, 100);
    cJSON_Delete(whole);

    char seen[600] = {0}, req[160];
    uint32_t from = 0, pages = 0;
    while (from < 600) {
        snprintf(req, sizeof(req),
                 "{\"command\":\"getCounter\",\"name\":\"big\",\"foldOffset\":%u,"
                 "\"foldCount\":1000}",
                 from);
        data = run(&t, req, &whole);
        ck_assert_int_eq(json_int(data, "foldOffset"), from);
        const cJSON *f;
        uint32_t n = 0;
        cJSON_ArrayForEach(f, cJSON_GetObjectItem(data, "folds"))
        {
            unsigned long i = strtoul(cJSON_GetObjectItem(f, "node")->valuestring + 5, NULL, 10);
            ck_assert_int_eq(seen[i]++, 0);
            ck_assert_int_eq(json_int(f, "p"), (int64_t)i + 1);
            n++;
        }
        ck_assert_uint_gt(n, 0);
        cJSON_Delete(whole);
        from += n;
        pages++;
    }
    ck_assert_uint_ge(pages, 2);
    table_free(&t);
}
END_TEST

/* A light hub passes on a request that resets or deletes (group.c, "Light
 * hubs"), and runs any other itself. */
START_TEST(test_a_request_that_resets_is_told_apart)
{
    static const char *const resets[] = {
        "{\"commands\":[{\"command\":\"resetCounter\",\"name\":\"x\"}]}",
        "{\"commands\":[{\"command\":\"getCounter\",\"name\":\"x\"},"
        "{\"command\":\"deleteCounter\",\"name\":\"x\"}]}"};
    static const char *const others[] = {
        "{\"commands\":[{\"command\":\"listCounters\"}]}",
        "{\"commands\":{\"command\":\"resetCounter\"}}",
        "{\"commands\":[{\"command\":\"resetCounterX\"},{\"command\":7}]}", "not json", ""};
    for (size_t i = 0; i < sizeof(resets) / sizeof(resets[0]); i++)
        ck_assert_msg(control_resets(resets[i], strlen(resets[i])), "%s", resets[i]);
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
        ck_assert_msg(!control_resets(others[i], strlen(others[i])), "%s", others[i]);
}
END_TEST

Suite *control_suite(void)
{
    Suite *s = suite_create("control");
    TCase *tc = tcase_create("answers");
    tcase_add_test(tc, test_answer_applied_duplicate_unchanged);
    tcase_add_test(tc, test_answer_refused);
    tcase_add_test(tc, test_answer_escapes_the_name);
    suite_add_tcase(s, tc);
    tc = tcase_create("commands");
    tcase_add_test(tc, test_natural_order);
    tcase_add_test(tc, test_list_natural_order_and_paging);
    tcase_add_test(tc, test_list_pages_cover_everything_once);
    tcase_add_test(tc, test_top_counters_by_recent_rate);
    tcase_add_test(tc, test_read_only_requests);
    tcase_add_test(tc, test_a_request_holds_at_most_ten_commands);
    tcase_add_test(tc, test_stats_document);
    tcase_add_test(tc, test_stats_list_only_neighbours);
    tcase_add_test(tc, test_state_document_within_max_bytes);
    tcase_add_test(tc, test_state_document_bounds_nodes_too);
    tcase_add_test(tc, test_state_document_pages_cover_every_device_once);
    tcase_add_test(tc, test_get_counter_pages);
    tcase_add_test(tc, test_get_counter_pages_folds);
    tcase_add_test(tc, test_a_request_that_resets_is_told_apart);
    suite_add_tcase(s, tc);
    return s;
}
