/*
 * control.c - JSON views of the state: the retained counters/<name>/state
 * document, the answer on an increment's MQTT v5 Response Topic, and the
 * control API on $CONTROL/tally/v1.
 *
 * The control API follows Mosquitto's dynamic-security plugin: a request is
 *
 *     {"commands": [{"command": "listCounters", "offset": 0, "count": 100,
 *                    "prefix": "votes-"},
 *                   {"command": "getCounter", "name": "likes",
 *                    "correlationData": "anything"}]}
 *
 * and the response, sent to the requesting client alone on
 * $CONTROL/tally/v1/response, holds one entry per command, in order:
 *
 *     {"responses": [{"command": "listCounters",
 *                     "data": {"totalCount": 2, "counters": [{"name","value"}..]}},
 *                    {"command": "getCounter", "correlationData": "anything",
 *                     "data": {"counter": <state>, "replicas": [...]}}]}
 *
 * or an "error" string in place of "data". Who may send requests is decided
 * in plugin.c (plugin_opt_admin_usernames / admin_clientids).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tally.h"

/* ==== counters/<name>/state ==== */

/* The value, its parts, and each node's share summed over its incarnations.
 * Written by hand rather than with cJSON because it runs for every changed
 * counter on every flush. */
void counter_state_json(struct wire_buf *b, const struct tally_table *t,
                        const struct tally_counter *c, const struct tally_sums *sums,
                        const char *node_id, uint64_t updated_ms)
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
    bool first = true;
    for (uint16_t i = 0; i < c->nslots; i++) {
        const struct tally_replica *r = t->replicas[c->slots[i].replica];
        bool seen = false;
        for (uint16_t j = 0; j < i && !seen; j++)
            seen = strcmp(t->replicas[c->slots[j].replica]->key, r->key) == 0;
        if (seen)
            continue;
        uint64_t p = 0, n = 0;
        for (uint16_t j = i; j < c->nslots; j++) {
            if (strcmp(t->replicas[c->slots[j].replica]->key, r->key) == 0) {
                p += c->slots[j].p;
                n += c->slots[j].n;
            }
        }
        if (!first)
            wbuf_u8(b, ',');
        wbuf_json_str(b, r->key, r->id_len);
        wbuf_str(b, ":{\"p\":");
        wbuf_dec(b, (int64_t)p);
        wbuf_str(b, ",\"n\":");
        wbuf_dec(b, (int64_t)n);
        wbuf_u8(b, '}');
        first = false;
    }
    wbuf_str(b, "},\"devices\":{");
    for (uint16_t i = 0; i < c->ndevs; i++) {
        const char *id = t->devices[c->devs[i].device]->id;
        if (i)
            wbuf_u8(b, ',');
        wbuf_json_str(b, id, strlen(id));
        wbuf_u8(b, ':');
        wbuf_dec(b, (int64_t)c->devs[i].total);
    }
    wbuf_str(b, "},\"node\":");
    wbuf_json_str(b, node_id, strlen(node_id));
    wbuf_str(b, ",\"updated_ms\":");
    wbuf_dec(b, (int64_t)updated_ms);
    wbuf_u8(b, '}');
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

static const char *list_counters(const cJSON *cmd, cJSON *data, const struct tally_table *t)
{
    int offset = int_field(cmd, "offset", 0, 0, 1 << 30);
    int count = int_field(cmd, "count", 1000, 1, 100000);
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(cmd, "prefix");
    const char *prefix = cJSON_IsString(pre) ? pre->valuestring : "";
    size_t plen = strlen(prefix);
    cJSON *list = cJSON_AddArrayToObject(data, "counters");
    int matched = 0;
    const struct tally_counter *c, *tmp;
    HASH_ITER(hh, t->counters, c, tmp)
    {
        if (c->name_len < plen || memcmp(c->name, prefix, plen) != 0)
            continue;
        if (matched++ < offset || matched > offset + count)
            continue;
        cJSON *item = cJSON_CreateObject();
        cJSON_AddItemToObject(item, "name", cJSON_CreateString(c->name));
        cJSON_AddNumberToObject(item, "value", (double)counter_value(c));
        cJSON_AddItemToArray(list, item);
    }
    cJSON_AddNumberToObject(data, "totalCount", matched);
    return list ? NULL : "out of memory";
}

static const char *get_counter(const cJSON *cmd, cJSON *data, const struct tally_table *t,
                               const char *node_id, uint64_t now_ms)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "name");
    if (!cJSON_IsString(name) || name_check(name->valuestring, strlen(name->valuestring)))
        return "invalid counter name";
    struct tally_counter *c =
        table_find((struct tally_table *)t, name->valuestring, strlen(name->valuestring));
    if (!c)
        return "counter not found";
    struct wire_buf b = {0};
    struct tally_sums sums;
    counter_sums(c, &sums);
    counter_state_json(&b, t, c, &sums, node_id, now_ms);
    cJSON *state = b.failed ? NULL : cJSON_ParseWithLength((const char *)b.data, b.len);
    wbuf_free(&b);
    if (!state)
        return "out of memory";
    cJSON_AddItemToObject(data, "counter", state);
    /* Every life of every node, for operators chasing a restart. */
    cJSON *reps = cJSON_AddArrayToObject(data, "replicas");
    for (uint16_t i = 0; i < c->nslots; i++) {
        const struct tally_replica *r = t->replicas[c->slots[i].replica];
        char inc[17];
        snprintf(inc, sizeof(inc), "%016" PRIx64, r->incarnation);
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "node", r->key);
        cJSON_AddStringToObject(item, "incarnation", inc);
        cJSON_AddNumberToObject(item, "p", (double)c->slots[i].p);
        cJSON_AddNumberToObject(item, "n", (double)c->slots[i].n);
        cJSON_AddItemToArray(reps, item);
    }
    return NULL;
}

static cJSON *run_command(const cJSON *cmd, const struct tally_table *t, const char *node_id,
                          uint64_t now_ms)
{
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
    else if (strcmp(command, "getCounter") == 0)
        err = get_counter(cmd, data, t, node_id, now_ms);
    if (err) {
        cJSON_Delete(data);
        cJSON_AddStringToObject(resp, "error", err);
    } else {
        cJSON_AddItemToObject(resp, "data", data);
    }
    return resp;
}

char *control_process(const void *payload, size_t len, const struct tally_table *t,
                      const char *node_id, uint64_t now_ms)
{
    cJSON *req = cJSON_ParseWithLength(payload, len);
    cJSON *out = cJSON_CreateObject();
    cJSON *responses = cJSON_AddArrayToObject(out, "responses");
    const cJSON *cmds = cJSON_GetObjectItemCaseSensitive(req, "commands");
    if (!cJSON_IsArray(cmds)) {
        cJSON *resp = cJSON_CreateObject();
        cJSON_AddStringToObject(resp, "command", "");
        cJSON_AddStringToObject(resp, "error", "a request is {\"commands\": [...]}");
        cJSON_AddItemToArray(responses, resp);
    }
    const cJSON *cmd;
    cJSON_ArrayForEach(cmd, cmds)
    {
        cJSON_AddItemToArray(responses, run_command(cmd, t, node_id, now_ms));
    }
    char *text = cJSON_PrintUnformatted(out);
    cJSON_Delete(req);
    cJSON_Delete(out);
    return text;
}
