/*
 * mqtt_min: a minimal MQTT 3.1.1 packet codec (OASIS MQTT 3.1.1, sections 2
 * and 3). libwebsockets 4.1 has no MQTT-over-WebSocket client (its MQTT
 * client role speaks raw TCP only), so the WebSocket load client frames
 * these packets itself; they are few and fixed, so a codec of ~200 lines is
 * simpler than a dependency.
 *
 * Wire layout of every packet: one byte of type (high nibble) and flags (low
 * nibble), then the remaining length as a base-128 varint of 1 to 4 bytes
 * (low 7 bits first, high bit = more follows), then that many bytes of body.
 * Strings are a 16-bit big-endian length followed by the bytes.
 */
#include "mqtt_min.h"

#include <string.h>

/* ==== Encoding ==== */

/* Write the fixed header for a body of body_len bytes; return its size or 0. */
static size_t put_fixed_header(uint8_t *out, size_t cap, uint8_t first, size_t body_len)
{
    size_t n = 0;

    if (body_len > 268435455u || cap < 1)
        return 0;
    out[n++] = first;
    do {
        uint8_t digit = (uint8_t)(body_len % 128);

        body_len /= 128;
        if (body_len > 0)
            digit |= 0x80;
        if (n >= cap)
            return 0;
        out[n++] = digit;
    } while (body_len > 0);
    return n;
}

static uint8_t *put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)(v & 0xff);
    return p + 2;
}

static uint8_t *put_str(uint8_t *p, const char *s, size_t len)
{
    p = put_u16(p, (uint16_t)len);
    memcpy(p, s, len);
    return p + len;
}

size_t mqtt_min_connect(uint8_t *out, size_t cap, const char *client_id, uint16_t keepalive_s)
{
    static const char proto[] = "MQTT";
    size_t id_len = strlen(client_id);
    size_t body = 2 + 4 + 1 + 1 + 2 + 2 + id_len;
    size_t hdr;
    uint8_t *p;

    if (id_len > 65535)
        return 0;
    hdr = put_fixed_header(out, cap, MQTT_MIN_CONNECT << 4, body);
    if (hdr == 0 || hdr + body > cap)
        return 0;
    p = put_str(out + hdr, proto, 4);
    *p++ = 4;    /* protocol level 3.1.1 */
    *p++ = 0x02; /* clean session, no will, no credentials */
    p = put_u16(p, keepalive_s);
    put_str(p, client_id, id_len);
    return hdr + body;
}

size_t mqtt_min_subscribe(uint8_t *out, size_t cap, uint16_t packet_id, const char *const *filters,
                          size_t n_filters)
{
    size_t body = 2;
    size_t hdr;
    uint8_t *p;

    if (n_filters == 0)
        return 0;
    for (size_t i = 0; i < n_filters; i++) {
        size_t len = strlen(filters[i]);

        if (len == 0 || len > 65535)
            return 0;
        body += 2 + len + 1;
    }
    /* SUBSCRIBE's fixed-header flags are reserved as 0b0010 (3.8.1). */
    hdr = put_fixed_header(out, cap, (MQTT_MIN_SUBSCRIBE << 4) | 0x02, body);
    if (hdr == 0 || hdr + body > cap)
        return 0;
    p = put_u16(out + hdr, packet_id);
    for (size_t i = 0; i < n_filters; i++) {
        p = put_str(p, filters[i], strlen(filters[i]));
        *p++ = 0; /* requested QoS 0 */
    }
    return hdr + body;
}

static size_t put_empty_packet(uint8_t *out, size_t cap, int type)
{
    if (cap < 2)
        return 0;
    out[0] = (uint8_t)(type << 4);
    out[1] = 0;
    return 2;
}

size_t mqtt_min_pingreq(uint8_t *out, size_t cap)
{
    return put_empty_packet(out, cap, MQTT_MIN_PINGREQ);
}

size_t mqtt_min_disconnect(uint8_t *out, size_t cap)
{
    return put_empty_packet(out, cap, MQTT_MIN_DISCONNECT);
}

/* ==== Decoding ==== */

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

/* Fill the type-specific fields of pkt from its body. */
static enum mqtt_min_status decode_body(struct mqtt_min_packet *pkt)
{
    const uint8_t *b = pkt->body;
    size_t n = pkt->body_len;

    switch (pkt->type) {
    case MQTT_MIN_CONNACK:
        if (n < 2)
            return MQTT_MIN_BAD_PACKET;
        pkt->connack_rc = b[1];
        return MQTT_MIN_OK;
    case MQTT_MIN_SUBACK:
        if (n < 3)
            return MQTT_MIN_BAD_PACKET;
        pkt->packet_id = get_u16(b);
        pkt->suback_codes = b + 2;
        pkt->suback_count = n - 2;
        return MQTT_MIN_OK;
    case MQTT_MIN_PUBLISH: {
        int qos = (pkt->flags >> 1) & 3;
        size_t off;

        if (n < 2)
            return MQTT_MIN_BAD_PACKET;
        pkt->retain = pkt->flags & 1;
        pkt->topic_len = get_u16(b);
        off = 2 + pkt->topic_len + (qos > 0 ? 2 : 0);
        if (qos == 3 || off > n)
            return MQTT_MIN_BAD_PACKET;
        pkt->topic = (const char *)(b + 2);
        if (qos > 0)
            pkt->packet_id = get_u16(b + 2 + pkt->topic_len);
        pkt->payload = b + off;
        pkt->payload_len = n - off;
        return MQTT_MIN_OK;
    }
    default:
        return MQTT_MIN_OK;
    }
}

enum mqtt_min_status mqtt_min_decode(const uint8_t *buf, size_t len, size_t *used,
                                     struct mqtt_min_packet *pkt)
{
    size_t body_len = 0;
    size_t pos = 1;
    unsigned shift = 0;

    memset(pkt, 0, sizeof(*pkt));
    if (len < 2)
        return MQTT_MIN_INCOMPLETE;
    for (;;) {
        if (pos >= len)
            return MQTT_MIN_INCOMPLETE;
        body_len |= (size_t)(buf[pos] & 0x7f) << shift;
        shift += 7;
        if (!(buf[pos++] & 0x80))
            break;
        /* A fourth length byte that says "more follows" is refused as soon as it is there:
         * no byte that arrives later can make it valid. */
        if (pos > 4)
            return MQTT_MIN_BAD_LENGTH;
    }
    if (len - pos < body_len)
        return MQTT_MIN_INCOMPLETE;
    pkt->type = buf[0] >> 4;
    pkt->flags = buf[0] & 0x0f;
    pkt->body = buf + pos;
    pkt->body_len = body_len;
    *used = pos + body_len;
    return decode_body(pkt);
}

const char *mqtt_min_status_str(enum mqtt_min_status st)
{
    switch (st) {
    case MQTT_MIN_OK:
        return "ok";
    case MQTT_MIN_INCOMPLETE:
        return "incomplete packet";
    case MQTT_MIN_BAD_LENGTH:
        return "remaining length over 4 bytes";
    case MQTT_MIN_BAD_PACKET:
        return "body too short for its packet type";
    }
    return "unknown";
}
