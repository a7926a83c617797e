/*
 * fuzz_mqtt_min.c - clients/mqtt_min.c, the MQTT codec tally-wsload reads a broker's bytes
 * with, fed arbitrary bytes as a stream, the way wsload's receive loop feeds it: decode a
 * packet from the front, drop it, decode the next, until it wants more bytes or refuses them.
 *
 * Besides crashes and sanitizer reports, it aborts when a decoded packet points outside the
 * input, when a packet claims to use fewer than 2 or more than the available bytes, or when a
 * proper prefix of a packet it decoded is anything but incomplete. The same bytes, as a client
 * id and topic filters, go through the encoders into buffers of every size up to the exact one
 * (under ASan, a write past `cap` is caught), and what they write must decode to itself.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt_min.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

static bool inside(const void *p, size_t n, const uint8_t *buf, size_t len)
{
    const uint8_t *q = p;
    return n == 0 || (q >= buf && q + n <= buf + len);
}

static void check_packet(const struct mqtt_min_packet *pkt, const uint8_t *buf, size_t len)
{
    check(inside(pkt->body, pkt->body_len, buf, len));
    if (pkt->type == MQTT_MIN_PUBLISH) {
        check(inside(pkt->topic, pkt->topic_len, pkt->body, pkt->body_len));
        check(inside(pkt->payload, pkt->payload_len, pkt->body, pkt->body_len));
    }
    if (pkt->type == MQTT_MIN_SUBACK)
        check(inside(pkt->suback_codes, pkt->suback_count, pkt->body, pkt->body_len));
}

static void decode_stream(const uint8_t *data, size_t size)
{
    size_t off = 0;

    while (off < size) {
        struct mqtt_min_packet pkt;
        size_t used = 0;
        enum mqtt_min_status st = mqtt_min_decode(data + off, size - off, &used, &pkt);

        if (st != MQTT_MIN_OK)
            return;
        check(used >= 2 && used <= size - off);
        check_packet(&pkt, data + off, size - off);
        for (size_t cut = 0; cut < used; cut += 1 + used / 16) {
            struct mqtt_min_packet part;
            size_t n;
            check(mqtt_min_decode(data + off, cut, &n, &part) == MQTT_MIN_INCOMPLETE);
        }
        off += used;
    }
}

/* Encodes into an exact-size heap buffer, so ASan sees a write past cap; 0 when it cannot. */
static size_t encode_exact(uint8_t **out, size_t want, const char *id, const char *const *filters,
                           size_t nfilters, bool subscribe)
{
    *out = malloc(want ? want : 1);
    return subscribe ? mqtt_min_subscribe(*out, want, 1, filters, nfilters)
                     : mqtt_min_connect(*out, want, id, 30);
}

static void round_trip(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    const char *filters[2];
    uint8_t big[4096], *exact;

    memcpy(text, data, size);
    text[size] = '\0'; /* the id and filters end at the first NUL */
    filters[0] = text;
    filters[1] = text + strlen(text) / 2;
    for (int subscribe = 0; subscribe < 2; subscribe++) {
        size_t n = subscribe ? mqtt_min_subscribe(big, sizeof(big), 1, filters, 2)
                             : mqtt_min_connect(big, sizeof(big), text, 30);
        struct mqtt_min_packet pkt;
        size_t used = 0;

        if (n == 0)
            continue;
        check(mqtt_min_decode(big, n, &used, &pkt) == MQTT_MIN_OK && used == n);
        check(pkt.type == (subscribe ? MQTT_MIN_SUBSCRIBE : MQTT_MIN_CONNECT));
        check(encode_exact(&exact, n, text, filters, 2, subscribe) == n);
        check(memcmp(exact, big, n) == 0);
        free(exact);
        check(encode_exact(&exact, n - 1, text, filters, 2, subscribe) == 0);
        free(exact);
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    decode_stream(data, size);
    round_trip(data, size);
    return 0;
}
