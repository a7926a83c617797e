/*
 * test_schedule.c - the output scheduler (schedule.c): the refresh queue's
 * order and uniqueness, forgetting a queued counter, the token bucket's rate
 * and burst, and a page's interval for its audience.
 */
#include <stdio.h>

#include <check.h>

#include "tally.h"

static struct tally_table table;
static struct tally_refresh r;

static void setup(void)
{
    table_init(&table, 100000, 10);
    refresh_init(&r, 1000, 0);
}

static void teardown(void)
{
    refresh_free(&r);
    table_free(&table);
}

static struct tally_counter *counter(int i)
{
    char name[16];
    struct tally_counter *c;
    int len = snprintf(name, sizeof(name), "c%d", i);
    ck_assert_int_eq(table_get(&table, name, (size_t)len, TABLE_LOCAL, &c), TALLY_OK);
    return c;
}

START_TEST(test_queue_is_fifo_and_holds_a_counter_once)
{
    struct tally_counter *a = counter(1), *b = counter(2), *c = counter(3);
    ck_assert_ptr_null(refresh_pop(&r));
    refresh_push(&r, a);
    refresh_push(&r, b);
    refresh_push(&r, a); /* keeps its older place */
    refresh_push(&r, c);
    ck_assert_uint_eq(r.len, 3);
    ck_assert(a->queued && b->queued && c->queued);
    ck_assert_ptr_eq(refresh_pop(&r), a);
    ck_assert(!a->queued);
    refresh_push(&r, a); /* queued again: now last */
    ck_assert_ptr_eq(refresh_pop(&r), b);
    ck_assert_ptr_eq(refresh_pop(&r), c);
    ck_assert_ptr_eq(refresh_pop(&r), a);
    ck_assert_ptr_null(refresh_pop(&r));
}
END_TEST

START_TEST(test_queue_grows_across_the_wrap)
{
    /* Interleave pushes and pops so head wraps before the ring grows. */
    int next_in = 0, next_out = 0;
    for (int round = 0; round < 50; round++) {
        for (int k = 0; k < 100; k++)
            ck_assert_int_eq(refresh_push(&r, counter(next_in++)), TALLY_OK);
        for (int k = 0; k < 60; k++)
            ck_assert_ptr_eq(refresh_pop(&r), counter(next_out++));
    }
    while (next_out < next_in)
        ck_assert_ptr_eq(refresh_pop(&r), counter(next_out++));
    ck_assert_ptr_null(refresh_pop(&r));
}
END_TEST

START_TEST(test_forget_skips_a_queued_counter)
{
    struct tally_counter *a = counter(1), *b = counter(2);
    refresh_push(&r, a);
    refresh_push(&r, b);
    refresh_forget(&r, a);
    ck_assert(!a->queued);
    ck_assert_ptr_eq(refresh_pop(&r), b);
    ck_assert_ptr_null(refresh_pop(&r));
    refresh_forget(&r, b); /* not queued: nothing */
}
END_TEST

START_TEST(test_bucket_rate_and_burst)
{
    /* 1000 a second, at most a tenth of a second saved up */
    ck_assert_uint_eq(refresh_grant(&r, 0), 0);
    ck_assert_uint_eq(refresh_grant(&r, 10), 10);
    refresh_spend(&r, 4);
    ck_assert_uint_eq(refresh_grant(&r, 10), 6);
    ck_assert_uint_eq(refresh_grant(&r, 60000), 100); /* idle for a minute: still 100 */
    refresh_spend(&r, 100);
    uint64_t granted = 0;
    for (uint64_t ms = 60001; ms <= 70000; ms++) { /* ten seconds, spending all */
        uint32_t g = refresh_grant(&r, ms);
        refresh_spend(&r, g);
        granted += g;
    }
    ck_assert_uint_eq(granted, 10000);
    refresh_spend(&r, 5); /* more than held: nothing left, never negative */
    ck_assert_uint_eq(refresh_grant(&r, 70000), 0);
}
END_TEST

START_TEST(test_slow_bucket_grants_whole_publishes)
{
    struct tally_refresh slow;
    refresh_init(&slow, 3, 0); /* 3 a second: the bucket holds one */
    ck_assert_uint_eq(refresh_grant(&slow, 300), 0);
    ck_assert_uint_eq(refresh_grant(&slow, 334), 1);
    ck_assert_uint_eq(refresh_grant(&slow, 100000), 1);
    refresh_free(&slow);
}
END_TEST

START_TEST(test_page_interval_follows_the_audience)
{
    ck_assert_uint_eq(page_interval_ms(0, 10000), 0);
    ck_assert_uint_eq(page_interval_ms(100, 10000), 10);
    ck_assert_uint_eq(page_interval_ms(10000, 10000), 1000);
    ck_assert_uint_eq(page_interval_ms(1000000, 10000), 100000);
}
END_TEST

Suite *schedule_suite(void)
{
    Suite *s = suite_create("schedule");
    TCase *tc = tcase_create("schedule");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_queue_is_fifo_and_holds_a_counter_once);
    tcase_add_test(tc, test_queue_grows_across_the_wrap);
    tcase_add_test(tc, test_forget_skips_a_queued_counter);
    tcase_add_test(tc, test_bucket_rate_and_burst);
    tcase_add_test(tc, test_slow_bucket_grants_whole_publishes);
    tcase_add_test(tc, test_page_interval_follows_the_audience);
    suite_add_tcase(s, tc);
    return s;
}
