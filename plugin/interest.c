/*
 * interest.c - who watches which counter: the subscriptions whose filters
 * match `<prefix>/<name>` (a total) or `<prefix>/<name>/state` (a state
 * document), so that tally publishes promptly only what someone receives.
 *
 * Mosquitto 2.0.11 tells plugins of every SUBSCRIBE and UNSUBSCRIBE (as an
 * ACL check), of every DISCONNECT, and of a takeover (the old connection's
 * DISCONNECT), but not of a persistent session whose subscriptions come back
 * on reconnect: such a session is unwatched here until it subscribes again.
 *
 * The shape of a filter decides what it watches. A name is one topic level
 * that never starts with `$`, so a filter's level after the prefix is either
 * a wildcard, and then the filter matches every name or none (`counters/+`,
 * `counters/#`, `#`, `+/+/state`), or a literal, and then it matches one
 * name or none (`counters/x`, `+/x/state`, `counters/x/#`). So each filter is
 * compiled, once, when it is subscribed, into a *scope* for totals and one for
 * states: NONE, ONE (a name) or ALL, by the MQTT matcher below run against
 * the two topic shapes. Then
 *
 *     a total is watched  <=>  all_totals > 0  or  names[name].totals > 0
 *     a state is watched  <=>  all_states > 0  or  names[name].states > 0
 *
 * where all_* count the (client, filter) pairs of scope ALL and names[] holds
 * a reference count per named scope. Asking costs one integer test, and a
 * hash lookup only while some filter names a counter. Nothing is kept per
 * counter, and a filter that watches no counter (`presence/p`, `$tally/#`,
 * `sensors/#`) is not stored at all: ten thousand viewers cost nothing here.
 *
 * Each client keeps the set of its filters that watch something, with the
 * scope they were compiled to, so an unsubscribe or a disconnect undoes
 * exactly what the subscribe did. Invariants (checked by the unit tests):
 * all_totals and all_states equal the number of stored filters of scope ALL;
 * names[n].totals and .states equal the number of stored filters of scope
 * ONE(n); a names[] entry with both counts 0 does not exist; a client with
 * no stored filter does not exist. Subscribing a filter twice counts once
 * (MQTT replaces a subscription), unsubscribing an unknown one does nothing.
 *
 * Shared subscriptions (`$share/<group>/<filter>`) watch as their filter
 * does: one member receives each message, so the group watches.
 *
 * Memory: one uthash entry per (client, filter) that watches, and one per
 * named counter some filter names. Time: O(levels) to compile a filter.
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

struct interest_filter {
    UT_hash_handle hh;
    uint8_t totals, states;     /* enum interest_scope */
    struct interest_name *name; /* the named counter of scope ONE, else NULL */
    char filter[];
};

struct interest_name {
    UT_hash_handle hh;
    uint32_t totals, states; /* filters of scope ONE(this name) */
    uint8_t len;
    char name[];
};

struct interest_client {
    UT_hash_handle hh;
    struct interest_filter *filters;
    char id[];
};

/* ==== MQTT topic filters ==== */

/* Length of the topic level starting at s. */
static size_t level_len(const char *s)
{
    const char *slash = strchr(s, '/');
    return slash ? (size_t)(slash - s) : strlen(s);
}

/* MQTT 3.1.1 section 4.7: `+` matches one whole level, `#` (last) the parent
 * level and any number below it; a wildcard in the first level does not match
 * a topic that starts with `$`. filter and topic are valid. */
bool topic_matches(const char *filter, const char *topic)
{
    if (topic[0] == '$' && (filter[0] == '+' || filter[0] == '#'))
        return false;
    for (;;) {
        size_t fl = level_len(filter), tl = level_len(topic);
        if (fl == 1 && filter[0] == '#')
            return true;
        if (!(fl == 1 && filter[0] == '+') && (fl != tl || memcmp(filter, topic, fl) != 0))
            return false;
        filter += fl;
        topic += tl;
        if (!*filter && !*topic)
            return true;
        if (!*topic)
            /* "a/#" matches "a": the rest of the filter is exactly "/#" */
            return strcmp(filter, "/#") == 0;
        if (!*filter)
            return false;
        filter++;
        topic++;
    }
}

/* ==== Compiling a filter into scopes ==== */

struct scope {
    enum interest_scope totals, states;
    const char *name; /* for ONE: the literal level, in the filter */
    size_t len;
};

/* What filter watches among "<prefix>/<name>" and "<prefix>/<name>/state".
 * The level after the prefix decides: a wildcard there (or `#` before it)
 * stands for every name, so one made-up name tests them all. */
static struct scope filter_scope(const struct tally_interest *in, const char *filter)
{
    struct scope s = {INTEREST_NONE, INTEREST_NONE, NULL, 0};
    const char *second = strchr(filter, '/');
    char topic[2 * 128 + TALLY_NAME_MAX + 16];
    const char *name = "n";
    size_t len = 1;
    enum interest_scope scope = INTEREST_ALL;
    if (!(filter[0] == '#' && filter[1] == '\0')) {
        if (!second)
            return s;
        second++;
        len = level_len(second);
        if (!((len == 1 && (second[0] == '+' || second[0] == '#')))) {
            if (name_check(second, len) != TALLY_OK)
                return s;
            name = second;
            scope = INTEREST_ONE;
        }
    }
    memcpy(topic, in->prefix, in->prefix_len);
    topic[in->prefix_len] = '/';
    memcpy(topic + in->prefix_len + 1, name, len);
    strcpy(topic + in->prefix_len + 1 + len, "/state");
    if (topic_matches(filter, topic))
        s.states = scope;
    topic[in->prefix_len + 1 + len] = '\0';
    if (topic_matches(filter, topic))
        s.totals = scope;
    if (scope == INTEREST_ONE) {
        s.name = name;
        s.len = len;
    }
    return s;
}

/* "$share/<group>/<filter>" watches as <filter> does. */
static const char *unshared(const char *filter)
{
    if (strncmp(filter, "$share/", 7) != 0)
        return filter;
    const char *rest = strchr(filter + 7, '/');
    return rest ? rest + 1 : filter + strlen(filter);
}

/* ==== The index ==== */

void interest_init(struct tally_interest *in, const char *prefix)
{
    memset(in, 0, sizeof(*in));
    in->prefix_len = strlen(prefix);
    if (in->prefix_len >= sizeof(in->prefix))
        in->prefix_len = sizeof(in->prefix) - 1;
    memcpy(in->prefix, prefix, in->prefix_len);
}

static void client_free(struct tally_interest *in, struct interest_client *cl)
{
    struct interest_filter *f, *tmp;
    HASH_ITER(hh, cl->filters, f, tmp)
    {
        HASH_DEL(cl->filters, f);
        free(f);
    }
    HASH_DEL(in->clients, cl);
    free(cl);
}

void interest_free(struct tally_interest *in)
{
    struct interest_client *cl, *ctmp;
    HASH_ITER(hh, in->clients, cl, ctmp)
    client_free(in, cl);
    struct interest_name *n, *ntmp;
    HASH_ITER(hh, in->names, n, ntmp)
    {
        HASH_DEL(in->names, n);
        free(n);
    }
    memset(in, 0, sizeof(*in));
}

static struct interest_name *name_find(const struct tally_interest *in, const char *name,
                                       size_t len)
{
    struct interest_name *n = NULL;
    HASH_FIND(hh, in->names, name, len, n);
    return n;
}

bool interest_total_watched(const struct tally_interest *in, const char *name, size_t len)
{
    if (in->all_totals)
        return true;
    const struct interest_name *n = in->names ? name_find(in, name, len) : NULL;
    return n && n->totals;
}

bool interest_state_watched(const struct tally_interest *in, const char *name, size_t len)
{
    if (in->all_states)
        return true;
    const struct interest_name *n = in->names ? name_find(in, name, len) : NULL;
    return n && n->states;
}

bool interest_named(const struct tally_interest *in, const char *name, size_t len)
{
    const struct interest_name *n = in->names ? name_find(in, name, len) : NULL;
    return n && (n->totals || n->states);
}

static struct interest_name *name_get(struct tally_interest *in, const char *name, size_t len)
{
    struct interest_name *n = name_find(in, name, len);
    if (n)
        return n;
    n = calloc(1, sizeof(*n) + len + 1);
    if (!n)
        return NULL;
    memcpy(n->name, name, len);
    n->len = (uint8_t)len;
    HASH_ADD(hh, in->names, name[0], len, n);
    return n;
}

/* Adds (sign +1) or removes (-1) one filter's scopes from the counts, and
 * tells fn what may have changed: the named counter, or NULL when the set of
 * every state document went from unwatched to watched or back. */
static void apply(struct tally_interest *in, const struct interest_filter *f, int sign,
                  interest_fn *fn, void *ud)
{
    bool all_states_before = in->all_states > 0;
    if (f->totals == INTEREST_ALL)
        in->all_totals += (uint32_t)sign;
    if (f->states == INTEREST_ALL)
        in->all_states += (uint32_t)sign;
    struct interest_name *n = f->name;
    if (n) {
        n->totals += (uint32_t)(f->totals == INTEREST_ONE ? sign : 0);
        n->states += (uint32_t)(f->states == INTEREST_ONE ? sign : 0);
    }
    if (fn && n)
        fn(n->name, n->len, ud);
    if (n && !n->totals && !n->states) {
        HASH_DEL(in->names, n);
        free(n);
    }
    if (fn && all_states_before != (in->all_states > 0))
        fn(NULL, 0, ud);
}

int interest_subscribe(struct tally_interest *in, const char *client, const char *filter,
                       interest_fn *fn, void *ud, bool *added)
{
    *added = false;
    const char *plain = unshared(filter);
    struct scope s = filter_scope(in, plain);
    if (s.totals == INTEREST_NONE && s.states == INTEREST_NONE)
        return TALLY_OK;
    struct interest_client *cl = NULL;
    HASH_FIND_STR(in->clients, client, cl);
    struct interest_filter *f = NULL;
    if (cl)
        HASH_FIND_STR(cl->filters, filter, f);
    if (f)
        return TALLY_OK;
    if (!cl) {
        size_t len = strlen(client);
        cl = calloc(1, sizeof(*cl) + len + 1);
        if (!cl)
            return TALLY_E_NOMEM;
        memcpy(cl->id, client, len);
        HASH_ADD(hh, in->clients, id[0], len, cl);
    }
    size_t flen = strlen(filter);
    f = calloc(1, sizeof(*f) + flen + 1);
    struct interest_name *n = f && s.name ? name_get(in, s.name, s.len) : NULL;
    if (!f || (s.name && !n)) {
        free(f);
        if (!cl->filters)
            client_free(in, cl);
        return TALLY_E_NOMEM;
    }
    memcpy(f->filter, filter, flen);
    f->totals = (uint8_t)s.totals;
    f->states = (uint8_t)s.states;
    f->name = n;
    HASH_ADD(hh, cl->filters, filter[0], flen, f);
    apply(in, f, +1, fn, ud);
    *added = true;
    return TALLY_OK;
}

void interest_unsubscribe(struct tally_interest *in, const char *client, const char *filter,
                          interest_fn *fn, void *ud)
{
    struct interest_client *cl = NULL;
    struct interest_filter *f = NULL;
    HASH_FIND_STR(in->clients, client, cl);
    if (cl)
        HASH_FIND_STR(cl->filters, filter, f);
    if (!f)
        return;
    HASH_DEL(cl->filters, f);
    apply(in, f, -1, fn, ud);
    free(f);
    if (!cl->filters)
        client_free(in, cl);
}

void interest_drop_client(struct tally_interest *in, const char *client, interest_fn *fn, void *ud)
{
    struct interest_client *cl = NULL;
    HASH_FIND_STR(in->clients, client, cl);
    if (!cl)
        return;
    struct interest_filter *f, *tmp;
    HASH_ITER(hh, cl->filters, f, tmp)
    {
        HASH_DEL(cl->filters, f);
        apply(in, f, -1, fn, ud);
        free(f);
    }
    client_free(in, cl);
}
