/*
 * tally_stats.c - `tally stats` and `tally health`: every node's figures, from the JSON each
 * node publishes, retained, on $tally/stats/<node> at least every 5 seconds.
 *
 * Two judgements are made from those documents, the same for both commands (peers as of the
 * time the node wrote its document):
 *
 *   a peer is dead   when the node last heard it longer ago than the peer timeout: the
 *                    document's "peer_timeout_ms" if it carries one, else --peer-timeout
 *                    (default 15000 ms, the plugin's default); or when the node itself has
 *                    marked it not alive (it expires peers by its own peer_timeout_ms) and
 *                    has not heard it for 500 ms, the shortest timeout it accepts
 *   a node is behind when its latest document is older than 3 stats intervals (the
 *                    document's "stats_interval_ms", else 5000 ms, the contract's longest):
 *                    its loop is stuck, or it is gone and its retained document stays
 *
 * stats prints the table (a dead peer marked DEAD) and exits 1 when any peer is dead;
 * health prints "ok" and exits 0, or one line per problem and exits 1.
 */
#include <stdlib.h>
#include <string.h>

#include <uthash.h>

#include "tally.h"
#include "tally_cli.h"

#define STATS_TOPIC "$tally/stats/+"
#define STATS_ROOT "$tally/stats/"
#define STATS_INTERVAL_MS 5000.0 /* the contract: at least every 5 seconds */
#define STALE_INTERVALS 3.0
#define MIN_PEER_TIMEOUT_MS 500.0 /* the plugin's smallest peer_timeout_ms */

struct node_stats {
    char *node; /* owned; the hash key, from the topic */
    cJSON *json;
    char *text; /* the document as published; owned */
    UT_hash_handle hh;
};

struct stats_state {
    struct node_stats *nodes; /* uthash, keyed by node id */
    char **wanted;            /* health: the nodes named, borrowed; done when all are in */
    int nwanted;
};

/* ==== Collecting the documents ==== */

static void stats_on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                             const mosquitto_property *props)
{
    struct stats_state *st = ((struct client *)obj)->command_state;
    const char *node = msg->topic + strlen(STATS_ROOT);
    struct node_stats *ns;
    cJSON *json;
    (void)mosq;
    (void)props;

    if (msg->payloadlen == 0) {
        return;
    }
    json = cJSON_ParseWithLength(msg->payload, (size_t)msg->payloadlen);
    if (!cJSON_IsObject(json)) {
        fprintf(stderr, "tally: ignoring %s: not a JSON object\n", msg->topic);
        cJSON_Delete(json);
        return;
    }
    HASH_FIND_STR(st->nodes, node, ns);
    if (!ns) {
        ns = check_alloc(calloc(1, sizeof(*ns)));
        ns->node = format("%s", node);
        HASH_ADD_KEYPTR(hh, st->nodes, ns->node, strlen(ns->node), ns);
    }
    cJSON_Delete(ns->json);
    free(ns->text);
    ns->json = json;
    ns->text = format("%.*s", msg->payloadlen, (const char *)msg->payload);
}

static bool all_wanted_seen(const struct client *c)
{
    const struct stats_state *st = c->command_state;
    struct node_stats *ns;

    if (st->nwanted == 0) {
        return false; /* every node: wait the whole --timeout for them all */
    }
    for (int i = 0; i < st->nwanted; i++) {
        HASH_FIND_STR(st->nodes, st->wanted[i], ns);
        if (!ns) {
            return false;
        }
    }
    return true;
}

static int by_node(const struct node_stats *a, const struct node_stats *b)
{
    return strcmp(a->node, b->node);
}

/* Collects documents until the wanted nodes are in, or for the whole --timeout. */
static int stats_collect(const struct options *opt, struct stats_state *st)
{
    char *topics[] = {STATS_TOPIC};
    struct client c;
    int status = client_open(&c, opt, topics, 1, 0, stats_on_message, st);

    if (status == 0 &&
        client_wait(&c, now_monotonic() + opt->timeout_s, all_wanted_seen) == WAIT_LOST) {
        client_report_lost(&c);
    }
    client_close(&c);
    HASH_SORT(st->nodes, by_node);
    return status;
}

static void stats_free(struct stats_state *st)
{
    struct node_stats *ns, *tmp;

    HASH_ITER(hh, st->nodes, ns, tmp)
    {
        HASH_DEL(st->nodes, ns);
        cJSON_Delete(ns->json);
        free(ns->text);
        free(ns->node);
        free(ns);
    }
}

/* ==== Judging them ==== */

static double number_or(const cJSON *obj, const char *key, double fallback)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(item) && item->valuedouble > 0 ? item->valuedouble : fallback;
}

static double peer_timeout_ms(const cJSON *node, const struct options *opt)
{
    return number_or(node, "peer_timeout_ms", (double)opt->peer_timeout_ms);
}

/* How long ago the peer was last heard (negative: never, which is dead), and whether it is dead.
 * "alive": false alone is not enough: the plugin also says it of a peer it has heard from but
 * that has not announced its viewers yet (a node just started), so the peer must have been
 * silent for at least the shortest peer_timeout_ms the plugin accepts too. */
static bool peer_is_dead(const cJSON *peer, double timeout_ms, double as_of_ms, double *silent_ms)
{
    double heard = number_or(peer, "last_heard_ms", 0);
    bool not_alive = cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(peer, "alive"));

    if (heard <= 0) {
        *silent_ms = -1;
        return true;
    }
    /* Clocks of two machines may disagree: heard "in the future" is heard just now. */
    *silent_ms = as_of_ms > heard ? as_of_ms - heard : 0;
    return *silent_ms > timeout_ms || (not_alive && *silent_ms >= MIN_PEER_TIMEOUT_MS);
}

/* When the node wrote its document, or now when it does not say. Peers are judged as of
 * then: a node that stopped keeps an old view of its peers, and that is its own problem
 * (behind), not theirs. */
static double as_of_ms(const cJSON *node, double now_ms)
{
    return number_or(node, "time_ms", now_ms);
}

/* The age of the node's document, or -1 when it carries no time. */
static double stats_age_ms(const cJSON *node, double now_ms)
{
    double published = number_or(node, "time_ms", 0);
    return published > 0 ? now_ms - published : -1;
}

static bool node_is_behind(const cJSON *node, double now_ms, double *age_ms)
{
    double interval = number_or(node, "stats_interval_ms", STATS_INTERVAL_MS);

    *age_ms = stats_age_ms(node, now_ms);
    return *age_ms > STALE_INTERVALS * interval;
}

/* ==== stats ==== */

/* A JSON number as an integer cell, or "-" when the node did not report it. */
static char *number_cell(const cJSON *obj, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(item) ? format("%.0f", item->valuedouble) : format("-");
}

/* Sum of the rejected{reason: n} counts, or "-" when absent. */
static char *rejected_cell(const cJSON *obj)
{
    const cJSON *rejected = cJSON_GetObjectItemCaseSensitive(obj, "rejected");
    const cJSON *reason;
    double sum = 0;

    if (!cJSON_IsObject(rejected)) {
        return number_cell(obj, "rejected");
    }
    cJSON_ArrayForEach(reason, rejected)
    {
        sum += cJSON_IsNumber(reason) ? reason->valuedouble : 0;
    }
    return format("%.0f", sum);
}

/* "n2 0.4s ago, n3 DEAD 36s ago": each peer, how long before the document it was last heard,
 * and whether it is dead. Counts the dead ones into *dead. */
static char *peers_cell(const cJSON *obj, const struct options *opt, double now_ms, int *dead)
{
    const cJSON *peers = cJSON_GetObjectItemCaseSensitive(obj, "peers");
    const cJSON *peer;
    char *text = NULL;
    size_t len = 0;
    FILE *out;

    if (!cJSON_IsObject(peers) || !peers->child) {
        return format("-");
    }
    out = check_alloc(open_memstream(&text, &len));
    cJSON_ArrayForEach(peer, peers)
    {
        double silent;
        bool is_dead =
            peer_is_dead(peer, peer_timeout_ms(obj, opt), as_of_ms(obj, now_ms), &silent);
        char *age = silent >= 0 ? format_age(silent) : NULL;

        *dead += is_dead;
        fprintf(out, "%s%s %s", peer == peers->child ? "" : ", ", peer->string,
                is_dead ? "DEAD " : "");
        fprintf(out, age ? "%s ago" : "never heard", age);
        free(age);
    }
    fclose(out);
    return check_alloc(text);
}

static char *repl_cell(const cJSON *obj, const char *key)
{
    return number_cell(cJSON_GetObjectItemCaseSensitive(obj, "repl"), key);
}

/* Prints the table; returns how many dead peers it shows. */
static int stats_print_table(struct node_stats *nodes, const struct options *opt)
{
    static const char *const headers[] = {"NODE",     "COUNTERS",          "DEVICES",    "VIEWERS",
                                          "APPLIED",  "REJECTED",          "DUPLICATES", "REPL IN",
                                          "REPL OUT", "PEERS (LAST HEARD)"};
    enum { NCOLS = sizeof(headers) / sizeof(headers[0]) };
    size_t nrows = HASH_COUNT(nodes), r = 0;
    char **cells = check_alloc(calloc(nrows * NCOLS, sizeof(*cells)));
    double now_ms = now_epoch_ms();
    int dead = 0;

    for (struct node_stats *ns = nodes; ns; ns = ns->hh.next, r++) {
        char **row = cells + r * NCOLS;
        row[0] = format("%s", ns->node);
        row[1] = number_cell(ns->json, "counters");
        row[2] = number_cell(ns->json, "devices");
        row[3] = number_cell(ns->json, "viewers");
        row[4] = number_cell(ns->json, "applied");
        row[5] = rejected_cell(ns->json);
        row[6] = number_cell(ns->json, "duplicates");
        row[7] = repl_cell(ns->json, "msgs_in");
        row[8] = repl_cell(ns->json, "msgs_out");
        row[9] = peers_cell(ns->json, opt, now_ms, &dead);
    }
    table_print(stdout, NCOLS, headers, cells, nrows);
    cells_free(cells, nrows * NCOLS);
    return dead;
}

/* Counts dead peers without printing a table (--json). */
static int count_dead_peers(struct node_stats *nodes, const struct options *opt)
{
    double now_ms = now_epoch_ms();
    int dead = 0;

    for (struct node_stats *ns = nodes; ns; ns = ns->hh.next) {
        free(peers_cell(ns->json, opt, now_ms, &dead));
    }
    return dead;
}

int cmd_stats(const struct options *opt)
{
    struct stats_state st = {0};
    int status = stats_collect(opt, &st);
    int dead;

    if (status == 0 && !st.nodes) {
        fprintf(stderr,
                "tally: no node published stats on %s within %g s (is the tally plugin "
                "loaded?)\n",
                STATS_TOPIC, opt->timeout_s);
        status = EXIT_FAILED;
    }
    if (status == 0 && opt->json) {
        for (struct node_stats *ns = st.nodes; ns; ns = ns->hh.next) {
            json_print_text(ns->text, strlen(ns->text));
        }
    }
    if (status == 0) {
        dead = opt->json ? count_dead_peers(st.nodes, opt) : stats_print_table(st.nodes, opt);
        if (dead > 0) {
            fprintf(stderr, "tally: %d peer%s silent past the peer timeout (DEAD)\n", dead,
                    dead == 1 ? " is" : "s are");
            status = EXIT_FAILED;
        }
    }
    stats_free(&st);
    return status;
}

/* ==== health ==== */

/* One problem: a line for people and an object for --json, collected in `problems`. */
static void problem(cJSON *problems, const char *node, const char *kind, const char *text)
{
    cJSON *p = check_alloc(cJSON_CreateObject());

    check_alloc(cJSON_AddStringToObject(p, "node", node));
    check_alloc(cJSON_AddStringToObject(p, "problem", kind));
    check_alloc(cJSON_AddStringToObject(p, "detail", text));
    cJSON_AddItemToArray(problems, p);
}

static void check_peers(cJSON *problems, const struct node_stats *ns, const struct options *opt,
                        double now_ms)
{
    const cJSON *peers = cJSON_GetObjectItemCaseSensitive(ns->json, "peers");
    const cJSON *peer;
    double timeout = peer_timeout_ms(ns->json, opt);

    if (!cJSON_IsObject(peers)) {
        return;
    }
    cJSON_ArrayForEach(peer, peers)
    {
        double silent;
        if (peer_is_dead(peer, timeout, as_of_ms(ns->json, now_ms), &silent)) {
            char *age = silent >= 0 ? format_age(silent) : format("ever (never heard)");
            char *text = format("peer %s silent for %s, past the peer timeout of %.0f ms",
                                peer->string, age, timeout);
            problem(problems, ns->node, "peer_dead", text);
            free(text);
            free(age);
        }
    }
}

/* Each node's problems: behind (then its view of its peers is old too), or dead peers. */
static void check_node(cJSON *problems, const struct node_stats *ns, const struct options *opt,
                       double now_ms)
{
    double age;

    if (node_is_behind(ns->json, now_ms, &age)) {
        char *when = format_age(age);
        char *text = format("behind: its latest stats are %s old", when);
        problem(problems, ns->node, "behind", text);
        free(text);
        free(when);
        return;
    }
    check_peers(problems, ns, opt, now_ms);
}

static cJSON *health_problems(const struct stats_state *st, const struct options *opt)
{
    cJSON *problems = check_alloc(cJSON_CreateArray());
    double now_ms = now_epoch_ms();
    struct node_stats *ns;

    for (int i = 0; i < st->nwanted; i++) {
        HASH_FIND_STR(st->nodes, st->wanted[i], ns);
        if (!ns) {
            char *text =
                format("no stats within %g s (is the tally plugin loaded?)", opt->timeout_s);
            problem(problems, st->wanted[i], "no_stats", text);
            free(text);
        }
    }
    if (st->nwanted == 0 && !st->nodes) {
        problem(problems, "*", "no_stats", "no node published stats");
    }
    for (ns = st->nodes; ns; ns = ns->hh.next) {
        bool wanted = st->nwanted == 0;
        for (int i = 0; i < st->nwanted && !wanted; i++) {
            wanted = strcmp(st->wanted[i], ns->node) == 0;
        }
        if (wanted) {
            check_node(problems, ns, opt, now_ms);
        }
    }
    return problems;
}

static void health_print(cJSON *problems, bool json)
{
    const cJSON *p;

    if (json) {
        cJSON *obj = check_alloc(cJSON_CreateObject());
        check_alloc(cJSON_AddStringToObject(obj, "status", problems->child ? "unhealthy" : "ok"));
        cJSON_AddItemReferenceToObject(obj, "problems", problems);
        json_print_line(obj);
        return;
    }
    if (!problems->child) {
        puts("ok");
    }
    cJSON_ArrayForEach(p, problems)
    {
        printf("%s: %s\n", cJSON_GetObjectItemCaseSensitive(p, "node")->valuestring,
               cJSON_GetObjectItemCaseSensitive(p, "detail")->valuestring);
    }
}

int cmd_health(const struct options *opt)
{
    struct stats_state st = {.wanted = opt->args, .nwanted = opt->nargs};
    cJSON *problems;
    int status;

    for (int i = 0; i < opt->nargs; i++) {
        if (node_id_check(opt->args[i], strlen(opt->args[i])) != TALLY_OK) {
            fprintf(stderr, "tally: bad node id \"");
            fput_escaped(stderr, opt->args[i]);
            fprintf(stderr, "\": 1 to %d of A-Z a-z 0-9 _ . -\n", TALLY_NODE_ID_MAX);
            return EXIT_USAGE;
        }
    }
    if ((status = stats_collect(opt, &st)) != 0) {
        return status;
    }
    problems = health_problems(&st, opt);
    health_print(problems, opt->json);
    status = problems->child ? EXIT_FAILED : EXIT_SUCCESS;
    cJSON_Delete(problems);
    stats_free(&st);
    return status;
}
