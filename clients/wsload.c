/*
 * tally-wsload: open many MQTT-over-WebSocket viewers at once and report how
 * the broker (and the tally plugin in it) treats them.
 *
 * Each client is one WebSocket connection to ws://HOST:PORT/mqtt with the
 * "mqtt" subprotocol, carrying MQTT 3.1.1 packets in binary frames: CONNECT
 * (clean session, keepalive), SUBSCRIBE to presence/<page> (or presence/#
 * for --wildcard clients, and counters/<name> with --counter), PINGREQ every
 * keepalive, and the PUBLISHes that come back. libwebsockets 4.1 has no MQTT
 * client over WebSocket (its MQTT role runs on raw TCP only), so the packets
 * are framed by the small codec in mqtt_min.c.
 *
 * All clients live in one libwebsockets service loop, one thread, and
 * connect concurrently (up to --max-handshakes WebSocket handshakes in
 * flight, see start_clients): Mosquitto services its WebSocket listener once
 * per broker loop, and connecting one after another would measure that loop
 * period, not the broker's capacity. A periodic timer (the "tick")
 * drives everything that is not I/O: keepalive pings, the --leave and
 * --silence events, progress lines and the --duration bound.
 *
 * Stdout carries an event log of lines `t=<ms> key=value ...` (ms since
 * start), then the final report (one JSON object on one line with --json).
 */
#include "mqtt_min.h"
#include "percentile.h"
#include "tally.h"

#include <cjson/cJSON.h>
#include <libwebsockets.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICK_US 50000
#define STATUS_EVERY_US 250000
/* After --duration, connected clients get this long to send DISCONNECT. */
#define SHUTDOWN_GRACE_US 1500000
/* A client's MQTT stream buffer; broker packets to viewers are tiny. */
#define RX_MAX (1024 * 1024)
#define TX_MAX 1024
/* Distinct counter values tracked for latency; later ones are counted only. */
#define COUNTER_VALUES_MAX 4096
#define VALUE_MAX 64

/* ==== Options ==== */

struct opts {
    const char *host;
    int port;
    int clients;
    int wildcard;
    const char *page;
    const char *counter;
    const char *counter_prefix;  /* the plugin's prefix option */
    const char *presence_prefix; /* the plugin's presence_prefix option */
    int keepalive;
    char prefix[64];
    double duration_s;
    int leave;
    int silence;
    double leave_at_s;
    int observer;
    int max_handshakes;
    int64_t pub_ts_ms; /* -1: not given */
    bool json;
};

/* ==== Per-client state ==== */

enum send_bit {
    SEND_CONNECT = 1 << 0,
    SEND_SUBSCRIBE = 1 << 1,
    SEND_PING = 1 << 2,
    SEND_DISCONNECT = 1 << 3,
};

enum failure {
    FAIL_CONNECT,
    FAIL_CLOSED,
    FAIL_CONNACK,
    FAIL_SUBACK,
    FAIL_PROTOCOL,
    FAIL_COUNT,
};

static const char *const failure_names[FAIL_COUNT] = {
    "connect_error", "closed_by_peer", "connack_refused", "suback_refused", "protocol_error",
};

struct client {
    int idx;
    struct lws *wsi;  /* NULL unless the WebSocket is open */
    unsigned pending; /* enum send_bit: packets waiting for a writeable callback */
    bool connacked;
    bool subscribed;
    bool closed;
    bool handshaking; /* connect started, WebSocket not yet open */
    bool ws_open;     /* the WebSocket handshake completed */
    bool leaving;     /* closing on purpose: not a failure */
    bool silent;
    bool failed;
    int64_t connack_us; /* since start */
    int64_t last_tx_us;
    uint8_t *rx; /* owned; partial MQTT packets across WebSocket frames */
    size_t rx_len;
    size_t rx_cap;
};

/* One receipt of a counter value by a client. */
struct receipt {
    uint32_t value;
    uint32_t client;
    int64_t t_us;
    int64_t wall_ms;
    bool live; /* delivered as it was published, not as a retained copy */
};

struct range {
    int first;
    int count;
    int64_t t_us; /* -1 until it happened */
};

struct load {
    struct opts o;
    struct lws_context *ctx;
    struct client *clients;
    int total;
    int64_t start_us;
    int64_t start_wall_ms; /* lets a test line the event log up with a broker's log */
    lws_sorted_usec_list_t tick;
    char presence_topic[256];
    char presence_wildcard[256];
    char counter_topic[256];

    int connected;
    int subscribed;
    int failures;
    int fail_by[FAIL_COUNT];
    uint64_t pings_sent;
    uint64_t pingresps;
    uint64_t publishes;

    struct range leave;
    struct range silence;

    char observer_presence[VALUE_MAX];
    bool observer_saw_presence;

    char (*values)[VALUE_MAX]; /* distinct counter values, first-seen order */
    size_t n_values;
    uint64_t values_untracked;
    struct receipt *receipts;
    size_t n_receipts;
    size_t cap_receipts;

    int64_t last_status_us;
    int last_status_connected;
    int last_status_subscribed;
    int last_status_failures;
    int next_to_start;
    int handshaking;
    bool starting;   /* guards start_clients against re-entry from callbacks */
    int64_t stop_us; /* -1 until shutdown began */
    bool finished;
};

static volatile sig_atomic_t interrupted;

static int64_t mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t since_start_us(const struct load *L)
{
    return mono_us() - L->start_us;
}

static bool is_wildcard(const struct load *L, int idx)
{
    return idx >= L->o.clients;
}

static void fail(struct load *L, struct client *c, enum failure why)
{
    L->fail_by[why]++;
    if (!c->failed) {
        c->failed = true;
        L->failures++;
    }
}

static void want_send(struct client *c, unsigned bits)
{
    c->pending |= bits;
    if (c->wsi && !c->silent)
        lws_callback_on_writable(c->wsi);
}

/* ==== Outgoing packets ==== */

/* Encode the highest-priority pending packet into out; return its length. */
static size_t next_packet(struct load *L, struct client *c, uint8_t *out, size_t cap,
                          unsigned *sent)
{
    char id[96];
    const char *filters[2];
    size_t n_filters = 0;

    if (c->pending & SEND_CONNECT) {
        *sent = SEND_CONNECT;
        snprintf(id, sizeof(id), "%s-%d", L->o.prefix, c->idx);
        return mqtt_min_connect(out, cap, id, (uint16_t)L->o.keepalive);
    }
    if (c->pending & SEND_SUBSCRIBE) {
        *sent = SEND_SUBSCRIBE;
        filters[n_filters++] = is_wildcard(L, c->idx) ? L->presence_wildcard : L->presence_topic;
        if (L->o.counter)
            filters[n_filters++] = L->counter_topic;
        return mqtt_min_subscribe(out, cap, 1, filters, n_filters);
    }
    if (c->pending & SEND_DISCONNECT) {
        *sent = SEND_DISCONNECT;
        return mqtt_min_disconnect(out, cap);
    }
    *sent = SEND_PING;
    return mqtt_min_pingreq(out, cap);
}

/* Write one pending packet; return -1 to have lws close the connection. */
static int on_writeable(struct load *L, struct client *c, struct lws *wsi)
{
    uint8_t buf[LWS_PRE + TX_MAX];
    unsigned sent = 0;
    size_t len;

    if (c->silent || c->pending == 0)
        return 0;
    len = next_packet(L, c, buf + LWS_PRE, TX_MAX, &sent);
    c->pending &= ~sent;
    if (len == 0 || lws_write(wsi, buf + LWS_PRE, len, LWS_WRITE_BINARY) < (int)len) {
        fail(L, c, FAIL_PROTOCOL);
        return -1;
    }
    c->last_tx_us = since_start_us(L);
    if (sent == SEND_PING)
        L->pings_sent++;
    if (sent == SEND_DISCONNECT) {
        c->leaving = true;
        lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, NULL, 0);
        return -1;
    }
    if (c->pending)
        lws_callback_on_writable(wsi);
    return 0;
}

/* ==== Incoming packets ==== */

static bool topic_is(const struct mqtt_min_packet *p, const char *topic)
{
    return p->topic_len == strlen(topic) && memcmp(p->topic, topic, p->topic_len) == 0;
}

/* Copy a payload into a printable, bounded C string. */
static void payload_str(const struct mqtt_min_packet *p, char *out, size_t cap)
{
    size_t n = p->payload_len < cap - 1 ? p->payload_len : cap - 1;

    for (size_t i = 0; i < n; i++) {
        uint8_t ch = p->payload[i];

        out[i] = (ch >= 0x21 && ch < 0x7f) ? (char)ch : '?';
    }
    out[n] = '\0';
}

static uint32_t counter_value_index(struct load *L, const char *value)
{
    for (size_t i = 0; i < L->n_values; i++)
        if (strcmp(L->values[i], value) == 0)
            return (uint32_t)i;
    if (L->n_values == COUNTER_VALUES_MAX)
        return UINT32_MAX;
    snprintf(L->values[L->n_values], VALUE_MAX, "%s", value);
    return (uint32_t)L->n_values++;
}

static void record_counter(struct load *L, struct client *c, const char *value, bool live,
                           int64_t t_us)
{
    uint32_t v = counter_value_index(L, value);

    if (v == UINT32_MAX) {
        L->values_untracked++;
        return;
    }
    if (L->n_receipts == L->cap_receipts) {
        size_t cap = L->cap_receipts ? L->cap_receipts * 2 : 4096;
        struct receipt *r = realloc(L->receipts, cap * sizeof(*r));

        if (!r) {
            L->values_untracked++;
            return;
        }
        L->receipts = r;
        L->cap_receipts = cap;
    }
    L->receipts[L->n_receipts++] = (struct receipt){
        .value = v, .client = (uint32_t)c->idx, .t_us = t_us, .wall_ms = wall_ms(), .live = live};
}

static void on_publish(struct load *L, struct client *c, const struct mqtt_min_packet *p)
{
    int64_t t = since_start_us(L);
    char value[VALUE_MAX];
    bool presence = topic_is(p, L->presence_topic);
    bool counter = L->o.counter && topic_is(p, L->counter_topic);

    L->publishes++;
    if (!presence && !counter)
        return;
    payload_str(p, value, sizeof(value));
    if (counter)
        record_counter(L, c, value, !p->retain, t);
    if (c->idx != L->o.observer)
        return;
    if (presence) {
        snprintf(L->observer_presence, sizeof(L->observer_presence), "%s", value);
        L->observer_saw_presence = true;
    }
    printf("t=%" PRId64 " topic=%.*s value=%s client=%d\n", t / 1000, (int)p->topic_len, p->topic,
           value, c->idx);
}

static void on_suback(struct load *L, struct client *c, const struct mqtt_min_packet *p)
{
    for (size_t i = 0; i < p->suback_count; i++) {
        if (p->suback_codes[i] == 0x80) {
            fail(L, c, FAIL_SUBACK);
            return;
        }
    }
    if (!c->subscribed) {
        c->subscribed = true;
        L->subscribed++;
    }
}

/* Act on one packet; return -1 when the connection must close. */
static int on_packet(struct load *L, struct client *c, const struct mqtt_min_packet *p)
{
    switch (p->type) {
    case MQTT_MIN_CONNACK:
        if (p->connack_rc != 0) {
            fail(L, c, FAIL_CONNACK);
            return -1;
        }
        if (!c->connacked) {
            c->connacked = true;
            c->connack_us = since_start_us(L);
            L->connected++;
            want_send(c, SEND_SUBSCRIBE);
        }
        return 0;
    case MQTT_MIN_SUBACK:
        on_suback(L, c, p);
        return 0;
    case MQTT_MIN_PUBLISH:
        on_publish(L, c, p);
        return 0;
    case MQTT_MIN_PINGRESP:
        L->pingresps++;
        return 0;
    default:
        fail(L, c, FAIL_PROTOCOL);
        return -1;
    }
}

/* Append a WebSocket frame's bytes and act on every whole MQTT packet. */
static int on_receive(struct load *L, struct client *c, const uint8_t *in, size_t len)
{
    size_t off = 0;

    if (c->rx_len + len > RX_MAX) {
        fail(L, c, FAIL_PROTOCOL);
        return -1;
    }
    if (c->rx_len + len > c->rx_cap) {
        size_t cap = c->rx_cap ? c->rx_cap : 256;
        uint8_t *rx;

        while (cap < c->rx_len + len)
            cap *= 2;
        rx = realloc(c->rx, cap);
        if (!rx) {
            fail(L, c, FAIL_PROTOCOL);
            return -1;
        }
        c->rx = rx;
        c->rx_cap = cap;
    }
    memcpy(c->rx + c->rx_len, in, len);
    c->rx_len += len;
    for (;;) {
        struct mqtt_min_packet p;
        size_t used = 0;
        enum mqtt_min_status st = mqtt_min_decode(c->rx + off, c->rx_len - off, &used, &p);

        if (st == MQTT_MIN_INCOMPLETE)
            break;
        if (st != MQTT_MIN_OK || on_packet(L, c, &p) < 0) {
            if (st != MQTT_MIN_OK)
                fail(L, c, FAIL_PROTOCOL);
            return -1;
        }
        off += used;
    }
    memmove(c->rx, c->rx + off, c->rx_len - off);
    c->rx_len -= off;
    return 0;
}

/* ==== libwebsockets glue ==== */

static void start_clients(struct load *L);

static void handshake_over(struct load *L, struct client *c)
{
    if (!c->handshaking)
        return;
    c->handshaking = false;
    L->handshaking--;
    start_clients(L);
}

static void on_closed(struct load *L, struct client *c, enum failure why)
{
    if (c->closed)
        return;
    handshake_over(L, c);
    c->closed = true;
    c->wsi = NULL;
    if (!c->leaving && L->stop_us < 0)
        fail(L, c, why);
}

static int callback_mqtt(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                         size_t len)
{
    struct load *L = lws_context_user(lws_get_context(wsi));
    struct client *c = user;

    if (!c)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        c->wsi = wsi;
        c->ws_open = true;
        want_send(c, SEND_CONNECT);
        handshake_over(L, c);
        return 0;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        return on_writeable(L, c, wsi);
    case LWS_CALLBACK_CLIENT_RECEIVE:
        return c->silent ? 0 : on_receive(L, c, in, len);
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        on_closed(L, c, FAIL_CONNECT);
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
        on_closed(L, c, FAIL_CLOSED);
        return 0;
    case LWS_CALLBACK_WSI_DESTROY:
        c->wsi = NULL;
        return 0;
    default:
        return 0;
    }
}

static const struct lws_protocols protocols[] = {
    {.name = "mqtt", .callback = callback_mqtt, .rx_buffer_size = 4096},
    {0},
};

/*
 * No idle WebSocket pings: MQTT keepalive is what this tool exercises. All
 * zero also keeps lws from re-arming a per-connection validity timer on every
 * frame received; lws keeps timers in one sorted list, so with thousands of
 * connections that re-arming alone made connecting quadratic.
 */
static const lws_retry_bo_t no_ws_idle_policy = {0};

static struct lws_context *create_context(struct load *L)
{
    struct lws_context_creation_info info;
    unsigned bound = (unsigned)L->o.duration_s + 10;

    memset(&info, 0, sizeof(info));
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.gid = -1;
    info.uid = -1;
    info.user = L;
    /* The run's own --duration bounds every wait, not lws's defaults. */
    info.timeout_secs = bound;
    info.connect_timeout_secs = bound;
    info.retry_and_idle_policy = &no_ws_idle_policy;
    return lws_create_context(&info);
}

static void connect_client(struct load *L, struct client *c)
{
    struct lws_client_connect_info ci;

    memset(&ci, 0, sizeof(ci));
    ci.context = L->ctx;
    ci.address = L->o.host;
    ci.port = L->o.port;
    ci.path = "/mqtt";
    ci.host = L->o.host;
    ci.origin = L->o.host;
    ci.protocol = "mqtt";
    ci.local_protocol_name = "mqtt";
    ci.ietf_version_or_minus_one = -1;
    ci.retry_and_idle_policy = &no_ws_idle_policy;
    ci.userdata = c;
    c->handshaking = true;
    L->handshaking++;
    if (!lws_client_connect_via_info(&ci))
        on_closed(L, c, FAIL_CONNECT);
}

/*
 * Start clients until --max-handshakes are in their WebSocket handshake.
 * Clients are concurrent either way; the bound exists because lws 4.1 keeps
 * each handshake's timeout in one sorted list with linear insertion, so
 * starting 10,000 handshakes at once costs seconds of CPU in that list alone
 * (in this process and in the broker's lws alike).
 */
static void start_clients(struct load *L)
{
    if (L->starting || L->stop_us >= 0)
        return;
    L->starting = true;
    while (L->next_to_start < L->total && L->handshaking < L->o.max_handshakes)
        connect_client(L, &L->clients[L->next_to_start++]);
    L->starting = false;
}

/* ==== The tick: pings, scheduled events, progress, the time bound ==== */

static bool client_is_live(const struct client *c)
{
    return c->wsi && !c->closed && !c->silent && !c->leaving;
}

static void schedule_pings(struct load *L, int64_t now)
{
    int64_t every = (int64_t)L->o.keepalive * 1000000;

    if (every == 0)
        return;
    for (int i = 0; i < L->total; i++) {
        struct client *c = &L->clients[i];

        if (client_is_live(c) && c->connacked && now - c->last_tx_us >= every)
            want_send(c, SEND_PING);
    }
}

static void start_range(struct load *L, struct range *r, const char *what, int64_t now)
{
    r->t_us = now;
    printf("t=%" PRId64 " event=%s first=%d count=%d\n", now / 1000, what, r->first, r->count);
    for (int i = r->first; i < r->first + r->count; i++) {
        struct client *c = &L->clients[i];

        if (!client_is_live(c))
            continue;
        if (r == &L->leave) {
            want_send(c, SEND_DISCONNECT);
            continue;
        }
        /* A dead network: nothing sent, nothing read, the socket left open. */
        c->silent = true;
        lws_rx_flow_control(c->wsi, 0);
    }
}

static void print_status(struct load *L, int64_t now)
{
    bool changed =
        L->connected != L->last_status_connected || L->subscribed != L->last_status_subscribed;
    bool all = L->connected == L->total && L->subscribed == L->total;

    if (changed && (all || now - L->last_status_us >= STATUS_EVERY_US)) {
        printf("t=%" PRId64 " connected=%d subscribed=%d\n", now / 1000, L->connected,
               L->subscribed);
        L->last_status_us = now;
        L->last_status_connected = L->connected;
        L->last_status_subscribed = L->subscribed;
    }
    if (L->failures != L->last_status_failures) {
        printf("t=%" PRId64 " failures=%d\n", now / 1000, L->failures);
        L->last_status_failures = L->failures;
    }
}

/* Ask every open client to DISCONNECT; silent ones stay silent. */
static void begin_shutdown(struct load *L, int64_t now)
{
    L->stop_us = now;
    printf("t=%" PRId64 " event=stop\n", now / 1000);
    for (int i = 0; i < L->total; i++)
        if (client_is_live(&L->clients[i]))
            want_send(&L->clients[i], SEND_DISCONNECT);
}

static bool all_closed(const struct load *L)
{
    if (L->next_to_start < L->total)
        return false;
    for (int i = 0; i < L->total; i++)
        if (!L->clients[i].closed)
            return false;
    return true;
}

static bool shutdown_done(const struct load *L, int64_t now)
{
    if (now - L->stop_us >= SHUTDOWN_GRACE_US)
        return true;
    for (int i = 0; i < L->total; i++)
        if (L->clients[i].wsi && !L->clients[i].closed && !L->clients[i].silent)
            return false;
    return true;
}

static void on_tick(lws_sorted_usec_list_t *sul)
{
    struct load *L = lws_container_of(sul, struct load, tick);
    int64_t now = since_start_us(L);
    int64_t leave_at = (int64_t)(L->o.leave_at_s * 1e6);

    print_status(L, now);
    if (L->stop_us < 0 && (interrupted || all_closed(L) || now >= (int64_t)(L->o.duration_s * 1e6)))
        begin_shutdown(L, now);
    if (L->stop_us >= 0) {
        L->finished = shutdown_done(L, now);
        if (L->finished) {
            lws_cancel_service(L->ctx);
            return;
        }
    } else {
        if (L->leave.count && L->leave.t_us < 0 && now >= leave_at)
            start_range(L, &L->leave, "leave", now);
        if (L->silence.count && L->silence.t_us < 0 && now >= leave_at)
            start_range(L, &L->silence, "silence", now);
        schedule_pings(L, now);
    }
    lws_sul_schedule(L->ctx, 0, &L->tick, on_tick, TICK_US);
}

/* ==== Report ==== */

static cJSON *stats_json(double *v, size_t n)
{
    cJSON *o = cJSON_CreateObject();

    percentile_sort(v, n);
    cJSON_AddNumberToObject(o, "samples", (double)n);
    cJSON_AddNumberToObject(o, "p50", percentile(v, n, 50));
    cJSON_AddNumberToObject(o, "p99", percentile(v, n, 99));
    cJSON_AddNumberToObject(o, "max", n ? v[n - 1] : 0);
    return o;
}

static cJSON *connect_stats(const struct load *L)
{
    double *v = calloc((size_t)L->total + 1, sizeof(*v));
    size_t n = 0;
    cJSON *o;

    for (int i = 0; v && i < L->total; i++)
        if (L->clients[i].connacked)
            v[n++] = (double)L->clients[i].connack_us / 1000.0;
    o = stats_json(v, n);
    free(v);
    return o;
}

static int cmp_receipt(const void *a, const void *b)
{
    const struct receipt *x = a, *y = b;

    if (x->value != y->value)
        return x->value < y->value ? -1 : 1;
    if (x->client != y->client)
        return x->client < y->client ? -1 : 1;
    return (x->t_us > y->t_us) - (x->t_us < y->t_us);
}

/*
 * Latency of live counter deliveries: for each value V, each client's first
 * receipt of V minus the first receipt of V over all clients ("spread"), and
 * with --pub-ts, wall-clock receipt time minus that publish time.
 */
static void counter_stats(struct load *L, cJSON *report)
{
    double *spread = calloc(L->n_receipts + 1, sizeof(double));
    double *since_pub = calloc(L->n_receipts + 1, sizeof(double));
    size_t n_spread = 0, n_pub = 0;

    if (!spread || !since_pub)
        goto out;
    if (L->n_receipts) /* qsort of NULL, even of 0 items, is undefined */
        qsort(L->receipts, L->n_receipts, sizeof(*L->receipts), cmp_receipt);
    for (size_t i = 0; i < L->n_receipts;) {
        size_t end = i;
        int64_t first = INT64_MAX;

        while (end < L->n_receipts && L->receipts[end].value == L->receipts[i].value)
            end++;
        for (size_t j = i; j < end; j++)
            if (L->receipts[j].live && L->receipts[j].t_us < first)
                first = L->receipts[j].t_us;
        for (size_t j = i, prev = SIZE_MAX; j < end; j++) {
            const struct receipt *r = &L->receipts[j];

            /* A client's first live receipt counts; later ones repeat it. */
            if (!r->live || (prev != SIZE_MAX && L->receipts[prev].client == r->client))
                continue;
            prev = j;
            spread[n_spread++] = (double)(r->t_us - first) / 1000.0;
            if (L->o.pub_ts_ms >= 0 && r->wall_ms >= L->o.pub_ts_ms)
                since_pub[n_pub++] = (double)(r->wall_ms - L->o.pub_ts_ms);
        }
        i = end;
    }
    cJSON_AddItemToObject(report, "counter_spread_ms", stats_json(spread, n_spread));
    if (L->o.pub_ts_ms >= 0)
        cJSON_AddItemToObject(report, "counter_since_pub_ms", stats_json(since_pub, n_pub));
out:
    free(spread);
    free(since_pub);
}

/* Where the clients that neither failed nor got subscribed stopped. */
static cJSON *unfinished_json(const struct load *L)
{
    int not_started = L->total - L->next_to_start, handshake = 0, connack = 0, suback = 0;
    cJSON *o = cJSON_CreateObject();

    for (int i = 0; i < L->next_to_start; i++) {
        const struct client *c = &L->clients[i];

        if (c->failed)
            continue;
        handshake += !c->ws_open;
        connack += c->ws_open && !c->connacked;
        suback += c->connacked && !c->subscribed;
    }
    cJSON_AddNumberToObject(o, "not_started", not_started);
    cJSON_AddNumberToObject(o, "in_handshake", handshake);
    cJSON_AddNumberToObject(o, "awaiting_connack", connack);
    cJSON_AddNumberToObject(o, "awaiting_suback", suback);
    return o;
}

static cJSON *range_json(const struct range *r)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddNumberToObject(o, "first", r->first);
    cJSON_AddNumberToObject(o, "count", r->count);
    cJSON_AddNumberToObject(o, "t_ms", r->t_us < 0 ? -1 : (double)(r->t_us / 1000));
    return o;
}

static cJSON *build_report(struct load *L)
{
    cJSON *rep = cJSON_CreateObject();
    cJSON *fails = cJSON_CreateObject();
    cJSON *values = cJSON_CreateArray();

    cJSON_AddNumberToObject(rep, "requested", L->total);
    cJSON_AddNumberToObject(rep, "connected", L->connected);
    cJSON_AddNumberToObject(rep, "subscribed", L->subscribed);
    cJSON_AddItemToObject(rep, "connect_ms", connect_stats(L));
    cJSON_AddNumberToObject(rep, "failures", L->failures);
    cJSON_AddItemToObject(rep, "unfinished", unfinished_json(L));
    for (int i = 0; i < FAIL_COUNT; i++)
        cJSON_AddNumberToObject(fails, failure_names[i], L->fail_by[i]);
    cJSON_AddItemToObject(rep, "failure_reasons", fails);
    cJSON_AddNumberToObject(rep, "observer", L->o.observer);
    if (L->observer_saw_presence)
        cJSON_AddStringToObject(rep, "observer_presence", L->observer_presence);
    else
        cJSON_AddNullToObject(rep, "observer_presence");
    for (size_t i = 0; i < L->n_values; i++)
        cJSON_AddItemToArray(values, cJSON_CreateString(L->values[i]));
    cJSON_AddItemToObject(rep, "counter_values", values);
    cJSON_AddNumberToObject(rep, "counter_values_untracked", (double)L->values_untracked);
    counter_stats(L, rep);
    cJSON_AddNumberToObject(rep, "publishes", (double)L->publishes);
    cJSON_AddNumberToObject(rep, "pings_sent", (double)L->pings_sent);
    cJSON_AddNumberToObject(rep, "pingresps", (double)L->pingresps);
    cJSON_AddItemToObject(rep, "leave", range_json(&L->leave));
    cJSON_AddItemToObject(rep, "silence", range_json(&L->silence));
    cJSON_AddStringToObject(rep, "client_prefix", L->o.prefix);
    cJSON_AddNumberToObject(rep, "start_unix_ms", (double)L->start_wall_ms);
    return rep;
}

/* The text report: one `key=value` line per figure, flattened. */
static void print_text(const cJSON *item, const char *prefix)
{
    char key[128];

    for (const cJSON *it = item->child; it; it = it->next) {
        snprintf(key, sizeof(key), "%s%s", prefix, it->string);
        if (cJSON_IsObject(it)) {
            strncat(key, ".", sizeof(key) - strlen(key) - 1);
            print_text(it, key);
            continue;
        }
        char *s = cJSON_PrintUnformatted(it);

        printf("%s=%s\n", key, s ? s : "?");
        free(s);
    }
}

/* ==== Options parsing ==== */

static void usage(FILE *f)
{
    fprintf(f, "usage: tally-wsload --port P [options]\n"
               "  --host H           broker address (default 127.0.0.1)\n"
               "  --port P           WebSocket listener port (required)\n"
               "  --clients N        clients viewing <presence prefix>/<page> (default 1)\n"
               "  --page NAME        page to view (default dashboard)\n"
               "  --wildcard N       extra clients subscribed to <presence prefix>/# (default 0)\n"
               "  --counter NAME     also subscribe to <prefix>/NAME and time its values\n"
               "  --prefix P         the plugin's prefix option (default counters)\n"
               "  --presence-prefix P  the plugin's presence_prefix option (default presence)\n"
               "  --pub-ts MS        Unix ms when the timed counter value was published\n"
               "  --keepalive S      MQTT keepalive seconds, 0 = none (default 10)\n"
               "  --client-prefix S  client ids S-<i> (default wsload-<pid>)\n"
               "  --duration S       run time; always stops by itself (default 10)\n"
               "  --leave N          N clients DISCONNECT at --leave-at\n"
               "  --silence N        N other clients go silent at --leave-at (dead network)\n"
               "  --leave-at S       seconds after start (default duration / 2)\n"
               "  --observer K       client whose received values are logged (default 0)\n"
               "  --max-handshakes N WebSocket handshakes in flight at once (default 500)\n"
               "  --json             final report as one JSON line\n");
}

static bool parse_int_in(const char *s, long lo, long hi, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

static bool parse_seconds(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);

    if (*end || end == s || !(v >= 0 && v <= 86400))
        return false;
    *out = v;
    return true;
}

static bool parse_ms(const char *s, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < 0)
        return false;
    *out = v;
    return true;
}

/* A topic prefix as the plugin takes it: not empty, no wildcard, no trailing '/'. */
static bool topic_prefix_ok(const char *p)
{
    size_t len = strlen(p);
    return len > 0 && len < 200 && !strpbrk(p, "+#") && p[len - 1] != '/';
}

enum opt_id {
    OPT_HOST = 256,
    OPT_PORT,
    OPT_CLIENTS,
    OPT_WILDCARD,
    OPT_PAGE,
    OPT_COUNTER,
    OPT_PUB_TS,
    OPT_KEEPALIVE,
    OPT_PREFIX,
    OPT_DURATION,
    OPT_LEAVE,
    OPT_SILENCE,
    OPT_LEAVE_AT,
    OPT_OBSERVER,
    OPT_MAX_HANDSHAKES,
    OPT_JSON,
    OPT_HELP,
    OPT_COUNTER_PREFIX,
    OPT_PRESENCE_PREFIX,
};

static const struct option long_opts[] = {
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"clients", required_argument, NULL, OPT_CLIENTS},
    {"wildcard", required_argument, NULL, OPT_WILDCARD},
    {"page", required_argument, NULL, OPT_PAGE},
    {"counter", required_argument, NULL, OPT_COUNTER},
    {"pub-ts", required_argument, NULL, OPT_PUB_TS},
    {"keepalive", required_argument, NULL, OPT_KEEPALIVE},
    {"client-prefix", required_argument, NULL, OPT_PREFIX},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"leave", required_argument, NULL, OPT_LEAVE},
    {"silence", required_argument, NULL, OPT_SILENCE},
    {"leave-at", required_argument, NULL, OPT_LEAVE_AT},
    {"observer", required_argument, NULL, OPT_OBSERVER},
    {"max-handshakes", required_argument, NULL, OPT_MAX_HANDSHAKES},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, OPT_HELP},
    {"prefix", required_argument, NULL, OPT_COUNTER_PREFIX},
    {"presence-prefix", required_argument, NULL, OPT_PRESENCE_PREFIX},
    {0},
};

/* Apply one option; return an error message or NULL. */
static const char *apply_opt(struct opts *o, int id, const char *arg)
{
    switch (id) {
    case OPT_HOST:
        o->host = arg;
        return NULL;
    case OPT_PORT:
        return parse_int_in(arg, 1, 65535, &o->port) ? NULL : "bad --port";
    case OPT_CLIENTS:
        return parse_int_in(arg, 0, 1000000, &o->clients) ? NULL : "bad --clients";
    case OPT_WILDCARD:
        return parse_int_in(arg, 0, 1000000, &o->wildcard) ? NULL : "bad --wildcard";
    case OPT_PAGE:
        o->page = arg;
        return NULL;
    case OPT_COUNTER:
        o->counter = arg;
        return NULL;
    case OPT_PUB_TS:
        return parse_ms(arg, &o->pub_ts_ms) ? NULL : "bad --pub-ts";
    case OPT_KEEPALIVE:
        return parse_int_in(arg, 0, 65535, &o->keepalive) ? NULL : "bad --keepalive";
    case OPT_PREFIX:
        if (strlen(arg) >= sizeof(o->prefix))
            return "--client-prefix too long";
        snprintf(o->prefix, sizeof(o->prefix), "%s", arg);
        return NULL;
    case OPT_DURATION:
        return parse_seconds(arg, &o->duration_s) ? NULL : "bad --duration";
    case OPT_LEAVE:
        return parse_int_in(arg, 0, 1000000, &o->leave) ? NULL : "bad --leave";
    case OPT_SILENCE:
        return parse_int_in(arg, 0, 1000000, &o->silence) ? NULL : "bad --silence";
    case OPT_LEAVE_AT:
        return parse_seconds(arg, &o->leave_at_s) ? NULL : "bad --leave-at";
    case OPT_OBSERVER:
        return parse_int_in(arg, 0, INT_MAX, &o->observer) ? NULL : "bad --observer";
    case OPT_MAX_HANDSHAKES:
        return parse_int_in(arg, 1, 1000000, &o->max_handshakes) ? NULL : "bad --max-handshakes";
    case OPT_JSON:
        o->json = true;
        return NULL;
    case OPT_COUNTER_PREFIX:
        o->counter_prefix = arg;
        return topic_prefix_ok(arg) ? NULL : "bad --prefix (a topic without + # or a final /)";
    case OPT_PRESENCE_PREFIX:
        o->presence_prefix = arg;
        return topic_prefix_ok(arg) ? NULL
                                    : "bad --presence-prefix (a topic without + # or a final /)";
    default:
        return "unknown option";
    }
}

/* Cross-option checks; return an error message or NULL. */
static const char *check_opts(const struct opts *o)
{
    int steady = o->clients - o->leave - o->silence;

    if (o->port == 0)
        return "--port is required";
    if (o->clients + o->wildcard == 0)
        return "no clients requested";
    /* The plugin's own rule (plugin/codec.c), not a copy of it. */
    if (name_check(o->page, strlen(o->page)) != TALLY_OK)
        return "--page is not a name the plugin takes (see README, Names)";
    if (o->counter && name_check(o->counter, strlen(o->counter)) != TALLY_OK)
        return "--counter is not a name the plugin takes (see README, Names)";
    if (steady < 0)
        return "--leave + --silence exceed --clients";
    if (o->observer >= o->clients + o->wildcard)
        return "--observer is not a client";
    if ((o->leave || o->silence) && o->observer >= steady && o->observer < o->clients)
        return "--observer must not leave or go silent";
    return NULL;
}

static int parse_opts(struct opts *o, int argc, char **argv)
{
    bool leave_at_given = false;
    int id;

    *o = (struct opts){.host = "127.0.0.1",
                       .clients = 1,
                       .page = "dashboard",
                       .counter_prefix = "counters",
                       .presence_prefix = "presence",
                       .keepalive = 10,
                       .duration_s = 10,
                       .max_handshakes = 500,
                       .pub_ts_ms = -1};
    snprintf(o->prefix, sizeof(o->prefix), "wsload-%d", (int)getpid());
    while ((id = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
        const char *err;

        if (id == OPT_HELP) {
            usage(stdout);
            exit(0);
        }
        err = id == '?' ? "unknown option" : apply_opt(o, id, optarg);
        if (err) {
            fprintf(stderr, "tally-wsload: %s\n", err);
            usage(stderr);
            return -1;
        }
        leave_at_given |= id == OPT_LEAVE_AT;
    }
    if (!leave_at_given)
        o->leave_at_s = o->duration_s / 2;
    if (optind < argc || check_opts(o)) {
        fprintf(stderr, "tally-wsload: %s\n",
                optind < argc ? "unexpected argument" : check_opts(o));
        return -1;
    }
    return 0;
}

/* ==== Main ==== */

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int load_init(struct load *L)
{
    const struct opts *o = &L->o;

    L->total = o->clients + o->wildcard;
    L->clients = calloc((size_t)L->total, sizeof(*L->clients));
    L->values = calloc(COUNTER_VALUES_MAX, sizeof(*L->values));
    if (!L->clients || !L->values)
        return -1;
    snprintf(L->presence_topic, sizeof(L->presence_topic), "%s/%s", o->presence_prefix, o->page);
    snprintf(L->presence_wildcard, sizeof(L->presence_wildcard), "%s/#", o->presence_prefix);
    if (o->counter)
        snprintf(L->counter_topic, sizeof(L->counter_topic), "%s/%s", o->counter_prefix,
                 o->counter);
    for (int i = 0; i < L->total; i++)
        L->clients[i].idx = i;
    /* The last page viewers leave; the ones before them go silent. */
    L->leave = (struct range){o->clients - o->leave, o->leave, -1};
    L->silence = (struct range){o->clients - o->leave - o->silence, o->silence, -1};
    L->stop_us = -1;
    L->ctx = create_context(L);
    return L->ctx ? 0 : -1;
}

static void load_free(struct load *L)
{
    for (int i = 0; L->clients && i < L->total; i++)
        free(L->clients[i].rx);
    free(L->clients);
    free(L->values);
    free(L->receipts);
}

int main(int argc, char **argv)
{
    static struct load L;
    cJSON *report;
    int rc;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (parse_opts(&L.o, argc, argv) < 0)
        return 2;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    lws_set_log_level(LLL_ERR, NULL);
    if (load_init(&L) < 0) {
        fprintf(stderr, "tally-wsload: cannot set up libwebsockets\n");
        load_free(&L);
        return 2;
    }
    L.start_us = mono_us();
    L.start_wall_ms = wall_ms();
    start_clients(&L);
    lws_sul_schedule(L.ctx, 0, &L.tick, on_tick, TICK_US);
    while (!L.finished)
        if (lws_service(L.ctx, 0) < 0)
            break;
    report = build_report(&L);
    rc = L.connected == L.total ? 0 : 1;
    lws_context_destroy(L.ctx);
    if (L.o.json) {
        char *s = cJSON_PrintUnformatted(report);

        printf("%s\n", s ? s : "{}");
        free(s);
    } else {
        print_text(report, "");
    }
    cJSON_Delete(report);
    load_free(&L);
    return rc;
}
