/*
 * fuzz_wire_presence.c - a PRESENCE announcement from a hostile or broken
 * peer: refused, or valid data that survives a re-encode and that the
 * presence table applies (as plugin.c does) without harm, with a hub's
 * listing of its edges and wants (version 3) and its carried set, or a
 * replay's carrier (version 4), that a hub takes without harm.
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

static void on_flush(const char *page, size_t len, uint64_t total, void *ud)
{
    (void)ud;
    (void)total;
    check(name_check(page, len) == TALLY_OK);
}

static void readable(const struct wire_buf *msg, void *ud)
{
    struct wire_presence wp;
    (void)ud;
    check(msg->len <= 4096 && wire_decode_presence(msg->data, msg->len, &wp) == TALLY_OK);
    wire_presence_free(&wp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wire_presence p;
    if (wire_decode_presence(data, size, &p) != TALLY_OK) {
        check(p.pages == NULL && p.listed == NULL);
        return 0;
    }
    char origin[TALLY_NODE_ID_MAX + 1];
    check(node_id_check(p.origin, p.origin_len) == TALLY_OK);
    memcpy(origin, p.origin, p.origin_len);
    origin[p.origin_len] = '\0';

    struct wire_buf b = {0};
    wire_presence_begin(&b, origin, p.incarnation, p.seq, p.lo, p.hi, p.npages);
    for (uint32_t i = 0; i < p.npages; i++) {
        check(name_check(p.pages[i].page, p.pages[i].len) == TALLY_OK);
        check(p.pages[i].count <= UINT32_MAX);
        wire_presence_page(&b, p.pages[i].page, p.pages[i].len, p.pages[i].count);
    }
    if (p.listed) {
        wire_presence_count(&b, p.nlisted);
        for (uint32_t i = 0; i < p.nlisted; i++)
            wire_presence_edge(&b, &p.listed[i]);
        wire_presence_count(&b, p.nwants);
        for (uint32_t i = 0; i < p.nwants; i++)
            wire_presence_want(&b, p.wants[i].id, p.wants[i].len);
    }
    if (p.has_carried) {
        check(p.listed != NULL);
        wire_presence_carried(&b, &p);
    }
    struct wire_presence q;
    check(wire_decode_presence(b.data, b.len, &q) == TALLY_OK);
    check(q.nlisted == p.nlisted && q.nwants == p.nwants);
    check(q.has_carried == p.has_carried && q.listing_flags == p.listing_flags &&
          q.listing_stamp == p.listing_stamp && q.carried_digest == p.carried_digest &&
          q.ncarried == p.ncarried && q.carried_age_ms == p.carried_age_ms &&
          q.carrier_len == p.carrier_len &&
          (!q.carrier_len || memcmp(q.carrier, p.carrier, q.carrier_len) == 0));
    for (uint32_t i = 0; i < q.nlisted; i++)
        check(q.listed[i].len == p.listed[i].len &&
              memcmp(q.listed[i].id, p.listed[i].id, q.listed[i].len) == 0 &&
              q.listed[i].incarnation == p.listed[i].incarnation &&
              q.listed[i].seq == p.listed[i].seq && q.listed[i].digest == p.listed[i].digest &&
              q.listed[i].age_ms == p.listed[i].age_ms);
    for (uint32_t i = 0; i < q.nwants; i++)
        check(q.wants[i].len == p.wants[i].len &&
              memcmp(q.wants[i].id, p.wants[i].id, q.wants[i].len) == 0);
    check(q.npages == p.npages && q.seq == p.seq && q.incarnation == p.incarnation &&
          q.lo == p.lo && q.hi == p.hi);
    for (uint32_t i = 0; i < q.npages; i++)
        check(q.pages[i].count == p.pages[i].count && q.pages[i].len == p.pages[i].len &&
              memcmp(q.pages[i].page, p.pages[i].page, q.pages[i].len) == 0);

    struct tally_presence pr;
    presence_init(&pr, 1000);
    bool added;
    check(presence_view(&pr, "local", "dashboard", 9, &added) == TALLY_OK && added);
    struct tally_origin *o = presence_origin(&pr, origin);
    check(o != NULL);
    /* what the plugin runs; a new origin has seen (incarnation 0, seq 0), so
     * a message naming exactly that is old news and not taken */
    bool taken;
    check(presence_apply(&pr, o, &p, &taken) == TALLY_OK);
    check(taken == (p.incarnation != 0 || p.seq != 0));
    /* a hub's listing, as the plugin takes it: the edges' liveness and
     * wants never harm the hub, whose heartbeat then lists and wants in
     * readable parts, and whose wanted child relays all its pages */
    struct tier_hub h;
    tier_hub_init(&h, "hub", 3);
    check(tier_hub_heard(&h, &pr, &p, 1000) == TALLY_OK);
    for (uint32_t i = 0; i < p.nlisted; i++) {
        char id[TALLY_NODE_ID_MAX + 1];
        memcpy(id, p.listed[i].id, p.listed[i].len);
        id[p.listed[i].len] = '\0';
        struct tally_origin *e = presence_origin(&pr, id);
        check(e && e->last_heard_ms <= 1000);
    }
    check(tier_hub_heard(&h, &pr, &q, 1500) == TALLY_OK); /* again: a set vouched for */
    uint32_t sent;
    check(tier_hub_heartbeat(&h, &pr, 5, 1, 2000, 15000, 4096, &b, readable, NULL, &sent) ==
          TALLY_OK);
    check(sent >= 1);
    /* the next, a second on, is a keepalive (no range) with the listing */
    uint32_t first = 1 + sent;
    check(tier_hub_heartbeat(&h, &pr, 5, first, 3000, 15000, 4096, &b, readable, NULL, &sent) ==
          TALLY_OK);
    check(sent >= 1);
    tier_hub_free(&h);
    presence_flush(&pr, 0, 0, on_flush, NULL);
    presence_origin_expire(&pr, o);
    presence_flush(&pr, 0, 0, on_flush, NULL);
    check(presence_total(&pr, "dashboard", 9) == 1);
    presence_free(&pr);

    wire_presence_free(&q);
    wire_presence_free(&p);
    wbuf_free(&b);
    return 0;
}
