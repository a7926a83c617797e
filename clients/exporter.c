/*
 * tally-exporter: every figure of tally's stats as Prometheus metrics.
 *
 * ---- Why a process of its own ----
 *
 * Each node publishes its figures as JSON, retained, on $tally/stats/<node>,
 * and every node floods every other node's stats, so one subscription to
 * $tally/stats/+ on any one node sees the whole cluster. The exporter is an
 * ordinary MQTT client that keeps the latest document of each node and turns
 * it into the text exposition format when Prometheus asks for /metrics. An
 * HTTP server inside the plugin would run in the broker's main thread (the
 * plugin API is main-thread only) or have to share the plugin's state across
 * threads; outside, a slow or hostile scraper can never stall the broker, and
 * the exporter can be restarted, placed on another host or left out.
 *
 * Threads: libmosquitto's loop thread receives stats (on_message), the
 * libmicrohttpd thread answers scrapes (on_request), the main thread waits
 * for SIGINT/SIGTERM. The table of documents is shared under one mutex.
 *
 * ---- Metrics ----
 *
 * Every metric carries node="<node id>". Known figures have a fixed name and
 * type (struct metric below: counters end in _total, times are seconds);
 * refusals are one counter with a reason label, peers two gauges with a
 * peer label. A numeric figure a newer plugin adds and this table does not
 * know yet is still exported, as gauge tally_stats_<path> (dots become _),
 * so no figure is ever silently missing.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <mosquitto.h>
#include <uthash.h>

#define EXPORTER_VERSION "0.1.0"
#define STATS_TOPIC "$tally/stats/+"
#define STATS_ROOT "$tally/stats/"
#define KEEPALIVE_S 30
#define EXIT_USAGE 2

/* ==== The figures ==== */

enum kind { COUNTER, GAUGE };

struct metric {
    const char *path; /* in the stats JSON, levels joined by '.' */
    const char *name;
    enum kind kind;
    double scale; /* milliseconds become seconds */
    const char *help;
};

static const struct metric metrics[] = {
    {"counters", "tally_counters", GAUGE, 1, "Counters this node holds."},
    {"devices", "tally_devices", GAUGE, 1, "Devices whose reports this node holds."},
    {"viewers", "tally_viewers", GAUGE, 1, "Local (client, page) views."},
    {"applied", "tally_increments_applied_total", COUNTER, 1, "Increments applied."},
    {"duplicates", "tally_increments_duplicate_total", COUNTER, 1,
     "Increments acknowledged but not applied again (their id was in the dedup window)."},
    {"reports", "tally_reports_applied_total", COUNTER, 1, "Device reports that raised a total."},
    {"reports_unchanged", "tally_reports_unchanged_total", COUNTER, 1,
     "Device reports not above the device's largest, acknowledged, changing nothing."},
    {"logins_refused", "tally_logins_refused_total", COUNTER, 1,
     "Logins refused by protect_clientids (a bridge's client id without a bridge username)."},
    {"repl.msgs_in", "tally_replication_received_messages_total", COUNTER, 1,
     "Replication messages received from peers."},
    {"repl.bytes_in", "tally_replication_received_bytes_total", COUNTER, 1,
     "Bytes of replication messages received."},
    {"repl.msgs_out", "tally_replication_sent_messages_total", COUNTER, 1,
     "Replication messages sent."},
    {"repl.bytes_out", "tally_replication_sent_bytes_total", COUNTER, 1,
     "Bytes of replication messages sent."},
    {"repl.refused", "tally_replication_refused_total", COUNTER, 1,
     "Replication messages refused (malformed, too large, forbidden)."},
    {"repl.repaired", "tally_replication_repaired_counters_total", COUNTER, 1,
     "Counters resent by anti-entropy because a peer's digest differed."},
    {"nodes.heard", "tally_nodes_heard", GAUGE, 1,
     "Other nodes this node has heard from, directly or through others."},
    {"nodes.alive", "tally_nodes_alive", GAUGE, 1,
     "Other nodes this node has heard within peer_timeout_ms (its peers are its neighbours)."},
    {"dedup.ids", "tally_dedup_ids", GAUGE, 1, "Increment ids in the dedup window."},
    {"dedup.window", "tally_dedup_window", GAUGE, 1, "Capacity of the dedup window."},
    {"limits.max_counters", "tally_limit_max_counters", GAUGE, 1, "The max_counters option."},
    {"limits.max_devices", "tally_limit_max_devices", GAUGE, 1, "The max_devices option."},
    {"limits.max_viewers", "tally_limit_max_viewers", GAUGE, 1, "The max_viewers option."},
    {"uptime_ms", "tally_uptime_seconds", GAUGE, 0.001, "Seconds since the plugin started."},
    {"time_ms", "tally_stats_time_seconds", GAUGE, 0.001,
     "When the node wrote these figures (Unix time): time() minus this is their age."},
    {"seq", "tally_stats_published_total", COUNTER, 1, "Stats documents this node published."},
};

/* Figures exported otherwise: as labels of tally_node_info, or derivable
 * (rejected_total is sum(tally_rejected_total)). */
static const char *const not_metrics[] = {"node", "incarnation", "persist", "rejected_total"};

/* Objects whose keys become a label (refusal reasons, peers). */
static const char *const labelled[] = {"rejected", "peers"};

/* ==== The latest document of each node ==== */

struct node_doc {
    char *node;
    cJSON *doc;
    UT_hash_handle hh;
};

static struct {
    pthread_mutex_t lock;
    struct node_doc *nodes;
    bool connected;
    unsigned long long messages;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Takes ownership of doc; a NULL doc (an empty retained message) forgets the node. */
static void store(const char *node, cJSON *doc)
{
    struct node_doc *n;
    pthread_mutex_lock(&g.lock);
    HASH_FIND_STR(g.nodes, node, n);
    if (n && !doc) {
        HASH_DEL(g.nodes, n);
        cJSON_Delete(n->doc);
        free(n->node);
        free(n);
    } else if (n) {
        cJSON_Delete(n->doc);
        n->doc = doc;
    } else if (doc && (n = calloc(1, sizeof(*n))) && (n->node = strdup(node))) {
        n->doc = doc;
        HASH_ADD_KEYPTR(hh, g.nodes, n->node, strlen(n->node), n);
    } else {
        free(n);
        cJSON_Delete(doc);
    }
    g.messages++;
    pthread_mutex_unlock(&g.lock);
}

/* ==== Rendering (the caller holds g.lock) ==== */

static void put_label_value(FILE *out, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            fprintf(out, "\\%c", *v);
        else if (*v == '\n')
            fputs("\\n", out);
        else
            fputc(*v, out);
    }
}

static void put_header(FILE *out, const char *name, enum kind kind, const char *help)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
            kind == COUNTER ? "counter" : "gauge");
}

/* name{node="n"[,key="value"]} number */
static void put_sample(FILE *out, const char *name, const char *node, const char *key,
                       const char *value, double number)
{
    fprintf(out, "%s{node=\"", name);
    put_label_value(out, node);
    if (key) {
        fprintf(out, "\",%s=\"", key);
        put_label_value(out, value);
    }
    /* Whole numbers exactly (a total may need all 16 digits of 2^53), the
     * rest (seconds from milliseconds) to 15 digits, without binary noise. */
    if (number > -9e18 && number < 9e18 && number == (double)(long long)number)
        fprintf(out, "\"} %lld\n", (long long)number);
    else
        fprintf(out, "\"} %.15g\n", number);
}

static const cJSON *at_path(const cJSON *doc, const char *path)
{
    char part[64];
    while (doc && *path) {
        size_t len = strcspn(path, ".");
        if (len >= sizeof(part))
            return NULL;
        memcpy(part, path, len);
        part[len] = '\0';
        doc = cJSON_GetObjectItemCaseSensitive(doc, part);
        path += len + (path[len] == '.');
    }
    return doc;
}

static bool number_of(const cJSON *item, double *v)
{
    if (cJSON_IsNumber(item))
        *v = item->valuedouble;
    else if (cJSON_IsBool(item))
        *v = cJSON_IsTrue(item);
    else
        return false;
    return true;
}

static void render_known(FILE *out)
{
    for (size_t i = 0; i < sizeof(metrics) / sizeof(metrics[0]); i++) {
        const struct metric *m = &metrics[i];
        put_header(out, m->name, m->kind, m->help);
        for (struct node_doc *n = g.nodes; n; n = n->hh.next) {
            double v;
            if (number_of(at_path(n->doc, m->path), &v))
                put_sample(out, m->name, n->node, NULL, NULL, v * m->scale);
        }
    }
}

static void render_info(FILE *out)
{
    put_header(out, "tally_node_info", GAUGE,
               "1, with the node's incarnation and where it keeps its state as labels.");
    for (struct node_doc *n = g.nodes; n; n = n->hh.next) {
        const char *inc = cJSON_GetStringValue(cJSON_GetObjectItem(n->doc, "incarnation"));
        const char *persist = cJSON_GetStringValue(cJSON_GetObjectItem(n->doc, "persist"));
        fprintf(out, "tally_node_info{node=\"");
        put_label_value(out, n->node);
        fprintf(out, "\",incarnation=\"");
        put_label_value(out, inc ? inc : "");
        fprintf(out, "\",persist=\"");
        put_label_value(out, persist ? persist : "");
        fprintf(out, "\"} 1\n");
    }
}

/* Each key of object `path` of every node as label `key`; with `field`,
 * the value is that field of the key's object. */
static void render_labelled(FILE *out, const char *path, const char *field, const char *name,
                            const char *key, enum kind kind, double scale, const char *help)
{
    put_header(out, name, kind, help);
    for (struct node_doc *n = g.nodes; n; n = n->hh.next) {
        const cJSON *item;
        cJSON_ArrayForEach(item, at_path(n->doc, path))
        {
            double v;
            const cJSON *x = field ? cJSON_GetObjectItemCaseSensitive(item, field) : item;
            if (item->string && number_of(x, &v))
                put_sample(out, name, n->node, key, item->string, v * scale);
        }
    }
}

/* ---- Figures the table does not know: gauges named after their path ---- */

static bool path_is_known(const char *path)
{
    for (size_t i = 0; i < sizeof(metrics) / sizeof(metrics[0]); i++)
        if (!strcmp(path, metrics[i].path))
            return true;
    for (size_t i = 0; i < sizeof(not_metrics) / sizeof(not_metrics[0]); i++)
        if (!strcmp(path, not_metrics[i]))
            return true;
    for (size_t i = 0; i < sizeof(labelled) / sizeof(labelled[0]); i++)
        if (!strcmp(path, labelled[i]))
            return true;
    return false;
}

struct unknown {
    char path[256];
    struct unknown *next;
};

/* Appends to *list each numeric leaf under doc whose path is not known. */
static void find_unknown(const cJSON *doc, const char *prefix, struct unknown **list)
{
    const cJSON *item;
    cJSON_ArrayForEach(item, doc)
    {
        char path[256];
        double v;
        if (!item->string ||
            snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", item->string) >=
                (int)sizeof(path) ||
            path_is_known(path))
            continue;
        if (cJSON_IsObject(item)) {
            find_unknown(item, path, list);
            continue;
        }
        if (!number_of(item, &v))
            continue;
        struct unknown *u = *list;
        while (u && strcmp(u->path, path))
            u = u->next;
        if (!u && (u = calloc(1, sizeof(*u)))) {
            strcpy(u->path, path);
            u->next = *list;
            *list = u;
        }
    }
}

static void render_unknown(FILE *out)
{
    struct unknown *list = NULL;
    for (struct node_doc *n = g.nodes; n; n = n->hh.next)
        find_unknown(n->doc, "", &list);
    while (list) {
        struct unknown *u = list;
        char name[300] = "tally_stats_", help[320];
        for (size_t i = 0, j = strlen(name); u->path[i] && j < sizeof(name) - 1; i++, j++)
            name[j] = (u->path[i] == '.' || u->path[i] == '-') ? '_' : u->path[i];
        snprintf(help, sizeof(help), "The stats figure %s (a gauge: not known to this exporter).",
                 u->path);
        put_header(out, name, GAUGE, help);
        for (struct node_doc *n = g.nodes; n; n = n->hh.next) {
            double v;
            if (number_of(at_path(n->doc, u->path), &v))
                put_sample(out, name, n->node, NULL, NULL, v);
        }
        list = u->next;
        free(u);
    }
}

static void render_self(FILE *out)
{
    put_header(out, "tally_exporter_broker_connected", GAUGE,
               "1 while the exporter is connected to its broker; the figures are the last "
               "received otherwise.");
    fprintf(out, "tally_exporter_broker_connected %d\n", g.connected);
    put_header(out, "tally_exporter_stats_messages_total", COUNTER,
               "Stats documents the exporter received.");
    fprintf(out, "tally_exporter_stats_messages_total %llu\n", g.messages);
}

/* The whole exposition; caller frees. */
static char *render(size_t *len)
{
    char *text = NULL;
    FILE *out = open_memstream(&text, len);
    if (!out)
        return NULL;
    pthread_mutex_lock(&g.lock);
    render_known(out);
    render_labelled(out, "rejected", NULL, "tally_rejected_total", "reason", COUNTER, 1,
                    "Publishes refused, by reason (bad name, payload, bound reached, ...).");
    render_labelled(out, "peers", "alive", "tally_peer_up", "peer", GAUGE, 1,
                    "1 while the node hears the peer within peer_timeout_ms.");
    render_labelled(out, "peers", "last_heard_ms", "tally_peer_last_heard_seconds", "peer", GAUGE,
                    0.001, "When the node last heard the peer (Unix time).");
    render_info(out);
    render_unknown(out);
    render_self(out);
    pthread_mutex_unlock(&g.lock);
    if (fclose(out) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* ==== HTTP (libmicrohttpd's thread) ==== */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *body, size_t len,
                             enum MHD_ResponseMemoryMode mode, const char *type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)cls, (void)version, (void)upload_data, (void)upload_data_size, (void)con_cls;
    static char not_found[] = "tally-exporter: the metrics are at /metrics\n";
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return MHD_NO;
    if (strcmp(url, "/metrics"))
        return reply(conn, MHD_HTTP_NOT_FOUND, not_found, sizeof(not_found) - 1,
                     MHD_RESPMEM_PERSISTENT, "text/plain");
    size_t len;
    char *text = render(&len);
    if (!text)
        return MHD_NO;
    return reply(conn, MHD_HTTP_OK, text, len, MHD_RESPMEM_MUST_FREE,
                 "text/plain; version=0.0.4; charset=utf-8");
}

/* ==== MQTT (libmosquitto's thread) ==== */

static void on_connect(struct mosquitto *m, void *u, int rc)
{
    (void)u;
    if (rc != 0) {
        fprintf(stderr, "tally-exporter: the broker refused the connection: %s\n",
                mosquitto_connack_string(rc));
        return;
    }
    pthread_mutex_lock(&g.lock);
    g.connected = true;
    pthread_mutex_unlock(&g.lock);
    mosquitto_subscribe(m, NULL, STATS_TOPIC, 0);
}

static void on_disconnect(struct mosquitto *m, void *u, int rc)
{
    (void)m, (void)u, (void)rc;
    pthread_mutex_lock(&g.lock);
    g.connected = false;
    pthread_mutex_unlock(&g.lock);
}

static void on_message(struct mosquitto *m, void *u, const struct mosquitto_message *msg)
{
    (void)m, (void)u;
    const char *node = msg->topic + strlen(STATS_ROOT);
    if (strncmp(msg->topic, STATS_ROOT, strlen(STATS_ROOT)) || !*node)
        return;
    if (msg->payloadlen == 0) {
        store(node, NULL);
        return;
    }
    cJSON *doc = cJSON_ParseWithLength(msg->payload, (size_t)msg->payloadlen);
    if (!cJSON_IsObject(doc)) {
        fprintf(stderr, "tally-exporter: %s is not a JSON object; ignored\n", msg->topic);
        cJSON_Delete(doc);
        return;
    }
    store(node, doc);
}

/* ==== Command line ==== */

struct options {
    const char *host;
    int port;
    const char *username;
    const char *password;
    const char *cafile; /* TLS when set, as mosquitto_pub's --cafile */
    const char *cert;
    const char *key;
    bool insecure;
    struct sockaddr_in listen;
};

static void usage(FILE *out)
{
    fputs("Usage: tally-exporter [OPTIONS]\n"
          "\n"
          "Serve the stats of every node of a tally cluster as Prometheus metrics.\n"
          "It subscribes to $tally/stats/+ on one node (each node forwards every\n"
          "node's stats) and answers GET /metrics in the text exposition format.\n"
          "\n"
          "Options:\n"
          "  -h, --host HOST        broker host (default 127.0.0.1)\n"
          "  -p, --port PORT        broker port (default 1883)\n"
          "  -u, --username USER    MQTT username\n"
          "  -P, --password PASS    MQTT password (or the environment's TALLY_PASSWORD)\n"
          "      --cafile FILE      connect over TLS, trusting the CA certificates in FILE\n"
          "      --cert FILE        TLS: client certificate (with --key)\n"
          "      --key FILE         TLS: the client certificate's private key\n"
          "      --insecure         TLS: do not check the broker's host name\n"
          "  -l, --listen ADDR:PORT where to serve /metrics (default 127.0.0.1:9883)\n"
          "      --help             show this help and exit\n"
          "      --version          show the version and exit\n"
          "\n"
          "The exporter reconnects to the broker by itself; while it is away,\n"
          "tally_exporter_broker_connected is 0 and the last figures are served.\n",
          out);
}

static int parse_listen(const char *arg, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(arg, ':');
    char *end;
    if (!colon || (size_t)(colon - arg) >= sizeof(host))
        return -1;
    memcpy(host, arg, (size_t)(colon - arg));
    host[colon - arg] = '\0';
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, *host ? host : "0.0.0.0", &sa->sin_addr) == 1 ? 0 : -1;
}

/* One option into o; -1 (said on stderr) when its value is bad. */
static int apply_option(struct options *o, int c, char *arg)
{
    char *end;
    switch (c) {
    case 'h':
        o->host = arg;
        return 0;
    case 'u':
        o->username = arg;
        return 0;
    case 'P':
        o->password = arg;
        return 0;
    case 'C':
        o->cafile = arg;
        return 0;
    case 'E':
        o->cert = arg;
        return 0;
    case 'K':
        o->key = arg;
        return 0;
    case 'I':
        o->insecure = true;
        return 0;
    case 'p':
        o->port = (int)strtol(arg, &end, 10);
        if (!*end && o->port >= 1 && o->port <= 65535)
            return 0;
        fprintf(stderr, "tally-exporter: --port: a port from 1 to 65535\n");
        return -1;
    case 'l':
        if (parse_listen(arg, &o->listen) == 0)
            return 0;
        fprintf(stderr, "tally-exporter: --listen: ADDR:PORT with an IPv4 address, "
                        "e.g. 127.0.0.1:9883\n");
        return -1;
    case 'H':
        usage(stdout);
        exit(0);
    case 'V':
        printf("tally-exporter %s\n", EXPORTER_VERSION);
        exit(0);
    default:
        usage(stderr);
        return -1;
    }
}

static int check_options(const struct options *o)
{
    if ((o->cert || o->key || o->insecure) && !o->cafile) {
        fprintf(stderr, "tally-exporter: --cert, --key and --insecure need --cafile\n");
        return -1;
    }
    if (!o->cert != !o->key) {
        fprintf(stderr, "tally-exporter: --cert and --key go together\n");
        return -1;
    }
    return 0;
}

static int parse_command_line(int argc, char **argv, struct options *o)
{
    static const struct option longs[] = {
        {"host", required_argument, NULL, 'h'},     {"port", required_argument, NULL, 'p'},
        {"username", required_argument, NULL, 'u'}, {"password", required_argument, NULL, 'P'},
        {"listen", required_argument, NULL, 'l'},   {"help", no_argument, NULL, 'H'},
        {"version", no_argument, NULL, 'V'},        {"cafile", required_argument, NULL, 'C'},
        {"cert", required_argument, NULL, 'E'},     {"key", required_argument, NULL, 'K'},
        {"insecure", no_argument, NULL, 'I'},       {NULL, 0, NULL, 0},
    };
    *o = (struct options){.host = "127.0.0.1", .port = 1883, .password = getenv("TALLY_PASSWORD")};
    parse_listen("127.0.0.1:9883", &o->listen);
    for (int c; (c = getopt_long(argc, argv, "h:p:u:P:l:", longs, NULL)) != -1;)
        if (apply_option(o, c, optarg) < 0)
            return -1;
    if (optind != argc) {
        fprintf(stderr, "tally-exporter: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    return check_options(o);
}

/* ==== Main ==== */

static struct mosquitto *mqtt_start(const struct options *o)
{
    struct mosquitto *m = mosquitto_new(NULL, true, NULL);
    if (!m)
        return NULL;
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_disconnect_callback_set(m, on_disconnect);
    mosquitto_message_callback_set(m, on_message);
    mosquitto_reconnect_delay_set(m, 1, 10, true);
    if (o->username)
        mosquitto_username_pw_set(m, o->username, o->password);
    if (o->cafile) {
        int rc = mosquitto_tls_set(m, o->cafile, NULL, o->cert, o->key, NULL);
        if (rc == MOSQ_ERR_SUCCESS)
            rc = mosquitto_tls_insecure_set(m, o->insecure);
        if (rc != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "tally-exporter: TLS: %s\n", mosquitto_strerror(rc));
            mosquitto_destroy(m);
            return NULL;
        }
    }
    /* A broker not up yet is fine: the loop thread keeps trying. */
    int rc = mosquitto_connect_async(m, o->host, o->port, KEEPALIVE_S);
    if (rc != MOSQ_ERR_SUCCESS)
        fprintf(stderr, "tally-exporter: %s:%d: %s; retrying\n", o->host, o->port,
                mosquitto_strerror(rc));
    if (mosquitto_loop_start(m) != MOSQ_ERR_SUCCESS) {
        mosquitto_destroy(m);
        return NULL;
    }
    return m;
}

int main(int argc, char **argv)
{
    struct options o;
    if (parse_command_line(argc, argv, &o) < 0)
        return EXIT_USAGE;
    /* Block the stop signals in every thread; main takes them with sigwait. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    struct MHD_Daemon *http =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                         on_request, NULL, MHD_OPTION_SOCK_ADDR, &o.listen, MHD_OPTION_END);
    if (!http) {
        char addr[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &o.listen.sin_addr, addr, sizeof(addr));
        fprintf(stderr, "tally-exporter: cannot listen on %s:%u\n", addr, ntohs(o.listen.sin_port));
        return EXIT_USAGE;
    }
    mosquitto_lib_init();
    struct mosquitto *m = mqtt_start(&o);
    if (!m) {
        fprintf(stderr, "tally-exporter: cannot start the MQTT client\n");
        MHD_stop_daemon(http);
        return 1;
    }
    int sig;
    sigwait(&stop, &sig);
    MHD_stop_daemon(http);
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, true);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    for (struct node_doc *n = g.nodes, *next; n; n = next) {
        next = n->hh.next;
        store(n->node, NULL);
    }
    return 0;
}
