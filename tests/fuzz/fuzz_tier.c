/*
 * fuzz_tier.c - an UP or DOWN (tier.c) from a broken or hostile bridge: the
 * hub merges it or refuses it, the edge applies it or refuses it, and
 * neither leaves a state that breaks what it sends next; a CONTROL message
 * (a request passed up, or its answer) is read or refused. What the hub
 * then relays and lists in its heartbeat are PRESENCE messages the other
 * hubs read.
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

static void changed(const char *name, size_t len, void *ud)
{
    (void)ud;
    check(name_check(name, len) == TALLY_OK);
}

/* What the hub and the edge write is cut at max_bytes, and what the hub
 * relays is a PRESENCE the other hubs take. */
#define MAX_BYTES 4096

static void fits(const struct wire_buf *msg, void *ud)
{
    (void)ud;
    check(msg->len <= MAX_BYTES);
}

static void fits_presence(const struct wire_buf *msg, void *ud)
{
    struct wire_presence wp;
    fits(msg, ud);
    check(wire_decode_presence(msg->data, msg->len, &wp) == TALLY_OK);
    wire_presence_free(&wp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tally_table t;
    struct tally_presence pr;
    struct tier_hub h;
    struct tier_edge e;
    struct wire_buf b = {0};
    table_init(&t, 1000, 1000);
    presence_init(&pr, 1000);
    tier_hub_init(&h, "hub", 7);
    tier_edge_init(&e, "edge", 9, 1);
    tier_edge_watch(&e, "likes", 5, true);

    struct tier_child *ch;
    if (tier_hub_apply_up(&h, &t, &pr, data, size, 1, &ch) == TALLY_OK) {
        check(ch != NULL);
        tier_hub_tick(&h);
        check(tier_hub_down(&h, &t, &pr, ch, 2, 1000, MAX_BYTES, &b, fits, NULL) == TALLY_OK);
        check(tier_hub_relay(ch, &pr, MAX_BYTES, 2, &b, fits_presence, NULL) == TALLY_OK);
        /* the hub's heartbeat lists the child: whole, readable parts */
        uint32_t sent;
        check(tier_hub_heartbeat(&h, &pr, 7, 1, 3, 3000, MAX_BYTES, &b, fits_presence, NULL,
                                 &sent) == TALLY_OK);
        check(sent >= 1);
    }
    if (tier_edge_apply_down(&e, data, size, changed, NULL) == TALLY_OK) {
        int64_t v = tier_edge_value(&e, &t, "likes", 5);
        check(v >= -TALLY_MAX_SAFE && v <= TALLY_MAX_SAFE);
    }
    check(tier_edge_up(&e, &t, &pr, 5, 100, 1000, MAX_BYTES, &b, fits, NULL) == TALLY_OK);
    /* A control request or answer: read, and written again the same. */
    struct tier_control c;
    if (tier_control_read(data, size, &c) == TALLY_OK) {
        check(c.part < c.parts && c.data + c.len == data + size);
        check(node_id_check(c.node, c.node_len) == TALLY_OK);
        c.parts = 1;
        check(tier_control_write(&c, MAX_BYTES, &b, fits, NULL) == TALLY_OK);
    }

    wbuf_free(&b);
    tier_edge_free(&e);
    tier_hub_free(&h);
    presence_free(&pr);
    table_free(&t);
    return 0;
}
