/*
 * test_control.c - the JSON that clients read: the answer on an MQTT v5
 * Response Topic (applied, duplicate, unchanged or refused; see README).
 */
#include <string.h>

#include <check.h>

#include "tally.h"

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

Suite *control_suite(void)
{
    Suite *s = suite_create("control");
    TCase *tc = tcase_create("answers");
    tcase_add_test(tc, test_answer_applied_duplicate_unchanged);
    tcase_add_test(tc, test_answer_refused);
    tcase_add_test(tc, test_answer_escapes_the_name);
    suite_add_tcase(s, tc);
    return s;
}
