/*
 * fuzz_wire_presence.c - a PRESENCE announcement from a hostile or broken
 * peer: refused, or valid data that survives a re-encode and that the
 * presence table applies (as plugin.c does) without harm.
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wire_presence p;
    if (wire_decode_presence(data, size, &p) != TALLY_OK) {
        check(p.pages == NULL);
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
    struct wire_presence q;
    check(wire_decode_presence(b.data, b.len, &q) == TALLY_OK);
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
    presence_flush(&pr, 0, 0, on_flush, NULL);
    presence_origin_expire(&pr, o);
    presence_flush(&pr, 0, 0, on_flush, NULL);
    check(presence_total(&pr, "dashboard", 9) == 1);
    presence_free(&pr);

    free(q.pages);
    free(p.pages);
    wbuf_free(&b);
    return 0;
}
