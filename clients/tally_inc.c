/*
 * tally_inc.c - `tally inc NAME [DELTA]`: publish one increment and say what became of it.
 *
 * Over MQTT v5 the increment carries a Response Topic, tally/resp/<client id>, and a random
 * Correlation Data; the plugin answers there (/work/notes/protocols.md, README "Read your
 * writes") with {"name","result","value"} or {"result":"refused","reason"}. So the client
 * subscribes to that topic before it publishes, then waits for both the PUBACK (QoS 1 and 2)
 * and the answer, and prints the new total, "duplicate" for an id already applied, or the
 * plugin's own reason for a refusal.
 *
 * A broker that does not answer within --timeout (a plugin older than the answer, or an ACL
 * that keeps the answer from this client) and MQTT 3.1.1 (--protocol 311) leave only the
 * PUBACK: the command then does what it always did, exit 0 on an acknowledgement and 1 with
 * the PUBACK's reason code on a refusal.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <mqtt_protocol.h>

#include "tally.h"
#include "tally_cli.h"

#define CORRELATION_BYTES 8

struct inc_state {
    int qos;
    bool wants_answer; /* MQTT v5: a Response Topic was sent */
    char correlation[CORRELATION_BYTES * 2 + 1];
    int mid;
    bool acknowledged;
    int reason;
    char *reason_string; /* the broker's explanation in the PUBACK, if any; owned */
    cJSON *answer;       /* the plugin's answer, once it came; owned */
    char *answer_text;   /* and as it came; owned */
};

static void inc_on_publish(struct mosquitto *mosq, void *obj, int mid, int reason,
                           const mosquitto_property *props)
{
    struct inc_state *st = ((struct client *)obj)->command_state;
    (void)mosq;

    if (mid != st->mid) {
        return;
    }
    st->acknowledged = true;
    st->reason = reason;
    mosquitto_property_read_string(props, MQTT_PROP_REASON_STRING, &st->reason_string, false);
}

/* Takes the plugin's answer when its Correlation Data is ours. */
static void inc_on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                           const mosquitto_property *props)
{
    struct inc_state *st = ((struct client *)obj)->command_state;
    void *data = NULL;
    uint16_t len = 0;
    cJSON *answer;
    (void)mosq;

    if (!mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &data, &len, false)) {
        return;
    }
    if (len == strlen(st->correlation) && memcmp(data, st->correlation, len) == 0 && !st->answer) {
        answer = cJSON_ParseWithLength(msg->payload, (size_t)msg->payloadlen);
        if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(answer, "result"))) {
            st->answer = answer;
            st->answer_text = format("%.*s", msg->payloadlen, (const char *)msg->payload);
        } else {
            fprintf(stderr, "tally: ignoring an answer that is not tally's: %.*s\n",
                    msg->payloadlen > 200 ? 200 : msg->payloadlen, (const char *)msg->payload);
            cJSON_Delete(answer);
        }
    }
    free(data);
}

static bool inc_done(const struct client *c)
{
    const struct inc_state *st = c->command_state;
    return (st->qos == 0 || st->acknowledged) && (!st->wants_answer || st->answer);
}

/* The payload the contract asks for: empty (+1), a decimal, or JSON with the id. Caller frees. */
static char *inc_payload(const char *delta_text, long long delta, const char *id)
{
    cJSON *obj;
    char *delta_json, *payload;

    if (!id) {
        return delta_text ? format("%lld", delta) : format("%s", "");
    }
    obj = check_alloc(cJSON_CreateObject());
    delta_json = format("%lld", delta);
    /* Raw keeps the integer exact; a double would print 2^53-1 in exponent form. */
    check_alloc(cJSON_AddRawToObject(obj, "delta", delta_json));
    check_alloc(cJSON_AddStringToObject(obj, "id", id));
    payload = check_alloc(cJSON_PrintUnformatted(obj));
    cJSON_Delete(obj);
    free(delta_json);
    return payload;
}

/* The plugin's parser decides whether the payload (so the --id in it) is acceptable. */
static bool payload_is_valid(const char *payload, const char *id)
{
    struct tally_inc parsed;
    int rc = parse_increment(payload, strlen(payload), &parsed);

    if (rc == TALLY_OK) {
        return true;
    }
    fputs("tally: bad --id \"", stderr);
    fput_escaped(stderr, id ? id : "");
    fprintf(stderr, "\": the plugin would refuse it (%s): an id is 1 to %d bytes of text\n",
            tally_strerror(rc), TALLY_ID_MAX);
    return false;
}

/* Hex of random bytes: the Correlation Data, and part of the client id. */
static void random_hex(char *out, size_t nbytes)
{
    unsigned char raw[32];

    if (nbytes > sizeof(raw) || getrandom(raw, nbytes, 0) != (ssize_t)nbytes) {
        for (size_t i = 0; i < nbytes && i < sizeof(raw); i++) {
            raw[i] = (unsigned char)(rand() ^ getpid());
        }
    }
    for (size_t i = 0; i < nbytes; i++) {
        sprintf(out + 2 * i, "%02x", raw[i]);
    }
}

/* ==== Saying what happened ==== */

/* The plugin's answer. Returns the exit status. */
static int report_answer(const struct options *opt, const char *name, const struct inc_state *st)
{
    const cJSON *answer = st->answer;
    const char *result = cJSON_GetObjectItemCaseSensitive(answer, "result")->valuestring;
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(answer, "value");
    const cJSON *reason = cJSON_GetObjectItemCaseSensitive(answer, "reason");
    bool refused = strcmp(result, "refused") == 0;

    if (opt->json) {
        json_print_text(st->answer_text, strlen(st->answer_text));
    } else if (refused) {
        fprintf(stderr, "tally: the increment of %s was refused: %s\n", name,
                cJSON_IsString(reason) ? reason->valuestring : "no reason given");
    } else if (cJSON_IsNumber(value)) {
        printf("%s %.0f%s\n", name, value->valuedouble,
               strcmp(result, "duplicate") == 0 ? " (duplicate: this id was already counted)" : "");
    } else {
        fprintf(stderr, "tally: the broker's answer for %s has no total\n", name);
        return EXIT_FAILED;
    }
    return refused ? EXIT_FAILED : EXIT_SUCCESS;
}

/* No answer: only the PUBACK (or, at QoS 0, nothing) tells. Returns the exit status. */
static int report_puback(const struct options *opt, const struct inc_state *st, const char *name)
{
    bool refused = st->qos > 0 && st->reason >= 0x80;
    cJSON *obj;

    if (refused) {
        fprintf(stderr, "tally: the increment of %s was rejected: %s (0x%02x)%s%s\n", name,
                mosquitto_reason_string(st->reason), st->reason, st->reason_string ? ": " : "",
                st->reason_string ? st->reason_string : "");
    }
    if (opt->json) {
        obj = check_alloc(cJSON_CreateObject());
        cJSON_AddStringToObject(obj, "name", name);
        cJSON_AddStringToObject(obj, "result",
                                refused        ? "refused"
                                : st->qos == 0 ? "sent"
                                               : "acknowledged");
        if (refused) {
            cJSON_AddNumberToObject(obj, "reason_code", st->reason);
            cJSON_AddStringToObject(obj, "reason", mosquitto_reason_string(st->reason));
        }
        json_print_line(obj);
    }
    return refused ? EXIT_FAILED : EXIT_SUCCESS;
}

static int inc_report(const struct options *opt, struct inc_state *st, const char *name,
                      enum wait_result waited)
{
    if (st->answer) {
        return report_answer(opt, name, st);
    }
    if (waited == WAIT_TIMEOUT && st->qos > 0 && !st->acknowledged) {
        fprintf(stderr, "tally: no acknowledgement of the increment of %s within %g s\n", name,
                opt->timeout_s);
        return EXIT_FAILED;
    }
    if (waited != WAIT_DONE && waited != WAIT_TIMEOUT) {
        fprintf(stderr,
                "tally: the connection to %s:%d was lost before the increment of %s was "
                "acknowledged\n",
                opt->host, opt->port, name);
        return EXIT_FAILED;
    }
    if (opt->verbose && st->wants_answer) {
        fprintf(stderr, "tally: no answer with the total within %g s; the PUBACK tells\n",
                opt->timeout_s);
    }
    return report_puback(opt, st, name);
}

/* ==== The command ==== */

/* Publishes, with the Response Topic and Correlation Data over MQTT v5. */
static int inc_publish(struct client *c, struct inc_state *st, const char *topic,
                       const char *payload, const char *response_topic)
{
    mosquitto_property *props = NULL;
    int rc;

    if (st->wants_answer) {
        mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, response_topic);
        mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, st->correlation,
                                      (uint16_t)strlen(st->correlation));
    }
    rc = mosquitto_publish_v5(c->mosq, &st->mid, topic, (int)strlen(payload), payload, st->qos,
                              false, props);
    mosquitto_property_free_all(&props);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "tally: cannot publish to %s: %s\n", topic, mosquitto_strerror(rc));
        return EXIT_FAILED;
    }
    return 0;
}

static bool subscribed(const struct client *c)
{
    return c->subscribed;
}

/* Connects, subscribed to the response topic (v5) before anything is published. */
static int inc_connect(struct client *c, const struct options *opt, struct inc_state *st,
                       char **response_topic)
{
    int status =
        client_open(c, opt, response_topic, st->wants_answer ? 1 : 0, 1, inc_on_message, st);

    if (status != 0 || !st->wants_answer) {
        return status;
    }
    if (client_wait(c, now_monotonic() + opt->timeout_s, subscribed) != WAIT_DONE) {
        fprintf(stderr, "tally: no answer to the subscription to %s within %g s\n", *response_topic,
                opt->timeout_s);
        return EXIT_FAILED;
    }
    /* Refused (an ACL): the answer cannot reach us, the PUBACK still tells. */
    st->wants_answer = !c->subscribe_refused;
    return 0;
}

int cmd_inc(const struct options *given)
{
    struct options opt = *given;
    const char *name = opt.args[0];
    const char *delta_text = opt.nargs > 1 && opt.args[1][0] ? opt.args[1] : NULL;
    long long delta = 1;
    struct inc_state st = {.mid = -1, .qos = opt.qos};
    char client_id[64], suffix[17];
    struct client c;
    char *topic, *payload, *response_topic;
    int status;

    if (!names_are_valid(opt.args, 1, false) ||
        (delta_text && !delta_is_valid(delta_text, &delta))) {
        return EXIT_USAGE;
    }
    payload = inc_payload(delta_text, delta, opt.id);
    if (!payload_is_valid(payload, opt.id)) {
        free(payload);
        return EXIT_USAGE;
    }
    random_hex(suffix, 8);
    random_hex(st.correlation, CORRELATION_BYTES);
    snprintf(client_id, sizeof(client_id), "tally-%s", suffix);
    opt.client_id = client_id;
    st.wants_answer = opt.protocol == MQTT_PROTOCOL_V5;
    response_topic = format("tally/resp/%s", client_id);
    topic = format("%s/%s/inc", opt.prefix, name);

    status = inc_connect(&c, &opt, &st, &response_topic);
    if (status == 0) {
        mosquitto_publish_v5_callback_set(c.mosq, inc_on_publish);
        status = inc_publish(&c, &st, topic, payload, response_topic);
    }
    if (status == 0) {
        enum wait_result waited = client_wait(&c, now_monotonic() + opt.timeout_s, inc_done);
        status = inc_report(&opt, &st, name, waited);
        if (opt.verbose) {
            fprintf(stderr, "tally: published '%s' to %s (QoS %d): %s\n", payload, topic, opt.qos,
                    opt.qos == 0      ? "sent"
                    : st.acknowledged ? "acknowledged"
                                      : "no PUBACK");
        }
    }
    client_close(&c);
    cJSON_Delete(st.answer);
    free(st.answer_text);
    free(st.reason_string);
    free(response_topic);
    free(topic);
    free(payload);
    return status;
}
