/*
 * test_dedup.c - the idempotency window (dedup.c): membership, eviction of
 * the oldest id first, keys scoped per counter, and the open-addressing index
 * checked against a plain FIFO model, collisions and deletions included.
 */
#include <stdio.h>
#include <string.h>

#include <check.h>

#include "tally.h"

static struct tally_key key_of(const char *name, unsigned i)
{
    char id[24];
    int n = snprintf(id, sizeof(id), "id-%u", i);
    return dedup_key(name, strlen(name), id, (size_t)n);
}

START_TEST(test_insert_contains)
{
    struct tally_dedup d;
    ck_assert_int_eq(dedup_init(&d, 10), TALLY_OK);
    struct tally_key k = dedup_key("c", 1, "k-123", 5);
    ck_assert(!dedup_contains(&d, k));
    dedup_insert(&d, k);
    ck_assert(dedup_contains(&d, k));
    dedup_insert(&d, k); /* a repeat is not a second entry */
    ck_assert_uint_eq(d.count, 1);
    ck_assert(!dedup_contains(&d, dedup_key("c", 1, "k-124", 5)));
    dedup_free(&d);
}
END_TEST

START_TEST(test_keys_scoped_per_counter)
{
    struct tally_dedup d;
    ck_assert_int_eq(dedup_init(&d, 10), TALLY_OK);
    dedup_insert(&d, dedup_key("a", 1, "id", 2));
    ck_assert(dedup_contains(&d, dedup_key("a", 1, "id", 2)));
    ck_assert(!dedup_contains(&d, dedup_key("b", 1, "id", 2)));
    /* The boundary between name and id matters. */
    dedup_insert(&d, dedup_key("ab", 2, "c", 1));
    ck_assert(!dedup_contains(&d, dedup_key("a", 1, "bc", 2)));
    dedup_free(&d);
}
END_TEST

START_TEST(test_window_three)
{
    struct tally_dedup d;
    ck_assert_int_eq(dedup_init(&d, 3), TALLY_OK);
    struct tally_key k[6];
    for (unsigned i = 0; i < 6; i++)
        k[i] = key_of("w", i);
    for (int i = 0; i < 3; i++)
        dedup_insert(&d, k[i]);
    for (int i = 0; i < 3; i++)
        ck_assert(dedup_contains(&d, k[i]));
    dedup_insert(&d, k[3]); /* evicts k0, the oldest */
    ck_assert(!dedup_contains(&d, k[0]));
    ck_assert(dedup_contains(&d, k[1]) && dedup_contains(&d, k[2]) && dedup_contains(&d, k[3]));
    dedup_insert(&d, k[1]); /* already there: does not refresh its age */
    dedup_insert(&d, k[4]); /* evicts k1 */
    ck_assert(!dedup_contains(&d, k[1]));
    ck_assert(dedup_contains(&d, k[2]) && dedup_contains(&d, k[3]) && dedup_contains(&d, k[4]));
    dedup_insert(&d, k[0]); /* an evicted id is new again */
    ck_assert(dedup_contains(&d, k[0]));
    ck_assert(!dedup_contains(&d, k[2]));
    ck_assert_uint_eq(d.count, 3);
    dedup_free(&d);
}
END_TEST

START_TEST(test_window_default_size)
{
    struct tally_dedup d;
    ck_assert_int_eq(dedup_init(&d, 100000), TALLY_OK);
    for (unsigned i = 0; i < 150000; i++)
        dedup_insert(&d, key_of("big", i));
    ck_assert_uint_eq(d.count, 100000);
    for (unsigned i = 0; i < 50000; i++)
        ck_assert_msg(!dedup_contains(&d, key_of("big", i)), "id %u still present", i);
    for (unsigned i = 50000; i < 150000; i++)
        ck_assert_msg(dedup_contains(&d, key_of("big", i)), "id %u missing", i);
    dedup_free(&d);
}
END_TEST

/* ==== Against a model ==== */

#define MODEL_WINDOW 8
#define UNIVERSE 64

static uint64_t rng = 7;

static uint64_t rnd_below(uint64_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % n;
}

/* Keys whose low bits (the index home) collide a lot: a in [0, 24) with a
 * 16-slot index, so probe runs wrap around and deletions shift entries. */
static struct tally_key universe_key(unsigned i)
{
    return (struct tally_key){.a = (i * 7u) % 24u + ((uint64_t)(i % 3) << 40), .b = i};
}

START_TEST(test_against_fifo_model)
{
    struct tally_dedup d;
    ck_assert_int_eq(dedup_init(&d, MODEL_WINDOW), TALLY_OK);
    unsigned fifo[MODEL_WINDOW];
    unsigned head = 0, count = 0;
    for (int op = 0; op < 20000; op++) {
        unsigned i = (unsigned)rnd_below(UNIVERSE);
        bool in_model = false;
        for (unsigned j = 0; j < count; j++)
            in_model = in_model || fifo[(head + j) % MODEL_WINDOW] == i;
        if (rnd_below(2)) {
            dedup_insert(&d, universe_key(i));
            if (!in_model) {
                if (count == MODEL_WINDOW) {
                    head = (head + 1) % MODEL_WINDOW;
                    count--;
                }
                fifo[(head + count++) % MODEL_WINDOW] = i;
            }
        } else {
            ck_assert_int_eq(dedup_contains(&d, universe_key(i)), in_model);
        }
        if (op % 50 == 0) {
            for (unsigned u = 0; u < UNIVERSE; u++) {
                bool want = false;
                for (unsigned j = 0; j < count; j++)
                    want = want || fifo[(head + j) % MODEL_WINDOW] == u;
                ck_assert_msg(dedup_contains(&d, universe_key(u)) == want, "op %d key %u", op, u);
            }
            ck_assert_uint_eq(d.count, count);
        }
    }
    dedup_free(&d);
}
END_TEST

Suite *dedup_suite(void)
{
    Suite *s = suite_create("dedup");
    TCase *tc = tcase_create("window");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_insert_contains);
    tcase_add_test(tc, test_keys_scoped_per_counter);
    tcase_add_test(tc, test_window_three);
    tcase_add_test(tc, test_window_default_size);
    tcase_add_test(tc, test_against_fifo_model);
    suite_add_tcase(s, tc);
    return s;
}
