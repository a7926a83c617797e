/*
 * control.c - JSON views of the state: the retained counters/<name>/state
 * document, the answer on an increment's MQTT v5 Response Topic, and the
 * control API on $CONTROL/tally/v1.
 *
 * The control API follows Mosquitto's dynamic-security plugin: a request is
 *
 *     {"commands": [{"command": "listCounters", "offset": 0, "count": 100,
 *                    "prefix": "votes-", "order": "natural"},
 *                   {"command": "topCounters", "count": 20},
 *                   {"command": "getCounter", "name": "likes",
 *                    "deviceOffset": 0, "deviceCount": 100,
 *                    "correlationData": "anything"}]}
 *
 * and the response, sent to the requesting client alone on
 * $CONTROL/tally/v1/response, holds one entry per command, in order:
 *
 *     {"responses": [{"command": "listCounters",
 *                     "data": {"totalCount": 9, "matched": 2, "offset": 0,
 *                              "counters": [{"name","value"}..]}},
 *                    {"command": "topCounters",
 *                     "data": {"counters": [{"name","value","rate"}..]}},
 *                    {"command": "getCounter", "correlationData": "anything",
 *                     "data": {"counter": <state>, "deviceOffset": 0,
 *                              "deviceTotalCount": 2500, "replicas": [...],
 *                              "replicaOffset": 0, "replicaTotalCount": 3,
 *                              "folds": [...], "foldOffset": 0,
 *                              "foldTotalCount": 0}}]}
 *
 * or an "error" string in place of "data". resetCounter and deleteCounter
 * ({"command": "resetCounter", "name": "likes"}) change the table (reset.c)
 * and list what they changed in the request, for plugin.c to write to disk.
 * removeNode ({"command": "removeNode", "node": "n3"}) claims a node that is
 * gone for good, to be adopted here: its slots folded into this node's, then
 * collected (fold.c, "Nodes removed for good"); it answers
 * {"node", "adopter", "settled": false}, and the stats' fold.adopt shows
 * when the claim settles. Who may send requests is decided in plugin.c (admin_usernames /
 * admin_clientids for everything, reader_usernames for requests that only
 * read: control_read_only). Deleted counters are not listed or found.
 *
 * Listing and ranking visit each counter once and keep the first k in a
 * bounded heap (O(n log k) time, k entries of memory), so a page of a million
 * counters is not a sort of a million names. A state document, and so a
 * getCounter answer, is bounded the same way: the largest devices that fit
 * in max_message_bytes, a page of them in getCounter (see below).
 */
#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tally.h"

/* ==== Orders, and the first k of many ==== */

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static int bytes_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

int name_natural_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t i = 0, j = 0;
    while (i < alen && j < blen) {
        if (!is_digit(a[i]) || !is_digit(b[j])) {
            if (a[i] != b[j])
                return (unsigned char)a[i] < (unsigned char)b[j] ? -1 : 1;
            i++, j++;
            continue;
        }
        /* Two runs of digits: without leading zeros, the longer is larger,
         * and runs of one length compare as their bytes do. */
        while (i < alen && a[i] == '0')
            i++;
        while (j < blen && b[j] == '0')
            j++;
        size_t ei = i, ej = j;
        while (ei < alen && is_digit(a[ei]))
            ei++;
        while (ej < blen && is_digit(b[ej]))
            ej++;
        if (ei - i != ej - j)
            return ei - i < ej - j ? -1 : 1;
        int c = memcmp(a + i, b + j, ei - i);
        if (c)
            return c;
        i = ei, j = ej;
    }
    if (i < alen || j < blen)
        return i < alen ? 1 : -1;
    return bytes_cmp(a, alen, b, blen);
}

/* A counter, node or device and what it is ranked by: a counter by its name
 * or rate, a node by p + n and a device by its total (p) in the state
 * document. name is borrowed. */
struct ranked {
    const char *name;
    size_t len;
    const struct tally_counter *c; /* a counter's; NULL for a node or device */
    double rate;
    uint64_t p, n;
};
typedef int (*rank_cmp)(const void *, const void *); /* < 0: a comes first */

static int by_natural(const void *x, const void *y)
{
    const struct ranked *a = x, *b = y;
    return name_natural_cmp(a->name, a->len, b->name, b->len);
}

static int by_bytes(const void *x, const void *y)
{
    const struct ranked *a = x, *b = y;
    return bytes_cmp(a->name, a->len, b->name, b->len);
}

static int by_rate(const void *x, const void *y)
{
    const struct ranked *a = x, *b = y;
    if (a->rate != b->rate)
        return a->rate > b->rate ? -1 : 1;
    return by_natural(x, y);
}

/* Largest share first; p + n stays below 2^54 (each is at most 2^53 - 1). */
static int by_share(const void *x, const void *y)
{
    const struct ranked *a = x, *b = y;
    uint64_t sa = a->p + a->n, sb = b->p + b->n;
    if (sa != sb)
        return sa > sb ? -1 : 1;
    return by_natural(x, y);
}

/* The first k counters in an order, out of many, without sorting them all:
 * a heap holds the k best seen so far with the last of them at its root, so
 * a pass over n counters costs O(n log k) and k entries of memory. */
struct top_k {
    struct ranked *v;
    size_t n, k;
    rank_cmp cmp;
};

static void heap_swap(struct ranked *v, size_t a, size_t b)
{
    struct ranked tmp = v[a];
    v[a] = v[b];
    v[b] = tmp;
}

static void heap_down(struct top_k *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, last = i;
        if (l < h->n && h->cmp(&h->v[l], &h->v[last]) > 0)
            last = l;
        if (r < h->n && h->cmp(&h->v[r], &h->v[last]) > 0)
            last = r;
        if (last == i)
            return;
        heap_swap(h->v, i, last);
        i = last;
    }
}

static void top_k_offer(struct top_k *h, struct ranked x)
{
    if (h->n < h->k) {
        size_t i = h->n++;
        h->v[i] = x;
        for (; i && h->cmp(&h->v[i], &h->v[(i - 1) / 2]) > 0; i = (i - 1) / 2)
            heap_swap(h->v, i, (i - 1) / 2);
    } else if (h->k && h->cmp(&x, &h->v[0]) < 0) {
        h->v[0] = x;
        heap_down(h, 0);
    }
}

/* Sorts what was kept, first first. */
static void top_k_finish(struct top_k *h)
{
    qsort(h->v, h->n, sizeof(*h->v), h->cmp);
}

/* ==== counters/<name>/state ==== */

/* The document is bounded by max_bytes (max_message_bytes when published):
 * a counter may hold max_devices devices, and a hub a slot for every edge
 * that wrote it, and listing them all made a document of about 2 MB at
 * 100,000 devices, sent to each watcher up to once a publish_interval_ms
 * (tests/bench/bench_state.py). value, p,
 * n and devices_total are always exact; "nodes" and "devices" list the
 * largest shares first (a node by p + n, a device by its total; ties by name
 * in natural order), as many as fit, and nodes_omitted and devices_omitted
 * count the rest. Nodes take the room they need up to half of it, and more
 * where the devices leave it free: in a cluster of a few nodes both lists
 * are whole until the devices alone pass the bound.
 *
 * Written by hand rather than with cJSON because it runs for every changed
 * counter on every flush; the devices are picked with a bounded heap
 * (below), so a counter of 100,000 devices costs O(n log k) and k entries,
 * and a node's incarnations are found by sorting, O(s log s) at s slots. */

/* Bytes of s as a JSON string: names and ids hold no control characters
 * (codec.c), so only " and \ take two (wbuf_json_str). */
static size_t json_str_len(const char *s, size_t len)
{
    size_t n = len + 2;
    for (size_t i = 0; i < len; i++)
        n += s[i] == '"' || s[i] == '\\';
    return n;
}

static size_t dec_len(uint64_t v)
{
    char d[21];
    return fmt_i64(d, (int64_t)v);
}

/* Bytes of one entry of "nodes" ("a":{"p":1,"n":2}) or "devices" ("d":7),
 * with its comma. */
static size_t share_len(const struct ranked *r, bool node)
{
    size_t n = json_str_len(r->name, r->len) + 2 + dec_len(r->p);
    return node ? n + strlen("{\"p\":,\"n\":}") + dec_len(r->n) : n;
}

/* c's nodes, each summed over its incarnations and after resets (reset.c),
 * largest first, into *out (caller frees); returns how many, or -1 when out
 * of memory. Slots are sorted by replica, not by node: sorting a copy by
 * node id finds a node's incarnations in O(s log s) at a hub's s edges. */
static long node_shares(const struct tally_table *t, const struct tally_counter *c,
                        struct ranked **out)
{
    struct ranked *v = calloc(c->nslots + 1, sizeof(*v));
    if (!v)
        return -1;
    for (uint32_t i = 0; i < c->nslots; i++) {
        const struct tally_slot *s = &c->slots[i];
        const struct tally_replica *r = t->replicas[s->replica];
        uint64_t bp, bn;
        table_slot_taken(t, c, s->replica, &bp, &bn);
        v[i] = (struct ranked){.name = r->key, .len = r->id_len};
        v[i].p = s->p > bp ? s->p - bp : 0;
        v[i].n = s->n > bn ? s->n - bn : 0;
    }
    qsort(v, c->nslots, sizeof(*v), by_bytes);
    size_t n = 0;
    for (uint32_t i = 0; i < c->nslots; i++) {
        if (n && by_bytes(&v[n - 1], &v[i]) == 0) {
            v[n - 1].p += v[i].p;
            v[n - 1].n += v[i].n;
        } else {
            v[n++] = v[i];
        }
    }
    qsort(v, n, sizeof(*v), by_share);
    *out = v;
    return (long)n;
}

/* ---- The first k devices ---- */

/* A device in the heap: 16 bytes, its name looked up only to break a tie, so
 * that choosing from a counter of 100,000 devices compares integers. */
struct dev_share {
    uint64_t total;
    uint32_t device;
};

/* True when a comes before b in the document: larger total, then name. */
static bool dev_before(const struct tally_table *t, struct dev_share a, struct dev_share b)
{
    if (a.total != b.total)
        return a.total > b.total;
    const char *x = t->devices[a.device]->id, *y = t->devices[b.device]->id;
    return name_natural_cmp(x, strlen(x), y, strlen(y)) < 0;
}

/* top_k's heap for devices: the root is the last of the k kept. */
static void dev_sift_down(const struct tally_table *t, struct dev_share *v, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, last = i;
        if (l < n && dev_before(t, v[last], v[l]))
            last = l;
        if (r < n && dev_before(t, v[last], v[r]))
            last = r;
        if (last == i)
            return;
        struct dev_share tmp = v[i];
        v[i] = v[last];
        v[last] = tmp;
        i = last;
    }
}

/* The first k of c's devices in the document's order, after resets, into
 * *out, first first (caller frees); returns how many, or -1 when out of
 * memory. O(n log k), k entries: the heap keeps the k best seen so far. */
static long device_shares(const struct tally_table *t, const struct tally_counter *c, size_t k,
                          struct ranked **out)
{
    uint32_t n = counter_ndevs(c);
    k = k < n ? k : n;
    struct dev_share *v = calloc(k + 1, sizeof(*v));
    struct ranked *r = calloc(k + 1, sizeof(*r));
    if (!v || !r) {
        free(v);
        free(r);
        return -1;
    }
    const struct tally_base *base = table_base(t, c);
    const struct tally_dev *dv = counter_devs(c);
    size_t kept = 0;
    for (uint32_t i = 0; i < n && k; i++) {
        uint64_t bd = base_device(base, dv[i].device);
        struct dev_share x = {dv[i].total > bd ? dv[i].total - bd : 0, dv[i].device};
        if (kept < k) {
            size_t j = kept++;
            for (v[j] = x; j && dev_before(t, v[(j - 1) / 2], v[j]); j = (j - 1) / 2) {
                struct dev_share tmp = v[j];
                v[j] = v[(j - 1) / 2];
                v[(j - 1) / 2] = tmp;
            }
        } else if (dev_before(t, x, v[0])) {
            v[0] = x;
            dev_sift_down(t, v, kept, 0);
        }
    }
    /* popping the root gives them last first */
    for (size_t m = kept; m > 0; m--) {
        const char *id = t->devices[v[0].device]->id;
        r[m - 1] = (struct ranked){.name = id, .len = strlen(id), .p = v[0].total};
        v[0] = v[m - 1];
        dev_sift_down(t, v, m - 1, 0);
    }
    free(v);
    *out = r;
    return (long)kept;
}

/* Writes v[0..n) as the members of a JSON object, as many as keep what is
 * written within room bytes, stopping at the first that does not fit (the
 * list is largest first); returns how many. */
static size_t write_shares(struct wire_buf *b, const struct ranked *v, size_t n, bool node,
                           size_t room)
{
    size_t start = b->len, i;
    for (i = 0; i < n; i++) {
        size_t before = b->len;
        if (i)
            wbuf_u8(b, ',');
        wbuf_json_str(b, v[i].name, v[i].len);
        wbuf_u8(b, ':');
        if (node)
            wbuf_str(b, "{\"p\":");
        wbuf_dec(b, (int64_t)v[i].p);
        if (node) {
            wbuf_str(b, ",\"n\":");
            wbuf_dec(b, (int64_t)v[i].n);
            wbuf_u8(b, '}');
        }
        if (b->len - start > room) {
            b->len = before;
            break;
        }
    }
    return i;
}

static size_t shares_len(const struct ranked *v, size_t n, bool node, size_t cap)
{
    size_t len = 0;
    for (size_t i = 0; i < n && len <= cap; i++)
        len += share_len(&v[i], node);
    return len;
}

/* The room the nodes get of room: all they need up to half of it, and what
 * the devices leave beyond that. */
static size_t nodes_room(size_t room, size_t nodes, size_t devices)
{
    if (nodes <= room / 2 || nodes + devices <= room)
        return nodes;
    return devices < room / 2 ? room - devices : room / 2;
}

/* A device entry takes at least 6 bytes ("d":0,), so no more than this many
 * fit in room: the heap's bound. */
#define DEVICE_MIN_BYTES 6

uint32_t counter_state_json(struct wire_buf *b, const struct tally_table *t,
                            const struct tally_counter *c, const struct tally_sums *sums,
                            const char *node_id, uint64_t updated_ms, const struct state_page *pg)
{
    const struct tally_sums s = *sums;
    wbuf_reset(b);
    wbuf_str(b, "{\"name\":");
    wbuf_json_str(b, c->name, c->name_len);
    wbuf_str(b, ",\"value\":");
    wbuf_dec(b, s.value);
    wbuf_str(b, ",\"p\":");
    wbuf_dec(b, s.p);
    wbuf_str(b, ",\"n\":");
    wbuf_dec(b, s.n);
    wbuf_str(b, ",\"devices_total\":");
    wbuf_dec(b, s.devices);
    wbuf_str(b, ",\"nodes\":{");
    /* what follows the two lists, at its longest */
    size_t tail = strlen("},\"devices\":{},\"nodes_omitted\":,\"devices_omitted\":,\"node\":,"
                         "\"updated_ms\":}") +
                  2 * 10 + 20 + json_str_len(node_id, strlen(node_id));
    size_t room = pg->max_bytes > b->len + tail ? pg->max_bytes - b->len - tail : 0;
    struct ranked *nodes = NULL;
    long nn = node_shares(t, c, &nodes);
    uint32_t ndevs = counter_ndevs(c), from = pg->dev_from < ndevs ? pg->dev_from : ndevs;
    size_t count = pg->dev_count < ndevs - from ? pg->dev_count : ndevs - from;
    size_t fit = room / DEVICE_MIN_BYTES + 1;
    struct ranked *devs = NULL;
    long nd = nn < 0 ? -1 : device_shares(t, c, from + (count < fit ? count : fit), &devs);
    if (nd < 0) {
        free(nodes);
        b->failed = true;
        return 0;
    }
    const struct ranked *page = devs + from;
    size_t npage = (size_t)nd - from;
    size_t node_room = nodes_room(room, shares_len(nodes, (size_t)nn, true, room),
                                  shares_len(page, npage, false, room));
    size_t start = b->len;
    size_t nodes_listed = write_shares(b, nodes, (size_t)nn, true, node_room);
    size_t used = b->len - start;
    wbuf_str(b, "},\"devices\":{");
    uint32_t listed = (uint32_t)write_shares(b, page, npage, false, room > used ? room - used : 0);
    wbuf_str(b, "},\"nodes_omitted\":");
    wbuf_dec(b, nn - (long)nodes_listed);
    wbuf_str(b, ",\"devices_omitted\":");
    wbuf_dec(b, (int64_t)(ndevs - listed));
    wbuf_str(b, ",\"node\":");
    wbuf_json_str(b, node_id, strlen(node_id));
    wbuf_str(b, ",\"updated_ms\":");
    wbuf_dec(b, (int64_t)updated_ms);
    wbuf_u8(b, '}');
    free(nodes);
    free(devs);
    return listed;
}

/* ==== Answers on an MQTT v5 Response Topic ==== */

static const char *const result_names[] = {
    [RESULT_APPLIED] = "applied",
    [RESULT_DUPLICATE] = "duplicate",
    [RESULT_UNCHANGED] = "unchanged",
    [RESULT_REFUSED] = "refused",
};

/* Written by hand, like the state document: it runs on the broker's thread
 * for every increment that asks for an answer. */
void answer_json(struct wire_buf *b, const char *name, size_t len, enum tally_result result,
                 int64_t value, int reason)
{
    wbuf_reset(b);
    wbuf_u8(b, '{');
    if (name) {
        wbuf_str(b, "\"name\":");
        wbuf_json_str(b, name, len);
        wbuf_u8(b, ',');
    }
    wbuf_str(b, "\"result\":\"");
    wbuf_str(b, result_names[result]);
    if (result == RESULT_REFUSED) {
        wbuf_str(b, "\",\"reason\":\"");
        wbuf_str(b, tally_strerror(reason));
        wbuf_str(b, "\"}");
        return;
    }
    wbuf_str(b, "\",\"value\":");
    wbuf_dec(b, value);
    wbuf_u8(b, '}');
}

/* ==== The control API ==== */

static int int_field(const cJSON *cmd, const char *key, int dflt, int min, int max)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cmd, key);
    if (!cJSON_IsNumber(v))
        return dflt;
    double d = v->valuedouble;
    return d < min ? min : d > max ? max : (int)d;
}

static void add_counter_item(cJSON *list, const struct tally_table *t,
                             const struct tally_counter *c)
{
    cJSON *item = cJSON_CreateObject();
    cJSON_AddItemToObject(item, "name", cJSON_CreateString(c->name));
    cJSON_AddNumberToObject(item, "value", (double)table_value(t, c));
    cJSON_AddItemToArray(list, item);
}

/* ---- Commands ---- */

#define LIST_MAX 1000

static const char *list_counters(const cJSON *cmd, cJSON *data, const struct tally_table *t)
{
    size_t offset = (size_t)int_field(cmd, "offset", 0, 0, 1 << 30);
    size_t count = (size_t)int_field(cmd, "count", 100, 0, LIST_MAX);
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(cmd, "prefix");
    const char *prefix = cJSON_IsString(pre) ? pre->valuestring : "";
    const cJSON *order = cJSON_GetObjectItemCaseSensitive(cmd, "order");
    bool bytes = cJSON_IsString(order) && strcmp(order->valuestring, "name") == 0;
    if (cJSON_IsString(order) && !bytes && strcmp(order->valuestring, "natural") != 0)
        return "order is \"natural\" or \"name\"";
    size_t plen = strlen(prefix), matched = 0, listed = 0;
    size_t k = offset + count < t->ncounters ? offset + count : t->ncounters;
    struct top_k h = {calloc(k + 1, sizeof(*h.v)), 0, k, bytes ? by_bytes : by_natural};
    if (!h.v)
        return "out of memory";
    const struct tally_counter *c, *tmp;
    HASH_ITER(hh, t->counters, c, tmp)
    {
        if (table_hidden(t, c))
            continue;
        listed++;
        if (c->name_len < plen || memcmp(c->name, prefix, plen) != 0)
            continue;
        matched++;
        top_k_offer(&h, (struct ranked){.name = c->name, .len = c->name_len, .c = c});
    }
    top_k_finish(&h);
    cJSON_AddNumberToObject(data, "totalCount", (double)listed);
    cJSON_AddNumberToObject(data, "matched", (double)matched);
    cJSON_AddNumberToObject(data, "offset", (double)offset);
    cJSON *list = cJSON_AddArrayToObject(data, "counters");
    for (size_t i = offset; i < h.n; i++)
        add_counter_item(list, t, h.v[i].c);
    free(h.v);
    return list ? NULL : "out of memory";
}

/* Rates below this read as 0.00 a second and are left out. */
#define RATE_MIN 0.005

static const char *top_counters(const cJSON *cmd, cJSON *data, const struct tally_table *t)
{
    size_t count = (size_t)int_field(cmd, "count", 20, 0, LIST_MAX);
    struct top_k h = {calloc(count + 1, sizeof(*h.v)), 0, count, by_rate};
    if (!h.v)
        return "out of memory";
    const struct tally_counter *c, *tmp;
    HASH_ITER(hh, t->counters, c, tmp)
    {
        double rate = counter_rate(c, t->clock_ds);
        if (rate >= RATE_MIN && !table_hidden(t, c))
            top_k_offer(&h,
                        (struct ranked){.name = c->name, .len = c->name_len, .c = c, .rate = rate});
    }
    top_k_finish(&h);
    cJSON *list = cJSON_AddArrayToObject(data, "counters");
    for (size_t i = 0; i < h.n; i++) {
        add_counter_item(list, t, h.v[i].c);
        cJSON_AddNumberToObject(cJSON_GetArrayItem(list, (int)i), "rate",
                                round(h.v[i].rate * 100) / 100);
    }
    free(h.v);
    return list ? NULL : "out of memory";
}

/* What a slot's base takes away, beside the slot, when it has one. */
static void add_base_item(cJSON *item, const struct tally_base *b, uint32_t replica)
{
    uint64_t bp, bn;
    base_slot(b, replica, &bp, &bn);
    if (!b)
        return;
    cJSON_AddNumberToObject(item, "base_p", (double)bp);
    cJSON_AddNumberToObject(item, "base_n", (double)bn);
}

/* {"node","incarnation","p","n"} of one life of a node, appended to list. */
static cJSON *life_item(cJSON *list, const struct tally_table *t, uint32_t replica, uint64_t p,
                        uint64_t n)
{
    const struct tally_replica *r = t->replicas[replica];
    char inc[17];
    snprintf(inc, sizeof(inc), "%016" PRIx64, r->incarnation);
    cJSON *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "node", r->key);
    cJSON_AddStringToObject(item, "incarnation", inc);
    cJSON_AddNumberToObject(item, "p", (double)p);
    cJSON_AddNumberToObject(item, "n", (double)n);
    cJSON_AddItemToArray(list, item);
    return item;
}

/* A replica's entry at its longest: its node id, 16 hex digits of
 * incarnation and four numbers below 2^53 with their keys. */
#define REPLICA_MAX_BYTES(id_len) (150 + (size_t)(id_len))

/* One page of a list of lives (a counter's slots, or its folds): from the
 * from-th, at most count, and no more than fit in room bytes; "<key>Offset"
 * and "<key>TotalCount" beside it. */
struct lives {
    const char *list, *offset, *total;
    const struct tally_table *t;
    const struct tally_base *base; /* slots: what a reset took from each */
    uint32_t n;
    void (*at)(const struct lives *l, uint32_t i, uint32_t *replica, uint64_t *p, uint64_t *n);
    const void *src;
};

static void add_lives(cJSON *data, const struct lives *l, uint32_t from, uint32_t count,
                      size_t room)
{
    cJSON *list = cJSON_AddArrayToObject(data, l->list);
    size_t used = 0;
    for (uint32_t i = from; i < l->n && i - from < count; i++) {
        uint32_t replica;
        uint64_t p, n;
        l->at(l, i, &replica, &p, &n);
        used += REPLICA_MAX_BYTES(l->t->replicas[replica]->id_len);
        if (used > room && i > from)
            break;
        add_base_item(life_item(list, l->t, replica, p, n), l->base, replica);
    }
    cJSON_AddNumberToObject(data, l->offset, from);
    cJSON_AddNumberToObject(data, l->total, l->n);
}

static void slot_at(const struct lives *l, uint32_t i, uint32_t *replica, uint64_t *p, uint64_t *n)
{
    const struct tally_slot *s = &((const struct tally_counter *)l->src)->slots[i];
    *replica = s->replica;
    *p = s->p;
    *n = s->n;
}

static void fold_at(const struct lives *l, uint32_t i, uint32_t *replica, uint64_t *p, uint64_t *n)
{
    const struct tally_fold *f = &((const struct tally_folds *)l->src)->e[i];
    *replica = f->replica;
    *p = f->p;
    *n = f->n;
}

/* A page of c's slots (every life of every node, for operators chasing a
 * restart), in a quarter of max_bytes, and a page of its folds (the lives
 * of nodes folded into their node's running slot, fold.c, and what of each:
 * what is left of a restart once it is folded), in an eighth. */
static void add_replicas_and_folds(cJSON *data, const cJSON *cmd, const struct tally_table *t,
                                   const struct tally_counter *c, size_t max_bytes)
{
    struct lives slots = {.list = "replicas",
                          .offset = "replicaOffset",
                          .total = "replicaTotalCount",
                          .t = t,
                          .base = table_base(t, c),
                          .n = c->nslots,
                          .at = slot_at,
                          .src = c};
    add_lives(data, &slots, (uint32_t)int_field(cmd, "replicaOffset", 0, 0, INT32_MAX),
              (uint32_t)int_field(cmd, "replicaCount", 100, 0, LIST_MAX), max_bytes / 4);
    const struct tally_folds *f = table_folds(t, c);
    struct lives folds = {.list = "folds",
                          .offset = "foldOffset",
                          .total = "foldTotalCount",
                          .t = t,
                          .n = f ? f->n : 0,
                          .at = fold_at,
                          .src = f};
    add_lives(data, &folds, (uint32_t)int_field(cmd, "foldOffset", 0, 0, INT32_MAX),
              (uint32_t)int_field(cmd, "foldCount", 100, 0, LIST_MAX), max_bytes / 8);
}

/* The state document with a page of the devices (deviceOffset, deviceCount)
 * in half of max_bytes, a page of the replicas (replicaOffset,
 * replicaCount) in a quarter, and a page of the folds (foldOffset,
 * foldCount) in an eighth: an answer within max_bytes, however many
 * devices, edges and restarts the counter has. */
static const char *get_counter(const cJSON *cmd, cJSON *data, const struct control_req *rq)
{
    const struct tally_table *t = rq->t;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "name");
    if (!cJSON_IsString(name) || name_check(name->valuestring, strlen(name->valuestring)))
        return "invalid counter name";
    struct tally_counter *c =
        table_find((struct tally_table *)t, name->valuestring, strlen(name->valuestring));
    if (!c || table_hidden(t, c))
        return "counter not found";
    struct state_page pg = {
        .max_bytes = rq->max_bytes / 2,
        .dev_from = (uint32_t)int_field(cmd, "deviceOffset", 0, 0, INT32_MAX),
        .dev_count = (uint32_t)int_field(cmd, "deviceCount", 100, 0, LIST_MAX),
    };
    struct wire_buf b = {0};
    struct tally_sums sums;
    table_sums(t, c, &sums);
    counter_state_json(&b, t, c, &sums, rq->node_id, rq->now_ms, &pg);
    cJSON *state = b.failed ? NULL : cJSON_ParseWithLength((const char *)b.data, b.len);
    wbuf_free(&b);
    if (!state)
        return "out of memory";
    cJSON_AddItemToObject(data, "counter", state);
    cJSON_AddNumberToObject(data, "deviceOffset", pg.dev_from);
    cJSON_AddNumberToObject(data, "deviceTotalCount", counter_ndevs(c));
    add_replicas_and_folds(data, cmd, t, c, rq->max_bytes);
    return NULL;
}

/* resetCounter, deleteCounter: admins only (plugin.c lets no one else send
 * them; checked here too). */
static const char *reset_counter(const cJSON *cmd, cJSON *data, struct control_req *rq, bool delete)
{
    if (!rq->admin)
        return "not allowed";
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "name");
    if (!cJSON_IsString(name) || name_check(name->valuestring, strlen(name->valuestring)))
        return "invalid counter name";
    struct tally_counter *c = table_find(rq->t, name->valuestring, strlen(name->valuestring));
    if (!c || table_hidden(rq->t, c))
        return "counter not found";
    /* it holds the rest of the tree as sums, which no base can name: a
     * light hub passes resets to its group's speaker (group.c, "Light
     * hubs"), and none runs here */
    if (rq->t->light)
        return "a light hub cannot reset or delete: send it to a full hub of its group "
               "(plugin_opt_hub full)";
    struct tally_counter **grown = realloc(rq->changed, (rq->nchanged + 1) * sizeof(*rq->changed));
    if (!grown)
        return "out of memory";
    rq->changed = grown;
    if (table_reset(rq->t, c, delete) != TALLY_OK)
        return "out of memory";
    rq->changed[rq->nchanged++] = c;
    cJSON_AddStringToObject(data, "name", c->name);
    cJSON_AddNumberToObject(data, "value", (double)table_value(rq->t, c));
    cJSON_AddBoolToObject(data, "deleted", table_hidden(rq->t, c));
    return NULL;
}

/* removeNode: admins only; not at an edge, which holds no one's slots. */
static const char *remove_node(const cJSON *cmd, cJSON *data, struct control_req *rq)
{
    if (!rq->admin)
        return "not allowed";
    const cJSON *node = cJSON_GetObjectItemCaseSensitive(cmd, "node");
    if (!cJSON_IsString(node))
        return "invalid node id";
    if (node->valuestring[0] == GROUP_MARK)
        return "a group of hubs, not a node: it has no slot to adopt";
    if (!rq->fold)
        return "an edge holds no other node's slots";
    if (rq->heard && rq->heard(node->valuestring))
        return "the node is alive: stop it for good first";
    const char *err = fold_remove(rq->fold, rq->t, rq->persist, node->valuestring, rq->mono_ms);
    if (err)
        return err;
    const struct fold_adopt *a = fold_adoption(rq->t, node->valuestring, strlen(node->valuestring));
    cJSON_AddStringToObject(data, "node", a->node);
    cJSON_AddStringToObject(data, "adopter", a->by);
    cJSON_AddBoolToObject(data, "settled", a->settled);
    return NULL;
}

static cJSON *run_command(const cJSON *cmd, struct control_req *rq)
{
    const struct tally_table *t = rq->t;
    cJSON *resp = cJSON_CreateObject();
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "command");
    const char *command = cJSON_IsString(name) ? name->valuestring : "";
    cJSON_AddStringToObject(resp, "command", command);
    const cJSON *corr = cJSON_GetObjectItemCaseSensitive(cmd, "correlationData");
    if (corr)
        cJSON_AddItemToObject(resp, "correlationData", cJSON_Duplicate(corr, true));
    cJSON *data = cJSON_CreateObject();
    const char *err = "unknown command";
    if (strcmp(command, "listCounters") == 0)
        err = list_counters(cmd, data, t);
    else if (strcmp(command, "topCounters") == 0)
        err = top_counters(cmd, data, t);
    else if (strcmp(command, "getCounter") == 0)
        err = get_counter(cmd, data, rq);
    else if (strcmp(command, "resetCounter") == 0 || strcmp(command, "deleteCounter") == 0)
        err = reset_counter(cmd, data, rq, command[0] == 'd');
    else if (strcmp(command, "removeNode") == 0)
        err = remove_node(cmd, data, rq);
    if (err) {
        cJSON_Delete(data);
        cJSON_AddStringToObject(resp, "error", err);
    } else {
        cJSON_AddItemToObject(resp, "data", data);
    }
    return resp;
}

static const char *const read_only_commands[] = {"listCounters", "getCounter", "topCounters"};

static bool command_is_read_only(const cJSON *cmd)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "command");
    for (size_t i = 0; cJSON_IsString(name) && i < sizeof(read_only_commands) / sizeof(char *); i++)
        if (strcmp(name->valuestring, read_only_commands[i]) == 0)
            return true;
    return false;
}

bool control_read_only(const void *payload, size_t len)
{
    cJSON *req = cJSON_ParseWithLength(payload, len);
    const cJSON *cmds = cJSON_GetObjectItemCaseSensitive(req, "commands");
    bool ok = cJSON_IsArray(cmds);
    const cJSON *cmd;
    cJSON_ArrayForEach(cmd, cmds)
    {
        ok = ok && command_is_read_only(cmd);
    }
    cJSON_Delete(req);
    return ok;
}

/* Commands in one request at most. Anyone may list by default, each listing
 * scans the table while the broker waits, and its answer may hold LIST_MAX
 * counters: without a bound, one 130 KB request of 3,000 listings held the
 * broker for seconds and built a 100 MB answer. */
#define CONTROL_COMMANDS_MAX 10
#define STR_(x) #x
#define STR(x) STR_(x)

/* The error that answers a request as a whole; NULL if it may run. */
static const char *request_error(const cJSON *cmds)
{
    if (!cJSON_IsArray(cmds))
        return "a request is {\"commands\": [...]}";
    if (cJSON_GetArraySize(cmds) > CONTROL_COMMANDS_MAX)
        return "a request holds at most " STR(CONTROL_COMMANDS_MAX) " commands";
    return NULL;
}

char *control_process(const void *payload, size_t len, struct control_req *rq)
{
    cJSON *req = cJSON_ParseWithLength(payload, len);
    cJSON *out = cJSON_CreateObject();
    cJSON *responses = cJSON_AddArrayToObject(out, "responses");
    const cJSON *cmds = cJSON_GetObjectItemCaseSensitive(req, "commands");
    const char *err = request_error(cmds);
    if (err) {
        cJSON *resp = cJSON_CreateObject();
        cJSON_AddStringToObject(resp, "command", "");
        cJSON_AddStringToObject(resp, "error", err);
        cJSON_AddItemToArray(responses, resp);
        cmds = NULL;
    }
    const cJSON *cmd;
    cJSON_ArrayForEach(cmd, cmds)
    {
        cJSON_AddItemToArray(responses, run_command(cmd, rq));
    }
    char *text = cJSON_PrintUnformatted(out);
    cJSON_Delete(req);
    cJSON_Delete(out);
    return text;
}

char *control_error_all(const void *payload, size_t len, const char *error)
{
    cJSON *req = cJSON_ParseWithLength(payload, len);
    cJSON *out = cJSON_CreateObject();
    cJSON *responses = cJSON_AddArrayToObject(out, "responses");
    const cJSON *cmds = cJSON_GetObjectItemCaseSensitive(req, "commands");
    const cJSON *cmd;
    cJSON_ArrayForEach(cmd, cmds)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "command");
        cJSON *resp = cJSON_CreateObject();
        cJSON_AddStringToObject(resp, "command", cJSON_IsString(name) ? name->valuestring : "");
        const cJSON *corr = cJSON_GetObjectItemCaseSensitive(cmd, "correlationData");
        if (corr)
            cJSON_AddItemToObject(resp, "correlationData", cJSON_Duplicate(corr, true));
        cJSON_AddStringToObject(resp, "error", error);
        cJSON_AddItemToArray(responses, resp);
    }
    char *text = cJSON_PrintUnformatted(out);
    cJSON_Delete(req);
    cJSON_Delete(out);
    return text;
}

/* ==== $tally/stats/<node> ==== */

/* A group's or region's figures (group.c), when this hub is in one. */
static void unit_json(struct wire_buf *b, const char *key, const struct tally_group *gr,
                      const struct tally_table *t)
{
    if (!gr || !group_on(gr))
        return;
    wbuf_printf(b, ",\"%s\":{\"name\":", key);
    wbuf_json_str(b, gr->name, gr->len);
    wbuf_printf(b,
                ",\"announced\":%" PRIu64 ",\"learned\":%" PRIu64 ",\"stale\":%" PRIu64
                ",\"refused\":%" PRIu64 ",\"mismatched\":%" PRIu64 ",\"viewers_refused\":%" PRIu64
                ",\"echoed\":%" PRIu64 ",\"holes\":%" PRIu64 ",\"budget_held\":%" PRIu64
                ",\"wants\":%" PRIu64 ",\"resent\":%" PRIu64 ",\"calls\":%" PRIu64
                ",\"refresh_took_ms\":%" PRIu64 ",\"budget\":%" PRIu64 ",\"speaking\":%s",
                gr->announced, gr->learned, gr->stale, gr->refused, gr->mismatched,
                gr->viewers_refused, gr->echoed, gr->holes, gr->budget_held, gr->wants, gr->resent,
                gr->calls, gr->refresh_took, gr->sums_budget, gr->quiet ? "false" : "true");
    if (t) { /* our group's: whether we are a light hub (group.c, "Light hubs"),
              * a split one, and the levels we hold ("Split hubs") */
        wbuf_printf(b, ",\"light\":%s,\"split\":%s,\"holds\":[", t->light ? "true" : "false",
                    t->split ? "true" : "false");
        for (int k = 1, first = 1; k <= TALLY_LEVELS; k++)
            if (t->holds & (1u << k)) {
                wbuf_printf(b, "%s%d", first ? "" : ",", k);
                first = 0;
            }
        wbuf_u8(b, ']');
    }
    wbuf_u8(b, '}');
}

/* The neighbours, as many as max_bytes leaves room for (a stats document is
 * flooded like replication, so it is bounded like it); the rest counted. A
 * neighbour not heard yet has no origin and is left out. The time each was
 * last heard is on the wall clock, from the monotonic one. */
static void stats_peers(struct wire_buf *b, const struct stats_view *v)
{
    size_t room = v->max_bytes > 64 ? v->max_bytes - 64 : 0, omitted = 0;
    bool first = true;
    wbuf_str(b, ",\"peers\":{");
    for (size_t i = 0; i < v->npeers; i++) {
        const char *id = v->peer_ids[i];
        const struct tally_origin *o;
        assert(i == 0 || strcmp(v->peer_ids[i - 1], id) <= 0);
        if (i > 0 && strcmp(v->peer_ids[i - 1], id) == 0)
            continue;
        HASH_FIND_STR(v->presence->origins, id, o);
        if (!o)
            continue;
        size_t before = b->len;
        wbuf_printf(b, "%s\"%s\":{\"last_heard_ms\":%" PRIu64 ",\"alive\":%s}", first ? "" : ",",
                    o->node_id, v->time_ms - (v->now_ms - o->last_heard_ms),
                    o->alive ? "true" : "false");
        if (b->len > room) {
            b->len = before;
            omitted++;
            continue;
        }
        first = false;
    }
    wbuf_printf(b, "},\"peers_omitted\":%zu", omitted);
}

/* Every other node heard from, directly or through others, how many of
 * them are alive (heard within peer_timeout_ms), and how many origins'
 * viewers we count (nodes, and in a tree of groups our group's nodes and
 * the other groups' and regions' sums, scope.c): numbers where listing them
 * all would make every node's stats, flooded to every node, O(cluster). */
static void stats_nodes(struct wire_buf *b, const struct tally_presence *pr)
{
    const struct tally_origin *o, *tmp;
    size_t heard = 0, alive = 0, counting = 0;
    HASH_ITER(hh, pr->origins, o, tmp)
    {
        heard++;
        alive += o->alive;
        counting += o->ncounted > 0;
    }
    wbuf_printf(b, ",\"nodes\":{\"heard\":%zu,\"alive\":%zu,\"counting\":%zu}", heard, alive,
                counting);
}

/* Written beside the state document, with the same buffer; read back with
 * cJSON (plugin.c on_stats, the CLI, the exporter), so the order of fields
 * is free. */
void node_stats_json(struct wire_buf *b, const struct stats_view *v)
{
    const struct tally_stats *st = v->st;
    uint64_t rejected = 0;
    wbuf_reset(b);
    wbuf_printf(b, "{\"node\":\"%s\",\"incarnation\":\"%" PRIu64 "\",\"seq\":%" PRIu64, v->node_id,
                v->incarnation, v->seq);
    wbuf_printf(b, ",\"time_ms\":%" PRIu64 ",\"uptime_ms\":%" PRIu64, v->time_ms, v->uptime_ms);
    wbuf_printf(b, ",\"peer_timeout_ms\":%lld,\"stats_interval_ms\":%lld", v->peer_timeout_ms,
                v->stats_interval_ms);
    wbuf_printf(b, ",\"counters\":%zu,\"devices\":%" PRIu32 ",\"viewers\":%" PRIu64,
                v->table->ncounters, v->table->ndevices, v->presence->nviews);
    wbuf_printf(b, ",\"applied\":%" PRIu64 ",\"duplicates\":%" PRIu64, st->applied, st->duplicates);
    wbuf_printf(b, ",\"reports\":%" PRIu64 ",\"reports_unchanged\":%" PRIu64, st->reports,
                st->reports_stale);
    wbuf_str(b, ",\"rejected\":{");
    for (int i = 1; i < TALLY_E__COUNT; i++) {
        wbuf_printf(b, "%s\"%s\":%" PRIu64, i > 1 ? "," : "", tally_strerror(i), st->rejected[i]);
        rejected += st->rejected[i];
    }
    wbuf_printf(b, "},\"rejected_total\":%" PRIu64, rejected);
    wbuf_printf(b, ",\"logins_refused\":%" PRIu64, st->logins_refused);
    wbuf_printf(b,
                ",\"repl\":{\"msgs_in\":%" PRIu64 ",\"bytes_in\":%" PRIu64 ",\"msgs_out\":%" PRIu64
                ",\"bytes_out\":%" PRIu64 ",\"refused\":%" PRIu64 ",\"too_large\":%" PRIu64
                ",\"too_large_out\":%" PRIu64 ",\"repaired\":%" PRIu64 ",\"repairs_asked\":%" PRIu64
                ",\"unnamed\":%" PRIu64 ",\"replayed\":%" PRIu64 ",\"floods_held\":%" PRIu64
                ",\"neighbours\":%" PRIu32 "}",
                st->repl_msgs_in, st->repl_bytes_in, st->repl_msgs_out, st->repl_bytes_out,
                st->repl_rejected, st->repl_too_large, st->repl_dropped_large, st->repair_counters,
                v->repairs_asked, v->unnamed, st->presence_replayed, st->floods_held,
                v->neighbours);
    wbuf_printf(b, ",\"dedup\":{\"ids\":%" PRIu32 ",\"window\":%" PRIu32 "}", v->dedup->count,
                v->dedup->window);
    wbuf_printf(b, ",\"limits\":{\"max_counters\":%lld,\"max_devices\":%lld,\"max_viewers\":%lld",
                v->max_counters, v->max_devices, v->max_viewers);
    wbuf_printf(b, ",\"over\":[%s%s%s]}", v->over_counters ? "\"max_counters\"" : "",
                v->over_counters && v->over_devices ? "," : "",
                v->over_devices ? "\"max_devices\"" : "");
    wbuf_str(b, ",\"persist\":");
    wbuf_json_str(b, v->persist, strlen(v->persist));
    unit_json(b, "group", v->group, v->table);
    static const char *const regions[TALLY_LEVELS - 1] = {"region", "region3", "region4"};
    for (int k = 0; k < TALLY_LEVELS - 1; k++)
        unit_json(b, regions[k], v->regions[k], NULL);
    if (v->fold) {
        wbuf_str(b, ",\"fold\":");
        /* at most half the room left: the peers have the rest */
        size_t left = v->max_bytes > b->len + 64 ? v->max_bytes - b->len - 64 : 0;
        fold_stats_json(b, v->table, v->fold, v->now_ms, b->len + left / 2);
    }
    stats_nodes(b, v->presence);
    stats_peers(b, v);
    wbuf_str(b, "}");
}

bool control_resets(const void *payload, size_t len)
{
    cJSON *req = cJSON_ParseWithLength(payload, len);
    const cJSON *cmd, *cmds = cJSON_GetObjectItemCaseSensitive(req, "commands");
    bool resets = false;
    if (!cJSON_IsArray(cmds))
        cmds = NULL;
    cJSON_ArrayForEach(cmd, cmds)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "command");
        resets =
            resets || (cJSON_IsString(name) && (strcmp(name->valuestring, "resetCounter") == 0 ||
                                                strcmp(name->valuestring, "deleteCounter") == 0));
    }
    cJSON_Delete(req);
    return resets;
}
