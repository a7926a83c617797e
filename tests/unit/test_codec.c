/*
 * test_codec.c - names, increments and reports are accepted or refused
 * exactly as CONTRACT.md says, each refusal with the reason the log quotes.
 */
#include <string.h>

#include <check.h>

#include "tally.h"

/* ==== Names ==== */

struct name_case {
    const char *bytes;
    size_t len;
    int want;
};

#define NAME(s, want)                                                                              \
    {                                                                                              \
        s, sizeof(s) - 1, want                                                                     \
    }

static const struct name_case name_cases[] = {
    NAME("a", TALLY_OK),
    NAME("page-views_2024.total", TALLY_OK),
    NAME("caf\xc3\xa9", TALLY_OK),      /* U+00E9 */
    NAME("\xe2\x82\xac", TALLY_OK),     /* U+20AC */
    NAME("\xf0\x9f\x98\x80", TALLY_OK), /* U+1F600 */
    NAME("\xf4\x8f\xbf\xbf", TALLY_OK), /* U+10FFFF */
    NAME("\xc2\xa0", TALLY_OK),         /* U+00A0, first after C1 */
    NAME("a$", TALLY_OK),               /* '$' only refused first */
    NAME("", TALLY_E_NAME_EMPTY),
    NAME("a/b", TALLY_E_NAME_CHAR),
    NAME("a+", TALLY_E_NAME_CHAR),
    NAME("#", TALLY_E_NAME_CHAR),
    NAME("a\0b", TALLY_E_NAME_CHAR),
    NAME("a\x01", TALLY_E_NAME_CHAR),
    NAME("tab\there", TALLY_E_NAME_CHAR),
    NAME("new\nline", TALLY_E_NAME_CHAR),
    NAME("\x1f", TALLY_E_NAME_CHAR),
    NAME("del\x7f", TALLY_E_NAME_CHAR),
    NAME("\xc2\x80", TALLY_E_NAME_CHAR),  /* U+0080 */
    NAME("x\xc2\x9f", TALLY_E_NAME_CHAR), /* U+009F */
    NAME("$SYS", TALLY_E_NAME_DOLLAR),
    NAME("$", TALLY_E_NAME_DOLLAR),
    NAME("\xc0\xaf", TALLY_E_NAME_UTF8),         /* overlong '/' */
    NAME("\xc1\xbf", TALLY_E_NAME_UTF8),         /* overlong */
    NAME("\xe0\x80\xaf", TALLY_E_NAME_UTF8),     /* overlong 3-byte */
    NAME("\xf0\x80\x80\xaf", TALLY_E_NAME_UTF8), /* overlong 4-byte */
    NAME("\xed\xa0\x80", TALLY_E_NAME_UTF8),     /* U+D800 surrogate */
    NAME("\xed\xbf\xbf", TALLY_E_NAME_UTF8),     /* U+DFFF surrogate */
    NAME("\xf4\x90\x80\x80", TALLY_E_NAME_UTF8), /* U+110000 */
    NAME("\xf5\x80\x80\x80", TALLY_E_NAME_UTF8), /* lead byte past F4 */
    NAME("\xff", TALLY_E_NAME_UTF8),
    NAME("\x80", TALLY_E_NAME_UTF8),         /* lone continuation */
    NAME("a\xc3", TALLY_E_NAME_UTF8),        /* truncated 2-byte */
    NAME("\xe2\x82", TALLY_E_NAME_UTF8),     /* truncated 3-byte */
    NAME("\xf0\x9f\x98", TALLY_E_NAME_UTF8), /* truncated 4-byte */
    NAME("\xe2\x82x", TALLY_E_NAME_UTF8),    /* bad continuation */
};

START_TEST(test_name_cases)
{
    const struct name_case *c = &name_cases[_i];
    ck_assert_msg(name_check(c->bytes, c->len) == c->want, "case %d: got %s, want %s", _i,
                  tally_strerror(name_check(c->bytes, c->len)), tally_strerror(c->want));
}
END_TEST

START_TEST(test_name_length)
{
    char buf[TALLY_NAME_MAX + 2];
    memset(buf, 'n', sizeof(buf));
    ck_assert_int_eq(name_check(buf, 200), TALLY_OK);
    ck_assert_int_eq(name_check(buf, 201), TALLY_E_NAME_TOO_LONG);
    /* 200 bytes of multi-byte characters: 100 x U+00E9 */
    for (int i = 0; i < 200; i += 2) {
        buf[i] = (char)0xc3;
        buf[i + 1] = (char)0xa9;
    }
    ck_assert_int_eq(name_check(buf, 200), TALLY_OK);
    /* A sequence cut by the length limit is not valid UTF-8. */
    ck_assert_int_eq(name_check(buf, 199), TALLY_E_NAME_UTF8);
}
END_TEST

START_TEST(test_node_and_device_ids)
{
    ck_assert_int_eq(node_id_check("n1", 2), TALLY_OK);
    ck_assert_int_eq(node_id_check("A.b_c-9", 7), TALLY_OK);
    ck_assert_int_ne(node_id_check("", 0), TALLY_OK);
    ck_assert_int_ne(node_id_check("a b", 3), TALLY_OK);
    ck_assert_int_ne(node_id_check("a/b", 3), TALLY_OK);
    char id[130];
    memset(id, 'x', sizeof(id));
    ck_assert_int_eq(node_id_check(id, 64), TALLY_OK);
    ck_assert_int_ne(node_id_check(id, 65), TALLY_OK);
    ck_assert_int_eq(device_id_check(id, 128), TALLY_OK);
    ck_assert_int_eq(device_id_check(id, 129), TALLY_E_DEVICE);
    ck_assert_int_eq(device_id_check("", 0), TALLY_E_DEVICE);
    ck_assert_int_eq(device_id_check("m\n", 2), TALLY_E_DEVICE);
    ck_assert_int_eq(device_id_check("\xc0\xaf", 2), TALLY_E_DEVICE);
}
END_TEST

/* ==== Increments ==== */

struct inc_case {
    const char *payload;
    int want;
    int64_t delta; /* checked when want is TALLY_OK */
    const char *id;
};

static const struct inc_case inc_cases[] = {
    {"", TALLY_OK, 1, ""},
    {"5", TALLY_OK, 5, ""},
    {"-3", TALLY_OK, -3, ""},
    {"+2", TALLY_OK, 2, ""},
    {"0", TALLY_OK, 0, ""},
    {"007", TALLY_OK, 7, ""},
    {"9007199254740991", TALLY_OK, 9007199254740991LL, ""},
    {"-9007199254740991", TALLY_OK, -9007199254740991LL, ""},
    {"9007199254740992", TALLY_E_DELTA_RANGE, 0, NULL},
    {"-9007199254740992", TALLY_E_DELTA_RANGE, 0, NULL},
    {"99999999999999999999999", TALLY_E_DELTA_RANGE, 0, NULL},
    {"1.5", TALLY_E_NOT_INTEGER, 0, NULL},
    {"1e3", TALLY_E_NOT_INTEGER, 0, NULL},
    {" 5", TALLY_E_NOT_INTEGER, 0, NULL},
    {"5 ", TALLY_E_NOT_INTEGER, 0, NULL},
    {"--1", TALLY_E_NOT_INTEGER, 0, NULL},
    {"+-1", TALLY_E_NOT_INTEGER, 0, NULL},
    {"+", TALLY_E_NOT_INTEGER, 0, NULL},
    {"-", TALLY_E_NOT_INTEGER, 0, NULL},
    {"abc", TALLY_E_NOT_INTEGER, 0, NULL},
    {"0x10", TALLY_E_NOT_INTEGER, 0, NULL},
    {"[1]", TALLY_E_NOT_INTEGER, 0, NULL},
    {"{\"delta\":5,\"id\":\"k-123\"}", TALLY_OK, 5, "k-123"},
    {"{\"delta\":-7}", TALLY_OK, -7, ""},
    {" {\"delta\": 2 } ", TALLY_OK, 2, ""},
    {"{\"id\":\"x\"}", TALLY_OK, 1, "x"},
    {"{}", TALLY_OK, 1, ""},
    {"{\"delta\":9007199254740991}", TALLY_OK, 9007199254740991LL, ""},
    {"{\"delta\":-9007199254740991}", TALLY_OK, -9007199254740991LL, ""},
    {"{\"delta\":\"5\"}", TALLY_E_JSON_KEY, 0, NULL},
    {"{\"delta\":null}", TALLY_E_JSON_KEY, 0, NULL},
    {"{\"delta\":true}", TALLY_E_JSON_KEY, 0, NULL},
    {"{\"delta\":1.5}", TALLY_E_NOT_INTEGER, 0, NULL},
    {"{\"delta\":9007199254740992}", TALLY_E_DELTA_RANGE, 0, NULL},
    {"{\"delta\":-9007199254740992}", TALLY_E_DELTA_RANGE, 0, NULL},
    {"{\"delta\":1e400}", TALLY_E_DELTA_RANGE, 0, NULL},
    {"{\"detla\":5}", TALLY_E_JSON_KEY, 0, NULL},
    {"{\"id\":\"\"}", TALLY_E_ID, 0, NULL},
    {"{\"id\":5}", TALLY_E_ID, 0, NULL},
    {"{\"id\":\"0123456789012345678901234567890123456789012345678901234567890123\"}", TALLY_OK, 1,
     "0123456789012345678901234567890123456789012345678901234567890123"},
    {"{\"id\":\"01234567890123456789012345678901234567890123456789012345678901234\"}", TALLY_E_ID,
     0, NULL},
    {"{", TALLY_E_JSON, 0, NULL},
    {"{\"delta\":3}x", TALLY_E_JSON, 0, NULL},
    {"{\"delta\":3}{\"delta\":4}", TALLY_E_JSON, 0, NULL},
    {"{\"delta\":3,\"delta\":4}", TALLY_E_JSON, 0, NULL},
    {"{\"delta\":}", TALLY_E_JSON, 0, NULL},
    {"{\"delta\" 5}", TALLY_E_JSON, 0, NULL},
};

START_TEST(test_increment_cases)
{
    const struct inc_case *c = &inc_cases[_i];
    struct tally_inc inc;
    int rc = parse_increment(c->payload, strlen(c->payload), &inc);
    ck_assert_msg(rc == c->want, "'%s': got %s, want %s", c->payload, tally_strerror(rc),
                  tally_strerror(c->want));
    if (c->want == TALLY_OK) {
        ck_assert_msg(inc.delta == c->delta, "'%s': delta %lld", c->payload, (long long)inc.delta);
        ck_assert_str_eq(inc.id, c->id);
    }
}
END_TEST

START_TEST(test_increment_payload_limit)
{
    char buf[TALLY_PAYLOAD_MAX + 2];
    struct tally_inc inc;
    /* A valid JSON object padded with spaces to exactly the limit. */
    memset(buf, ' ', sizeof(buf));
    memcpy(buf, "{\"delta\":4}", 11);
    ck_assert_int_eq(parse_increment(buf, TALLY_PAYLOAD_MAX, &inc), TALLY_OK);
    ck_assert_int_eq(inc.delta, 4);
    ck_assert_int_eq(parse_increment(buf, TALLY_PAYLOAD_MAX + 1, &inc), TALLY_E_PAYLOAD_TOO_LARGE);
    memset(buf, '1', sizeof(buf));
    ck_assert_int_eq(parse_increment(buf, TALLY_PAYLOAD_MAX + 1, &inc), TALLY_E_PAYLOAD_TOO_LARGE);
}
END_TEST

START_TEST(test_increment_not_nul_terminated)
{
    /* Payloads carry a length, not a terminator: bytes past it are ignored. */
    struct tally_inc inc;
    ck_assert_int_eq(parse_increment("12345", 2, &inc), TALLY_OK);
    ck_assert_int_eq(inc.delta, 12);
    ck_assert_int_eq(parse_increment("{\"delta\":3}xyz", 11, &inc), TALLY_OK);
    ck_assert_int_eq(inc.delta, 3);
}
END_TEST

/* ==== Reports ==== */

struct report_case {
    const char *payload;
    int want;
    uint64_t total;
    const char *device;
};

static const struct report_case report_cases[] = {
    {"0", TALLY_OK, 0, ""},
    {"1234", TALLY_OK, 1234, ""},
    {"9007199254740991", TALLY_OK, 9007199254740991ULL, ""},
    {"9007199254740992", TALLY_E_DELTA_RANGE, 0, NULL},
    {"-1", TALLY_E_NOT_INTEGER, 0, NULL},
    {"+1", TALLY_E_NOT_INTEGER, 0, NULL},
    {"", TALLY_E_NOT_INTEGER, 0, NULL},
    {"1.0", TALLY_E_NOT_INTEGER, 0, NULL},
    {"{\"device\":\"m\",\"total\":5}", TALLY_OK, 5, "m"},
    {"{\"total\":0,\"device\":\"meter-7\"}", TALLY_OK, 0, "meter-7"},
    {"{\"device\":\"m\"}", TALLY_E_JSON_KEY, 0, NULL},
    {"{\"total\":5}", TALLY_E_JSON_KEY, 0, NULL},
    {"{}", TALLY_E_JSON_KEY, 0, NULL},
    {"{\"device\":\"m\",\"total\":-1}", TALLY_E_DELTA_RANGE, 0, NULL},
    {"{\"device\":\"m\",\"total\":1.5}", TALLY_E_NOT_INTEGER, 0, NULL},
    {"{\"device\":\"m\",\"total\":\"5\"}", TALLY_E_JSON_KEY, 0, NULL},
    {"{\"device\":\"\",\"total\":5}", TALLY_E_DEVICE, 0, NULL},
    {"{\"device\":7,\"total\":5}", TALLY_E_DEVICE, 0, NULL},
    {"{\"device\":\"a\\nb\",\"total\":5}", TALLY_E_DEVICE, 0, NULL},
    {"{\"device\":\"m\",\"total\":5,\"x\":1}", TALLY_E_JSON_KEY, 0, NULL},
    {"{\"device\":\"m\"", TALLY_E_JSON, 0, NULL},
    {"{\"device\":\"m\",\"total\":5} 7", TALLY_E_JSON, 0, NULL},
};

START_TEST(test_report_cases)
{
    const struct report_case *c = &report_cases[_i];
    struct tally_report rep;
    int rc = parse_report(c->payload, strlen(c->payload), &rep);
    ck_assert_msg(rc == c->want, "'%s': got %s, want %s", c->payload, tally_strerror(rc),
                  tally_strerror(c->want));
    if (c->want == TALLY_OK) {
        ck_assert_uint_eq(rep.total, c->total);
        ck_assert_str_eq(rep.device, c->device);
    }
}
END_TEST

START_TEST(test_report_payload_limit)
{
    char buf[TALLY_PAYLOAD_MAX + 1];
    struct tally_report rep;
    memset(buf, '1', sizeof(buf));
    ck_assert_int_eq(parse_report(buf, sizeof(buf), &rep), TALLY_E_PAYLOAD_TOO_LARGE);
}
END_TEST

/* ==== NUL and control characters in ids (issue 10 #8) ==== */

START_TEST(test_ids_with_nul_or_control_refused)
{
    static const struct {
        const char *payload;
        int want;
    } incs[] = {
        {"{\"id\":\"order-1\\u0000-pear\"}", TALLY_E_ID},
        {"{\"id\":\"order-1\\u0000\"}", TALLY_E_ID},
        {"{\"id\":\"a\\u0001b\"}", TALLY_E_ID},
        {"{\"id\":\"a\\u007fb\"}", TALLY_E_ID},
        {"{\"id\":\"a\\u0085b\"}", TALLY_E_ID},
        {"{\"id\":\"a\\tb\"}", TALLY_E_ID},
        /* an escaped backslash then "u0000": six ordinary characters */
        {"{\"id\":\"a\\\\u0000\"}", TALLY_OK},
        {"{\"id\":\"\\\"u0000\"}", TALLY_OK},
    };
    for (size_t i = 0; i < sizeof(incs) / sizeof(incs[0]); i++) {
        struct tally_inc inc;
        int rc = parse_increment(incs[i].payload, strlen(incs[i].payload), &inc);
        ck_assert_msg(rc == incs[i].want, "'%s': got %s", incs[i].payload, tally_strerror(rc));
    }
    static const char *const reports[] = {
        "{\"device\":\"meter-1\\u0000-a\",\"total\":5}",
        "{\"total\":5,\"device\":\"m\\u0000\"}",
        "{\"device\":\"m\\u0002\",\"total\":5}",
    };
    for (size_t i = 0; i < sizeof(reports) / sizeof(reports[0]); i++) {
        struct tally_report rep;
        int rc = parse_report(reports[i], strlen(reports[i]), &rep);
        ck_assert_msg(rc == TALLY_E_DEVICE, "'%s': got %s", reports[i], tally_strerror(rc));
    }
}
END_TEST

/* A raw control character is not JSON anywhere (RFC 8259); cJSON copied a raw
 * NUL into a string, where it cut "order-1<NUL>-pear" to "order-1". */
START_TEST(test_raw_control_characters_in_json_refused)
{
#define BYTES(lit)                                                                                 \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }
    static const struct {
        const char *payload;
        size_t len;
    } incs[] = {
        BYTES("{\"delta\":1,\"id\":\"order-1\0-pear\"}"),
        BYTES("{\"delta\0x\":1}"),
        BYTES("{\x01\"delta\":1}"),
        BYTES("{\"delta\":1\x1f}"),
    };
#undef BYTES
    for (size_t i = 0; i < sizeof(incs) / sizeof(incs[0]); i++) {
        struct tally_inc inc;
        int rc = parse_increment(incs[i].payload, incs[i].len, &inc);
        ck_assert_msg(rc == TALLY_E_JSON, "payload %zu: got %s", i, tally_strerror(rc));
    }
    static const char rep_nul[] = "{\"device\":\"meter-1\0-b\",\"total\":5}";
    struct tally_report rep;
    ck_assert_int_eq(parse_report(rep_nul, sizeof(rep_nul) - 1, &rep), TALLY_E_JSON);
    struct tally_inc inc;
    static const char white[] = "\t{\r\n\"delta\" :\t2 }\n";
    ck_assert_int_eq(parse_increment(white, sizeof(white) - 1, &inc), TALLY_OK);
    ck_assert_int_eq(inc.delta, 2);
}
END_TEST

/* ==== Reason names ==== */

START_TEST(test_strerror)
{
    static const struct {
        int err;
        const char *name;
    } names[] = {
        {TALLY_OK, "ok"},
        {TALLY_E_NAME_EMPTY, "name_empty"},
        {TALLY_E_NAME_TOO_LONG, "name_too_long"},
        {TALLY_E_NAME_UTF8, "name_not_utf8"},
        {TALLY_E_NAME_CHAR, "name_bad_char"},
        {TALLY_E_NAME_DOLLAR, "name_starts_with_dollar"},
        {TALLY_E_PAYLOAD_TOO_LARGE, "payload_too_large"},
        {TALLY_E_NOT_INTEGER, "not_an_integer"},
        {TALLY_E_DELTA_RANGE, "delta_out_of_range"},
        {TALLY_E_JSON, "bad_json"},
        {TALLY_E_JSON_KEY, "bad_json_field"},
        {TALLY_E_ID, "bad_id"},
        {TALLY_E_DEVICE, "bad_device"},
        {TALLY_E_OVERFLOW, "total_out_of_range"},
        {TALLY_E_MAX_COUNTERS, "max_counters_reached"},
        {TALLY_E_MAX_DEVICES, "max_devices_reached"},
        {TALLY_E_MAX_VIEWERS, "max_viewers_reached"},
        {TALLY_E_FORBIDDEN, "forbidden_topic"},
        {TALLY_E_WIRE, "bad_replication_message"},
        {TALLY_E_DISK, "state_not_written"},
        {TALLY_E_NOMEM, "out_of_memory"},
        {TALLY_E_DEVICE_ASSIGNED, "device_id_assigned_by_broker"},
        {TALLY_E_TOO_LARGE, "message_too_large"},
    };
    ck_assert_int_eq(sizeof(names) / sizeof(names[0]), TALLY_E__COUNT);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        ck_assert_str_eq(tally_strerror(names[i].err), names[i].name);
    ck_assert_str_eq(tally_strerror(TALLY_E__COUNT), "unknown");
    ck_assert_str_eq(tally_strerror(-TALLY_E_NOMEM), "unknown"); /* reasons are positive */
    ck_assert_str_eq(tally_strerror(1000), "unknown");
}
END_TEST

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

Suite *codec_suite(void)
{
    Suite *s = suite_create("codec");
    TCase *tc = tcase_create("names");
    tcase_add_loop_test(tc, test_name_cases, 0, COUNT(name_cases));
    tcase_add_test(tc, test_name_length);
    tcase_add_test(tc, test_node_and_device_ids);
    suite_add_tcase(s, tc);
    tc = tcase_create("increments");
    tcase_add_loop_test(tc, test_increment_cases, 0, COUNT(inc_cases));
    tcase_add_test(tc, test_increment_payload_limit);
    tcase_add_test(tc, test_increment_not_nul_terminated);
    suite_add_tcase(s, tc);
    tc = tcase_create("reports");
    tcase_add_loop_test(tc, test_report_cases, 0, COUNT(report_cases));
    tcase_add_test(tc, test_report_payload_limit);
    tcase_add_test(tc, test_ids_with_nul_or_control_refused);
    tcase_add_test(tc, test_raw_control_characters_in_json_refused);
    tcase_add_test(tc, test_strerror);
    suite_add_tcase(s, tc);
    return s;
}
