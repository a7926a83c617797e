/*
 * tally-load: publish increments as fast as a broker takes them, or at a steady rate.
 *
 * Each of --clients connections runs in its own thread with its own non-threaded libmosquitto
 * loop, and publishes its share of --count messages. A connection keeps at most --inflight
 * messages unanswered (sent but without PUBACK/PUBCOMP, or for QoS 0 not yet written): that
 * bound is ours, not the library's queue, so memory stays flat and the broker, not the client,
 * sets the pace. The clock starts when every connection is up and stops when the last answer
 * arrives, so the rate is what the broker sustained end to end.
 * An MQTT v5 broker caps the messages in flight at its Receive Maximum, which Mosquitto takes
 * from max_inflight_messages (default 20): raise that to measure with a larger window.
 *
 * Message i (0 <= i < count, split into one contiguous block per connection) goes to
 * <prefix>/c<i % K>/inc (--prefix, default counters, the plugin's prefix option), or to
 * --topic-format with %u replaced by i % K.
 *
 * Output, one JSON line on stdout:
 *   {"count","acked","failed","seconds","rate","ack_p50_ms","ack_p99_ms"}
 * acked: answers with a success reason; failed: MQTT v5 answers with reason >= 0x80 (rejected);
 * rate: acked / seconds; ack_*_ms: publish-to-answer latency percentiles.
 * Exit status 0 when every message was answered before --timeout, 1 otherwise, 2 on bad usage.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "percentile.h"

#define LOAD_TOPIC_MAX 512
#define LOAD_PAYLOAD_MAX 128
#define LOAD_MID_SLOTS 65536
/* How long one loop iteration may block when there is nothing to send: bounds how late the
 * deadline is noticed. */
#define LOAD_IDLE_WAIT_MS 100

struct load_opts {
    const char *host;
    int port;
    uint64_t count;
    int qos;
    uint64_t inflight;
    uint64_t counters;
    char topic_prefix[LOAD_TOPIC_MAX];
    char topic_suffix[LOAD_TOPIC_MAX];
    bool payload_id;
    bool retain;
    uint64_t clients;
    double rate;
    double timeout;
    int protocol;
};

struct load_client {
    struct mosquitto *mosq;
    char id[48];
    uint64_t first; /* global index of this connection's first message */
    uint64_t quota;
    uint64_t sent;
    uint64_t acked;
    uint64_t failed;
    bool connected;
    bool lost;
    int server_receive_max;
    double end;
    double *sent_at; /* indexed by mid: when that message was published */
    float *latency_ms;
    uint64_t latencies;
};

static struct load_opts opts = {
    .host = "127.0.0.1",
    .port = 1883,
    .count = 100000,
    .qos = 1,
    .inflight = 500,
    .counters = 1,
    .topic_prefix = "counters/c",
    .topic_suffix = "/inc",
    .clients = 1,
    .timeout = 120,
    .protocol = MQTT_PROTOCOL_V5,
};

/* Written before the threads start or between the two barriers; read-only otherwise. */
static double deadline;
static double start_time;
static pthread_barrier_t connected_barrier;
static pthread_barrier_t go_barrier;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ==== Options ==== */

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: tally-load [options]\n"
        "  -h, --host HOST          broker address (127.0.0.1)\n"
        "  -p, --port PORT          broker port (1883)\n"
        "  -n, --count N            messages in total (100000)\n"
        "  -q, --qos 0|1|2          (1)\n"
        "  -i, --inflight N         unanswered messages per connection at most (500)\n"
        "                           (an MQTT v5 broker may allow fewer: its "
        "max_inflight_messages)\n"
        "  -k, --counters K         message i goes to counter i %% K (1)\n"
        "      --prefix P           the plugin's prefix option: topics P/c<i %% K>/inc\n"
        "                           (counters)\n"
        "  -t, --topic-format FMT   topic pattern with one %%u for i %% K, instead of\n"
        "                           --prefix (counters/c%%u/inc)\n"
        "      --payload-id         payload {\"delta\":1,\"id\":\"<client>-<seq>\"} instead of 1\n"
        "      --retain             publish retained\n"
        "  -c, --clients C          parallel connections sharing the count (1)\n"
        "  -r, --rate R             messages per second over all connections (unlimited)\n"
        "      --timeout S          give up after S seconds (120)\n"
        "  -V, --protocol 5|311     MQTT version (5)\n");
}

static bool parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min || v > max) {
        return false;
    }
    *out = v;
    return true;
}

/* Accepts 0 < v <= 1e9: plenty for a rate or a timeout, and rules out NaN and infinity. */
static bool parse_positive_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v > 0 && v <= 1e9)) {
        return false;
    }
    *out = v;
    return true;
}

/* Splits a pattern with exactly one %u into the text before and after it, "%%" unescaped.
 * The pattern is never handed to printf, so no other conversion can be smuggled in. */
static bool topic_format_split(const char *fmt, char *prefix, char *suffix)
{
    char *part = prefix;
    size_t len = 0;
    bool seen_index = false;
    for (const char *p = fmt; *p != '\0'; p++) {
        char ch = *p;
        if (ch == '%') {
            p++;
            if (*p == 'u' && !seen_index) {
                part[len] = '\0';
                part = suffix;
                len = 0;
                seen_index = true;
                continue;
            }
            if (*p != '%') {
                return false;
            }
        }
        if (len + 1 >= LOAD_TOPIC_MAX) {
            return false;
        }
        part[len++] = ch;
    }
    part[len] = '\0';
    return seen_index;
}

enum { OPT_PAYLOAD_ID = 256, OPT_RETAIN, OPT_TIMEOUT, OPT_PREFIX };

static const struct option longopts[] = {
    {"host", required_argument, NULL, 'h'},
    {"port", required_argument, NULL, 'p'},
    {"count", required_argument, NULL, 'n'},
    {"qos", required_argument, NULL, 'q'},
    {"inflight", required_argument, NULL, 'i'},
    {"counters", required_argument, NULL, 'k'},
    {"topic-format", required_argument, NULL, 't'},
    {"prefix", required_argument, NULL, OPT_PREFIX},
    {"payload-id", no_argument, NULL, OPT_PAYLOAD_ID},
    {"retain", no_argument, NULL, OPT_RETAIN},
    {"clients", required_argument, NULL, 'c'},
    {"rate", required_argument, NULL, 'r'},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"protocol", required_argument, NULL, 'V'},
    {"help", no_argument, NULL, 'H'},
    {NULL, 0, NULL, 0},
};

/* The long name of option `ch`, for error messages. */
static const char *option_name(int ch)
{
    for (const struct option *o = longopts; o->name != NULL; o++) {
        if (o->val == ch) {
            return o->name;
        }
    }
    return "?";
}

/* Topics <prefix>/c<i>/inc: the prefix as the plugin takes it (no wildcard, no final '/'). */
static bool prefix_set(const char *prefix)
{
    size_t len = strlen(prefix);

    if (len == 0 || len + 3 >= LOAD_TOPIC_MAX || strpbrk(prefix, "+#") || prefix[len - 1] == '/') {
        return false;
    }
    snprintf(opts.topic_prefix, sizeof(opts.topic_prefix), "%s/c", prefix);
    snprintf(opts.topic_suffix, sizeof(opts.topic_suffix), "/inc");
    return true;
}

/* Returns false with a message on stderr when an option is missing or out of range. */
static bool opts_parse(int argc, char **argv)
{
    int topic_options = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "h:p:n:q:i:k:t:c:r:V:", longopts, NULL)) != -1) {
        bool ok = true;
        uint64_t v = 0;
        switch (ch) {
        case 'h':
            opts.host = optarg;
            break;
        case 'p':
            ok = parse_u64(optarg, 1, 65535, &v);
            opts.port = (int)v;
            break;
        case 'n':
            ok = parse_u64(optarg, 1, UINT32_MAX, &opts.count);
            break;
        case 'q':
            ok = parse_u64(optarg, 0, 2, &v);
            opts.qos = (int)v;
            break;
        case 'i':
            ok = parse_u64(optarg, 1, 65535, &opts.inflight);
            break;
        case 'k':
            ok = parse_u64(optarg, 1, UINT32_MAX, &opts.counters);
            break;
        case 't':
            ok = topic_format_split(optarg, opts.topic_prefix, opts.topic_suffix);
            break;
        case OPT_PAYLOAD_ID:
            opts.payload_id = true;
            break;
        case OPT_RETAIN:
            opts.retain = true;
            break;
        case 'c':
            ok = parse_u64(optarg, 1, 1000, &opts.clients);
            break;
        case 'r':
            ok = parse_positive_double(optarg, &opts.rate);
            break;
        case OPT_TIMEOUT:
            ok = parse_positive_double(optarg, &opts.timeout);
            break;
        case OPT_PREFIX:
            ok = prefix_set(optarg);
            break;
        case 'V':
            ok = parse_u64(optarg, 0, 311, &v) && (v == 5 || v == 311);
            opts.protocol = v == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311;
            break;
        case 'H':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return false;
        }
        if (!ok) {
            fprintf(stderr, "tally-load: bad value for --%s: '%s'%s\n", option_name(ch), optarg,
                    ch == 't'          ? " (needs one %u and no other %)"
                    : ch == OPT_PREFIX ? " (a topic without + # or a final /)"
                                       : "");
            return false;
        }
        if (ch == 't' || ch == OPT_PREFIX) {
            topic_options++;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "tally-load: unexpected argument '%s'\n", argv[optind]);
        return false;
    }
    if (topic_options > 1) {
        fprintf(stderr, "tally-load: give one of --prefix and --topic-format, once\n");
        return false;
    }
    if (opts.clients > opts.count) {
        fprintf(stderr, "tally-load: --clients must not exceed --count\n");
        return false;
    }
    return true;
}

/* ==== One connection ==== */

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)flags;
    struct load_client *c = obj;
    uint16_t receive_max;
    c->connected = rc == 0;
    if (rc != 0) {
        fprintf(stderr, "tally-load: %s refused: %s\n", c->id, mosquitto_reason_string(rc));
        return;
    }
    if (mosquitto_property_read_int16(props, MQTT_PROP_RECEIVE_MAXIMUM, &receive_max, false)) {
        c->server_receive_max = receive_max;
    }
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc,
                          const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct load_client *c = obj;
    c->connected = false;
    if (rc != 0) {
        c->lost = true;
    }
}

/* Called on PUBACK/PUBCOMP (or PUBREC with an error), and for QoS 0 once the packet is written. */
static void on_publish(struct mosquitto *mosq, void *obj, int mid, int reason,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct load_client *c = obj;
    if (reason >= 0x80) {
        c->failed++;
    } else {
        c->acked++;
    }
    /* A QoS 0 "answer" is only the write finishing: no latency to speak of. */
    if (opts.qos > 0 && c->latencies < c->quota) {
        c->latency_ms[c->latencies++] = (float)((now_seconds() - c->sent_at[mid & 0xFFFF]) * 1e3);
    }
}

static bool client_init(struct load_client *c, uint64_t n)
{
    uint64_t base = opts.count / opts.clients;
    uint64_t extra = opts.count % opts.clients;
    c->quota = base + (n < extra ? 1 : 0);
    c->first = n * base + (n < extra ? n : extra);
    snprintf(c->id, sizeof(c->id), "tally-load-%ld-%" PRIu64, (long)getpid(), n);
    c->sent_at = calloc(LOAD_MID_SLOTS, sizeof(*c->sent_at));
    c->latency_ms = calloc(c->quota, sizeof(*c->latency_ms));
    c->mosq = mosquitto_new(c->id, true, c);
    if (c->sent_at == NULL || c->latency_ms == NULL || c->mosq == NULL) {
        return false;
    }
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, opts.protocol);
    mosquitto_int_option(c->mosq, MOSQ_OPT_SEND_MAXIMUM, (int)opts.inflight);
    mosquitto_max_inflight_messages_set(c->mosq, (unsigned int)opts.inflight);
    mosquitto_connect_v5_callback_set(c->mosq, on_connect);
    mosquitto_disconnect_v5_callback_set(c->mosq, on_disconnect);
    mosquitto_publish_v5_callback_set(c->mosq, on_publish);
    return true;
}

static void client_free(struct load_client *c)
{
    mosquitto_destroy(c->mosq);
    free(c->sent_at);
    free(c->latency_ms);
}

/* Runs the loop until the CONNACK arrives; false if refused, lost or past the deadline. */
static bool client_connect(struct load_client *c)
{
    int rc = mosquitto_connect(c->mosq, opts.host, opts.port, 60);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "tally-load: %s cannot connect to %s:%d: %s\n", c->id, opts.host, opts.port,
                mosquitto_strerror(rc));
        return false;
    }
    while (!c->connected && !c->lost && now_seconds() < deadline) {
        if (mosquitto_loop(c->mosq, LOAD_IDLE_WAIT_MS, 1) != MOSQ_ERR_SUCCESS) {
            return false;
        }
    }
    return c->connected;
}

static bool client_publish_next(struct load_client *c)
{
    uint64_t seq = c->sent;
    uint64_t index = (c->first + seq) % opts.counters;
    char topic[LOAD_TOPIC_MAX * 2 + 24];
    char payload[LOAD_PAYLOAD_MAX];
    int len;
    int mid = 0;
    snprintf(topic, sizeof(topic), "%s%" PRIu64 "%s", opts.topic_prefix, index, opts.topic_suffix);
    if (opts.payload_id) {
        len = snprintf(payload, sizeof(payload), "{\"delta\":1,\"id\":\"%s-%" PRIu64 "\"}", c->id,
                       seq);
    } else {
        len = snprintf(payload, sizeof(payload), "1");
    }
    double t = now_seconds();
    int rc = mosquitto_publish_v5(c->mosq, &mid, topic, len, payload, opts.qos, opts.retain, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "tally-load: %s publish failed: %s\n", c->id, mosquitto_strerror(rc));
        c->lost = true;
        return false;
    }
    c->sent_at[mid & 0xFFFF] = t;
    c->sent++;
    return true;
}

/* How many messages the rate schedule allows by `elapsed` seconds: all of them when unlimited. */
static uint64_t client_due(const struct load_client *c, double elapsed)
{
    if (opts.rate <= 0) {
        return c->quota;
    }
    double due = (double)(uint64_t)(elapsed * opts.rate / (double)opts.clients) + 1;
    return due >= (double)c->quota ? c->quota : (uint64_t)due;
}

/* Milliseconds the loop may block: until the next scheduled message, or a short idle wait. */
static int client_wait_ms(const struct load_client *c, double elapsed)
{
    bool window_open = c->sent - (c->acked + c->failed) < opts.inflight;
    if (opts.rate <= 0 || c->sent >= c->quota || !window_open) {
        return LOAD_IDLE_WAIT_MS;
    }
    double next_at = (double)c->sent * (double)opts.clients / opts.rate;
    double wait_ms = (next_at - elapsed) * 1e3;
    if (wait_ms <= 0) {
        return 0;
    }
    /* Rounded up: waking early would only spin. */
    return wait_ms >= LOAD_IDLE_WAIT_MS ? LOAD_IDLE_WAIT_MS : (int)wait_ms + 1;
}

static void client_run(struct load_client *c)
{
    double t0 = now_seconds();
    while (c->acked + c->failed < c->quota && !c->lost) {
        double t = now_seconds();
        if (t >= deadline) {
            break;
        }
        uint64_t due = client_due(c, t - t0);
        while (c->sent < due && c->sent - (c->acked + c->failed) < opts.inflight) {
            if (!client_publish_next(c)) {
                return;
            }
        }
        if (mosquitto_loop(c->mosq, client_wait_ms(c, now_seconds() - t0), 1) != MOSQ_ERR_SUCCESS) {
            c->lost = true;
        }
    }
}

static void *client_thread(void *arg)
{
    struct load_client *c = arg;
    bool up = client_connect(c);
    if (up && opts.protocol == MQTT_PROTOCOL_V5 && c->server_receive_max > 0 &&
        (uint64_t)c->server_receive_max < opts.inflight) {
        fprintf(stderr, "tally-load: broker allows only %d in flight, not %" PRIu64 "\n",
                c->server_receive_max, opts.inflight);
    }
    pthread_barrier_wait(&connected_barrier);
    pthread_barrier_wait(&go_barrier);
    if (up) {
        client_run(c);
    }
    c->end = now_seconds();
    if (up && !c->lost) {
        mosquitto_disconnect(c->mosq);
    }
    return NULL;
}

/* ==== Report ==== */

/* Prints the JSON line; returns true when every message got an answer. */
static bool report(struct load_client *clients)
{
    uint64_t acked = 0;
    uint64_t failed = 0;
    uint64_t n = 0;
    double end = start_time;
    for (uint64_t i = 0; i < opts.clients; i++) {
        acked += clients[i].acked;
        failed += clients[i].failed;
        n += clients[i].latencies;
        end = clients[i].end > end ? clients[i].end : end;
    }
    double *all = malloc((n > 0 ? n : 1) * sizeof(*all));
    if (all == NULL) {
        return false;
    }
    uint64_t k = 0;
    for (uint64_t i = 0; i < opts.clients; i++) {
        for (uint64_t j = 0; j < clients[i].latencies; j++) {
            all[k++] = clients[i].latency_ms[j];
        }
    }
    percentile_sort(all, n);
    double seconds = end - start_time;
    printf("{\"count\":%" PRIu64 ",\"acked\":%" PRIu64 ",\"failed\":%" PRIu64
           ",\"seconds\":%.3f,\"rate\":%.0f,\"ack_p50_ms\":%.3f,\"ack_p99_ms\":%.3f}\n",
           opts.count, acked, failed, seconds, seconds > 0 ? (double)acked / seconds : 0.0,
           percentile(all, n, 50), percentile(all, n, 99));
    fflush(stdout);
    free(all);
    return acked + failed == opts.count;
}

int main(int argc, char **argv)
{
    if (!opts_parse(argc, argv)) {
        return 2;
    }
    deadline = now_seconds() + opts.timeout;
    mosquitto_lib_init();
    struct load_client *clients = calloc(opts.clients, sizeof(*clients));
    pthread_t *threads = calloc(opts.clients, sizeof(*threads));
    bool ok = clients != NULL && threads != NULL;
    for (uint64_t i = 0; ok && i < opts.clients; i++) {
        ok = client_init(&clients[i], i);
    }
    if (!ok) {
        fprintf(stderr, "tally-load: out of memory\n");
        return 1;
    }
    pthread_barrier_init(&connected_barrier, NULL, (unsigned)opts.clients + 1);
    pthread_barrier_init(&go_barrier, NULL, (unsigned)opts.clients + 1);
    for (uint64_t i = 0; i < opts.clients; i++) {
        if (pthread_create(&threads[i], NULL, client_thread, &clients[i]) != 0) {
            fprintf(stderr, "tally-load: cannot start thread %" PRIu64 "\n", i);
            return 1;
        }
    }
    pthread_barrier_wait(&connected_barrier);
    start_time = now_seconds();
    pthread_barrier_wait(&go_barrier);
    for (uint64_t i = 0; i < opts.clients; i++) {
        pthread_join(threads[i], NULL);
    }
    ok = report(clients);
    for (uint64_t i = 0; i < opts.clients; i++) {
        client_free(&clients[i]);
    }
    free(clients);
    free(threads);
    pthread_barrier_destroy(&connected_barrier);
    pthread_barrier_destroy(&go_barrier);
    mosquitto_lib_cleanup();
    return ok ? 0 : 1;
}
