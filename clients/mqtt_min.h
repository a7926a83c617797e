/*
 * mqtt_min: the handful of MQTT 3.1.1 packets a load client needs, encoded
 * into and decoded from caller buffers, with no I/O and no allocation.
 *
 * Encoders write one whole packet into `out` (capacity `cap`) and return its
 * length, or 0 when it does not fit. The decoder reads one packet from the
 * front of a byte stream; every pointer it returns is borrowed from that
 * stream and lives as long as the caller keeps those bytes.
 *
 * Only what tally's load tools send is covered: CONNECT with clean session,
 * SUBSCRIBE at QoS 0, PINGREQ and DISCONNECT out; CONNACK, SUBACK, PUBLISH
 * and PINGRESP in (other packet types decode as header plus body).
 */
#ifndef TALLY_MQTT_MIN_H
#define TALLY_MQTT_MIN_H

#include <stddef.h>
#include <stdint.h>

enum mqtt_min_type {
    MQTT_MIN_CONNECT = 1,
    MQTT_MIN_CONNACK = 2,
    MQTT_MIN_PUBLISH = 3,
    MQTT_MIN_SUBSCRIBE = 8,
    MQTT_MIN_SUBACK = 9,
    MQTT_MIN_PINGREQ = 12,
    MQTT_MIN_PINGRESP = 13,
    MQTT_MIN_DISCONNECT = 14,
};

/* Why a decode did not yield a packet. */
enum mqtt_min_status {
    MQTT_MIN_OK = 0,
    MQTT_MIN_INCOMPLETE, /* more bytes are needed; nothing consumed */
    MQTT_MIN_BAD_LENGTH, /* remaining length longer than 4 bytes */
    MQTT_MIN_BAD_PACKET, /* body too short for its type */
};

/* One decoded packet; pointers are borrowed from the input stream. */
struct mqtt_min_packet {
    int type;            /* enum mqtt_min_type */
    int flags;           /* low nibble of the fixed header */
    const uint8_t *body; /* variable header + payload */
    size_t body_len;
    /* CONNACK */
    int connack_rc;
    /* SUBACK: return codes, one per topic filter */
    uint16_t packet_id;
    const uint8_t *suback_codes;
    size_t suback_count;
    /* PUBLISH */
    int retain;
    const char *topic; /* not NUL-terminated */
    size_t topic_len;
    const uint8_t *payload;
    size_t payload_len;
};

size_t mqtt_min_connect(uint8_t *out, size_t cap, const char *client_id, uint16_t keepalive_s);
size_t mqtt_min_subscribe(uint8_t *out, size_t cap, uint16_t packet_id, const char *const *filters,
                          size_t n_filters);
size_t mqtt_min_pingreq(uint8_t *out, size_t cap);
size_t mqtt_min_disconnect(uint8_t *out, size_t cap);

/*
 * Decode the packet at the front of buf[0..len). On MQTT_MIN_OK, *used is the
 * number of bytes it took and *pkt describes it.
 */
enum mqtt_min_status mqtt_min_decode(const uint8_t *buf, size_t len, size_t *used,
                                     struct mqtt_min_packet *pkt);

const char *mqtt_min_status_str(enum mqtt_min_status st);

#endif
