/*
 * test_clients.c - what the load clients share (clients/): the one percentile definition of
 * tally-load and tally-wsload, and mqtt_min, the MQTT packet codec tally-wsload reads network
 * bytes with.
 */
#include <string.h>

#include <check.h>

#include "mqtt_min.h"
#include "percentile.h"

/* ==== Percentiles: nearest rank ==== */

START_TEST(percentile_of_nothing_is_zero)
{
    ck_assert(percentile(NULL, 0, 50) == 0);
    percentile_sort(NULL, 0); /* no qsort of NULL */
}
END_TEST

START_TEST(percentile_is_the_nearest_rank)
{
    double v[] = {5, 1, 4, 2, 3, 10, 9, 8, 7, 6};

    percentile_sort(v, 10);
    ck_assert(v[0] == 1 && v[9] == 10);
    ck_assert(percentile(v, 10, 0) == 1);  /* the minimum */
    ck_assert(percentile(v, 10, 10) == 1); /* ceil(1.0) = rank 1 */
    ck_assert(percentile(v, 10, 11) == 2); /* ceil(1.1) = rank 2 */
    ck_assert(percentile(v, 10, 50) == 5); /* the lower middle of an even count */
    ck_assert(percentile(v, 10, 51) == 6);
    ck_assert(percentile(v, 10, 99) == 10); /* ceil(9.9) = rank 10 */
    ck_assert(percentile(v, 10, 100) == 10);
    ck_assert(percentile(v, 10, 101) == 10); /* clamped */
}
END_TEST

/* The two old definitions disagreed here: load.c's index floor(p * (n - 1)) gave 1.0 for p50 of
 * {1, 2} and 99.0 for p99 of 1..100 but 1 for p99 of {1, 1000}; nearest rank gives a measured
 * value with at least p% of the samples at or below it. */
START_TEST(percentile_p99_of_few_samples_is_the_maximum)
{
    double two[] = {1, 1000};
    double hundred[100];

    for (int i = 0; i < 100; i++) {
        hundred[i] = i + 1;
    }
    ck_assert(percentile(two, 2, 99) == 1000);
    ck_assert(percentile(two, 2, 50) == 1);
    ck_assert(percentile(hundred, 100, 99) == 99);
    ck_assert(percentile(hundred, 100, 50) == 50);
}
END_TEST

START_TEST(percentile_of_one_sample_is_that_sample)
{
    double one[] = {42};

    for (unsigned p = 0; p <= 100; p++) {
        ck_assert(percentile(one, 1, p) == 42);
    }
}
END_TEST

/* ==== mqtt_min: encoding ==== */

START_TEST(mqtt_connect_bytes)
{
    static const uint8_t want[] = {0x10, 14,   0, 4,  'M', 'Q', 'T', 'T',
                                   4,    0x02, 0, 60, 0,   2,   'c', '1'};
    uint8_t out[64];

    ck_assert_uint_eq(mqtt_min_connect(out, sizeof(out), "c1", 60), sizeof(want));
    ck_assert_mem_eq(out, want, sizeof(want));
    for (size_t cap = 0; cap < sizeof(want); cap++) {
        ck_assert_uint_eq(mqtt_min_connect(out, cap, "c1", 60), 0);
    }
}
END_TEST

START_TEST(mqtt_subscribe_bytes)
{
    static const char *const filters[] = {"a/b", "#"};
    static const uint8_t want[] = {0x82, 12, 0, 7, 0, 3, 'a', '/', 'b', 0, 0, 1, '#', 0};
    static const char *const empty[] = {""};
    uint8_t out[64];

    ck_assert_uint_eq(mqtt_min_subscribe(out, sizeof(out), 7, filters, 2), sizeof(want));
    ck_assert_mem_eq(out, want, sizeof(want));
    for (size_t cap = 0; cap < sizeof(want); cap++) {
        ck_assert_uint_eq(mqtt_min_subscribe(out, cap, 7, filters, 2), 0);
    }
    ck_assert_uint_eq(mqtt_min_subscribe(out, sizeof(out), 7, filters, 0), 0);
    ck_assert_uint_eq(mqtt_min_subscribe(out, sizeof(out), 7, empty, 1), 0);
}
END_TEST

START_TEST(mqtt_empty_packets)
{
    uint8_t out[2];

    ck_assert_uint_eq(mqtt_min_pingreq(out, 2), 2);
    ck_assert(out[0] == 0xc0 && out[1] == 0);
    ck_assert_uint_eq(mqtt_min_disconnect(out, 2), 2);
    ck_assert(out[0] == 0xe0 && out[1] == 0);
    ck_assert_uint_eq(mqtt_min_pingreq(out, 1), 0);
}
END_TEST

/* A long client id takes a 2-byte remaining length; decoding gives the same length back. */
START_TEST(mqtt_connect_with_a_long_id_round_trips)
{
    char id[301];
    uint8_t out[400];
    struct mqtt_min_packet pkt;
    size_t n, used = 0;

    memset(id, 'x', 300);
    id[300] = '\0';
    n = mqtt_min_connect(out, sizeof(out), id, 30);
    ck_assert_uint_eq(n, 3 + 12 + 300);
    ck_assert_int_eq(mqtt_min_decode(out, n, &used, &pkt), MQTT_MIN_OK);
    ck_assert_uint_eq(used, n);
    ck_assert_int_eq(pkt.type, MQTT_MIN_CONNECT);
    ck_assert_uint_eq(pkt.body_len, 312);
}
END_TEST

/* ==== mqtt_min: decoding what a broker sends ==== */

START_TEST(mqtt_decode_connack_suback_pingresp)
{
    static const uint8_t stream[] = {0x20, 2, 0, 5, 0x90, 4, 0, 9, 0, 0x80, 0xd0, 0};
    struct mqtt_min_packet pkt;
    size_t used = 0, off = 0;

    ck_assert_int_eq(mqtt_min_decode(stream, sizeof(stream), &used, &pkt), MQTT_MIN_OK);
    ck_assert_int_eq(pkt.type, MQTT_MIN_CONNACK);
    ck_assert_int_eq(pkt.connack_rc, 5);
    off += used;
    ck_assert_int_eq(mqtt_min_decode(stream + off, sizeof(stream) - off, &used, &pkt), MQTT_MIN_OK);
    ck_assert_int_eq(pkt.type, MQTT_MIN_SUBACK);
    ck_assert_uint_eq(pkt.packet_id, 9);
    ck_assert_uint_eq(pkt.suback_count, 2);
    ck_assert(pkt.suback_codes[0] == 0 && pkt.suback_codes[1] == 0x80);
    off += used;
    ck_assert_int_eq(mqtt_min_decode(stream + off, sizeof(stream) - off, &used, &pkt), MQTT_MIN_OK);
    ck_assert_int_eq(pkt.type, MQTT_MIN_PINGRESP);
    ck_assert_uint_eq(off + used, sizeof(stream));
}
END_TEST

START_TEST(mqtt_decode_publish)
{
    static const uint8_t qos0[] = {0x31, 7, 0, 3, 'a', '/', 'b', '4', '2'};
    static const uint8_t qos1[] = {0x32, 7, 0, 1, 't', 0x12, 0x34, 'h', 'i'};
    struct mqtt_min_packet pkt;
    size_t used = 0;

    ck_assert_int_eq(mqtt_min_decode(qos0, sizeof(qos0), &used, &pkt), MQTT_MIN_OK);
    ck_assert_int_eq(pkt.type, MQTT_MIN_PUBLISH);
    ck_assert_int_eq(pkt.retain, 1);
    ck_assert_uint_eq(pkt.topic_len, 3);
    ck_assert_mem_eq(pkt.topic, "a/b", 3);
    ck_assert_uint_eq(pkt.payload_len, 2);
    ck_assert_mem_eq(pkt.payload, "42", 2);

    ck_assert_int_eq(mqtt_min_decode(qos1, sizeof(qos1), &used, &pkt), MQTT_MIN_OK);
    ck_assert_int_eq(pkt.retain, 0);
    ck_assert_uint_eq(pkt.packet_id, 0x1234);
    ck_assert_uint_eq(pkt.payload_len, 2);
    ck_assert_mem_eq(pkt.payload, "hi", 2);
}
END_TEST

/* Every proper prefix of a packet is incomplete, never a packet and never an error. */
START_TEST(mqtt_decode_every_prefix_is_incomplete)
{
    static const uint8_t pub[] = {0x30, 0x82, 0x01, 0, 1, 't'}; /* length 130, 3 bytes here */
    static const uint8_t connack[] = {0x20, 2, 0, 0};
    struct mqtt_min_packet pkt;
    size_t used = 99;

    for (size_t len = 0; len < sizeof(pub); len++) {
        ck_assert_int_eq(mqtt_min_decode(pub, len, &used, &pkt), MQTT_MIN_INCOMPLETE);
    }
    for (size_t len = 0; len < sizeof(connack); len++) {
        ck_assert_int_eq(mqtt_min_decode(connack, len, &used, &pkt), MQTT_MIN_INCOMPLETE);
    }
    ck_assert_uint_eq(used, 99); /* nothing consumed */
}
END_TEST

START_TEST(mqtt_decode_largest_length_is_incomplete_not_bad)
{
    static const uint8_t max[] = {0x30, 0xff, 0xff, 0xff, 0x7f}; /* 268,435,455 */
    struct mqtt_min_packet pkt;
    size_t used;

    ck_assert_int_eq(mqtt_min_decode(max, sizeof(max), &used, &pkt), MQTT_MIN_INCOMPLETE);
}
END_TEST

/* A fourth length byte with "more follows" can never be valid: it is refused as soon as it is
 * seen, not waited on. The old decoder answered "incomplete" for exactly these 5 bytes, so a
 * client holding them waited for more forever. */
START_TEST(mqtt_decode_a_fourth_continued_length_byte_is_bad_at_once)
{
    static const uint8_t bad[] = {0x30, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0};
    struct mqtt_min_packet pkt;
    size_t used;

    for (size_t len = 5; len <= sizeof(bad); len++) {
        ck_assert_int_eq(mqtt_min_decode(bad, len, &used, &pkt), MQTT_MIN_BAD_LENGTH);
    }
    for (size_t len = 0; len < 5; len++) {
        ck_assert_int_eq(mqtt_min_decode(bad, len, &used, &pkt), MQTT_MIN_INCOMPLETE);
    }
}
END_TEST

START_TEST(mqtt_decode_short_bodies_are_bad)
{
    static const uint8_t cases[][8] = {
        {0x20, 1, 0},              /* CONNACK of 1 byte */
        {0x90, 2, 0, 1},           /* SUBACK without a code */
        {0x30, 1, 0},              /* PUBLISH without a whole topic length */
        {0x30, 3, 0, 5, 'a'},      /* topic longer than the body */
        {0x32, 3, 0, 1, 't'},      /* QoS 1 without a packet id */
        {0x36, 4, 0, 1, 't', 'x'}, /* QoS 3 */
        {0x30, 2, 0xff, 0xff},     /* topic length 65535 in a body of 2 */
    };
    static const size_t lens[] = {3, 4, 3, 5, 5, 6, 4};
    struct mqtt_min_packet pkt;
    size_t used;

    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        ck_assert_msg(mqtt_min_decode(cases[i], lens[i], &used, &pkt) == MQTT_MIN_BAD_PACKET,
                      "case %zu", i);
    }
}
END_TEST

START_TEST(mqtt_status_strings)
{
    ck_assert_str_eq(mqtt_min_status_str(MQTT_MIN_OK), "ok");
    ck_assert_str_eq(mqtt_min_status_str(MQTT_MIN_BAD_LENGTH), "remaining length over 4 bytes");
}
END_TEST

Suite *clients_suite(void)
{
    Suite *s = suite_create("clients");
    TCase *p = tcase_create("percentile");
    TCase *m = tcase_create("mqtt_min");

    tcase_add_test(p, percentile_of_nothing_is_zero);
    tcase_add_test(p, percentile_is_the_nearest_rank);
    tcase_add_test(p, percentile_p99_of_few_samples_is_the_maximum);
    tcase_add_test(p, percentile_of_one_sample_is_that_sample);
    tcase_add_test(m, mqtt_connect_bytes);
    tcase_add_test(m, mqtt_subscribe_bytes);
    tcase_add_test(m, mqtt_empty_packets);
    tcase_add_test(m, mqtt_connect_with_a_long_id_round_trips);
    tcase_add_test(m, mqtt_decode_connack_suback_pingresp);
    tcase_add_test(m, mqtt_decode_publish);
    tcase_add_test(m, mqtt_decode_every_prefix_is_incomplete);
    tcase_add_test(m, mqtt_decode_largest_length_is_incomplete_not_bad);
    tcase_add_test(m, mqtt_decode_a_fourth_continued_length_byte_is_bad_at_once);
    tcase_add_test(m, mqtt_decode_short_bodies_are_bad);
    tcase_add_test(m, mqtt_status_strings);
    suite_add_tcase(s, p);
    suite_add_tcase(s, m);
    return s;
}
