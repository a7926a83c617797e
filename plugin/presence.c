/*
 * presence.c - who is viewing which page, here and on the other nodes.
 *
 * A client views page P while it holds a subscription to exactly
 * `presence/P`. Locally we keep a set of (client id, page) pairs: a client
 * that subscribes twice still counts once, and one that disconnects, is taken
 * over or unsubscribes stops counting. Each node announces its own per-page
 * counts (flooded through the cluster, see plugin.c); the published number
 * for a page is
 *
 *     local viewers + sum over live origins of their last announced count
 *
 * An origin's announcement replaces all of its previous counts (it is a
 * last-writer-wins register per origin, ordered by the origin's own sequence
 * number), so a lost announcement is healed by the next one, and an origin
 * that falls silent for peer_timeout_ms is expired: its columns go to zero.
 * An announcement larger than max_message_bytes is sent as several messages,
 * each covering a range of presence_hash(page) and replacing the origin's
 * counts of that range only, so each stands on its own.
 *
 * The full announcement goes at our first heartbeat and when owed; the
 * heartbeats between are keepalives: a message of no range (lo > hi), which
 * a receiver takes as "alive" and which replaces no count, ending with the
 * digest of our counts (pr->local_digest), so that a receiver holding other
 * counts asks for them all (tier.c, "the heartbeat's pages"). A change of
 * our counts costs what changed: each changed hash h goes alone, in a
 * message of its own seq covering [h, h] with our pages of that hash (none
 * if the page left), which receivers take as they take any range. Two
 * changed hashes never share a range, as that range would have to list
 * every page of ours between them. A node holding few pages, or changes
 * that are a large part of its pages, announces in full as before
 * (changes_worth_alone says why). A change sent alone and lost, or
 * overtaken by a newer message of ours (a ring, one path broken for a
 * while), leaves its page wrong there until our next heartbeat shows the
 * receiver another digest, as a lost part of a full announcement does. The
 * changed hashes are kept, not the pages: a page that went to 0 may be
 * freed before the announcement.
 *
 * An edge's counts come to the other hubs from its hub's relays (tier.c),
 * sent only when they change; its hub's own heartbeat lists it with the
 * digest of its counts there (the sum of presence_digest over its pages),
 * and how long ago it was heard, and each relay that answers a want ends
 * with that entry too. presence_origin_listed takes that as the edge's
 * liveness (an origin stays alive while listed, and expires
 * peer_timeout_ms after its hub last heard it), and each origin keeps the
 * digest of its counts held here, so that presence_origin_wanted sees a lost
 * relay and the hub's next heartbeat asks the carrier for it again.
 *
 * Pages live in a uthash table by name, and in a second by presence_hash
 * (for the pages of one changed hash, here and at a receiver); each keeps
 * its local count and a cell per origin that counts viewers of it, sorted
 * by the origin's slot (sorted_entry), a count of 0 being no cell. A page
 * whose total is zero is freed once that zero has been published, so a
 * flood of one-off page names does not accumulate.
 *
 * Cells, not a column for every origin: a hub holds an origin per edge of
 * the tree, and a page indexed by origin slot took room for every origin up
 * to the last that counted it. At a hub of a tree of 10,000 edges, 100,000
 * pages watched at two edges each took 5.35 GB (53 KB a page), and each
 * page's total a walk of 10,000 columns; with cells, a page costs what its
 * origins hold. Each origin keeps the list of pages it counts, so that its
 * expiry, or an announcement of all its pages, replaces its own cells, and
 * a replay sends them, without a walk of every page (1.4 and 2 ms each at
 * 100,000 pages: a hub taking the replay of 10,000 origins spent 20 s in
 * those walks).
 *
 * Fan-out: one publish of a page's count is delivered to each of its local
 * viewers, so a page is published at most once every page_interval_ms
 * (schedule.c) of its audience: deliveries a second stay within the budget
 * however many watch. A change made meanwhile keeps the page dirty until
 * that time, so the last change is always published: exact at rest.
 */
#include <stdlib.h>
#include <string.h>

#include <utlist.h>

#include "tally.h"

/* One origin's count of a page (never 0: a count of 0 is no cell). */
struct page_cell {
    uint32_t slot; /* the origin's: the sort key, first (sorted_entry) */
    uint32_t at;   /* where the page is in the origin's counted list */
    uint64_t n;
};

struct tally_page {
    UT_hash_handle hh;       /* by name */
    UT_hash_handle hh_hash;  /* by hash: the first page of each hash */
    struct tally_page *twin; /* the next page of the same hash */
    struct tally_page *dirty_next;
    uint64_t hash; /* presence_hash(name) */
    uint64_t local;
    struct page_cell *cells; /* origins counting it, sorted by slot */
    uint32_t ncells;
    /* the sum of its cells of origins of each level below our top
     * (scope_levels; 0: nodes of our group, 1: other groups of our region,
     * 2: other regions of the region above it, ...): what scope.c's sums
     * are made of */
    uint64_t part[TALLY_LEVELS];
    uint32_t scope_gen;   /* pr->scope_gen when its hash joined pr->scope_changed */
    uint64_t published;   /* UINT64_MAX until first published */
    uint64_t next_ms;     /* not published again before (presence_flush's clock) */
    uint32_t changed_gen; /* pr->changed_gen when its hash joined pr->changed */
    bool dirty;
    uint8_t name_len;
    char name[];
};

/* A client's views are found by (client, page) in one table, not by a walk
 * of the client's list: a client subscribing to 80,000 pages one after the
 * other took 41 s of the broker's time with a walk (its 1,000,000th would
 * have walked a million), 1.5 s without tally. The list is for dropping the
 * client. */
struct view_key {
    const struct tally_viewer *viewer;
    const struct tally_page *page;
};

struct tally_view {
    UT_hash_handle hh;
    struct view_key key;
    struct tally_view *prev, *next; /* the viewer's views */
};

struct tally_viewer {
    UT_hash_handle hh;
    struct tally_view *views;
    char client[];
};

void presence_init(struct tally_presence *pr, uint64_t max_views)
{
    memset(pr, 0, sizeof(*pr));
    pr->max_views = max_views;
    pr->changed_gen = 1;
    pr->scope_gen = 1;
}

/* ==== Pages, by name and by hash ==== */

/* The first page of each presence_hash is in pr->by_hash; the others of
 * that hash (two names of one 64-bit hash: rare, but FNV-1a collisions can
 * be made on purpose) hang from it by twin. */
static struct tally_page *pages_of_hash(const struct tally_presence *pr, uint64_t hash)
{
    struct tally_page *pg = NULL;
    HASH_FIND(hh_hash, pr->by_hash, &hash, sizeof(hash), pg);
    return pg;
}

static void by_hash_add(struct tally_presence *pr, struct tally_page *pg)
{
    struct tally_page *first = pages_of_hash(pr, pg->hash);
    if (first) {
        pg->twin = first->twin;
        first->twin = pg;
        return;
    }
    HASH_ADD(hh_hash, pr->by_hash, hash, sizeof(pg->hash), pg);
}

static void by_hash_del(struct tally_presence *pr, struct tally_page *pg)
{
    struct tally_page *first = pages_of_hash(pr, pg->hash);
    if (first != pg) {
        struct tally_page **p = &first->twin;
        while (*p != pg)
            p = &(*p)->twin;
        *p = pg->twin;
        return;
    }
    HASH_DELETE(hh_hash, pr->by_hash, pg);
    if (pg->twin)
        HASH_ADD(hh_hash, pr->by_hash, hash, sizeof(pg->twin->hash), pg->twin);
}

static void page_free(struct tally_page *pg)
{
    free(pg->cells);
    free(pg);
}

static void page_drop(struct tally_presence *pr, struct tally_page *pg)
{
    HASH_DEL(pr->pages, pg);
    by_hash_del(pr, pg);
    page_free(pg);
}

void presence_free(struct tally_presence *pr)
{
    HASH_CLEAR(hh_hash, pr->by_hash);
    struct tally_page *pg, *ptmp;
    HASH_ITER(hh, pr->pages, pg, ptmp)
    {
        HASH_DEL(pr->pages, pg);
        page_free(pg);
    }
    free(pr->changed);
    free(pr->scope_changed);
    struct tally_view *view, *wtmp;
    HASH_ITER(hh, pr->views, view, wtmp)
    {
        HASH_DEL(pr->views, view);
        free(view);
    }
    struct tally_viewer *v, *vtmp;
    HASH_ITER(hh, pr->viewers, v, vtmp)
    {
        HASH_DEL(pr->viewers, v);
        free(v);
    }
    struct tally_origin *o, *otmp;
    HASH_ITER(hh, pr->origins, o, otmp)
    {
        HASH_DEL(pr->origins, o);
        free(o->counted);
        free(o);
    }
    memset(pr, 0, sizeof(*pr));
}

static void page_dirty(struct tally_presence *pr, struct tally_page *pg)
{
    if (pg->dirty)
        return;
    pg->dirty = true;
    pg->dirty_next = pr->dirty_head;
    pr->dirty_head = pg;
}

static struct tally_page *page_get(struct tally_presence *pr, const char *name, size_t len,
                                   bool create)
{
    struct tally_page *pg = NULL;
    HASH_FIND(hh, pr->pages, name, len, pg);
    if (pg || !create)
        return pg;
    pg = calloc(1, sizeof(*pg) + len + 1);
    if (!pg)
        return NULL;
    memcpy(pg->name, name, len);
    pg->name_len = (uint8_t)len;
    pg->hash = presence_hash(name, len);
    pg->published = UINT64_MAX;
    HASH_ADD(hh, pr->pages, name, len, pg);
    by_hash_add(pr, pg);
    return pg;
}

static uint64_t page_total(const struct tally_page *pg)
{
    uint64_t total = pg->local;
    for (uint32_t i = 0; i < pg->ncells; i++)
        total += pg->cells[i].n;
    return total;
}

/* ==== Local viewers ==== */

/* Appends hash to a list that grows up to max entries: false past that,
 * or out of memory (the caller then takes every page as changed). */
static bool note_hash(uint64_t **list, uint32_t *n, uint32_t *cap, uint32_t max, uint64_t hash)
{
    if (*n == *cap) {
        uint32_t grown_cap = *cap ? 2 * *cap : 16;
        uint64_t *grown = grown_cap <= max ? realloc(*list, grown_cap * sizeof(*grown)) : NULL;
        if (!grown)
            return false;
        *list = grown;
        *cap = grown_cap;
    }
    (*list)[(*n)++] = hash;
    return true;
}

/* A count our group's or region's sum of pg is made of changed (scope.c):
 * its hash is noted once until presence_scope_sync takes the notes, up to
 * PRESENCE_SCOPE_MAX hashes (past that, every page). */
static void scope_changed(struct tally_presence *pr, struct tally_page *pg)
{
    if (!pr->scope_levels || pr->scope_all || pg->scope_gen == pr->scope_gen)
        return;
    pg->scope_gen = pr->scope_gen;
    if (!note_hash(&pr->scope_changed, &pr->nscope_changed, &pr->scope_changed_cap,
                   PRESENCE_SCOPE_MAX, pg->hash))
        pr->scope_all = true;
}

/* Sets our own count of pg, keeping the digest of our counts that our
 * heartbeat carries (tier.c, "the heartbeat's own entry"). */
static void local_count(struct tally_presence *pr, struct tally_page *pg, uint64_t n)
{
    pr->local_digest += presence_digest(pg->name, pg->name_len, n) -
                        presence_digest(pg->name, pg->name_len, pg->local);
    pg->local = n;
    scope_changed(pr, pg);
}

/* Our count of pg changed: its hash joins the changes the next announcement
 * may send alone (presence_announce_changes), once per announcement, up to
 * PRESENCE_CHANGES_MAX hashes; past that only a full one will do. */
static void local_changed(struct tally_presence *pr, struct tally_page *pg)
{
    pr->local_changed = true;
    if (pg->changed_gen == pr->changed_gen || pr->changed_all)
        return;
    pg->changed_gen = pr->changed_gen;
    if (!note_hash(&pr->changed, &pr->nchanged, &pr->changed_cap, PRESENCE_CHANGES_MAX, pg->hash))
        pr->changed_all = true; /* too many, or out of memory */
}

static struct tally_view *view_find(struct tally_presence *pr, const struct tally_viewer *v,
                                    const struct tally_page *pg)
{
    struct view_key key = {v, pg};
    struct tally_view *view = NULL;
    HASH_FIND(hh, pr->views, &key, sizeof(key), view);
    return view;
}

static void viewer_free_if_empty(struct tally_presence *pr, struct tally_viewer *v)
{
    if (v->views)
        return;
    HASH_DEL(pr->viewers, v);
    free(v);
}

/* Returns TALLY_OK, setting *added if (client, page) is a new view (not if it
 * was already counted), or a tally_err (max_views reached, out of memory). */
int presence_view(struct tally_presence *pr, const char *client, const char *page, size_t len,
                  bool *added)
{
    *added = false;
    struct tally_viewer *v = NULL;
    HASH_FIND_STR(pr->viewers, client, v);
    struct tally_page *pg = page_get(pr, page, len, false);
    if (v && pg && view_find(pr, v, pg))
        return TALLY_OK;
    if (pr->nviews >= pr->max_views)
        return TALLY_E_MAX_VIEWERS;
    if (!v) {
        size_t clen = strlen(client);
        v = calloc(1, sizeof(*v) + clen + 1);
        if (!v)
            return TALLY_E_NOMEM;
        memcpy(v->client, client, clen);
        HASH_ADD(hh, pr->viewers, client[0], clen, v);
    }
    pg = page_get(pr, page, len, true);
    struct tally_view *view = pg ? calloc(1, sizeof(*view)) : NULL;
    if (!view) {
        viewer_free_if_empty(pr, v);
        return TALLY_E_NOMEM;
    }
    view->key = (struct view_key){v, pg};
    HASH_ADD(hh, pr->views, key, sizeof(view->key), view);
    DL_APPEND(v->views, view);
    local_count(pr, pg, pg->local + 1);
    if (pg->local == 1)
        pr->nlocal_pages++;
    pr->nviews++;
    local_changed(pr, pg);
    page_dirty(pr, pg);
    *added = true;
    return TALLY_OK;
}

static void viewer_forget(struct tally_presence *pr, struct tally_viewer *v,
                          struct tally_view *view)
{
    struct tally_page *pg = (struct tally_page *)view->key.page;
    local_count(pr, pg, pg->local - 1);
    if (pg->local == 0)
        pr->nlocal_pages--;
    pr->nviews--;
    local_changed(pr, pg);
    page_dirty(pr, pg);
    HASH_DEL(pr->views, view);
    DL_DELETE(v->views, view);
    free(view);
}

void presence_unview(struct tally_presence *pr, const char *client, const char *page, size_t len)
{
    struct tally_viewer *v = NULL;
    HASH_FIND_STR(pr->viewers, client, v);
    struct tally_page *pg = v ? page_get(pr, page, len, false) : NULL;
    struct tally_view *view = pg ? view_find(pr, v, pg) : NULL;
    if (!view)
        return;
    viewer_forget(pr, v, view);
    viewer_free_if_empty(pr, v);
}

void presence_drop_client(struct tally_presence *pr, const char *client)
{
    struct tally_viewer *v = NULL;
    HASH_FIND_STR(pr->viewers, client, v);
    if (!v)
        return;
    while (v->views)
        viewer_forget(pr, v, v->views);
    viewer_free_if_empty(pr, v);
}

void presence_each_local(struct tally_presence *pr,
                         void (*fn)(const char *page, size_t len, uint64_t n, void *ud), void *ud)
{
    struct tally_page *pg, *tmp;
    HASH_ITER(hh, pr->pages, pg, tmp)
    {
        if (pg->local)
            fn(pg->name, pg->name_len, pg->local, ud);
    }
}

void presence_each_local_of_hash(const struct tally_presence *pr, uint64_t hash,
                                 void (*fn)(const char *page, size_t len, uint64_t n, void *ud),
                                 void *ud)
{
    for (const struct tally_page *pg = pages_of_hash(pr, hash); pg; pg = pg->twin)
        if (pg->local)
            fn(pg->name, pg->name_len, pg->local, ud);
}

/* ==== Our announcements ==== */

/* A page with what it is sorted by: its hash here, an origin's slot in a
 * replay. */
struct keyed_page {
    uint64_t key;
    const struct tally_page *pg;
};

static int by_key(const void *a, const void *b)
{
    uint64_t x = ((const struct keyed_page *)a)->key, y = ((const struct keyed_page *)b)->key;
    return x < y ? -1 : x > y;
}

/* How many of the sorted pages from i on fit in one message of max_bytes
 * after head bytes; never splits pages of one hash over two ranges. */
static size_t pages_that_fit(const struct keyed_page *hp, size_t n, size_t i, size_t head,
                             size_t max_bytes)
{
    size_t j = i, used = head;
    while (j < n && used + 1 + hp[j].pg->name_len + 5 <= max_bytes)
        used += 1 + hp[j++].pg->name_len + 5;
    while (j < n && j > i + 1 && hp[j].key == hp[j - 1].key)
        j--;
    if (j == i && i < n)
        j++; /* a page always fits in max_bytes >= 4096 */
    while (j < n && hp[j].key == hp[j - 1].key)
        j++;
    return j - i;
}

/* Every announcement, full or of changes, starts the next set of changes. */
void presence_changes_clear(struct tally_presence *pr)
{
    pr->local_changed = false;
    pr->changed_all = false;
    pr->nchanged = 0;
    if (++pr->changed_gen == 0)
        pr->changed_gen = 1; /* 0 is a new page's */
}

uint32_t presence_announce(struct tally_presence *pr, const char *origin, uint64_t incarnation,
                           uint64_t first_seq, size_t max_bytes, struct wire_buf *b,
                           void (*emit)(const struct wire_buf *msg, void *ud), void *ud)
{
    size_t n = 0;
    struct keyed_page *hp = malloc((pr->nlocal_pages + 1) * sizeof(*hp));
    if (!hp)
        return 0;
    struct tally_page *pg, *tmp;
    HASH_ITER(hh, pr->pages, pg, tmp)
    {
        if (pg->local)
            hp[n++] = (struct keyed_page){pg->hash, pg};
    }
    qsort(hp, n, sizeof(*hp), by_key);
    /* header, origin, four u64 and the page count */
    size_t head = 4 + 1 + strlen(origin) + 4 * 8 + 5;
    uint32_t msgs = 0;
    uint64_t lo = 0;
    size_t i = 0;
    do {
        size_t k = pages_that_fit(hp, n, i, head, max_bytes);
        uint64_t hi = i + k == n ? UINT64_MAX : hp[i + k - 1].key;
        wire_presence_begin(b, origin, incarnation, first_seq + msgs, lo, hi, (uint32_t)k);
        for (size_t j = i; j < i + k; j++)
            wire_presence_page(b, hp[j].pg->name, hp[j].pg->name_len, hp[j].pg->local);
        emit(b, ud);
        msgs++;
        lo = hi + 1;
        i += k;
    } while (i < n);
    free(hp);
    presence_changes_clear(pr);
    return msgs;
}

/* Whether the changes since the last announcement are worth sending alone.
 * Not when they are many (past PRESENCE_CHANGES_MAX, or a quarter of our
 * pages: a full announcement then costs about as many bytes, in fewer
 * messages), and not when we view fewer than PRESENCE_CHANGES_MIN_PAGES
 * pages: such a full announcement is one message of a few kilobytes, and
 * one message that replaces all our counts stands alone, where a change sent
 * alone that a newer message overtook (two paths in a ring, one of them
 * broken for a while) is dropped and leaves its page wrong until the
 * receiver asks for them all (after our next heartbeat, tier.c). */
bool presence_changes_worth_alone(const struct tally_presence *pr, uint64_t nchanged)
{
    return nchanged <= PRESENCE_CHANGES_MAX && pr->nlocal_pages >= PRESENCE_CHANGES_MIN_PAGES &&
           nchanged * 4 <= pr->nlocal_pages;
}

static bool changes_worth_alone(const struct tally_presence *pr)
{
    return pr->local_changed && !pr->changed_all && presence_changes_worth_alone(pr, pr->nchanged);
}

static int by_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* One message covering [hash, hash] alone: our pages of that hash, which
 * may be none (the page left). */
static void announce_hash(const struct tally_presence *pr, uint64_t hash, const char *origin,
                          uint64_t incarnation, uint64_t seq, struct wire_buf *b)
{
    uint32_t k = 0;
    for (const struct tally_page *pg = pages_of_hash(pr, hash); pg; pg = pg->twin)
        k += pg->local > 0;
    wire_presence_begin(b, origin, incarnation, seq, hash, hash, k);
    for (const struct tally_page *pg = pages_of_hash(pr, hash); pg; pg = pg->twin) {
        if (pg->local)
            wire_presence_page(b, pg->name, pg->name_len, pg->local);
    }
}

uint32_t presence_announce_changes(struct tally_presence *pr, const char *origin,
                                   uint64_t incarnation, uint64_t first_seq, struct wire_buf *b,
                                   void (*emit)(const struct wire_buf *msg, void *ud), void *ud)
{
    if (!changes_worth_alone(pr))
        return 0;
    qsort(pr->changed, pr->nchanged, sizeof(*pr->changed), by_u64);
    uint32_t msgs = 0;
    for (uint32_t i = 0; i < pr->nchanged; i++) {
        if (i && pr->changed[i] == pr->changed[i - 1])
            continue; /* two pages of one hash */
        announce_hash(pr, pr->changed[i], origin, incarnation, first_seq + msgs++, b);
        emit(b, ud);
    }
    presence_changes_clear(pr);
    return msgs;
}

/* ==== Other nodes' announcements ==== */

struct tally_origin *presence_origin(struct tally_presence *pr, const char *node_id)
{
    struct tally_origin *o = NULL;
    HASH_FIND_STR(pr->origins, node_id, o);
    if (o)
        return o;
    o = calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    strncpy(o->node_id, node_id, TALLY_NODE_ID_MAX);
    o->level = (uint8_t)unit_marks(node_id, strlen(node_id));
    o->slot = pr->norigins++;
    HASH_ADD_STR(pr->origins, node_id, o);
    return o;
}

uint64_t presence_hash(const char *page, size_t len)
{
    return tally_hash64(page, len, 3);
}

uint64_t presence_digest(const char *page, size_t len, uint64_t count)
{
    return count ? tally_hash64(page, len, 0x7a11ULL << 32 | count) : 0;
}

uint64_t presence_entry_key(const struct wire_presence_edge *e)
{
    return table_entry_hash(tally_hash64(e->id, e->len, 0x11), e->incarnation, e->seq, e->digest);
}

/* The count of pg by the origin in slot (0: none). */
static uint64_t page_count(const struct tally_page *pg, uint32_t slot)
{
    struct tally_page *m = (struct tally_page *)pg; /* unchanged: create is false */
    const struct page_cell *c =
        sorted_entry((void **)&m->cells, &m->ncells, sizeof(*m->cells), slot, false);
    return c ? c->n : 0;
}

/* Sets o's count of pg, keeping o's digest; a count of 0 drops its cell,
 * and pg from o's list (the page that was last in the list takes its place
 * there, and its cell is told). */
static int origin_count(struct tally_presence *pr, struct tally_origin *o, struct tally_page *pg,
                        uint64_t n)
{
    struct page_cell *c =
        sorted_entry((void **)&pg->cells, &pg->ncells, sizeof(*pg->cells), o->slot, false);
    uint64_t was = c ? c->n : 0;
    if (was == n)
        return TALLY_OK;
    if (!c) {
        if (o->ncounted == o->counted_cap) {
            uint32_t cap = o->counted_cap ? 2 * o->counted_cap : 4;
            struct tally_page **grown = realloc(o->counted, cap * sizeof(*grown));
            if (!grown)
                return TALLY_E_NOMEM;
            o->counted = grown;
            o->counted_cap = cap;
        }
        c = sorted_entry((void **)&pg->cells, &pg->ncells, sizeof(*pg->cells), o->slot, true);
        if (!c)
            return TALLY_E_NOMEM;
        c->at = o->ncounted;
        o->counted[o->ncounted++] = pg;
    }
    o->digest +=
        presence_digest(pg->name, pg->name_len, n) - presence_digest(pg->name, pg->name_len, was);
    if (o->level < pr->scope_levels) {
        pg->part[o->level] += n - was; /* modulo 2^64: the sum comes right */
        scope_changed(pr, pg);
    }
    if (n) {
        c->n = n;
    } else {
        struct tally_page *moved = o->counted[--o->ncounted];
        if (moved != pg) {
            o->counted[c->at] = moved;
            ((struct page_cell *)sorted_entry((void **)&moved->cells, &moved->ncells,
                                              sizeof(*moved->cells), o->slot, false))
                ->at = c->at;
        }
        uint32_t i = (uint32_t)(c - pg->cells);
        memmove(c, c + 1, (size_t)(pg->ncells - i - 1) * sizeof(*c));
        pg->ncells--;
    }
    page_dirty(pr, pg);
    return TALLY_OK;
}

static void origin_forget(struct tally_presence *pr, struct tally_origin *o, struct tally_page *pg)
{
    origin_count(pr, o, pg, 0); /* only drops: cannot fail */
}

static void origin_zero(struct tally_presence *pr, struct tally_origin *o)
{
    while (o->ncounted)
        origin_forget(pr, o, o->counted[o->ncounted - 1]);
}

bool presence_in_range(const char *page, size_t len, uint64_t lo, uint64_t hi)
{
    uint64_t h = presence_hash(page, len);
    return h >= lo && h <= hi;
}

/* A range of one hash (a change sent alone) is found by its hash, a wider
 * one among the pages o counts, not by a walk of every page; no range
 * (lo > hi: a keepalive, or a part holding only a listing) touches no page. */
void presence_origin_begin(struct tally_presence *pr, struct tally_origin *o, uint64_t lo,
                           uint64_t hi)
{
    if (lo > hi) {
        /* alive, no count touched */
    } else if (lo == hi) {
        for (struct tally_page *pg = pages_of_hash(pr, lo); pg; pg = pg->twin)
            origin_forget(pr, o, pg);
    } else {
        /* from the end: a page forgotten takes the last one's place, which
         * was seen already */
        for (uint32_t i = o->ncounted; i-- > 0;) {
            struct tally_page *pg = o->counted[i];
            if (pg->hash >= lo && pg->hash <= hi)
                origin_forget(pr, o, pg);
        }
    }
    o->alive = true;
}

int presence_origin_set(struct tally_presence *pr, struct tally_origin *o, const char *page,
                        size_t len, uint64_t n)
{
    struct tally_page *pg = page_get(pr, page, len, n > 0);
    if (!pg)
        return n > 0 ? TALLY_E_NOMEM : TALLY_OK;
    return origin_count(pr, o, pg, n);
}

/* One PRESENCE from o, already decoded: taken if newer than the last from
 * the same (origin, incarnation) (*taken, and the caller floods it on), and
 * then it replaces o's counts of its range. */
int presence_apply(struct tally_presence *pr, struct tally_origin *o,
                   const struct wire_presence *wp, bool *taken)
{
    *taken = false;
    if (o->incarnation == wp->incarnation && wp->seq <= o->seq)
        return TALLY_OK;
    o->incarnation = wp->incarnation;
    o->seq = wp->seq;
    o->carried = false;
    *taken = true;
    presence_origin_begin(pr, o, wp->lo, wp->hi);
    for (uint32_t i = 0; i < wp->npages; i++) {
        const struct wire_presence_page *pg = &wp->pages[i];
        if (presence_origin_set(pr, o, pg->page, pg->len, pg->count) != TALLY_OK)
            return TALLY_E_NOMEM;
    }
    return TALLY_OK;
}

void presence_origin_expire(struct tally_presence *pr, struct tally_origin *o)
{
    origin_zero(pr, o);
    o->alive = false;
    o->carried = false;
}

void presence_origin_listed(struct tally_origin *o, const struct wire_presence_edge *l,
                            uint64_t now_ms)
{
    uint64_t heard = now_ms > l->age_ms ? now_ms - l->age_ms : 0;
    /* The hub holding the relay held here, or a newer one, knows best when
     * the edge was last heard: what a relay's arrival guessed (before the
     * edge was listed here) gives way to it. An older carrier only raises. */
    bool current = l->incarnation == o->incarnation && l->seq >= o->seq;
    /* An age is counted from when its entry left, so heard is the
     * carrier's hearing plus the entry's time on its way, a delay per bridge
     * it crossed. A carrier lists a dead edge until it forgets it (at every
     * heartbeat out of its set, and in its full listings), and each copy
     * comes by the way it found: raised by each, the slowest counted
     * (tests/sim with groups of hubs: a copy 711 ms on its way over five
     * bridges kept a dead edge counted 300 ms past the allowance, in 12 of
     * 2,001 schedules). An entry whose hearing is no later than the arrival
     * of the one ours was taken from tells of none later, but by a
     * difference of two transits (from the same carrier: it heard the edge
     * before that one left; a hub that heard it since lists it again): it
     * raises nothing, and the current carrier's may lower (the same
     * hearing, sooner here). One copy's time on its way still counts. */
    bool news = heard > o->heard_listed_ms;
    if (news ? current || heard > o->last_heard_ms : current && heard < o->last_heard_ms) {
        o->last_heard_ms = heard;
        if (news)
            o->heard_listed_ms = now_ms;
    }
    if (o->listed && l->incarnation == o->listed_incarnation && l->seq < o->listed_seq)
        return; /* a hub it has left lists what it last relayed */
    /* Its carrier holds at a newer seq the counts held here (an edge that
     * moved, not relayed again: tier.c's tier_hub_relay): so does this node. */
    if (o->alive && l->incarnation == o->incarnation && l->seq > o->seq && l->digest == o->digest)
        o->seq = l->seq;
    if (!o->listed)
        o->first_listed_ms = now_ms;
    o->listed = true;
    o->listed_incarnation = l->incarnation;
    o->listed_seq = l->seq;
    o->listed_digest = l->digest;
}

bool presence_origin_wanted(const struct tally_origin *o, uint64_t now_ms, uint64_t timeout_ms)
{
    /* one heartbeat (plugin.c's, peer_timeout_ms / 5, at most a second), for
     * an origin of which nothing was ever taken here */
    uint64_t grace = timeout_ms / 5 < 1000 ? timeout_ms / 5 : 1000;
    bool held = o->incarnation || o->seq;
    return o->listed && (held || now_ms - o->first_listed_ms >= grace) &&
           now_ms - o->last_heard_ms <= timeout_ms && o->digest != o->listed_digest &&
           (o->incarnation != o->listed_incarnation || o->seq <= o->listed_seq);
}

/* ==== Replay to a neighbour that restarted ====
 *
 * A node that restarts holds no viewer count of anyone. Until now it heard
 * the listings, wanted every origin listed (every edge of the tree), and
 * each carrier answered with a relay flooded to every hub over every
 * bridge, though only the restarted node lacked it: 4 restarts among 40
 * hubs of 50 edges doubled the PRESENCE messages of the whole tree
 * (tests/sim, README). Its neighbours hold those counts already. So a node
 * that sees a neighbour restart (repl_replay_due: its own PRESENCE of a new
 * incarnation straight over their bridge, or its new SYNC stream) sends
 * that neighbour alone, over that bridge, each origin it holds exactly as
 * the origin's newest listing says its carrier does: same incarnation,
 * same seq, same digest, alive. Each goes as the one PRESENCE of that seq,
 * covering every hash, with the origin's entry of that listing, so that the
 * receiver takes the carrier's time of hearing, not the replay's arrival
 * (as a relay answering a want does, tier.c's relay_range). It is an
 * ordinary PRESENCE, taken if newer, and what it carries is the origin's
 * counts as of that seq (the digest says so): nothing is counted twice or
 * kept from a newer message. It goes on a topic of its own
 * ($tally/v1/replay/<origin>), so that the receiver takes it and does not
 * flood it on: its other neighbours hold it already, or want it. (A node
 * of the version before refuses that topic, counted in repl.refused, and
 * wants the counts as before.)
 *
 * The sender's own edges are replayed too, as it holds them from their UPs
 * (o->carried, set by tier.c, cleared by any PRESENCE of them taken from
 * another carrier), unless a listing names a newer seq or life of theirs
 * (they moved on): it holds them unlisted, so until 2026-12-03 only the
 * restarted node's other neighbours replayed them, if it had any and if
 * their bridges came back before it wanted them (a hub bridged to by its
 * neighbours hears them again only after their bridges' restart_timeout,
 * 5 s and more by default, and wants what it lacks after a heartbeat);
 * otherwise the carrier relayed each to every hub.
 *
 * Each names the hub whose carried set holds the origin's entry as
 * replayed (o->carrier, or self for our own edges: tier.c, "The carrier's
 * keepalive"), so that the restarted node holds each hub's set whole by
 * that hub's next keepalive and does not ask every hub for its full
 * listing; one with no viewers goes for that alone.
 *
 * Not replayed, and wanted as before: an origin held other than as listed
 * (a relay lost here too), and one whose pages do not fit one message. The
 * restarted node wants an origin it never held only a heartbeat after its
 * first listing (presence_origin_wanted), by when the replay has come. */

static bool origin_replayable(const struct tally_origin *o, const char *skip, uint64_t now_ms,
                              uint64_t timeout_ms)
{
    bool as_listed = o->listed && o->incarnation == o->listed_incarnation &&
                     o->seq == o->listed_seq && o->digest == o->listed_digest;
    /* ours, unless a listing says its carrier holds a newer seq or life */
    bool ours =
        o->carried &&
        (!o->listed || (o->incarnation == o->listed_incarnation && o->seq >= o->listed_seq));
    return o->alive && (as_listed || ours) && now_ms - o->last_heard_ms <= timeout_ms &&
           strcmp(o->node_id, skip) != 0;
}

/* Replays o's counts: the pages it counts, with its entry as listed. */
static void replay_origin(const struct tally_origin *o, const char *self, uint64_t now_ms,
                          size_t max_bytes, struct wire_buf *b,
                          void (*emit)(const struct wire_buf *msg, void *ud), void *ud,
                          uint32_t *sent)
{
    struct wire_presence_edge entry = {o->node_id, strlen(o->node_id), o->incarnation,
                                       o->seq,     o->digest,          now_ms - o->last_heard_ms};
    wire_presence_begin(b, o->node_id, o->incarnation, o->seq, 0, UINT64_MAX, o->ncounted);
    for (uint32_t i = 0; i < o->ncounted; i++) {
        const struct tally_page *pg = o->counted[i];
        wire_presence_page(b, pg->name, pg->name_len, page_count(pg, o->slot));
    }
    wire_presence_count(b, 1);
    wire_presence_edge(b, &entry);
    wire_presence_count(b, 0);
    const char *carrier = o->carrier ? o->carrier->node_id : o->carried ? self : NULL;
    if (carrier && o->carry_key == presence_entry_key(&entry)) {
        struct wire_presence set = {.listing_flags = WIRE_LISTING_CARRIER,
                                    .carrier = carrier,
                                    .carrier_len = strlen(carrier)};
        wire_presence_carried(b, &set);
    }
    if (b->failed || b->len > max_bytes)
        return; /* wanted as before */
    emit(b, ud);
    (*sent)++;
}

uint32_t presence_replay(struct tally_presence *pr, const char *self, const char *skip,
                         uint64_t now_ms, uint64_t timeout_ms, size_t max_bytes, uint32_t *from,
                         uint32_t most, struct wire_buf *b,
                         void (*emit)(const struct wire_buf *msg, void *ud), void *ud)
{
    uint32_t lo = *from;
    if (lo >= pr->norigins || !most) {
        *from = UINT32_MAX;
        return 0;
    }
    uint32_t hi = pr->norigins - lo > most ? lo + most : pr->norigins;
    *from = hi < pr->norigins ? hi : UINT32_MAX;
    struct tally_origin **of = calloc(hi - lo, sizeof(*of)); /* by slot, from lo */
    if (!of)
        return 0;
    for (struct tally_origin *o = pr->origins; o; o = o->hh.next)
        if (o->slot >= lo && o->slot < hi && origin_replayable(o, skip, now_ms, timeout_ms))
            of[o->slot - lo] = o;
    /* In slot order, each with the pages it counts (none: nothing held,
     * unless its carrier is to be named). */
    uint32_t sent = 0;
    for (uint32_t s = 0; s < hi - lo; s++)
        if (of[s] && (of[s]->ncounted || of[s]->carry_key))
            replay_origin(of[s], self, now_ms, max_bytes, b, emit, ud, &sent);
    free(of);
    return sent;
}

/* ==== Publishing ==== */

void presence_flush(struct tally_presence *pr, uint64_t now_ms, uint64_t budget,
                    void (*fn)(const char *page, size_t len, uint64_t total, void *ud), void *ud)
{
    struct tally_page *pg = pr->dirty_head;
    pr->dirty_head = NULL;
    while (pg) {
        struct tally_page *next = pg->dirty_next;
        uint64_t total = page_total(pg);
        pg->dirty = false;
        if (total != pg->published && now_ms < pg->next_ms) {
            page_dirty(pr, pg); /* its audience's budget is spent: later */
            pg = next;
            continue;
        }
        if (total != pg->published) {
            fn(pg->name, pg->name_len, total, ud);
            pg->published = total;
            pg->next_ms = now_ms + page_interval_ms(pg->local, budget);
        }
        if (total == 0)
            page_drop(pr, pg);
        pg = next;
    }
}

uint64_t presence_total(const struct tally_presence *pr, const char *page, size_t len)
{
    struct tally_page *pg = NULL;
    HASH_FIND(hh, pr->pages, page, len, pg);
    return pg ? page_total(pg) : 0;
}

/* ==== Our group's and region's sums (scope.c) ==== */

/* The viewers of pg in our group (level 1: ours and our group's nodes'),
 * region (2: and the other groups' of it), and so on up. */
static uint64_t scope_count(const struct tally_page *pg, int level)
{
    uint64_t n = pg->local;
    for (int k = 0; k < level; k++)
        n += pg->part[k];
    return n;
}

int presence_set_local(struct tally_presence *pr, const char *page, size_t len, uint64_t n)
{
    struct tally_page *pg = page_get(pr, page, len, n > 0);
    if (!pg)
        return n > 0 ? TALLY_E_NOMEM : TALLY_OK;
    if (pg->local == n)
        return TALLY_OK;
    pr->nlocal_pages += (pg->local == 0) - (n == 0);
    local_count(pr, pg, n);
    local_changed(pr, pg);
    /* a sum's page is never published (no page_dirty): freed at 0 */
    if (!n && !pg->ncells)
        page_drop(pr, pg);
    return TALLY_OK;
}

/* to's counts of the pages of one hash become from's sums of them. */
static int sync_hash(const struct tally_presence *from, struct tally_presence *to, int level,
                     uint64_t hash)
{
    int rc = TALLY_OK;
    for (const struct tally_page *pg = pages_of_hash(from, hash); pg && rc == TALLY_OK;
         pg = pg->twin)
        rc = presence_set_local(to, pg->name, pg->name_len, scope_count(pg, level));
    struct tally_page *pg = pages_of_hash(to, hash), *next;
    for (; pg && rc == TALLY_OK; pg = next) {
        next = pg->twin;
        struct tally_page *held = NULL;
        HASH_FIND(hh, from->pages, pg->name, pg->name_len, held);
        if (!held)
            rc = presence_set_local(to, pg->name, pg->name_len, 0);
    }
    return rc;
}

int presence_scope_sync(const struct tally_presence *from, struct tally_presence *to, int level,
                        bool all)
{
    int rc = TALLY_OK;
    if (!all && !from->scope_all) {
        for (uint32_t i = 0; i < from->nscope_changed && rc == TALLY_OK; i++)
            rc = sync_hash(from, to, level, from->scope_changed[i]);
        return rc;
    }
    struct tally_page *pg, *tmp;
    HASH_ITER(hh, from->pages, pg, tmp)
    {
        if (rc == TALLY_OK)
            rc = presence_set_local(to, pg->name, pg->name_len, scope_count(pg, level));
    }
    HASH_ITER(hh, to->pages, pg, tmp)
    {
        struct tally_page *held = NULL;
        HASH_FIND(hh, from->pages, pg->name, pg->name_len, held);
        if (!held && rc == TALLY_OK)
            rc = presence_set_local(to, pg->name, pg->name_len, 0);
    }
    return rc;
}

void presence_scope_taken(struct tally_presence *pr)
{
    pr->nscope_changed = 0;
    pr->scope_all = false;
    if (++pr->scope_gen == 0)
        pr->scope_gen = 1;
}
