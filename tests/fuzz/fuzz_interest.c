/*
 * fuzz_interest.c - the interest index (interest.c) against a model: a plain
 * list of (client, filter) subscriptions and an independent, recursive MQTT
 * matcher. After every subscribe, unsubscribe or disconnect the input asks
 * for, "is counters/<n> watched?" and "is counters/<n>/state watched?" must
 * have the same answer from both, for each of a few names.
 *
 * Input: a byte stream of operations. Each takes one byte (op and client in
 * its bits) and, for subscribe and unsubscribe, a filter of up to 4 levels
 * chosen from a small alphabet by the following bytes, so that valid filters
 * (what Mosquitto hands the plugin) that reach every scope come up often.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "tally.h"

#define MAX_SUBS 64

static const char *const levels[] = {"counters", "x", "y", "+", "#",  "state",
                                     "$share",   "g", "",  "n", "inc"};
static const char *const names[] = {"x", "y", "n", "z"};

struct sub {
    char client[4];
    char filter[64];
};

/* Level by level, the rules of MQTT 3.1.1 section 4.7, written as a
 * recursion rather than interest.c's loop. */
static bool model_match(const char *f, const char *t, bool first)
{
    if (first && t[0] == '$' && (f[0] == '+' || f[0] == '#'))
        return false;
    if (strcmp(f, "#") == 0)
        return true;
    size_t fl = strcspn(f, "/"), tl = strcspn(t, "/");
    bool level_ok = (fl == 1 && f[0] == '+') || (fl == tl && strncmp(f, t, fl) == 0);
    if (!level_ok)
        return false;
    if (!f[fl] && !t[tl])
        return true;
    if (!t[tl])
        return strcmp(f + fl, "/#") == 0;
    if (!f[fl])
        return false;
    return model_match(f + fl + 1, t + tl + 1, false);
}

static const char *model_unshared(const char *f)
{
    if (strncmp(f, "$share/", 7) != 0)
        return f;
    const char *rest = strchr(f + 7, '/');
    return rest ? rest + 1 : f + strlen(f);
}

static bool model_watched(const struct sub *subs, int n, const char *topic)
{
    for (int i = 0; i < n; i++)
        if (model_match(model_unshared(subs[i].filter), topic, true))
            return true;
    return false;
}

/* A valid filter from up to 4 level bytes; returns bytes used. */
static size_t make_filter(const uint8_t *p, size_t left, char *out)
{
    size_t nlev = left ? 1 + p[0] % 4 : 0, used = left ? 1 : 0;
    out[0] = '\0';
    for (size_t i = 0; i < nlev && used < left; i++, used++) {
        const char *lv = levels[p[used] % (sizeof(levels) / sizeof(levels[0]))];
        if (strcmp(lv, "#") == 0 && i + 1 < nlev)
            lv = "+"; /* '#' only last */
        if (i)
            strcat(out, "/");
        strcat(out, lv);
    }
    if (!out[0])
        strcpy(out, "#");
    return used;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tally_interest in;
    struct sub subs[MAX_SUBS];
    int nsubs = 0;
    interest_init(&in, "counters");
    for (size_t i = 0; i < size;) {
        uint8_t op = data[i++];
        char client[4], filter[64];
        snprintf(client, sizeof(client), "c%d", (op >> 2) % 4);
        if ((op & 3) == 3) { /* disconnect */
            interest_drop_client(&in, client, NULL, NULL);
            for (int k = 0; k < nsubs;)
                if (strcmp(subs[k].client, client) == 0)
                    subs[k] = subs[--nsubs];
                else
                    k++;
        } else {
            i += make_filter(data + i, size - i, filter);
            int found = -1;
            for (int k = 0; k < nsubs; k++)
                if (strcmp(subs[k].client, client) == 0 && strcmp(subs[k].filter, filter) == 0)
                    found = k;
            if ((op & 3) == 2) { /* unsubscribe */
                interest_unsubscribe(&in, client, filter, NULL, NULL);
                if (found >= 0)
                    subs[found] = subs[--nsubs];
            } else if (found < 0 && nsubs < MAX_SUBS) {
                bool added;
                if (interest_subscribe(&in, client, filter, NULL, NULL, &added) != TALLY_OK)
                    __builtin_trap();
                strcpy(subs[nsubs].client, client);
                strcpy(subs[nsubs++].filter, filter);
            }
        }
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
            char topic[64];
            snprintf(topic, sizeof(topic), "counters/%s", names[k]);
            if (interest_total_watched(&in, names[k], 1) != model_watched(subs, nsubs, topic))
                __builtin_trap();
            strcat(topic, "/state");
            if (interest_state_watched(&in, names[k], 1) != model_watched(subs, nsubs, topic))
                __builtin_trap();
        }
    }
    interest_free(&in);
    return 0;
}
