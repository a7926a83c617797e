/*
 * test_interest.c - MQTT topic-filter matching and the index of who watches
 * which counter (interest.c): scopes of filters, per-client undo on
 * unsubscribe and disconnect, and what the change callback is told.
 */
#include <stdio.h>
#include <string.h>

#include <check.h>

#include "tally.h"

/* What the last change under test reported (the functions' *changed). */
static bool changed;

/* ==== The matcher ==== */

START_TEST(test_matcher)
{
    static const struct {
        const char *filter, *topic;
        bool match;
    } cases[] = {
        {"counters/x", "counters/x", true},
        {"counters/x", "counters/y", false},
        {"counters/x", "counters/x/state", false},
        {"counters/+", "counters/x", true},
        {"counters/+", "counters/x/state", false},
        {"counters/+", "counters", false},
        {"counters/+", "counters/", true}, /* an empty level is a level */
        {"counters/#", "counters", true},  /* # matches the parent level */
        {"counters/#", "counters/x/state", true},
        {"counters/x/#", "counters/x", true},
        {"counters/x/#", "counters/xy", false},
        {"#", "counters/x", true},
        {"#", "$SYS/broker/uptime", false}, /* no wildcard first level on $ topics */
        {"+/x", "$tally/x", false},
        {"$tally/#", "$tally/v1/sync/a", true},
        {"+/+/state", "counters/x/state", true},
        {"+/+/state", "counters/x/inc", false},
        {"+/x/state", "counters/x/state", true},
        {"+/x/state", "counters/y/state", false},
        {"+", "counters", true},
        {"+", "counters/x", false},
        {"counters/+/+", "counters/x", false},
        {"a/b", "a/bc", false},
        {"a/bc", "a/b", false},
        {"/+", "/x", true},
        {"+/+", "/x", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ck_assert_msg(topic_matches(cases[i].filter, cases[i].topic) == cases[i].match,
                      "'%s' against '%s'", cases[i].filter, cases[i].topic);
}
END_TEST

/* ==== The index ==== */

static struct tally_interest in;

static void setup(void)
{
    interest_init(&in, "counters");
}

static void teardown(void)
{
    interest_free(&in);
}

static bool total(const char *name)
{
    return interest_total_watched(&in, name, strlen(name));
}

static bool state(const char *name)
{
    return interest_state_watched(&in, name, strlen(name));
}

/* What the callback was told, in order: names, "*" for every state. */
struct told {
    int n;
    char what[8][32];
};

static void tell(const char *name, size_t len, void *ud)
{
    struct told *t = ud;
    ck_assert_int_lt(t->n, 8);
    if (name)
        snprintf(t->what[t->n++], sizeof(t->what[0]), "%.*s", (int)len, name);
    else
        strcpy(t->what[t->n++], "*");
}

/* Whether the filter watches a counter and is new for client. */
static bool sub(const char *client, const char *filter)
{
    bool added;
    ck_assert_int_eq(interest_subscribe(&in, client, filter, NULL, NULL, &added), TALLY_OK);
    return added;
}

START_TEST(test_scopes)
{
    ck_assert(sub("a", "counters/x"));
    ck_assert(total("x") && !state("x") && !total("y"));
    ck_assert(sub("a", "+/y/state"));
    ck_assert(state("y") && !total("y") && !state("x"));
    ck_assert(sub("a", "counters/z/#"));
    ck_assert(state("z") && total("z"));
    ck_assert_uint_eq(in.all_totals + in.all_states, 0);
    /* filters that watch no counter are not stored */
    ck_assert(!sub("a", "presence/p"));
    ck_assert(!sub("a", "counters/x/inc"));
    ck_assert(!sub("a", "counters"));
    ck_assert(!sub("a", "$tally/#"));
    ck_assert(!sub("a", "+"));
    ck_assert(!sub("a", "other/+"));
    ck_assert(!sub("v", "presence/p"));
    ck_assert(sub("b", "counters/+"));
    ck_assert(total("anything") && !state("anything"));
    ck_assert(sub("b", "+/+/state"));
    ck_assert(state("anything"));
    ck_assert_uint_eq(in.all_totals, 1);
    ck_assert_uint_eq(in.all_states, 1);
    ck_assert(sub("c", "#"));
    ck_assert(sub("c", "counters/#"));
    ck_assert(sub("c", "+/#"));
    ck_assert_uint_eq(in.all_totals, 4);
    ck_assert_uint_eq(in.all_states, 4);
    /* what holds an edge's view: a filter naming the counter, never a wildcard */
    ck_assert(interest_named(&in, "x", 1) && interest_named(&in, "y", 1));
    ck_assert(!interest_named(&in, "anything", 8));
    interest_unsubscribe(&in, "a", "counters/x", NULL, NULL);
    ck_assert(total("x") && !interest_named(&in, "x", 1));
}
END_TEST

START_TEST(test_shared_subscriptions_watch_as_their_filter)
{
    ck_assert(sub("a", "$share/g/counters/+"));
    ck_assert(total("x") && !state("x"));
    interest_unsubscribe(&in, "a", "$share/g/counters/+", NULL, NULL);
    ck_assert(!total("x"));
}
END_TEST

START_TEST(test_unsubscribe_and_disconnect_undo_exactly)
{
    ck_assert(sub("a", "counters/x"));
    ck_assert(!sub("a", "counters/x")); /* the same subscription again */
    ck_assert(sub("b", "counters/x"));
    ck_assert(sub("b", "counters/x/state"));
    interest_unsubscribe(&in, "a", "counters/x", NULL, NULL);
    ck_assert(total("x"));                                    /* b still watches */
    interest_unsubscribe(&in, "a", "counters/x", NULL, NULL); /* unknown now: nothing */
    interest_unsubscribe(&in, "nobody", "counters/x", NULL, NULL);
    ck_assert(total("x") && state("x"));
    interest_drop_client(&in, "b", NULL, NULL);
    ck_assert(!total("x") && !state("x"));
    ck_assert_ptr_null(in.names);
    ck_assert_ptr_null(in.clients);
    ck_assert(sub("c", "counters/#"));
    ck_assert(sub("c", "counters/+"));
    interest_drop_client(&in, "c", NULL, NULL);
    ck_assert_uint_eq(in.all_totals, 0);
    ck_assert_uint_eq(in.all_states, 0);
    ck_assert_ptr_null(in.clients);
}
END_TEST

START_TEST(test_callback_names_what_changed)
{
    struct told t = {0};
    interest_subscribe(&in, "a", "counters/x", tell, &t, &changed);
    interest_subscribe(&in, "a", "counters/+/state", tell, &t, &changed);
    interest_subscribe(&in, "b", "#", tell, &t, &changed); /* all states were watched already */
    interest_subscribe(&in, "b", "presence/p", tell, &t, &changed);
    ck_assert_int_eq(t.n, 2);
    ck_assert_str_eq(t.what[0], "x");
    ck_assert_str_eq(t.what[1], "*");
    t.n = 0;
    interest_drop_client(&in, "a", tell, &t);
    ck_assert_int_eq(t.n, 1); /* x; every state is still watched through b's # */
    ck_assert_str_eq(t.what[0], "x");
    ck_assert(total("x")); /* through # */
    t.n = 0;
    interest_unsubscribe(&in, "b", "#", tell, &t);
    ck_assert_int_eq(t.n, 1);
    ck_assert_str_eq(t.what[0], "*");
    ck_assert(!total("x") && !state("x"));
}
END_TEST

START_TEST(test_many_clients_and_names)
{
    char client[32], filter[64];
    for (int c = 0; c < 300; c++) {
        snprintf(client, sizeof(client), "cl%d", c);
        for (int n = 0; n < 20; n++) {
            snprintf(filter, sizeof(filter), "counters/n%d%s", (c + n) % 50, n % 2 ? "/state" : "");
            sub(client, filter);
        }
    }
    for (int c = 0; c < 300; c += 2) {
        snprintf(client, sizeof(client), "cl%d", c);
        interest_drop_client(&in, client, NULL, NULL);
    }
    for (int c = 1; c < 300; c += 2) {
        snprintf(client, sizeof(client), "cl%d", c);
        for (int n = 0; n < 20; n++) {
            snprintf(filter, sizeof(filter), "counters/n%d%s", (c + n) % 50, n % 2 ? "/state" : "");
            interest_unsubscribe(&in, client, filter, NULL, NULL);
        }
    }
    ck_assert_ptr_null(in.names);
    ck_assert_ptr_null(in.clients);
}
END_TEST

Suite *interest_suite(void)
{
    Suite *s = suite_create("interest");
    TCase *tc = tcase_create("interest");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_matcher);
    tcase_add_test(tc, test_scopes);
    tcase_add_test(tc, test_shared_subscriptions_watch_as_their_filter);
    tcase_add_test(tc, test_unsubscribe_and_disconnect_undo_exactly);
    tcase_add_test(tc, test_callback_names_what_changed);
    tcase_add_test(tc, test_many_clients_and_names);
    suite_add_tcase(s, tc);
    return s;
}
