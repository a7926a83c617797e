/*
 * floor_plugin.c - the least broker work CONTRACT.md asks for an increment,
 * as a Mosquitto plugin, so that bench_ingest.py can tell tally's own cost
 * from the cost of what any plugin keeping the contract must publish.
 *
 * When every increment changes a counter that did not change within
 * publish_interval_ms (100,000 counters at this machine's rates: a counter
 * comes round every second or more), the contract asks for one retained total
 * on counters/<name> and one retained state document on counters/<name>/state
 * per increment. This plugin publishes exactly those two messages, with a
 * state document of the shape and size tally writes for a one-node counter,
 * and does nothing else: no payload parsing, no table, no CRDT, no
 * coalescing. With plugin_opt_state false it publishes the total only.
 *
 * It counts nothing correctly and is never installed; it is a benchmark
 * reference, not a counter.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

static mosquitto_plugin_id_t *plugin_id;
static bool with_state = true;
static unsigned long long seq;

static int on_message(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_message *ev = event_data;
    (void)event;
    (void)userdata;
    size_t len = strlen(ev->topic);
    if (len < 14 || strncmp(ev->topic, "counters/", 9) != 0 ||
        strcmp(ev->topic + len - 4, "/inc") != 0)
        return MOSQ_ERR_SUCCESS;
    int name_len = (int)(len - 13);
    const char *name = ev->topic + 9;
    char topic[300], payload[400];
    seq++;
    int n = snprintf(payload, sizeof(payload), "%llu", seq);
    snprintf(topic, sizeof(topic), "counters/%.*s", name_len, name);
    mosquitto_broker_publish_copy(NULL, topic, n, payload, 0, true, NULL);
    if (!with_state)
        return MOSQ_ERR_SUCCESS;
    n = snprintf(payload, sizeof(payload),
                 "{\"name\":\"%.*s\",\"value\":%llu,\"p\":%llu,\"n\":0,\"devices_total\":0,"
                 "\"nodes\":{\"bench\":{\"p\":%llu,\"n\":0}},\"devices\":{},\"node\":\"bench\","
                 "\"updated_ms\":1795828380135}",
                 name_len, name, seq, seq, seq);
    snprintf(topic, sizeof(topic), "counters/%.*s/state", name_len, name);
    mosquitto_broker_publish_copy(NULL, topic, n, payload, 0, true, NULL);
    return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
    (void)supported_version_count;
    (void)supported_versions;
    return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                          struct mosquitto_opt *opts, int opt_count)
{
    (void)userdata;
    plugin_id = identifier;
    for (int i = 0; i < opt_count; i++)
        if (strcmp(opts[i].key, "state") == 0)
            with_state = strcmp(opts[i].value, "false") != 0;
    return mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
    (void)userdata;
    (void)opts;
    (void)opt_count;
    return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
}
