/*
 * test_main.c - runs every unit suite of the pure core (plugin/ without
 * plugin.c). Exits non-zero when any test fails.
 */
#include <stdlib.h>

#include <check.h>

/* The core's invariants are assert()ed (counter.c); the unit tests run them. */
#ifdef NDEBUG
#error "unit tests are built with assertions: link tally_core_checked, without NDEBUG"
#endif

Suite *codec_suite(void);
Suite *counter_suite(void);
Suite *dedup_suite(void);
Suite *wire_suite(void);
Suite *presence_suite(void);
Suite *persist_suite(void);
Suite *control_suite(void);
Suite *interest_suite(void);
Suite *schedule_suite(void);
Suite *reset_suite(void);
Suite *clients_suite(void);
Suite *tier_suite(void);
Suite *repl_suite(void);
Suite *fold_suite(void);
Suite *group_suite(void);
Suite *scope_suite(void);

int main(void)
{
    SRunner *sr = srunner_create(codec_suite());
    srunner_add_suite(sr, counter_suite());
    srunner_add_suite(sr, dedup_suite());
    srunner_add_suite(sr, wire_suite());
    srunner_add_suite(sr, presence_suite());
    srunner_add_suite(sr, persist_suite());
    srunner_add_suite(sr, control_suite());
    srunner_add_suite(sr, interest_suite());
    srunner_add_suite(sr, schedule_suite());
    srunner_add_suite(sr, reset_suite());
    srunner_add_suite(sr, clients_suite());
    srunner_add_suite(sr, tier_suite());
    srunner_add_suite(sr, repl_suite());
    srunner_add_suite(sr, fold_suite());
    srunner_add_suite(sr, group_suite());
    srunner_add_suite(sr, scope_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
