/*
 * plugin.c - the only file of tally that speaks to Mosquitto.
 *
 * Events in, through the plugin API v5:
 *   MESSAGE     increments and reports from clients; replication from peers
 *   ACL_CHECK   refuses writes to the plugin's own topics; watches exact
 *               subscriptions to presence/<page> (viewers) and every
 *               subscription that watches a counter (interest.c)
 *   DISCONNECT  ends a client's views and watches
 *   TICK        the clock: publish totals (schedule.c), replicate,
 *               reconcile, stats
 *
 * Everything else (parsing, the CRDT, the tables, the wire format) lives in
 * pure C files that know nothing of Mosquitto. See README.md for the topics
 * and options, and wire.c for what nodes say to each other.
 */
#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "persist.h"
#include "tally.h"

#define CONTROL_TOPIC "$CONTROL/tally/v1"
/* The only symbols the .so exports (everything else is built hidden). */
#define TALLY_EXPORT __attribute__((visibility("default")))

/* ==== Options ==== */

struct options {
    char node_id[TALLY_NODE_ID_MAX + 1];
    char prefix[128];
    char presence_prefix[128];
    char bridge_clientids[1024];
    char bridge_usernames[1024];
    char protect_clientids[1024];
    char admin_usernames[1024];
    char reader_usernames[1024];
    char viewer_usernames[1024];
    char admin_clientids[1024];
    char acl[16];
    char role[8];
    char group[GROUP_NAME_MAX + 1];
    char region[GROUP_NAME_MAX + 1];
    char hub[8];
    char state_dir[512];
    long long publish_interval_ms;
    long long sums_interval_ms;
    long long sums_budget;
    long long max_counters;
    long long max_devices;
    long long max_viewers;
    long long dedup_window;
    long long sync_interval_ms;
    long long peer_timeout_ms;
    long long member_timeout_ms;
    long long stats_interval_ms;
    long long max_message_bytes;
    long long publish_qos;
    long long fsync_interval_ms;
    long long snapshot_interval_ms;
    long long log_rate;
    long long unwatched_publish_budget;
    long long presence_delivery_budget;
};

enum opt_kind { OPT_INT, OPT_STR };

struct opt_spec {
    const char *key;
    enum opt_kind kind;
    size_t offset;
    long long min, max; /* OPT_INT range; OPT_STR: max length */
    const char *help;
};

#define OPT_I(k, lo, hi, h)                                                                        \
    {                                                                                              \
#k, OPT_INT, offsetof(struct options, k), lo, hi, h                                        \
    }
#define OPT_S(k, h)                                                                                \
    {                                                                                              \
#k, OPT_STR, offsetof(struct options, k), 0, sizeof(((struct options *)0)->k) - 1, h       \
    }

static const struct opt_spec opt_specs[] = {
    OPT_S(node_id, "[A-Za-z0-9_.-], 1 to 64 bytes, unique in the cluster"),
    OPT_S(prefix, "a topic level without / + # or a leading $"),
    OPT_S(presence_prefix, "a topic level without / + # or a leading $"),
    OPT_S(bridge_clientids, "comma-separated client ids or shell patterns (b-to-a,*-to-*)"),
    OPT_S(bridge_usernames, "comma-separated usernames or shell patterns"),
    OPT_S(protect_clientids, "comma-separated client ids or shell patterns (*-to-*) that only a "
                             "login with a bridge_usernames username may take"),
    OPT_S(admin_usernames, "comma-separated usernames or shell patterns allowed to use "
                           "$CONTROL/tally/v1"),
    OPT_S(reader_usernames, "comma-separated usernames or shell patterns allowed the read-only "
                            "commands of $CONTROL/tally/v1 ('*': everyone, anonymous included)"),
    OPT_S(viewer_usernames, "comma-separated usernames or shell patterns allowed to view pages "
                            "(unset: everyone)"),
    OPT_S(admin_clientids, "comma-separated client ids or shell patterns allowed to use "
                           "$CONTROL/tally/v1"),
    OPT_S(acl, "'allow' (tally allows what it does not refuse) or 'defer' (leave it to "
               "acl_file or other plugins)"),
    OPT_S(role, "'node' (a member of the cluster, and a hub to any edge bridged to it) or "
                "'edge' (keeps only its clients' counters and pages; see README, Tiers)"),
    OPT_S(group, "[A-Za-z0-9_.-], 1 to 63 bytes, not starting with '.': the group of hubs this "
                 "node belongs to, whose edges fail over within it (README, Groups of hubs); "
                 "unset: no group"),
    OPT_S(region, "[A-Za-z0-9_.-], 1 to 62 bytes, not starting with '.': the region (a group of "
                  "groups) this node's group belongs to, then up to two regions each above the "
                  "last, '/' between them, 63 bytes in all (README, Regions); unset: none"),
    OPT_S(hub, "'light' (holds its group's slots and one a level for the rest of the tree, "
               "never speaks for its group), 'full' (a hub of a group with light hubs that "
               "is not one) or 'split' (every hub of the group: each holds its group's slots, "
               "one a level for the rest of the tree, and the other units of the levels it is "
               "given); unset: the group has no light hubs (README, Light hubs, Split hubs)"),
    OPT_S(state_dir, "a directory the broker can write"),
    OPT_I(publish_interval_ms, 1, 60000, "an integer from 1 to 60000"),
    OPT_I(sums_interval_ms, 0, 1000,
          "an integer from 0 (publish_interval_ms) to 1000: how often a group's or region's "
          "speaker sends its sums to the other groups (README, Groups of hubs)"),
    OPT_I(sums_budget, 1, 1000000,
          "an integer from 1 to 1000000: counters' sums a second a hub takes of each level, "
          "the other groups' and the other regions' (README, Groups of hubs)"),
    OPT_I(max_counters, 1, 1000000000, "an integer from 1 to 1000000000"),
    OPT_I(max_devices, 1, 100000000, "an integer from 1 to 100000000"),
    OPT_I(max_viewers, 1, 100000000, "an integer from 1 to 100000000"),
    OPT_I(dedup_window, 1, 100000000, "an integer from 1 to 100000000"),
    OPT_I(sync_interval_ms, 100, 3600000, "an integer from 100 to 3600000"),
    OPT_I(peer_timeout_ms, 500, 3600000, "an integer from 500 to 3600000"),
    OPT_I(member_timeout_ms, 1000, 604800000,
          "an integer from 1000 to 604800000 (how long a silent node holds back the collection "
          "of folded restarts)"),
    OPT_I(stats_interval_ms, 100, 5000, "an integer from 100 to 5000"),
    OPT_I(max_message_bytes, 4096, 100000000, "an integer from 4096 to 100000000"),
    OPT_I(publish_qos, 0, 2, "0, 1 or 2"),
    OPT_I(fsync_interval_ms, 0, 60000, "an integer from 0 (fsync every change) to 60000"),
    OPT_I(snapshot_interval_ms, 1000, 86400000, "an integer from 1000 to 86400000"),
    OPT_I(log_rate, 1, 100000, "an integer from 1 to 100000 (rejection log lines a second)"),
    OPT_I(unwatched_publish_budget, 1, 1000000,
          "an integer from 1 to 1000000 (publishes a second for totals nobody watches)"),
    OPT_I(presence_delivery_budget, 1, 1000000000,
          "an integer from 1 to 1000000000 (deliveries of one page's count a second)"),
};

static void options_defaults(struct options *o)
{
    memset(o, 0, sizeof(*o));
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    size_t j = 0;
    for (size_t i = 0; host[i] && j < TALLY_NODE_ID_MAX; i++)
        if (node_id_check(&host[i], 1) == TALLY_OK)
            o->node_id[j++] = host[i];
    if (j == 0)
        strcpy(o->node_id, "tally");
    strcpy(o->prefix, "counters");
    strcpy(o->presence_prefix, "presence");
    strcpy(o->acl, "allow");
    strcpy(o->role, "node");
    strcpy(o->reader_usernames, "*");
    o->publish_interval_ms = 100;
    o->max_counters = 1000000;
    o->max_devices = 100000;
    o->max_viewers = 1000000;
    o->dedup_window = 100000;
    o->sync_interval_ms = 5000;
    o->peer_timeout_ms = 15000;
    o->member_timeout_ms = 3600000;
    o->stats_interval_ms = 5000;
    o->max_message_bytes = 65536;
    o->publish_qos = 1;
    o->fsync_interval_ms = 1000;
    o->snapshot_interval_ms = 60000;
    o->log_rate = 20;
    o->unwatched_publish_budget = 2000;
    o->sums_budget = 0; /* unset: group_sums_budget's default, by the levels */
    o->presence_delivery_budget = 1000;
}

static int option_set(struct options *o, const char *key, const char *value)
{
    for (size_t i = 0; i < sizeof(opt_specs) / sizeof(opt_specs[0]); i++) {
        const struct opt_spec *s = &opt_specs[i];
        if (strcasecmp(key, s->key) != 0)
            continue;
        char *field = (char *)o + s->offset;
        if (s->kind == OPT_STR) {
            if (strlen(value) > (size_t)s->max)
                goto bad;
            strcpy(field, value);
            return MOSQ_ERR_SUCCESS;
        }
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || v < s->min || v > s->max)
            goto bad;
        *(long long *)field = v;
        return MOSQ_ERR_SUCCESS;
    bad:
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: bad value '%s' for plugin_opt_%s: %s", value,
                             s->key, s->help);
        return MOSQ_ERR_INVAL;
    }
    mosquitto_log_printf(MOSQ_LOG_ERR,
                         "tally: unknown option plugin_opt_%s; known options are:", key);
    for (size_t i = 0; i < sizeof(opt_specs) / sizeof(opt_specs[0]); i++)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally:   plugin_opt_%s (%s)", opt_specs[i].key,
                             opt_specs[i].help);
    return MOSQ_ERR_INVAL;
}

static const char *opt_help(const char *key)
{
    for (size_t i = 0; i < sizeof(opt_specs) / sizeof(opt_specs[0]); i++)
        if (strcmp(opt_specs[i].key, key) == 0)
            return opt_specs[i].help;
    return "";
}

static int options_check(const struct options *o)
{
    const char *bad = NULL, *help = NULL;
    char names[TALLY_LEVELS - 1][GROUP_NAME_MAX + 1];
    if (node_id_check(o->node_id, strlen(o->node_id)) != TALLY_OK)
        bad = "node_id", help = opt_help(bad);
    else if (o->node_id[0] == GROUP_MARK)
        bad = "node_id", help = "not starting with '.', which names a group's replica";
    else if (o->group[0] && group_name_check(o->group, strlen(o->group)) != TALLY_OK)
        bad = "group", help = opt_help(bad);
    else if (o->group[0] && strcmp(o->role, "edge") == 0)
        bad = "group", help = "unset at an edge, which is in the group of its hubs";
    else if (region_path(o->region, strlen(o->region), names) < 0)
        bad = "region", help = opt_help(bad);
    else if (o->region[0] && !o->group[0])
        bad = "region", help = "set with group: a region is a group of groups of hubs";
    else if (o->hub[0] && strcmp(o->hub, "light") != 0 && strcmp(o->hub, "full") != 0 &&
             strcmp(o->hub, "split") != 0)
        bad = "hub", help = opt_help(bad);
    else if (o->hub[0] && !o->group[0])
        bad = "hub", help = "set with group: light and split hubs are hubs of a group";
    else if (name_check(o->prefix, strlen(o->prefix)) != TALLY_OK)
        bad = "prefix", help = opt_help(bad);
    else if (name_check(o->presence_prefix, strlen(o->presence_prefix)) != TALLY_OK ||
             strcmp(o->prefix, o->presence_prefix) == 0)
        bad = "presence_prefix", help = "a topic level, different from prefix";
    else if (strcmp(o->acl, "allow") != 0 && strcmp(o->acl, "defer") != 0)
        bad = "acl", help = opt_help(bad);
    else if (strcmp(o->role, "node") != 0 && strcmp(o->role, "edge") != 0)
        bad = "role", help = opt_help(bad);
    else if (o->protect_clientids[0] && !o->bridge_usernames[0])
        bad = "protect_clientids", help = "needs plugin_opt_bridge_usernames: only a login with "
                                          "one of those usernames may take the ids it names";
    if (!bad)
        return MOSQ_ERR_SUCCESS;
    mosquitto_log_printf(MOSQ_LOG_ERR, "tally: bad value for plugin_opt_%s: %s", bad, help);
    return MOSQ_ERR_INVAL;
}

/* ==== State ==== */

/* A control request waiting for the answer of the node that runs it (see
 * on_control): an edge's, of its hub; a light hub's reset, of its group's
 * speaker. */
#define FORWARD_MAX 64
#define FORWARD_TIMEOUT_MS 5000

struct forwarded {
    uint64_t id, sent_ms; /* id 0: a free entry */
    char *client;         /* who asked (owned): a client of ours, or an edge */
    /* an edge's request (at a light hub): its id, and the connection its UP
     * came over, which the answer goes back down */
    uint64_t edge_id;
    char *conn;
    struct wire_buf request, answer;
    uint32_t parts; /* of the answer, taken so far */
};

static struct tally {
    mosquitto_plugin_id_t *id;
    struct options opt;
    struct tally_table table;
    struct tally_dedup dedup;
    struct tally_presence presence;
    struct tally_interest interest;
    struct tally_refresh refresh;
    struct persist *persist;
    struct wire_sync_writer writer;
    struct repl repl;
    struct tally_group group; /* plugin_opt_group (group.c) */
    /* plugin_opt_region: the same one level up (region[0]), and for each
     * region above it (region[k - 2]: our unit of level k) */
    struct tally_group region[TALLY_LEVELS - 1];
    struct tally_group *units[TALLY_LEVELS]; /* our unit of level k at [k - 1] */
    struct scope_name ours;                  /* their names (scope.c) */
    /* our units' viewer sums, sent while we speak for them (scope.c); NULL
     * where we are in none */
    struct scope_stream scope[TALLY_LEVELS];
    struct scope_stream *scopes[TALLY_LEVELS];
    uint64_t last_gsum_ms, last_sums_ms, group_log_ms, edge_log_ms, levels_log_ms;
    uint64_t rest_log_ms;              /* a light hub without rest slots said so (rest_check) */
    struct fold_gc fold;               /* collecting folded restarts (fold.c) */
    bool told_removed;                 /* logged that removeNode named this node */
    bool edge;                         /* role edge: tier.c's edge side instead of repl.c */
    struct tier_edge tier_edge;        /* (role edge) */
    struct tier_hub tier_hub;          /* (role node) the edges bridged to us */
    struct forwarded fwd[FORWARD_MAX]; /* control requests asked of the hub (an edge's), or of
                                          the group's speaker (a light hub's resets) */
    uint64_t fwd_seq;
    struct wire_buf buf;
    struct tally_stats st;
    uint64_t incarnation;
    uint32_t self; /* our replica index */
    uint64_t start_ms, last_flush_ms, last_repl_ms, last_digest_ms, last_request_ms;
    uint64_t last_announce_ms, last_stats_ms;
    uint64_t presence_seq, stats_seq;
    uint64_t log_window_ms, log_count, last_disk_log_ms;
    uint64_t drop_log_ms; /* when sendable last logged a message dropped */
    size_t prefix_len, presence_prefix_len;
    bool acl_defer;
    bool over_counters, over_devices; /* holding more than a limit: said once in the log */
    bool states_rescan;               /* the filters watching every state came or went */
    uint64_t last_rescan_ms;
    char topic[512];
} g;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The next sequence number of a presence announcement: the wall clock in
 * microseconds, or one more than the last if that is not later. Peers take
 * a message only if its seq is above the last they saw from this (node,
 * incarnation); a node restarted with its state keeps its incarnation, and a
 * counter starting again at 1 would be ignored for as long as the node had
 * been up. The clock needs no change to the wire and nothing on disk (stats
 * are ordered by their time_ms the same way, see on_stats); a clock set back
 * by more than the restart took delays the node's announcements by that
 * much (README, known limits). */
static uint64_t next_seq(uint64_t *seq)
{
    uint64_t now = wall_ms() * 1000;
    *seq = now > *seq ? now : *seq + 1;
    return *seq;
}

/* ==== Logging of refused input, rate-limited ==== */

/* At most log_rate refusal lines a second: a flood of bad input cannot fill
 * the log, and what was left out is counted and said once. False when this
 * one is over the rate. */
static bool refusal_loggable(void)
{
    uint64_t now = mono_ms();
    if (now - g.log_window_ms >= 1000) {
        if (g.st.log_suppressed)
            mosquitto_log_printf(MOSQ_LOG_WARNING,
                                 "tally: %" PRIu64 " more refusals not logged in the last second",
                                 g.st.log_suppressed);
        g.log_window_ms = now;
        g.log_count = 0;
        g.st.log_suppressed = 0;
    }
    if (g.log_count++ < (uint64_t)g.opt.log_rate)
        return true;
    g.st.log_suppressed++;
    return false;
}

static void refuse_log(const char *client, const char *action, const char *topic, int reason)
{
    if (refusal_loggable())
        mosquitto_log_printf(MOSQ_LOG_WARNING, "tally: refused %s from client '%s' to '%s': %s",
                             action, client ? client : "?", topic, tally_strerror(reason));
}

static int refuse(struct mosquitto *client, const char *topic, int reason)
{
    if (reason < TALLY_E__COUNT)
        g.st.rejected[reason]++;
    refuse_log(mosquitto_client_id(client), "publish", topic, reason);
    return MOSQ_ERR_ACL_DENIED;
}

/* ==== Who may write $tally/ ==== */

/* True if s matches one of the comma-separated shell patterns in list
 * ("b-to-a,*-to-*"), matched with fnmatch(3). */
static bool list_match(const char *list, const char *s)
{
    char pattern[sizeof(g.opt.bridge_clientids)];
    if (!s || !*list)
        return false;
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        memcpy(pattern, p, n);
        pattern[n] = '\0';
        if (n > 0 && fnmatch(pattern, s, 0) == 0)
            return true;
        p += n + (p[n] == ',');
    }
    return false;
}

static bool is_admin(const struct mosquitto *client)
{
    return list_match(g.opt.admin_clientids, mosquitto_client_id(client)) ||
           list_match(g.opt.admin_usernames, mosquitto_client_username(client));
}

/* Anonymous clients match as "", so that the default "*" lets them read. */
static bool is_reader(const struct mosquitto *client)
{
    const char *username = mosquitto_client_username(client);
    return list_match(g.opt.reader_usernames, username ? username : "");
}

/* Admins may send any request to $CONTROL/tally/v1; readers only requests
 * whose every command reads (the ACL check sees the payload). */
static bool may_control(const struct mosquitto_evt_acl_check *ev)
{
    return is_admin(ev->client) ||
           (is_reader(ev->client) && control_read_only(ev->payload, ev->payloadlen));
}

static bool is_bridge(const struct mosquitto *client)
{
    return list_match(g.opt.bridge_clientids, mosquitto_client_id(client)) ||
           list_match(g.opt.bridge_usernames, mosquitto_client_username(client));
}

/* A bridge's client id is also its session: a client connecting with it
 * takes the session over and cuts the bridge. So a login with a protected id
 * (protect_clientids) is refused unless it gives a bridge username, and every
 * other login is deferred. Mosquitto 2.0.11 asks this callback before
 * password_file's own (registered after every plugin) and stops at the first
 * answer that is not a deferral; a deferral leaves the login to password_file
 * or to other plugins exactly as if tally had not been asked, the bridge's
 * own password check included. A refusal here comes before Mosquitto looks
 * for the session the id names, so the bridge keeps it. Registered only where
 * protect_clientids is set: with no password_file and no other plugin to
 * decide, a deferral refuses every login that gives a username. */
static int on_basic_auth(int event, void *event_data, void *userdata)
{
    (void)event;
    (void)userdata;
    const struct mosquitto_evt_basic_auth *ev = event_data;
    const char *id = mosquitto_client_id(ev->client);
    if (!list_match(g.opt.protect_clientids, id) ||
        list_match(g.opt.bridge_usernames, ev->username))
        return MOSQ_ERR_PLUGIN_DEFER;
    g.st.logins_refused++;
    if (refusal_loggable())
        mosquitto_log_printf(MOSQ_LOG_WARNING,
                             "tally: refused login of client '%s' (username '%s'): "
                             "protect_clientids keeps that id for bridge_usernames",
                             id, ev->username ? ev->username : "");
    return MOSQ_ERR_AUTH;
}

/* ==== Topics ==== */

enum topic_kind { T_OTHER, T_INC, T_REPORT, T_TOTAL, T_STATE, T_PRESENCE, T_TALLY };

struct topic {
    enum topic_kind kind;
    const char *name; /* the <name> level, not NUL-terminated */
    size_t len;
};

static bool has_prefix(const char *topic, const char *prefix, size_t plen)
{
    return strncmp(topic, prefix, plen) == 0 && topic[plen] == '/';
}

static struct topic topic_parse(const char *topic)
{
    struct topic t = {T_OTHER, NULL, 0};
    if (strncmp(topic, "$tally/", 7) == 0) {
        t.kind = T_TALLY;
        return t;
    }
    if (has_prefix(topic, g.opt.presence_prefix, g.presence_prefix_len)) {
        t.name = topic + g.presence_prefix_len + 1;
        t.len = strlen(t.name);
        t.kind = T_PRESENCE;
        return t;
    }
    if (!has_prefix(topic, g.opt.prefix, g.prefix_len))
        return t;
    t.name = topic + g.prefix_len + 1;
    const char *slash = strrchr(t.name, '/');
    if (!slash) {
        t.len = strlen(t.name);
        t.kind = T_TOTAL;
        return t;
    }
    t.len = (size_t)(slash - t.name);
    if (strcmp(slash, "/inc") == 0)
        t.kind = T_INC;
    else if (strcmp(slash, "/report") == 0)
        t.kind = T_REPORT;
    else if (strcmp(slash, "/state") == 0)
        t.kind = T_STATE;
    return t;
}

/* ==== Increments and reports ==== */

/* The change could not be written to state_dir (disk full, I/O error): it is
 * not applied, and the client is not acknowledged. Mosquitto drops a client
 * whose publish a plugin fails with an error other than ACL_DENIED, so it
 * reconnects and retries, whatever its protocol version. */
static int not_written(struct mosquitto *client, const char *topic)
{
    g.st.rejected[TALLY_E_DISK]++;
    uint64_t now = mono_ms();
    if (now - g.last_disk_log_ms >= 1000) {
        mosquitto_log_printf(MOSQ_LOG_ERR,
                             "tally: cannot write %s/state.log (%s): publish from '%s' to '%s' "
                             "not acknowledged",
                             g.opt.state_dir, strerror(errno), mosquitto_client_id(client), topic);
        g.last_disk_log_ms = now;
    }
    return MOSQ_ERR_UNKNOWN;
}

/* A 0 increment creates a counter, a deleted one too: a reset of it, which
 * takes nothing (no slot is above its base) and only outranks the delete, so
 * it is listed again at 0 on every node. */
static void recreate(struct tally_counter *c)
{
    if (table_reset(&g.table, c, false) != TALLY_OK ||
        (g.persist && persist_base(g.persist, &g.table, c) != TALLY_OK))
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot recreate deleted counter %s", c->name);
}

/* Each of the two returns TALLY_OK with what happened in *result, or the
 * reason the input is refused (TALLY_E_DISK: it could not be logged). */
static int on_increment(struct mosquitto_evt_message *ev, struct topic t, enum tally_result *result)
{
    struct tally_inc inc;
    struct tally_counter *c;
    struct tally_slot next;
    int rc = name_check(t.name, t.len);
    if (rc == TALLY_OK)
        rc = parse_increment(ev->payload, ev->payloadlen, &inc);
    if (rc != TALLY_OK)
        return rc;
    struct tally_key key;
    if (inc.id[0]) {
        key = dedup_key(t.name, t.len, inc.id, strlen(inc.id));
        if (dedup_contains(&g.dedup, key)) {
            g.st.duplicates++;
            *result = RESULT_DUPLICATE;
            return TALLY_OK;
        }
    }
    rc = table_get(&g.table, t.name, t.len, TABLE_LOCAL, &c);
    if (rc != TALLY_OK)
        return rc;
    bool creates = c->nslots == 0 && counter_ndevs(c) == 0; /* a 0 increment creates it too */
    rc = counter_add_preview(c, g.self, inc.delta, &next);
    if (rc != TALLY_OK) {
        table_drop_if_empty(&g.table, c);
        return rc;
    }
    /* On disk before it is applied, and so before the PUBACK. */
    if (g.persist && (inc.delta != 0 || creates) &&
        persist_slot(g.persist, &g.table, c, &next, inc.id[0] ? &key : NULL) != TALLY_OK) {
        table_drop_if_empty(&g.table, c);
        return TALLY_E_DISK;
    }
    bool changed;
    if (table_add(&g.table, c, g.self, inc.delta, &changed) != TALLY_OK)
        return TALLY_E_NOMEM;
    if (g.edge && tier_edge_wrote(&g.tier_edge, t.name, t.len) != TALLY_OK)
        return TALLY_E_NOMEM;
    if (inc.delta == 0 && table_hidden(&g.table, c))
        recreate(c);
    if (inc.id[0])
        dedup_insert(&g.dedup, key);
    g.st.applied++;
    *result = RESULT_APPLIED;
    return TALLY_OK;
}

static int on_report(struct mosquitto_evt_message *ev, struct topic t, enum tally_result *result)
{
    struct tally_report rep = {0};
    struct tally_counter *c = NULL;
    uint32_t dev;
    int rc = name_check(t.name, t.len);
    if (rc == TALLY_OK)
        rc = parse_report(ev->payload, ev->payloadlen, &rep);
    const char *device = rep.device[0] ? rep.device : mosquitto_client_id(ev->client);
    if (rc == TALLY_OK && (!device || device_id_check(device, strlen(device)) != TALLY_OK))
        rc = TALLY_E_DEVICE;
    /* A client that connected without an id gets "auto-<uuid>" from the
     * broker, a new one each connection: its running total would count again
     * every time. A plain report needs an id the client chose. */
    if (rc == TALLY_OK && !rep.device[0] && strncmp(device, "auto-", 5) == 0)
        rc = TALLY_E_DEVICE_ASSIGNED;
    if (rc == TALLY_OK)
        rc = table_get(&g.table, t.name, t.len, TABLE_LOCAL, &c);
    if (rc == TALLY_OK)
        rc = table_device(&g.table, device, strlen(device), DEVICE_LOCAL, &dev);
    bool raises = false;
    if (rc == TALLY_OK)
        rc = counter_report_check(c, dev, rep.total, &raises);
    if (rc != TALLY_OK) {
        if (c)
            table_drop_if_empty(&g.table, c);
        return rc;
    }
    g.st.reports++;
    *result = raises ? RESULT_APPLIED : RESULT_UNCHANGED;
    if (!raises) {
        g.st.reports_stale++;
        return TALLY_OK;
    }
    struct tally_dev next = {.device = dev, .total = rep.total};
    if (g.persist && persist_device(g.persist, &g.table, c, &next) != TALLY_OK) {
        table_drop_if_empty(&g.table, c);
        return TALLY_E_DISK;
    }
    if (g.edge && tier_edge_wrote(&g.tier_edge, t.name, t.len) != TALLY_OK)
        return TALLY_E_NOMEM;
    if (table_merge_device(&g.table, c, dev, rep.total, true, &raises) != TALLY_OK)
        return TALLY_E_NOMEM;
    return TALLY_OK;
}

/* ==== Answers on the MQTT v5 Response Topic ==== */

/* A response topic tally publishes to: a valid topic without wildcards, not
 * empty (mosquitto_pub_topic_check passes "", and a PUBLISH with no topic is
 * malformed), and none of the topics clients may not write (the plugin's own
 * publishes are not checked by Mosquitto's ACLs, so an answer must not land
 * where a forged total, state or replication message would). */
static bool response_topic_ok(const char *topic)
{
    return topic[0] != '\0' && mosquitto_pub_topic_check(topic) == MOSQ_ERR_SUCCESS &&
           topic[0] != '$' && !has_prefix(topic, g.opt.prefix, g.prefix_len) &&
           !has_prefix(topic, g.opt.presence_prefix, g.presence_prefix_len) &&
           strcmp(topic, g.opt.prefix) != 0 && strcmp(topic, g.opt.presence_prefix) != 0;
}

/* Answers an increment or report that carries a Response Topic there, with
 * its Correlation Data: the total on this node after it, or why it was
 * refused. An unusable response topic is logged and not answered. The answer
 * goes to the asking client alone, as the control API's does: published to
 * all, it would let a client reach any topic, another client's answer topic
 * included, that its acl does not let it write. */
static void answer(struct mosquitto_evt_message *ev, struct topic t, enum tally_result result,
                   int reason)
{
    char *topic = NULL;
    void *corr = NULL;
    uint16_t corr_len = 0;
    mosquitto_property *props = NULL;
    if (!mosquitto_property_read_string(ev->properties, MQTT_PROP_RESPONSE_TOPIC, &topic, false))
        return;
    /* An empty Response Topic may read as present with topic NULL. */
    if (!topic || !response_topic_ok(topic)) {
        refuse_log(mosquitto_client_id(ev->client), "response topic", topic ? topic : "",
                   TALLY_E_FORBIDDEN);
        goto out;
    }
    bool named = name_check(t.name, t.len) == TALLY_OK;
    const struct tally_counter *c = named ? table_find(&g.table, t.name, t.len) : NULL;
    int64_t value = !c       ? 0
                    : g.edge ? tier_edge_answer(&g.tier_edge, &g.table, t.name, t.len)
                             : table_value(&g.table, c);
    answer_json(&g.buf, named ? t.name : NULL, t.len, result, value, reason);
    if (mosquitto_property_read_binary(ev->properties, MQTT_PROP_CORRELATION_DATA, &corr, &corr_len,
                                       false) &&
        mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, corr, corr_len) !=
            MOSQ_ERR_SUCCESS)
        goto out;
    if (g.buf.failed ||
        mosquitto_broker_publish_copy(mosquitto_client_id(ev->client), topic, (int)g.buf.len,
                                      g.buf.data, 1, false, props) != MOSQ_ERR_SUCCESS)
        mosquitto_property_free_all(&props);
out:
    free(topic); /* libmosquitto's property readers allocate with calloc */
    free(corr);
}

/* An increment or report: applied, answered where asked, and refused (or
 * not acknowledged, when it could not be logged) as the contract says. */
static int on_counter_input(struct mosquitto_evt_message *ev, struct topic t)
{
    enum tally_result result = RESULT_REFUSED;
    int rc = t.kind == T_INC ? on_increment(ev, t, &result) : on_report(ev, t, &result);
    if (rc == TALLY_E_DISK)
        return not_written(ev->client, ev->topic);
    answer(ev, t, rc == TALLY_OK ? result : RESULT_REFUSED, rc);
    return rc == TALLY_OK ? MOSQ_ERR_SUCCESS : refuse(ev->client, ev->topic, rc);
}

static void publish(const char *topic, const void *payload, size_t len, int qos, bool retain);
static bool sendable(const char *topic, const struct wire_buf *b);

/* ==== Replication in ==== */

/* g.topic for viewer counts we publish: $tally/v1/<kind>/<id>, and the
 * units of origin ("@g@r", and the regions above r): ours, but a replay's
 * of a group's or region's sums names theirs. They tell a receiver whether
 * it takes them (scope.c). */
static const char *presence_topic(const char *kind, const char *id, int len, const char *origin,
                                  size_t olen)
{
    struct scope_name sn;
    scope_of_origin(&g.ours, origin, olen, &sn);
    int at = snprintf(g.topic, sizeof(g.topic), "$tally/v1/%s/%.*s", kind, len, id);
    for (int k = 0; k < TALLY_LEVELS && sn.len[k] && at > 0 && (size_t)at < sizeof(g.topic); k++)
        at += snprintf(g.topic + at, sizeof(g.topic) - (size_t)at, "@%.*s", (int)sn.len[k],
                       sn.name[k]);
    return g.topic;
}

static bool is_self(const char *id, size_t len)
{
    return name_same(id, len, g.opt.node_id, strlen(g.opt.node_id));
}

static struct tally_origin *origin_of(const char *id, size_t len)
{
    char node[TALLY_NODE_ID_MAX + 1];
    memcpy(node, id, len);
    node[len] = '\0';
    return presence_origin(&g.presence, node);
}

static struct tally_origin *heard_from(const char *id, size_t len)
{
    struct tally_origin *o = origin_of(id, len);
    if (o)
        o->last_heard_ms = mono_ms();
    return o;
}

/* The neighbour behind the bridge connection a message came in on. */
static int neighbour_of(const struct mosquitto *client, uint16_t *k)
{
    const char *id = mosquitto_client_id(client);
    return repl_neighbour(&g.repl, id ? id : "", k);
}

static void send_qos(const char *to, const struct wire_buf *b, int qos);

/* QoS 0: Mosquitto writes it to the bridge's socket at once, where QoS 1
 * past max_inflight_messages waits in a queue of max_queued_messages and
 * the rest is dropped; one lost (the bridge closing) is wanted as before.
 * On a topic of its own: the restarted node takes it as any PRESENCE and
 * does not flood it on (on_replay). */
static void emit_replay(const struct wire_buf *msg, void *to)
{
    const char *origin;
    size_t len = wire_presence_origin(msg->data, msg->len, &origin);
    presence_topic("replay", origin ? origin : "", (int)len, origin ? origin : "", len);
    send_qos(to, msg, 0);
}

/* A neighbour that restarted holds no viewer count: it is sent, over its
 * own bridge alone, each origin's counts held here as their listing says
 * (presence.c, "Replay to a neighbour that restarted"), where it would
 * otherwise want them all and have every carrier flood them to every hub.
 * Its restart shows as a new SYNC stream (repl.c), or sooner, with no
 * SYNC flowing (sync_interval_ms), as its own PRESENCE of a new incarnation
 * or its stats numbered from 1 again, straight over its bridge (anew).
 * repl_replay_due decides; replay_tick sends it. */
static void replay_begin(int k, enum repl_anew anew)
{
    if (k >= 0 && !g.edge)
        repl_replay_due(&g.repl, (uint16_t)k, anew, mono_ms(), (uint64_t)g.opt.peer_timeout_ms,
                        g.start_ms);
}

/* The replays under way, REPLAY_STEP origins a neighbour a broker loop
 * (about 100 KB), so that no loop pass takes long, nor fills the socket's
 * buffer, past which QoS 0 would be dropped too (max_queued_messages). */
#define REPLAY_STEP 1000

static void replay_tick(uint64_t now)
{
    for (uint32_t k = 0; k < g.repl.n; k++) {
        struct repl_neighbour *nb = g.repl.nb[k];
        if (!nb->replaying)
            continue;
        g.st.presence_replayed +=
            presence_replay(&g.presence, g.opt.node_id, nb->node, now,
                            (uint64_t)g.opt.peer_timeout_ms, (size_t)g.opt.max_message_bytes,
                            &nb->replay_from, REPLAY_STEP, &g.buf, emit_replay, nb->conn);
        nb->replaying = nb->replay_from != UINT32_MAX;
    }
}

/* The units a topic names: a PRESENCE's (presence_topic), a SYNC's or
 * DIGEST's (replicate_stream: a group only). */
static void topic_scope(const char *topic, struct scope_name *sn)
{
    const char *at = strchr(topic + strlen("$tally/v1/"), '@');
    for (int k = 0; k < TALLY_LEVELS; k++) {
        sn->name[k] = at ? at + 1 : "";
        const char *next = at ? strchr(at + 1, '@') : NULL;
        sn->len[k] = at ? (next ? (size_t)(next - at - 1) : strlen(at + 1)) : 0;
        at = next;
    }
}

/* Counts a message of another group dropped; true when it is time to log
 * it (once a minute for each kind, at *last_ms). */
static bool group_refused(uint64_t *last_ms)
{
    g.group.refused++;
    uint64_t now = mono_ms();
    if (*last_ms != 0 && now - *last_ms < 60000)
        return false;
    *last_ms = now;
    return true;
}

/* A SYNC or DIGEST of another group (or of a node in none, when we are in
 * one, or the reverse): a bridge between groups that carries all of
 * $tally/. Dropped: the other group's nodes count under its GSUMs
 * (group.c), and taking their slots too would count them twice. */
static bool other_group(const char *topic)
{
    struct scope_name sn;
    topic_scope(topic, &sn);
    if (name_same(sn.name[0], sn.len[0], g.group.name, g.group.len))
        return false;
    if (group_refused(&g.group_log_ms))
        mosquitto_log_printf(MOSQ_LOG_WARNING,
                             "tally: dropped %s: not of our group '%s' (%" PRIu64
                             " so far; a bridge between groups should carry $tally/v1/gsum/#, "
                             "$tally/v1/gviews/# and $tally/stats/# only)",
                             topic, g.group.name, g.group.refused);
    return true;
}

/* An edge's UP names the group its count is in ($tally/up/<edge>@<group>,
 * once a hub of it answered; tier.c): a hub of another group takes none of
 * it, or the edge would be counted in both groups' sums. Its bridge's
 * address list left its group: it stays refused until it is back there. */
static bool edge_of_other_group(const char *topic)
{
    const char *edge = topic + strlen("$tally/up/"), *at = strchr(edge, '@');
    if (!at || !group_on(&g.group) || strcmp(at + 1, g.group.name) == 0)
        return false;
    if (group_refused(&g.edge_log_ms))
        mosquitto_log_printf(MOSQ_LOG_WARNING,
                             "tally: refused the UP of edge %.*s: its count is in the sum of "
                             "group '%s', and taken here it would be in group '%s' too (%" PRIu64
                             " so far; an edge's bridge address list must name hubs of its own "
                             "group only)",
                             (int)(at - edge), edge, at + 1, g.group.name, g.group.refused);
    return true;
}

static int on_sync(const struct mosquitto_evt_message *ev, bool *route)
{
    const struct mosquitto *client = ev->client;
    const void *payload = ev->payload;
    size_t len = ev->payloadlen;
    (void)route; /* consumed: what it changes goes on in our own SYNCs */
    struct wire_sync s;
    uint16_t k;
    if (other_group(ev->topic))
        return TALLY_OK;
    int rc = wire_decode_sync(payload, len, &s);
    if (rc != TALLY_OK)
        return rc;
    bool peer = !is_self(s.sender, s.sender_len);
    if (peer) {
        heard_from(s.sender, s.sender_len);
        rc = neighbour_of(client, &k);
        if (rc == TALLY_OK) {
            repl_heard(&g.repl, k, mono_ms());
            rc = repl_apply_sync(&g.repl, &g.table, g.persist, &s, k);
        }
    }
    wire_sync_free(&s);
    if (peer && rc == TALLY_OK)
        replay_begin(k, REPL_ANEW_NO);
    return rc;
}

static void send_sync(const struct wire_buf *msg, void *ctx);

/* SYNCs to every neighbour, or (to: a connection's client id) to one. */
static struct repl_out repl_out(const char *to)
{
    return (struct repl_out){g.opt.node_id, (size_t)g.opt.max_message_bytes, send_sync, (void *)to,
                             to != NULL};
}

static int on_digest(const struct mosquitto_evt_message *ev, bool *route)
{
    const struct mosquitto *client = ev->client;
    const void *payload = ev->payload;
    size_t len = ev->payloadlen;
    (void)route;
    static struct wire_digest d; /* 2 KB of hashes: off the stack */
    uint64_t dump[TALLY_BUCKETS / 64];
    uint16_t k;
    if (other_group(ev->topic))
        return TALLY_OK;
    int rc = wire_decode_digest(payload, len, &d);
    if (rc != TALLY_OK || is_self(d.sender, d.sender_len))
        return rc;
    if (!heard_from(d.sender, d.sender_len) || neighbour_of(client, &k) != TALLY_OK)
        return TALLY_E_NOMEM;
    repl_heard(&g.repl, k, mono_ms());
    struct repl_span span;
    if (repl_digest_seen(&g.repl, k, &d, g.table.digest, g.opt.node_id, dump, &span)) {
        struct repl_out out = repl_out(mosquitto_client_id(client));
        g.st.repair_counters += repl_send_buckets(&g.repl, &g.table, &g.writer, &out, dump, &span);
    }
    replay_begin(k, REPL_ANEW_NO);
    return TALLY_OK;
}

/* Whether we count a PRESENCE: not one of another group or region, which
 * its sums count here (dropped, and counted in group.viewers_refused: the
 * bridges between groups bring them all the time), nor our own group's
 * (region's) sums from another of its hubs, sent on if new (*taken) and
 * not counted (scope.c). */
static bool scope_counts(const struct mosquitto_evt_message *ev, const struct wire_presence *wp,
                         bool *taken)
{
    struct scope_name from;
    topic_scope(ev->topic, &from);
    enum scope_take st = scope_take(&g.ours, wp->origin, wp->origin_len, &from);
    if (!scope_topic_fits(ev->topic + strlen("$tally/v1/"), wp->origin, wp->origin_len))
        st = SCOPE_REFUSE; /* a group's sums on presence/, a node's on gviews/ */
    if (st == SCOPE_REFUSE) {
        g.group.viewers_refused++;
    } else if (st == SCOPE_PASS) {
        *taken = scope_pass(g.scopes, &g.presence, wp);
    }
    return st == SCOPE_TAKE;
}

/* Flooded messages (presence, stats) that are new here are routed on by the
 * broker itself (*route): Mosquitto never sends a message back over the
 * bridge it came in on (bridges subscribe with no-local), so a leaf of a star
 * does not echo to its hub what the hub told it, and a copy seen before is
 * dropped, so a ring of bridges does not loop. */
static int take_presence(const struct mosquitto_evt_message *ev, bool *taken)
{
    const void *payload = ev->payload;
    size_t len = ev->payloadlen;
    struct wire_presence wp;
    int rc = wire_decode_presence(payload, len, &wp);
    *taken = false;
    if (rc != TALLY_OK)
        return rc;
    if (is_self(wp.origin, wp.origin_len) || !scope_counts(ev, &wp, taken))
        goto done;
    struct tally_origin *o = origin_of(wp.origin, wp.origin_len);
    if (!o) {
        rc = TALLY_E_NOMEM;
        goto done;
    }
    /* A node heard anew (first, restarted, or back after it expired) may
     * hold none of our counts: our next heartbeat has them all, not only a
     * keepalive. Once its own entry lists it, it asks for them itself
     * (tier.c, "the heartbeat's pages"). */
    enum repl_anew how = repl_anew_of(o, wp.incarnation);
    bool anew = how != REPL_ANEW_NO;
    /* its own heartbeat, straight over its bridge: a neighbour we hear */
    int k = repl_find(&g.repl, mosquitto_client_id(ev->client), wp.origin, wp.origin_len);
    if (k >= 0)
        repl_heard(&g.repl, (uint16_t)k, mono_ms());
    rc = presence_apply(&g.presence, o, &wp, taken);
    if (*taken) {
        if (tier_hub_says_alive(&g.tier_hub, o)) {
            o->last_heard_ms = mono_ms();
            if (anew)
                tier_hub_owe_pages(&g.tier_hub);
        }
        if (rc == TALLY_OK && !g.edge)
            rc = tier_hub_heard(&g.tier_hub, &g.presence, &wp, mono_ms());
        if (rc == TALLY_OK && !g.edge)
            scope_wants(g.scopes, &g.presence, &wp);
        if (rc == TALLY_OK && anew)
            replay_begin(k, how);
        for (int lv = 0; anew && lv < TALLY_LEVELS; lv++)
            if (group_on(g.units[lv]))
                group_refresh_now(g.units[lv]);
    }
done:
    wire_presence_free(&wp);
    return rc;
}

/* A message Mosquitto floods on for us (*route), counted as when the plugin
 * publishes one itself. */
static void count_routed(const struct mosquitto_evt_message *ev, bool route)
{
    if (route) {
        g.st.repl_msgs_out++;
        g.st.repl_bytes_out += ev->payloadlen;
    }
}

/* A flood new here (*route) that every other neighbour had from the one it
 * came from is not sent on (repl.c, rules 2a and 2b), unless `beyond` (the
 * other groups take it) and we have a bridge out of our group; counted as
 * routed or held. */
static void flood_on(const struct mosquitto_evt_message *ev, bool beyond, bool *route)
{
    if (*route && !repl_flood_on(&g.repl, mosquitto_client_id(ev->client), mono_ms(),
                                 beyond ? group_outer_ms(&g.group) : 0)) {
        *route = false;
        g.st.floods_held++;
    }
    count_routed(ev, *route);
}

static int on_presence(const struct mosquitto_evt_message *ev, bool *route)
{
    /* a group's or region's viewer sums, which the other groups take; a
     * node's own counts stay in its group */
    bool sums = strncmp(ev->topic, "$tally/v1/presence/", strlen("$tally/v1/presence/")) != 0;
    if (sums)
        repl_outer_heard(&g.repl, mosquitto_client_id(ev->client), mono_ms());
    int rc = take_presence(ev, route);
    flood_on(ev, sums, route);
    return rc;
}

/* A PRESENCE replayed to us by a neighbour as we restarted (emit_replay):
 * taken as any, and not sent on. Our other neighbours hold it already (it
 * is replayed as its carrier lists it), and flooded it cost one message a
 * bridge for each of our neighbours' replays (tests/sim: 6% of the PRESENCE
 * messages of a tree of 2,040 nodes with 4 hubs restarted); one that lacks
 * it wants it, as ever. */
static int on_replay(const struct mosquitto_evt_message *ev, bool *route)
{
    bool taken;
    (void)route; /* not sent on */
    return take_presence(ev, &taken);
}

/* Stats are JSON for people; they carry "incarnation" (a string: 64 bits),
 * "time_ms" (the node's wall clock) and "seq" (documents published since the
 * node started) so they can be flooded like presence: each node keeps every
 * node's latest, retained. A document is newer if its (time_ms, seq) is
 * above the last one's of the same incarnation: seq alone starts again at 1
 * when a node restarts with its state (and its incarnation). Read with
 * cJSON, wherever the fields are. */
static bool json_u53(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble > TALLY_MAX_SAFE)
        return false;
    *out = (uint64_t)item->valuedouble;
    return true;
}

static int stats_order(const void *payload, size_t len, uint64_t *inc, uint64_t *time_ms,
                       uint64_t *seq)
{
    cJSON *root = cJSON_ParseWithLength(payload, len);
    const cJSON *pi = cJSON_GetObjectItemCaseSensitive(root, "incarnation");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "time_ms");
    int rc = TALLY_E_WIRE;
    char *end;
    *time_ms = 0;
    if (cJSON_IsString(pi) && json_u53(cJSON_GetObjectItemCaseSensitive(root, "seq"), seq) &&
        (!pt || json_u53(pt, time_ms))) {
        errno = 0;
        *inc = strtoull(pi->valuestring, &end, 10);
        if (!errno && end != pi->valuestring && !*end)
            rc = TALLY_OK;
    }
    cJSON_Delete(root);
    return rc;
}

static int on_stats(const struct mosquitto_evt_message *ev, bool *route)
{
    const char *topic = ev->topic;
    const void *payload = ev->payload;
    size_t len = ev->payloadlen;
    const char *id = topic + strlen("$tally/stats/");
    size_t idlen = strlen(id);
    uint64_t inc, time_ms, seq;
    if (node_id_check(id, idlen) != TALLY_OK)
        return TALLY_E_WIRE;
    repl_outer_heard(&g.repl, mosquitto_client_id(ev->client), mono_ms());
    if (is_self(id, idlen))
        return TALLY_OK;
    if (stats_order(payload, len, &inc, &time_ms, &seq) != TALLY_OK)
        return TALLY_E_WIRE;
    struct tally_origin *o = heard_from(id, idlen);
    if (!o)
        return TALLY_E_NOMEM;
    if (o->stats_incarnation == inc &&
        (time_ms < o->stats_time_ms || (time_ms == o->stats_time_ms && seq <= o->stats_seq)))
        return TALLY_OK;
    /* Its documents numbered from 1 again under the same incarnation: it
     * restarted with its state (on_presence sees no new incarnation) and
     * holds none of our viewer counts: our next heartbeat has them all. */
    if (o->stats_incarnation == inc && seq < o->stats_seq && tier_hub_says_alive(&g.tier_hub, o)) {
        tier_hub_owe_pages(&g.tier_hub);
        replay_begin(repl_find(&g.repl, mosquitto_client_id(ev->client), id, idlen),
                     REPL_ANEW_RESTARTED);
    }
    o->stats_incarnation = inc;
    o->stats_time_ms = time_ms;
    o->stats_seq = seq;
    /* and retained here: any node shows every node's figures to its own
     * readers (the CLI, the exporter, the dashboard). Always sent on: one
     * the plugin does not route, Mosquitto drops here too (repl.c, 2b). */
    *route = true;
    return g.edge ? TALLY_OK
                  : fold_peer_stats(&g.fold, &g.table, g.persist, o->node_id, payload, len,
                                    mono_ms(), time_ms);
}

/* ==== Tiers (tier.c): UP from our edges, DOWN from our hub ==== */

#define HUB_ORIGIN "(hub)" /* at an edge, the others' viewers: never a node id */

/* g.topic's message, to every subscriber (to NULL) or to one connection
 * alone (to: its client id; Mosquitto's publish to a client). */
static void send_qos(const char *to, const struct wire_buf *b, int qos)
{
    if (!sendable(g.topic, b))
        return;
    int rc = mosquitto_broker_publish_copy(to, g.topic, (int)b->len, b->data, qos, false, NULL);
    if (rc != MOSQ_ERR_SUCCESS)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot publish to %s: %s", g.topic,
                             mosquitto_strerror(rc));
    g.st.repl_msgs_out++;
    g.st.repl_bytes_out += b->len;
}

static void send_repl(const char *to, const struct wire_buf *b)
{
    send_qos(to, b, 1);
}

/* An UP goes to every subscriber (the edge's bridge). A DOWN goes only to
 * the connection its edge's UP came over (to): published to all, it would
 * also reach every hub bridged to this one, which has no use for it (an edge
 * reads only its own), and a hub of E edges would send each of its
 * neighbours a DOWN per edge per publish interval. */
static void publish_up_down(const char *kind, const char *id, const char *to,
                            const struct wire_buf *b)
{
    snprintf(g.topic, sizeof(g.topic), "$tally/%s/%s", kind, id);
    send_repl(to, b);
}

static void emit_relay(const struct wire_buf *msg, void *ud)
{
    presence_topic("presence", tier_child_id(ud), -1, "", 0);
    if (sendable(g.topic, msg))
        publish(g.topic, msg->data, msg->len, 1, false);
}

/* An edge's viewers to the other hubs: what changed, or all of them when a
 * hub wants them (tier.c). */
static void relay(struct tier_child *ch)
{
    int rc = tier_hub_relay(ch, &g.presence, (size_t)g.opt.max_message_bytes, mono_ms(), &g.buf,
                            emit_relay, ch);
    if (rc != TALLY_OK)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot relay the viewers of edge %s: %s",
                             tier_child_id(ch), tally_strerror(rc));
}

static int on_edge_control(const struct mosquitto_evt_message *ev);

/* An edge's UP: its slots into the table (repl.c sends them on to the other
 * nodes), its viewers relayed to them under its own origin. */
static int on_up(const struct mosquitto_evt_message *ev, bool *route)
{
    const void *payload = ev->payload;
    size_t len = ev->payloadlen;
    (void)route;
    struct tier_child *ch;
    if (g.edge)
        return TALLY_E_WIRE; /* an edge has no edges */
    if (wire_peek_type(payload, len) == WIRE_CONTROL)
        return on_edge_control(ev);
    if (edge_of_other_group(ev->topic))
        return TALLY_OK; /* dropped, unanswered: its clients keep the totals they have */
    uint64_t now = mono_ms();
    int rc = tier_hub_apply_up(&g.tier_hub, &g.table, &g.presence, payload, len, now, &ch);
    const char *conn = mosquitto_client_id(ev->client);
    if (rc == TALLY_OK && conn)
        rc = tier_child_set_conn(ch, conn);
    if (rc != TALLY_OK)
        return rc;
    relay(ch);
    return TALLY_OK;
}

static int on_hub_answer(const void *payload, size_t len);
static void forward_expire(uint64_t now);
static int on_ctl(const struct mosquitto_evt_message *ev, bool *route);
static int on_ctla(const struct mosquitto_evt_message *ev, bool *route);

/* A watched counter whose total changed at the hub: published at the flush. */
static void edge_view_changed(const char *name, size_t len, void *ud)
{
    struct tally_counter *c;
    (void)ud;
    if (table_get(&g.table, name, len, TABLE_MERGE, &c) == TALLY_OK)
        table_mark_dirty(&g.table, c);
}

static void edge_page_others(const char *page, size_t len, uint64_t others, void *ud)
{
    presence_origin_set(&g.presence, ud, page, len, others);
}

/* Records the scope in t->scope and on disk: written once it changes. */
static int scope_set(const char *group, const char *region)
{
    struct tally_scope *sc = &g.table.scope;
    if (sc->known && strcmp(sc->group, group) == 0 && strcmp(sc->region, region) == 0)
        return TALLY_OK;
    snprintf(sc->group, sizeof(sc->group), "%s", group);
    snprintf(sc->region, sizeof(sc->region), "%s", region);
    sc->known = true;
    return g.persist ? persist_scope(g.persist, &g.table) : TALLY_OK;
}

/* DOWN from our hub; one for another edge (a hub passing on what its bridges
 * carry) is not ours to read. */
static int on_down(const struct mosquitto_evt_message *ev, bool *route)
{
    const char *topic = ev->topic;
    const void *payload = ev->payload;
    size_t len = ev->payloadlen;
    (void)route;
    if (!g.edge || strcmp(topic + strlen("$tally/down/"), g.opt.node_id) != 0)
        return TALLY_OK;
    if (wire_peek_type(payload, len) == WIRE_CONTROL)
        return on_hub_answer(payload, len);
    int rc = tier_edge_apply_down(&g.tier_edge, payload, len, edge_view_changed, NULL);
    if (rc == TALLY_OK && g.tier_edge.group[0] && !g.table.scope.known)
        rc = scope_set(g.tier_edge.group, ""); /* the group our count is in, for good */
    /* past lives the hubs have retired (folded into a hub's slot): dropped here too */
    size_t idlen = strlen(g.opt.node_id);
    if (rc == TALLY_OK && tier_edge_started_up(&g.tier_edge) &&
        g.tier_edge.below > fold_below_of(&g.table, g.opt.node_id, idlen))
        rc = fold_set_below(&g.table, g.persist, g.opt.node_id, idlen, g.tier_edge.below);
    struct tally_origin *o = presence_origin(&g.presence, HUB_ORIGIN);
    if (rc != TALLY_OK || !o)
        return rc != TALLY_OK ? rc : TALLY_E_NOMEM;
    o->last_heard_ms = mono_ms();
    presence_origin_begin(&g.presence, o, 0, UINT64_MAX); /* a DOWN carries every page */
    tier_edge_each_page(&g.tier_edge, edge_page_others, o);
    return TALLY_OK;
}

/* Another group's sums (group.c), flooded on by Mosquitto when new here;
 * another region's one level up (RSUM). */
static int on_sums(struct tally_group *gr, const struct mosquitto_evt_message *ev, bool *route)
{
    uint64_t mismatched = gr->mismatched, now = mono_ms();
    repl_outer_heard(&g.repl, mosquitto_client_id(ev->client), now);
    int rc =
        group_apply(gr, &g.table, g.persist, g.opt.node_id, ev->payload, ev->payloadlen, route);
    flood_on(ev, true, route);
    if (gr->mismatched > mismatched && (!g.levels_log_ms || now - g.levels_log_ms >= 60000)) {
        g.levels_log_ms = now;
        mosquitto_log_printf(MOSQ_LOG_WARNING,
                             "tally: refused %s: its hub's units above its group are not as many "
                             "as ours (plugin_opt_group '%s', plugin_opt_region '%s'; %" PRIu64
                             " so far): every hub of a tree must name as many levels, or their "
                             "counts never reach each other (README, Regions of regions)",
                             ev->topic, g.opt.group, g.opt.region, gr->mismatched);
    }
    return rc;
}

static int on_gsum(const struct mosquitto_evt_message *ev, bool *route)
{
    return on_sums(&g.group, ev, route);
}

static int on_rsum(const struct mosquitto_evt_message *ev, bool *route)
{
    return on_sums(&g.region[0], ev, route);
}

static int on_rsum3(const struct mosquitto_evt_message *ev, bool *route)
{
    return on_sums(&g.region[1], ev, route);
}

static int on_rsum4(const struct mosquitto_evt_message *ev, bool *route)
{
    return on_sums(&g.region[2], ev, route);
}

/* Every replication topic and its handler: a new message type is one line
 * here (and its decoder in wire.c or tier.c). A handler sets *route when the
 * message is flooded on by Mosquitto as it came (presence, stats). */
static const struct {
    const char *prefix;
    int (*handle)(const struct mosquitto_evt_message *ev, bool *route);
} repl_topics[] = {
    {"$tally/v1/sync/", on_sync},
    {"$tally/v1/digest/", on_digest},
    {"$tally/v1/presence/", on_presence},
    {"$tally/v1/gviews/", on_presence},
    {"$tally/v1/rviews/", on_presence},
    {"$tally/v1/rviews3/", on_presence},
    {"$tally/v1/rviews4/", on_presence},
    {"$tally/v1/replay/", on_replay},
    {"$tally/v1/gsum/", on_gsum},
    {"$tally/v1/rsum/", on_rsum},
    {"$tally/v1/rsum3/", on_rsum3},
    {"$tally/v1/rsum4/", on_rsum4},
    {"$tally/stats/", on_stats},
    {"$tally/up/", on_up},
    {"$tally/down/", on_down},
    {"$tally/v1/ctl/", on_ctl},
    {"$tally/v1/ctla/", on_ctla},
};

static int on_replication(struct mosquitto_evt_message *ev)
{
    int rc = TALLY_E_WIRE;
    bool route = false;
    g.st.repl_msgs_in++;
    g.st.repl_bytes_in += ev->payloadlen;
    if (ev->payloadlen > (uint32_t)g.opt.max_message_bytes) {
        rc = TALLY_E_TOO_LARGE;
        g.st.repl_too_large++;
    } else {
        for (size_t i = 0; i < sizeof(repl_topics) / sizeof(repl_topics[0]); i++) {
            const char *prefix = repl_topics[i].prefix;
            if (strncmp(ev->topic, prefix, strlen(prefix)) == 0) {
                rc = repl_topics[i].handle(ev, &route);
                break;
            }
        }
    }
    if (rc != TALLY_OK) {
        g.st.repl_rejected++;
        refuse(ev->client, ev->topic, rc);
        return MOSQ_ERR_ACL_DENIED;
    }
    if (route)
        return MOSQ_ERR_SUCCESS;
    /* SYNC and DIGEST are consumed: what they change, this node sends on in
     * its own messages (repl.c), so they cannot loop through a ring. */
    return MOSQ_ERR_ACL_DENIED;
}

static int on_message(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_message *ev = event_data;
    (void)event;
    (void)userdata;
    struct topic t = topic_parse(ev->topic);
    switch (t.kind) {
    case T_INC:
    case T_REPORT:
        return on_counter_input(ev, t);
    case T_TALLY:
        /* ACL_CHECK let only bridges write here (the connecting side of a
         * bridge is never ACL-checked by Mosquitto, and is trusted). */
        return on_replication(ev);
    default:
        return MOSQ_ERR_SUCCESS;
    }
}

/* ==== Access control and viewers ==== */

static int allow(void)
{
    return g.acl_defer ? MOSQ_ERR_PLUGIN_DEFER : MOSQ_ERR_SUCCESS;
}

static void watchers_changed(const char *name, size_t len, void *ud);
static void show_count(const char *client, const char *page, size_t len);

static void on_subscribe(struct mosquitto *client, const char *topic, struct topic t,
                         bool subscribe)
{
    const char *id = mosquitto_client_id(client);
    if (!id)
        return;
    bool added;
    if (!subscribe)
        interest_unsubscribe(&g.interest, id, topic, watchers_changed, NULL);
    else if (interest_subscribe(&g.interest, id, topic, watchers_changed, NULL, &added) != TALLY_OK)
        mosquitto_log_printf(MOSQ_LOG_ERR,
                             "tally: out of memory: the subscription of '%s' to "
                             "'%s' is not seen as watching",
                             id, topic);
    if (t.kind != T_PRESENCE || name_check(t.name, t.len) != TALLY_OK)
        return;
    if (!subscribe) {
        presence_unview(&g.presence, id, t.name, t.len);
        return;
    }
    int rc = presence_view(&g.presence, id, t.name, t.len, &added);
    if (rc != TALLY_OK) {
        g.st.rejected[rc]++;
        refuse_log(id, "view", topic, rc);
        return;
    }
    show_count(id, t.name, t.len);
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_acl_check *ev = event_data;
    (void)event;
    (void)userdata;
    if (ev->access == MOSQ_ACL_READ && ev->topic[0] != '$')
        return allow();
    struct topic t = topic_parse(ev->topic);
    switch (ev->access) {
    case MOSQ_ACL_SUBSCRIBE:
        /* acl_file never refuses a subscription, so who may be counted as a
         * viewer is decided here. */
        if (t.kind == T_PRESENCE && g.opt.viewer_usernames[0] &&
            !list_match(g.opt.viewer_usernames, mosquitto_client_username(ev->client)))
            return MOSQ_ERR_ACL_DENIED;
        on_subscribe(ev->client, ev->topic, t, true);
        return allow();
    case MOSQ_ACL_UNSUBSCRIBE:
        on_subscribe(ev->client, ev->topic, t, false);
        return allow();
    case MOSQ_ACL_READ:
        if (t.kind == T_TALLY && strncmp(ev->topic, "$tally/stats/", 13) != 0 &&
            !is_bridge(ev->client))
            return MOSQ_ERR_ACL_DENIED;
        return allow();
    case MOSQ_ACL_WRITE:
        if (strcmp(ev->topic, CONTROL_TOPIC) == 0)
            return may_control(ev) ? MOSQ_ERR_SUCCESS
                                   : refuse(ev->client, ev->topic, TALLY_E_FORBIDDEN);
        if ((t.kind == T_TALLY && !is_bridge(ev->client)) || t.kind == T_TOTAL ||
            t.kind == T_STATE || t.kind == T_PRESENCE)
            return refuse(ev->client, ev->topic, TALLY_E_FORBIDDEN);
        if (t.kind == T_TALLY)
            return MOSQ_ERR_SUCCESS; /* a bridge: tally decides, whatever acl says */
        return allow();
    default:
        return allow();
    }
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_disconnect *ev = event_data;
    (void)event;
    (void)userdata;
    const char *id = mosquitto_client_id(ev->client);
    if (id) {
        presence_drop_client(&g.presence, id);
        interest_drop_client(&g.interest, id, watchers_changed, NULL);
    }
    return MOSQ_ERR_SUCCESS;
}

/* ==== Publishing ==== */

/* Counters published or replicated in one tick at most (see flush). */
#define FLUSH_BUDGET 20000

static void publish(const char *topic, const void *payload, size_t len, int qos, bool retain)
{
    int rc = mosquitto_broker_publish_copy(NULL, topic, (int)len, payload, qos, retain, NULL);
    if (rc != MOSQ_ERR_SUCCESS)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot publish to %s: %s", topic,
                             mosquitto_strerror(rc));
}

/* Every replication message is at most max_message_bytes: the writers
 * split (sync_writer_add, presence_announce, tier.c's parts), and this is
 * the last guard; what it drops is counted and logged, once in 10 s. */
static bool sendable(const char *topic, const struct wire_buf *b)
{
    if (b->failed)
        return false;
    if (b->len <= (size_t)g.opt.max_message_bytes)
        return true;
    g.st.repl_dropped_large++;
    uint64_t now = mono_ms();
    if (g.drop_log_ms == 0 || now - g.drop_log_ms >= 10000) {
        mosquitto_log_printf(MOSQ_LOG_ERR,
                             "tally: not sending %zu bytes to %s: over max_message_bytes %lld "
                             "(%" PRIu64 " dropped since start)",
                             b->len, topic, g.opt.max_message_bytes, g.st.repl_dropped_large);
        g.drop_log_ms = now;
    }
    return false;
}

/* To every subscriber (to NULL: every bridge), or to one connection. */
static void replicate_to(const char *kind, const char *to, const struct wire_buf *b)
{
    snprintf(g.topic, sizeof(g.topic), "$tally/v1/%s/%s", kind, g.opt.node_id);
    send_repl(to, b);
}

/* SYNC and DIGEST of a node in a group name it in their topic
 * ($tally/v1/sync/<node>@<group>): they are for its group alone. */
static void replicate_stream(const char *kind, const char *to, const struct wire_buf *b)
{
    snprintf(g.topic, sizeof(g.topic), "$tally/v1/%s/%s%s%s", kind, g.opt.node_id,
             group_on(&g.group) ? "@" : "", g.group.name);
    send_repl(to, b);
}

static void replicate(const char *kind, const struct wire_buf *b)
{
    replicate_to(kind, NULL, b);
}

static void send_sync(const struct wire_buf *msg, void *ctx)
{
    replicate_stream("sync", ctx, msg);
}

/* g.topic = "<prefix>/<name><suffix>" (at most 127 + 1 + 200 + 6 bytes), for
 * the retained outputs of counters and pages. */
static const char *name_topic(const char *prefix, size_t prefix_len, const char *name, size_t len,
                              const char *suffix)
{
    char *p = g.topic;
    memcpy(p, prefix, prefix_len);
    p += prefix_len;
    *p++ = '/';
    memcpy(p, name, len);
    p += len;
    strcpy(p, suffix);
    return g.topic;
}

/* What c's outputs show: its sums here, and at an edge those of the whole
 * cluster (its own part plus what its hub said of the rest). */
static void output_sums(const struct tally_counter *c, struct tally_sums *s)
{
    if (g.edge)
        tier_edge_sums(&g.tier_edge, &g.table, c->name, c->name_len, s);
    else
        table_sums(&g.table, c, s);
}

/* Whether c's outputs may show a total now. An edge shows one only while it
 * follows c (tier.c): its own part alone would step back from the cluster's
 * figure it left retained, and a view just made waits for its hub's figures.
 * What it does not show stays stale, to go out once it follows c again. */
static bool shown_here(const struct tally_counter *c)
{
    return !g.edge || table_hidden(&g.table, c) ||
           tier_edge_follows(&g.tier_edge, c->name, c->name_len);
}

static void publish_total(struct tally_counter *c, const struct tally_sums *s)
{
    char value[21];
    if (table_hidden(&g.table, c)) {
        /* deleted (reset.c): an empty retained message removes the total */
        publish(name_topic(g.opt.prefix, g.prefix_len, c->name, c->name_len, ""), "", 0,
                (int)g.opt.publish_qos, true);
        c->stale = 0;
        return;
    }
    publish(name_topic(g.opt.prefix, g.prefix_len, c->name, c->name_len, ""), value,
            fmt_i64(value, s->value), (int)g.opt.publish_qos, true);
    c->stale = 0;
}

static void publish_state(struct tally_counter *c, const struct tally_sums *s, uint64_t wall)
{
    if (table_hidden(&g.table, c)) {
        /* deleted: its watchers see the document go (and it is not sent again) */
        publish(name_topic(g.opt.prefix, g.prefix_len, c->name, c->name_len, "/state"), "", 0,
                (int)g.opt.publish_qos, true);
        c->state_shown = 1;
        return;
    }
    const struct state_page all = {(size_t)g.opt.max_message_bytes, 0, UINT32_MAX};
    counter_state_json(&g.buf, &g.table, c, s, g.opt.node_id, wall, &all);
    if (g.buf.failed)
        return;
    publish(name_topic(g.opt.prefix, g.prefix_len, c->name, c->name_len, "/state"), g.buf.data,
            g.buf.len, (int)g.opt.publish_qos, true);
    c->state_shown = 1;
}

/* An empty retained message removes the state document from Mosquitto. */
static void clear_state(struct tally_counter *c)
{
    publish(name_topic(g.opt.prefix, g.prefix_len, c->name, c->name_len, "/state"), "", 0,
            (int)g.opt.publish_qos, true);
    c->state_shown = 0;
}

/* Publishes what c's retained outputs lack, now: its total if stale, its
 * state document if watched and not shown, an empty one if shown and no
 * longer watched. Returns the number of publishes. */
static uint32_t reconcile(struct tally_counter *c, uint64_t wall)
{
    bool want_state = interest_state_watched(&g.interest, c->name, c->name_len);
    bool shown = shown_here(c);
    bool total = c->stale && shown, state = want_state && !c->state_shown && shown;
    uint32_t n = 0;
    if (total || state) {
        struct tally_sums s;
        output_sums(c, &s);
        if (total)
            publish_total(c, &s), n++;
        if (state)
            publish_state(c, &s, wall), n++;
    }
    if (!want_state && c->state_shown)
        clear_state(c), n++;
    return n;
}

static void queue_refresh(struct tally_counter *c)
{
    if (refresh_push(&g.refresh, c) != TALLY_OK)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: out of memory queueing %s for publishing",
                             c->name);
}

/* A changed counter at its flush: watched outputs go out now, an unwatched
 * total waits on the refresh queue for the budget (schedule.c). */
static void publish_changed(struct tally_counter *c, uint64_t wall)
{
    bool shown = shown_here(c); /* if not, stale until it is (edge_view_changed) */
    bool total = shown && interest_total_watched(&g.interest, c->name, c->name_len);
    bool state = shown && interest_state_watched(&g.interest, c->name, c->name_len);
    if (total || state) {
        struct tally_sums s;
        output_sums(c, &s);
        if (total)
            publish_total(c, &s);
        if (state)
            publish_state(c, &s, wall);
    }
    if (!total || (!state && c->state_shown))
        queue_refresh(c);
}

/* Table scans for the filters watching every state document at most once
 * this often (see rescan_states). */
#define RESCAN_MIN_MS 1000

/* The filters watching every state document came or went: each counter whose
 * state document is shown, or not, against that is queued to catch up under
 * the budget. That is a scan of the table, so at most one a RESCAN_MIN_MS,
 * the first at once: with one per SUBSCRIBE and UNSUBSCRIBE, a client that
 * toggled `counters/+/state` 1,000 times cost 2 s of broker CPU at 100,000
 * counters. */
static void rescan_states(uint64_t now)
{
    if (!g.states_rescan || (g.last_rescan_ms && now - g.last_rescan_ms < RESCAN_MIN_MS))
        return;
    g.states_rescan = false;
    g.last_rescan_ms = now;
    bool all = g.interest.all_states > 0;
    struct tally_counter *c, *tmp;
    HASH_ITER(hh, g.table.counters, c, tmp)
    {
        if (all ? !c->state_shown : c->state_shown)
            queue_refresh(c);
    }
}

/* The subscriptions watching `name` changed (interest.c): what a new watcher
 * lacks is published now, within this broker loop, before any budget; a state
 * document nobody watches any more is removed. name NULL: the filters watching
 * every state document came or went (rescan_states). */
static void watchers_changed(const char *name, size_t len, void *ud)
{
    (void)ud;
    /* a wildcard holds no view (README, Tiers): counted here, it kept the view
     * of a name it shared with a filter naming it for as long as the edge lived */
    if (name && g.edge &&
        tier_edge_watch(&g.tier_edge, name, len, interest_named(&g.interest, name, len)) !=
            TALLY_OK)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: out of memory watching %.*s", (int)len, name);
    if (name) {
        struct tally_counter *c = table_find(&g.table, name, len);
        if (c)
            reconcile(c, wall_ms());
        return;
    }
    g.states_rescan = true;
    rescan_states(mono_ms());
}

/* Spends the unwatched publish budget on the oldest waiting outputs. */
static void refresh(uint64_t now)
{
    uint32_t grant = refresh_grant(&g.refresh, now);
    if (!grant || !g.refresh.len)
        return;
    uint64_t wall = wall_ms();
    uint32_t used = 0;
    size_t visits = FLUSH_BUDGET;
    for (struct tally_counter *c; used < grant && visits && (c = refresh_pop(&g.refresh)); visits--)
        used += reconcile(c, wall);
    refresh_spend(&g.refresh, used);
}

static void publish_page(const char *page, size_t len, uint64_t total, void *ud)
{
    char value[21];
    (void)ud;
    /* a sum of per-node counts of at most 2^32 - 1 each: far below 2^63 */
    publish(name_topic(g.opt.presence_prefix, g.presence_prefix_len, page, len, ""), value,
            fmt_i64(value, (int64_t)total), (int)g.opt.publish_qos, true);
}

/* A new viewer's subscription delivers the count that includes it, in the
 * next broker loop, however the page's publishes are paced: one delivery, to
 * it alone (Mosquitto first hands over the retained count, which may not). */
static void show_count(const char *client, const char *page, size_t len)
{
    char value[21];
    uint64_t total = presence_total(&g.presence, page, len);
    const char *topic = name_topic(g.opt.presence_prefix, g.presence_prefix_len, page, len, "");
    int rc = mosquitto_broker_publish_copy(client, topic, (int)fmt_i64(value, (int64_t)total),
                                           value, (int)g.opt.publish_qos, false, NULL);
    if (rc != MOSQ_ERR_SUCCESS)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot publish to %s: %s", topic,
                             mosquitto_strerror(rc));
}

/* Our own counts and our edges' listing, on our own topic; our group's
 * (ud "gviews") or region's ("rviews", "rviews3" a level above, ...) sums
 * when we speak for them (scope.c), on theirs, which the bridges between
 * groups (regions) carry. */
static void emit_presence(const struct wire_buf *msg, void *ud)
{
    presence_topic(ud ? (const char *)ud : "presence", g.opt.node_id, -1, "", 0);
    send_repl(NULL, msg);
}

/* How often our presence heartbeat goes: peer_timeout_ms / 5, at most a
 * second. */
static uint64_t heartbeat_ms(void)
{
    uint64_t every = (uint64_t)g.opt.peer_timeout_ms / 5;
    return every < 1000 ? every : 1000;
}

/* Our group's (region's) viewer sums (scope.c): changes (or, at a
 * heartbeat, all of them or a keepalive), on their own topic. */
static void scope_send(struct scope_stream *s, bool changes, uint64_t now)
{
    int rc = scope_announce(s, changes, wall_ms() * 1000, now, (uint64_t)g.opt.peer_timeout_ms,
                            (size_t)g.opt.max_message_bytes, &g.buf, emit_presence,
                            (void *)scope_kinds[s->level]);
    if (rc != TALLY_OK)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot announce the viewers of %s: %s",
                             s->hub.node_id, tally_strerror(rc));
}

/* Once a publish interval, after the sums: the viewer sums follow who
 * speaks, and what changed goes. */
static void scope_tick(uint64_t now)
{
    for (int k = 0; k < TALLY_LEVELS; k++) {
        struct scope_stream *s = g.scopes[k];
        if (s && scope_follow(s, &g.presence, !g.units[k]->quiet) != TALLY_OK)
            mosquitto_log_printf(MOSQ_LOG_ERR, "tally: out of memory for viewer sums");
    }
    presence_scope_taken(&g.presence);
    for (int k = 0; k < TALLY_LEVELS; k++) {
        struct scope_stream *s = g.scopes[k];
        if (s && scope_due(s))
            scope_send(s, true, now); /* what a receiver lacks, or asks for, goes at once */
    }
}

/* The heartbeat that keeps us alive in every node's eyes, and our edges in
 * theirs (the listing): our own viewer counts, in as many messages as
 * max_message_bytes needs, the first time or when owed, else a keepalive of
 * no range with the digest of them (tier.c, "the heartbeat's pages"). */
static void announce_presence(void)
{
    uint64_t first = next_seq(&g.presence_seq), now = mono_ms();
    uint32_t n;
    int rc = tier_hub_heartbeat(&g.tier_hub, &g.presence, g.incarnation, first, now,
                                (uint64_t)g.opt.peer_timeout_ms, (size_t)g.opt.max_message_bytes,
                                &g.buf, emit_presence, NULL, &n);
    if (rc != TALLY_OK)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot announce viewers: %s",
                             tally_strerror(rc));
    if (n)
        g.presence_seq = first + n - 1;
    g.last_announce_ms = now;
    for (int k = 0; k < TALLY_LEVELS; k++)
        if (g.scopes[k] && g.scopes[k]->speaking)
            scope_send(g.scopes[k], false, now);
}

/* Outputs are paced per name: a changed counter is published (its watched
 * outputs, publish_changed) once its last publish is publish_interval_ms old,
 * so a change learned from a peer goes out at once unless that name went out
 * within the interval, and a hop adds no interval of its own. The dirty list
 * is taken in order, and stops at the first counter not yet due: a counter
 * joins the list after its last publish, so the one ahead is due at most an
 * interval after it changed, and so is every counter behind it. At most
 * FLUSH_BUDGET a tick, so that a backlog (a million counters loaded from
 * disk, or learned after a long partition) never stalls the broker. */
static bool due(const struct tally_counter *c, uint16_t now16)
{
    return !c->paced || (uint16_t)(now16 - c->published_ms) >= g.opt.publish_interval_ms;
}

static void publish_due(uint64_t now)
{
    uint16_t now16 = (uint16_t)(now - g.start_ms); /* intervals are at most 60,000 ms */
    uint64_t wall = 0;
    size_t budget = FLUSH_BUDGET;
    for (struct tally_counter *c; budget && (c = g.table.dirty_head) && due(c, now16); budget--) {
        /* our group's speaker keeps its rest slots for its light hubs (all
         * of them as it takes over: rest_all) */
        if ((g.table.split || !g.group.quiet) && group_rest(&g.table, g.persist, c) != TALLY_OK)
            mosquitto_log_printf(MOSQ_LOG_ERR, "tally: out of memory for the rest of the tree");
        table_pop_dirty(&g.table);
        for (int k = 0; k < TALLY_LEVELS; k++)
            if (group_on(g.units[k]) && group_note(g.units[k], &g.table, c) != TALLY_OK)
                mosquitto_log_printf(MOSQ_LOG_ERR, "tally: out of memory for group sums");
        if (!wall)
            wall = wall_ms();
        publish_changed(c, wall);
        c->published_ms = now16;
        c->paced = 1;
    }
}

/* Our viewer counts that changed, alone when that is cheaper than all of
 * them (presence_announce_changes), else in full. Changes sent alone are
 * not a heartbeat: a change lost or overtaken on its way is healed once our
 * heartbeat's digest shows the receiver it lacks it (tier.c). */
static void announce_changes(void)
{
    uint64_t first = next_seq(&g.presence_seq);
    uint32_t n = presence_announce_changes(&g.presence, g.opt.node_id, g.incarnation, first, &g.buf,
                                           emit_presence, NULL);
    if (n) {
        g.presence_seq = first + n - 1;
    } else {
        tier_hub_owe_pages(&g.tier_hub);
        announce_presence();
    }
}

/* Viewer counts: coalesced over publish_interval_ms, under their budget. */
static void flush_presence(uint64_t now)
{
    g.last_flush_ms = now;
    presence_flush(&g.presence, now, (uint64_t)g.opt.presence_delivery_budget, publish_page, NULL);
    if (g.presence.local_changed && g.edge)
        tier_edge_pages_changed(&g.tier_edge); /* the next UP takes them (tier.c) */
    else if (g.presence.local_changed)
        announce_changes();
}

static void emit_sums(const struct wire_buf *msg, void *ud)
{
    replicate(ud, msg); /* "gsum", "rsum", "rsum3" or "rsum4" */
}

/* A light hub that other units' sums reached (it took no slot of them), and
 * that no rest slot reached: its group's full hubs keep none (plugin_opt_hub
 * unset there). Said once a minute, once the group had time to speak. */
static void rest_check(uint64_t now)
{
    if (!g.table.light || !g.table.foreign_dropped || g.table.rested ||
        now - g.start_ms < 2 * g.group.quiet_ms || (g.rest_log_ms && now - g.rest_log_ms < 60000))
        return;
    g.rest_log_ms = now;
    mosquitto_log_printf(MOSQ_LOG_WARNING,
                         "tally: this light hub takes the other groups' sums from its group's "
                         "speaker as rest slots, and has none: set plugin_opt_hub full on the "
                         "other hubs of group '%s' (README, Light hubs); until then its totals "
                         "leave the other groups out",
                         g.opt.group);
}

/* At a split hub (group.c, "Split hubs"): the levels we hold, given among
 * the hubs of our group alive (the neighbours we hear: a group is a mesh),
 * once they had time to be heard. A level we come to hold: we call for the
 * refresh of its streams, and keep every counter's rest slots once more
 * (rest_all), as a speaker that takes over does; one we no longer hold: we
 * drop its units' slots. */
static void split_levels(uint64_t now)
{
    static const char *ids[REPL_MAX_NEIGHBOURS];
    if (!g.table.split || now - g.start_ms < 2 * g.group.quiet_ms)
        return;
    uint32_t n = repl_alive(&g.repl, ids, REPL_MAX_NEIGHBOURS);
    if (group_split_levels(&g.table, g.units, g.opt.node_id, ids, n))
        g.group.took_over = true;
}

/* As we take over our group's speaking, every counter's rest slots, which
 * the last speaker may have died with unsent (publish_due keeps them after
 * that, as counters change): once, a pass over the table. */
static void rest_all(void)
{
    if (!g.group.took_over)
        return;
    g.group.took_over = false;
    for (struct tally_counter *c = g.table.counters; g.table.lean && c; c = c->hh.next)
        if (group_rest(&g.table, g.persist, c) != TALLY_OK) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "tally: out of memory for the rest of the tree");
            return;
        }
}

/* Deltas: what was learned goes on at the next tick (repl.c), local changes
 * a sixteenth of an interval less often than names are published: a peer
 * that gets them publishes each name at most once an interval, and deltas
 * that left just over an interval apart reach it a little closer or further
 * apart (a millisecond or two over bridges with set_tcp_nodelay; up to 40 ms
 * without, when Nagle's algorithm holds one back); one arriving early would
 * wait for the peer's next broker loop, up to 100 ms when it is idle. The
 * slack is what a far end waits beyond the interval, so it is kept small. A
 * repair asked of a neighbour goes in a DIGEST sent at once, at most once a
 * publish interval. */
static void replicate_tick(uint64_t now)
{
    static struct wire_digest d; /* 2 KB of hashes: off the stack */
    uint64_t interval = (uint64_t)g.opt.publish_interval_ms;
    /* a neighbour's own heartbeat comes every heartbeat_ms(): three missed
     * and we no longer say we hear it (repl.c, rule 2a) */
    repl_hearing(&g.repl, now, 3 * heartbeat_ms());
    uint64_t local_every = interval + interval / 16;
    if (table_repl_pending(&g.table) && (g.repl.learned || now - g.last_repl_ms >= local_every)) {
        struct repl_out out = repl_out(NULL);
        repl_send_deltas(&g.repl, &g.table, &g.writer, &out, FLUSH_BUDGET);
        g.last_repl_ms = now;
    }
    if (group_on(&g.group) && now - g.last_gsum_ms >= interval) {
        if (now - g.last_sums_ms >=
            group_sums_every(&g.group, (uint64_t)g.opt.sums_interval_ms, interval)) {
            static const char *const kinds[TALLY_LEVELS] = {"gsum", "rsum", "rsum3", "rsum4"};
            for (int k = 0; k < TALLY_LEVELS; k++)
                if (group_on(g.units[k]))
                    group_announce(g.units[k], &g.table, g.opt.node_id, now,
                                   (size_t)g.opt.max_message_bytes, FLUSH_BUDGET / 10, &g.buf,
                                   emit_sums, (void *)kinds[k]);
            g.last_sums_ms = now;
            split_levels(now);
            rest_all();
            rest_check(now);
        }
        scope_tick(now);
        g.last_gsum_ms = now;
    }
    bool ask = repl_wants_repair(&g.repl) && now - g.last_request_ms >= interval;
    if (ask || now - g.last_digest_ms >= (uint64_t)g.opt.sync_interval_ms) {
        repl_digest(&g.repl, &d, g.opt.node_id, g.table.digest);
        wire_encode_digest(&g.buf, &d);
        replicate_stream("digest", NULL, &g.buf);
        if (ask)
            g.last_request_ms = now;
        else
            g.last_digest_ms = now;
    }
}

/* ==== Stats ==== */

static int strcmp_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The peers stats list: our direct neighbours, the nodes at the other end of
 * our bridges (once they have said who they are), our edges if we are a hub,
 * our hub if we are an edge; sorted, with repeats. Caller frees the array;
 * the strings are borrowed from g. NULL when out of memory. */
static const char **stats_neighbours(size_t *n)
{
    const char **ids = malloc((g.repl.n + tier_hub_children(&g.tier_hub) + 1) * sizeof(*ids));
    *n = 0;
    if (!ids)
        return NULL;
    for (uint32_t i = 0; i < g.repl.n; i++)
        if (g.repl.nb[i]->node[0])
            ids[(*n)++] = g.repl.nb[i]->node;
    for (struct tier_child *ch = NULL; (ch = tier_hub_next(&g.tier_hub, ch));)
        ids[(*n)++] = tier_child_id(ch);
    if (g.edge)
        ids[(*n)++] = HUB_ORIGIN;
    qsort(ids, *n, sizeof(*ids), strcmp_ptr);
    return ids;
}

/* Our figures and our neighbours (a stats message is flooded to every node,
 * so it lists only those: its size does not grow with the cluster), as many
 * neighbours as max_message_bytes leaves room for; the rest are counted. */
static void publish_stats(uint64_t now)
{
    bool retired;
    if (!g.edge && now >= g.fold.not_before_ms && fold_ready(&g.table, g.persist) == TALLY_OK) {
        /* an edge restarted without state: its hub adopts its past lives */
        for (struct tier_child *ch = NULL; (ch = tier_hub_next(&g.tier_hub, ch));)
            fold_claim_past(&g.fold, &g.table, g.persist, tier_child_id(ch),
                            tier_child_incarnation(ch), now);
        fold_collect(&g.fold, &g.table, g.persist, now, &retired);
    }
    const struct fold_adopt *gone = fold_adoption(&g.table, g.opt.node_id, strlen(g.opt.node_id));
    if (gone && gone->lives_below == UINT64_MAX && !g.told_removed) {
        g.told_removed = true;
        mosquitto_log_printf(MOSQ_LOG_ERR,
                             "tally: this node (%s) was removed from the cluster (removeNode, "
                             "adopted by %s): its counts are folded away; start it again under a "
                             "new plugin_opt_node_id",
                             g.opt.node_id, gone->by);
    }
    size_t npeers;
    const char **peer_ids = stats_neighbours(&npeers);
    if (!peer_ids)
        return;
    struct stats_view v = {
        .fold = g.edge ? NULL : &g.fold,
        .group = &g.group,
        .regions = {&g.region[0], &g.region[1], &g.region[2]},
        .node_id = g.opt.node_id,
        .persist = g.persist ? g.opt.state_dir : "memory",
        .incarnation = g.incarnation,
        .seq = ++g.stats_seq,
        .time_ms = wall_ms(),
        .uptime_ms = now - g.start_ms,
        .st = &g.st,
        .table = &g.table,
        .dedup = &g.dedup,
        .presence = &g.presence,
        .peer_ids = peer_ids,
        .npeers = npeers,
        .repairs_asked = g.repl.asked,
        .unnamed = g.repl.unnamed,
        .neighbours = g.repl.n,
        .max_counters = g.opt.max_counters,
        .max_devices = g.opt.max_devices,
        .max_viewers = g.opt.max_viewers,
        .peer_timeout_ms = g.opt.peer_timeout_ms,
        .stats_interval_ms = g.opt.stats_interval_ms,
        .over_counters = g.over_counters,
        .over_devices = g.over_devices,
        .now_ms = now,
        .max_bytes = (size_t)g.opt.max_message_bytes,
    };
    node_stats_json(&g.buf, &v);
    free(peer_ids);
    if (g.buf.failed || g.buf.len > (size_t)g.opt.max_message_bytes)
        return;
    snprintf(g.topic, sizeof(g.topic), "$tally/stats/%s", g.opt.node_id);
    publish(g.topic, g.buf.data, g.buf.len, 0, true);
    g.last_stats_ms = now;
}

/* A node holding more than a limit (merged from peers, or loaded from disk
 * after the limit was lowered) keeps all of it and says so, once each time
 * it goes over; stats show it while it lasts. */
static void check_limits(void)
{
    bool over_c = table_over_counters(&g.table), over_d = table_over_devices(&g.table);
    if (over_c && !g.over_counters)
        mosquitto_log_printf(MOSQ_LOG_WARNING,
                             "tally: holding %zu counters, more than max_counters (%lld), from "
                             "peers or disk: all are kept; new names are refused until under it",
                             g.table.ncounters, g.opt.max_counters);
    if (over_d && !g.over_devices)
        mosquitto_log_printf(MOSQ_LOG_WARNING,
                             "tally: holding %" PRIu32 " devices, more than max_devices (%lld), "
                             "from peers or disk: all are kept; new devices are refused until "
                             "under it",
                             g.table.ndevices, g.opt.max_devices);
    g.over_counters = over_c;
    g.over_devices = over_d;
}

/* ==== The clock ==== */

static void expire_peers(uint64_t now)
{
    struct tally_origin *o, *tmp;
    HASH_ITER(hh, g.presence.origins, o, tmp)
    {
        if (o->alive && now - o->last_heard_ms > (uint64_t)g.opt.peer_timeout_ms) {
            mosquitto_log_printf(MOSQ_LOG_NOTICE,
                                 "tally: peer %s silent for %lld ms; its viewers are dropped",
                                 o->node_id, g.opt.peer_timeout_ms);
            presence_origin_expire(&g.presence, o);
        }
    }
}

/* ==== Tiers: what an edge sends up, what a hub sends down ==== */

/* On $tally/up/<edge>, or <edge>@<group> once a hub in a group answered:
 * a hub of another group refuses it (edge_of_other_group). */
static void emit_up(const struct wire_buf *msg, void *ud)
{
    char id[2 * TALLY_NODE_ID_MAX + 2];
    (void)ud;
    snprintf(id, sizeof(id), "%s%s%s", g.opt.node_id, g.tier_edge.group[0] ? "@" : "",
             g.tier_edge.group);
    publish_up_down("up", id, NULL, msg);
}

static void emit_down(const struct wire_buf *msg, void *ud)
{
    publish_up_down("down", tier_child_id(ud), tier_child_conn(ud), msg);
}

/* How often an edge and its hub tell each other everything, at the least:
 * each takes the other for dead after peer_timeout_ms of silence, which may
 * be set below sync_interval_ms. */
static uint64_t tier_heartbeat_ms(void)
{
    uint64_t third = (uint64_t)g.opt.peer_timeout_ms / 3;
    return (uint64_t)g.opt.sync_interval_ms < third ? (uint64_t)g.opt.sync_interval_ms : third;
}

static void edge_tick(uint64_t now)
{
    int rc =
        tier_edge_up(&g.tier_edge, &g.table, &g.presence, now, (uint64_t)g.opt.publish_interval_ms,
                     tier_heartbeat_ms(), (size_t)g.opt.max_message_bytes, &g.buf, emit_up, NULL);
    if (rc != TALLY_OK)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot write an UP: %s", tally_strerror(rc));
}

/* Our edges' DOWNs, at most one each per publish interval. */
static void hub_tick(uint64_t now)
{
    static uint64_t last;
    if (now - last < (uint64_t)g.opt.publish_interval_ms)
        return;
    last = now;
    tier_hub_expire(&g.tier_hub, now, (uint64_t)g.opt.peer_timeout_ms);
    tier_hub_tick(&g.tier_hub);
    for (struct tier_child *ch = NULL; (ch = tier_hub_next(&g.tier_hub, ch));) {
        relay(ch); /* one a hub wants */
        int rc = tier_hub_down(&g.tier_hub, &g.table, &g.presence, ch, now, tier_heartbeat_ms(),
                               (size_t)g.opt.max_message_bytes, &g.buf, emit_down, ch);
        if (rc != TALLY_OK)
            mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot write a DOWN to %s: %s",
                                 tier_child_id(ch), tally_strerror(rc));
    }
}

static int on_tick(int event, void *event_data, void *userdata)
{
    (void)event;
    (void)event_data;
    (void)userdata;
    uint64_t now = mono_ms();
    table_set_clock(&g.table, now - g.start_ms);
    expire_peers(now);
    check_limits();
    if (!g.edge) {
        replicate_tick(now);
        replay_tick(now);
    }
    publish_due(now);
    rescan_states(now);
    if (now - g.last_flush_ms >= (uint64_t)g.opt.publish_interval_ms &&
        (g.presence.dirty_head || g.presence.local_changed))
        flush_presence(now);
    refresh(now);
    if (g.edge || g.table.light)
        forward_expire(now);
    if (g.edge) {
        edge_tick(now);
    } else {
        if (now - g.last_announce_ms >= heartbeat_ms())
            announce_presence();
        hub_tick(now);
    }
    if (now - g.last_stats_ms >= (uint64_t)g.opt.stats_interval_ms)
        publish_stats(now);
    char err[700];
    if (g.persist && persist_tick(g.persist, &g.table, &g.dedup, now, err, sizeof(err)) != TALLY_OK)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: %s", err);
    return MOSQ_ERR_SUCCESS;
}

/* ==== The control API ==== */

/* removeNode refuses a node (an edge too: edges are no fold members) whose
 * stats or presence were heard within fold.alive_ms. */
static bool heard_lately(const char *node)
{
    const struct tally_origin *o = NULL;
    HASH_FIND_STR(g.presence.origins, node, o);
    return o && o->last_heard_ms && mono_ms() - o->last_heard_ms <= g.fold.alive_ms;
}

/* Runs a request here; a reset is on disk before it is answered (one that
 * cannot be written stays applied, and replicated: peers hand it back after
 * a restart). who: for the log. Returns the answer (caller frees) or NULL. */
static char *control_run(const void *payload, size_t len, bool admin, const char *who)
{
    struct control_req rq = {.t = &g.table,
                             .node_id = g.opt.node_id,
                             .now_ms = wall_ms(),
                             .max_bytes = (size_t)g.opt.max_message_bytes,
                             .admin = admin,
                             .fold = g.edge ? NULL : &g.fold,
                             .persist = g.persist,
                             .mono_ms = mono_ms(),
                             .heard = heard_lately};
    char *resp = control_process(payload, len, &rq);
    for (size_t i = 0; i < rq.nchanged; i++)
        if (g.persist && persist_base(g.persist, &g.table, rq.changed[i]) != TALLY_OK)
            mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot write the reset of %s to %s: %s",
                                 rq.changed[i]->name, g.opt.state_dir, strerror(errno));
    for (size_t i = 0; i < rq.nchanged; i++)
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "tally: client '%s' reset or deleted counter %s", who,
                             rq.changed[i]->name);
    free(rq.changed);
    return resp;
}

static void control_answer(const char *client, const char *resp)
{
    mosquitto_broker_publish_copy(client, CONTROL_TOPIC "/response", (int)strlen(resp), resp, 1,
                                  false, NULL);
}

static void answer_edge(const char *edge, const char *conn, uint64_t id, const char *resp);

/* The answer to a request we passed on: to our client, or to the edge whose
 * request it was (conn: the connection its UP came over, edge_id its id). */
static void answer_asker(const char *client, const char *conn, uint64_t edge_id, const char *resp)
{
    if (conn)
        answer_edge(client, conn, edge_id, resp);
    else
        control_answer(client, resp);
}

static void forward_done(struct forwarded *f, const char *error)
{
    char *resp = error ? control_error_all(f->request.data, f->request.len, error) : NULL;
    const char *text = resp ? resp : error ? NULL : (const char *)f->answer.data;
    if (text)
        answer_asker(f->client, f->conn, f->edge_id, text);
    free(resp);
    free(f->client);
    free(f->conn);
    wbuf_free(&f->request);
    wbuf_free(&f->answer);
    memset(f, 0, sizeof(*f));
}

/* What a light hub passes to its group's speaker: $tally/v1/ctl/<speaker>,
 * to the hubs it is bridged to, and only the speaker takes it. */
static void emit_to_speaker(const struct wire_buf *msg, void *ud)
{
    (void)ud;
    snprintf(g.topic, sizeof(g.topic), "$tally/v1/ctl/%s", g.group.speaker);
    send_repl(NULL, msg);
}

/* At an edge, a request goes to the hub, which runs it as if it had been
 * sent there (tier.c, "The control API through the tree"): a reset is the
 * cluster's, a listing the cluster's table. At a light hub, a request that
 * resets or deletes goes to its group's speaker, a full hub, the same way
 * (group.c, "Light hubs"): a light hub's own client's, or one of its edge's
 * (client: the edge; conn and edge_id: as answer_asker's). The answer goes
 * back when the hub does, or an error after FORWARD_TIMEOUT_MS. */
static void control_forward(const void *payload, size_t len, bool admin, const char *client,
                            const char *conn, uint64_t edge_id)
{
    struct forwarded *f = NULL;
    for (size_t i = 0; i < FORWARD_MAX && !f; i++)
        f = g.fwd[i].id == 0 ? &g.fwd[i] : NULL;
    if (!f || (!g.edge && !g.group.speaker[0])) {
        char *resp = control_error_all(payload, len,
                                       !f ? "too many requests waiting for the hub; try again"
                                          : "a light hub passes resets to its group's speaker, "
                                            "and none was heard yet; try again");
        if (resp)
            answer_asker(client, conn, edge_id, resp);
        free(resp);
        return;
    }
    /* The id's high bits are the wall clock when it was sent, in ms: the hub
     * runs it only while it is fresh (on_edge_control), and an answer to our
     * last run's request is not ours. */
    uint64_t now_id = wall_ms() << 16;
    g.fwd_seq = g.fwd_seq < now_id ? now_id : g.fwd_seq + 1;
    f->id = g.fwd_seq;
    f->sent_ms = mono_ms();
    f->client = strdup(client);
    f->conn = conn ? strdup(conn) : NULL;
    f->edge_id = edge_id;
    wbuf_bytes(&f->request, payload, len);
    struct tier_control c = {.node = g.opt.node_id,
                             .node_len = strlen(g.opt.node_id),
                             .id = f->id,
                             .flags = admin ? TIER_CONTROL_ADMIN : 0,
                             .parts = 1,
                             .data = payload,
                             .len = len};
    int rc = f->client && (f->conn || !conn) && !f->request.failed ? TALLY_OK : TALLY_E_NOMEM;
    if (rc == TALLY_OK && len + 100 > (size_t)g.opt.max_message_bytes)
        rc = TALLY_E_TOO_LARGE;
    if (rc == TALLY_OK)
        rc = tier_control_write(&c, (size_t)g.opt.max_message_bytes, &g.buf,
                                g.edge ? emit_up : emit_to_speaker, NULL);
    if (rc != TALLY_OK)
        forward_done(f, rc == TALLY_E_TOO_LARGE
                            ? "request too large to pass to the hub (max_message_bytes)"
                            : "out of memory");
}

/* Requests the hub has not answered in time. */
static void forward_expire(uint64_t now)
{
    for (size_t i = 0; i < FORWARD_MAX; i++)
        if (g.fwd[i].id && now - g.fwd[i].sent_ms >= FORWARD_TIMEOUT_MS)
            forward_done(&g.fwd[i], g.edge ? "the hub did not answer (is the edge's bridge up?)"
                                           : "the group's speaker did not answer (is this light "
                                             "hub bridged to it?)");
}

/* A part of the hub's answer: taken in order (one bridge keeps it), sent to
 * the client once whole. */
static int on_hub_answer(const void *payload, size_t len)
{
    struct tier_control c;
    int rc = tier_control_read(payload, len, &c);
    if (rc != TALLY_OK || !(c.flags & TIER_CONTROL_ANSWER) || c.id == 0)
        return rc != TALLY_OK ? rc : TALLY_E_WIRE;
    struct forwarded *f = NULL;
    for (size_t i = 0; i < FORWARD_MAX && !f; i++)
        f = g.fwd[i].id == c.id ? &g.fwd[i] : NULL;
    if (!f)
        return TALLY_OK; /* answered already, by a timeout */
    if (c.part != f->parts) {
        forward_done(f, "the hub's answer arrived incomplete");
        return TALLY_OK;
    }
    wbuf_bytes(&f->answer, c.data, c.len);
    if (++f->parts == c.parts) {
        wbuf_u8(&f->answer, 0);
        forward_done(f, f->answer.failed ? "out of memory" : NULL);
    }
    return TALLY_OK;
}

struct answer_to {
    const char *topic, *conn; /* the answer's topic, and the connection it goes to alone */
};

static void emit_answer(const struct wire_buf *msg, void *ud)
{
    const struct answer_to *a = ud;
    snprintf(g.topic, sizeof(g.topic), "%s", a->topic);
    send_repl(a->conn, msg);
}

/* resp as the answer to request `id` on topic, to the connection conn. */
static int answer_on(const char *topic, const char *conn, uint64_t id, const char *resp)
{
    struct tier_control a = {.node = g.opt.node_id,
                             .node_len = strlen(g.opt.node_id),
                             .id = id,
                             .flags = TIER_CONTROL_ANSWER,
                             .data = (const uint8_t *)resp,
                             .len = strlen(resp)};
    struct answer_to to = {topic, conn};
    return tier_control_write(&a, (size_t)g.opt.max_message_bytes, &g.buf, emit_answer, &to);
}

/* An edge's request answered on its DOWN topic, over the connection its UP
 * came (conn). */
static void answer_edge(const char *edge, const char *conn, uint64_t id, const char *resp)
{
    char topic[TALLY_NODE_ID_MAX + 32];
    snprintf(topic, sizeof(topic), "$tally/down/%s", edge);
    if (answer_on(topic, conn, id, resp) != TALLY_OK)
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot answer edge %s", edge);
}

/* A request of another node (c), run here unless it is stale: one queued on
 * a bridge that was down (one that keeps its session delivers it when it
 * reconnects) comes after the sender told its client that we did not
 * answer. NULL when out of memory. */
static char *run_remote(const struct tier_control *c, const char *who)
{
    bool stale = wall_ms() > (c->id >> 16) + FORWARD_TIMEOUT_MS / 2;
    return stale ? control_error_all(c->data, c->len,
                                     "the request reached the hub over 2.5 s after it was "
                                     "sent (a bridge was down, or the two clocks are "
                                     "apart); it was not run")
                 : control_run(c->data, c->len, c->flags & TIER_CONTROL_ADMIN, who);
}

/* A hub runs an edge's request (the edge allowed it) and answers on the
 * edge's DOWN topic; a light hub passes one that resets to its group's
 * speaker, and answers when it does (control_forward). */
static int on_edge_control(const struct mosquitto_evt_message *ev)
{
    struct tier_control c;
    int rc = tier_control_read(ev->payload, ev->payloadlen, &c);
    const char *edge = ev->topic + strlen("$tally/up/");
    size_t edge_len = strcspn(edge, "@"); /* past it, the edge's group */
    if (rc != TALLY_OK || (c.flags & TIER_CONTROL_ANSWER) || c.parts != 1 ||
        edge_len != c.node_len || memcmp(edge, c.node, c.node_len) != 0)
        return rc != TALLY_OK ? rc : TALLY_E_WIRE;
    char id[TALLY_NODE_ID_MAX + 1], who[TALLY_NODE_ID_MAX + 64];
    snprintf(id, sizeof(id), "%.*s", (int)edge_len, edge);
    snprintf(who, sizeof(who), "(a client of edge %s)", id);
    const char *conn = mosquitto_client_id(ev->client);
    if (g.table.light && control_resets(c.data, c.len) && conn) {
        control_forward(c.data, c.len, c.flags & TIER_CONTROL_ADMIN, id, conn, c.id);
        return TALLY_OK;
    }
    char *resp = run_remote(&c, who);
    if (!resp)
        return TALLY_E_NOMEM;
    char topic[TALLY_NODE_ID_MAX + 32];
    snprintf(topic, sizeof(topic), "$tally/down/%s", id);
    rc = answer_on(topic, conn, c.id, resp);
    free(resp);
    return rc;
}

/* $tally/v1/ctl/<node>: a light hub's request that resets (control_forward),
 * run by the speaker it names and answered on $tally/v1/ctla/<light hub>
 * over the connection it came; a hub it does not name drops it (a light
 * hub is bridged to its group's full hubs: README, Light hubs). */
static int on_ctl(const struct mosquitto_evt_message *ev, bool *route)
{
    struct tier_control c;
    (void)route;
    if (strcmp(ev->topic + strlen("$tally/v1/ctl/"), g.opt.node_id) != 0 || g.edge)
        return TALLY_OK;
    int rc = tier_control_read(ev->payload, ev->payloadlen, &c);
    if (rc != TALLY_OK || (c.flags & TIER_CONTROL_ANSWER) || c.parts != 1 ||
        node_id_check(c.node, c.node_len) != TALLY_OK)
        return rc != TALLY_OK ? rc : TALLY_E_WIRE;
    char who[TALLY_NODE_ID_MAX + 64], topic[TALLY_NODE_ID_MAX + 32];
    snprintf(who, sizeof(who), "(a client of light hub %.*s)", (int)c.node_len, c.node);
    snprintf(topic, sizeof(topic), "$tally/v1/ctla/%.*s", (int)c.node_len, c.node);
    char *resp = run_remote(&c, who);
    if (!resp)
        return TALLY_E_NOMEM;
    rc = answer_on(topic, mosquitto_client_id(ev->client), c.id, resp);
    free(resp);
    return rc;
}

/* $tally/v1/ctla/<node>: the speaker's answer to our request, if we are
 * <node>. */
static int on_ctla(const struct mosquitto_evt_message *ev, bool *route)
{
    (void)route;
    if (strcmp(ev->topic + strlen("$tally/v1/ctla/"), g.opt.node_id) != 0 || g.edge)
        return TALLY_OK;
    return on_hub_answer(ev->payload, ev->payloadlen);
}

/* $CONTROL/tally/v1: only admins, and readers asking only to read, get here
 * (on_acl_check); the answer goes to the asking client alone, as
 * dynamic-security's does. */
static int on_control(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_control *ev = event_data;
    (void)event;
    (void)userdata;
    const char *client = mosquitto_client_id(ev->client);
    if (g.edge || (g.table.light && control_resets(ev->payload, ev->payloadlen))) {
        control_forward(ev->payload, ev->payloadlen, is_admin(ev->client), client, NULL, 0);
        return MOSQ_ERR_SUCCESS;
    }
    char *resp = control_run(ev->payload, ev->payloadlen, is_admin(ev->client), client);
    if (!resp)
        return MOSQ_ERR_NOMEM;
    control_answer(client, resp);
    free(resp);
    return MOSQ_ERR_SUCCESS;
}

/* ==== Plugin entry points ==== */

static const struct {
    int event;
    MOSQ_FUNC_generic_callback cb;
    const char *event_data;
} callbacks[] = {
    {MOSQ_EVT_MESSAGE, on_message, NULL},          {MOSQ_EVT_ACL_CHECK, on_acl_check, NULL},
    {MOSQ_EVT_DISCONNECT, on_disconnect, NULL},    {MOSQ_EVT_TICK, on_tick, NULL},
    {MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC},
};

TALLY_EXPORT int mosquitto_plugin_version(int supported_version_count,
                                          const int *supported_versions)
{
    for (int i = 0; i < supported_version_count; i++)
        if (supported_versions[i] == 5)
            return 5;
    return -1;
}

static int load_state(void)
{
    if (!g.opt.state_dir[0]) {
        uint64_t rnd = 0;
        if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
            rnd = (uint64_t)getpid();
        /* later than every earlier life: see fold.c, "Retirement" */
        g.incarnation = tally_incarnation_new(wall_ms(), rnd, 0);
        mosquitto_log_printf(MOSQ_LOG_NOTICE,
                             "tally: no plugin_opt_state_dir: state is in memory only and a "
                             "restart starts this node empty (its peers hand its counts back)");
        return MOSQ_ERR_SUCCESS;
    }
    char err[512] = "";
    g.persist = persist_open(g.opt.state_dir, g.opt.node_id, g.opt.fsync_interval_ms,
                             g.opt.snapshot_interval_ms, &g.table, &g.dedup, &g.incarnation, err,
                             sizeof(err));
    if (!g.persist) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: %s", err);
        return MOSQ_ERR_UNKNOWN;
    }
    if (err[0])
        mosquitto_log_printf(MOSQ_LOG_WARNING, "tally: %s", err);
    return MOSQ_ERR_SUCCESS;
}

/* The group and region the state on disk was made in (persist.c's 'G'). An
 * edge takes its group back: its count is in that group's sum, and a hub of
 * another group must go on refusing it (edge_of_other_group). A hub holding
 * counters whose group or region changed does not start: the other groups
 * hold its group's sum under the old name and would count it again under
 * the new, and a hub turned into a region keeps the other groups' slots
 * beside their region's sum. A state_dir of an earlier version has no
 * scope: taken as it is. */
static int scope_start(void)
{
    const struct tally_scope *sc = &g.table.scope;
    if (g.edge) {
        if (sc->known)
            snprintf(g.tier_edge.group, sizeof(g.tier_edge.group), "%s", sc->group);
        return TALLY_OK;
    }
    if (sc->known && g.table.ncounters &&
        (strcmp(sc->group, g.opt.group) != 0 || strcmp(sc->region, g.opt.region) != 0)) {
        mosquitto_log_printf(MOSQ_LOG_ERR,
                             "tally: %s holds counts made in group '%s', region '%s', and "
                             "plugin_opt_group and plugin_opt_region are now '%s' and '%s': the "
                             "other groups and regions hold them under the old names and would "
                             "count them twice. Keep the names, or start every hub of the tree "
                             "with an empty state_dir (README, Groups of hubs)",
                             g.opt.state_dir, sc->group, sc->region, g.opt.group, g.opt.region);
        return TALLY_E_WIRE;
    }
    return scope_set(g.opt.group, g.opt.region);
}

/* A node folds the slots of its past lives (fold.c) once it knows which are
 * retired: from the first peer's stats, or after peer_timeout_ms alone. */
static int fold_start(void)
{
    table_set_self(&g.table, g.self);
    fold_gc_init(&g.fold, (uint64_t)g.opt.member_timeout_ms,
                 mono_ms() + (uint64_t)g.opt.peer_timeout_ms);
    /* removeNode refuses a node heard within this: its stats come every stats_interval_ms */
    long long alive = 3 * g.opt.stats_interval_ms;
    g.fold.alive_ms = (uint64_t)(alive > g.opt.peer_timeout_ms ? alive : g.opt.peer_timeout_ms);
    return TALLY_OK;
}

/* An edge restarted with its state sends its whole slot to whichever hub it
 * reaches first. Its UP seqs start at the wall clock in ms, as presence
 * seqs do (next_seq): above those of its last run, which sent fewer than
 * one UP part a millisecond, with nothing on disk. */
static int edge_start(void)
{
    tier_edge_init(&g.tier_edge, g.opt.node_id, g.incarnation, wall_ms());
    for (struct tally_counter *c = g.table.counters; c; c = c->hh.next)
        if (tier_edge_wrote(&g.tier_edge, c->name, c->name_len) != TALLY_OK)
            return TALLY_E_NOMEM;
    return TALLY_OK;
}

TALLY_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                                       struct mosquitto_opt *opts, int opt_count)
{
    memset(&g, 0, sizeof(g));
    g.id = identifier;
    *userdata = &g;
    options_defaults(&g.opt);
    for (int i = 0; i < opt_count; i++)
        if (option_set(&g.opt, opts[i].key, opts[i].value ? opts[i].value : ""))
            return MOSQ_ERR_INVAL;
    if (options_check(&g.opt))
        return MOSQ_ERR_INVAL;
    g.prefix_len = strlen(g.opt.prefix);
    g.presence_prefix_len = strlen(g.opt.presence_prefix);
    g.acl_defer = strcmp(g.opt.acl, "defer") == 0;
    table_init(&g.table, (size_t)g.opt.max_counters, (uint32_t)g.opt.max_devices);
    presence_init(&g.presence, (uint64_t)g.opt.max_viewers);
    interest_init(&g.interest, g.opt.prefix);
    refresh_init(&g.refresh, (uint32_t)g.opt.unwatched_publish_budget, mono_ms());
    if (dedup_init(&g.dedup, (uint32_t)g.opt.dedup_window) != TALLY_OK)
        goto error;
    /* our units, group first, each in the next (plugin_opt_region's path),
     * bound before the state is loaded: a light hub's table, and a lean
     * digest, tell our units' replicas from the others' (group.c, "Light
     * hubs") */
    g.table.light = strcmp(g.opt.hub, "light") == 0;
    g.table.split = strcmp(g.opt.hub, "split") == 0;
    g.table.lean = g.opt.hub[0] != '\0';
    char names[TALLY_LEVELS][GROUP_NAME_MAX + 1] = {{0}};
    snprintf(names[0], sizeof(names[0]), "%s", g.opt.group);
    /* checked with the options */
    int levels = 1 + region_path(g.opt.region, strlen(g.opt.region), names + 1);
    /* a session that grows from one start to the next: sums are told new by it */
    uint64_t sums_session = wall_ms();
    for (int k = 0; k < TALLY_LEVELS; k++) {
        struct tally_group *u = g.units[k] = k ? &g.region[k - 1] : &g.group;
        group_init(u, names[k], sums_session, 10 * (uint64_t)g.opt.sync_interval_ms);
        group_scope(u, k + 1, k + 1 < TALLY_LEVELS ? names[k + 1] : NULL);
        u->quiet_ms = 3 * heartbeat_ms(); /* as repl.c stops hearing */
        u->sums_budget = group_sums_budget(g.opt.sums_budget, levels);
        if (group_bind(u, &g.table) != TALLY_OK)
            goto error;
    }
    if (load_state() != MOSQ_ERR_SUCCESS)
        goto error;
    if (table_replica(&g.table, g.opt.node_id, strlen(g.opt.node_id), g.incarnation, &g.self) !=
        TALLY_OK)
        goto error;
    g.edge = strcmp(g.opt.role, "edge") == 0;
    if (!g.edge && fold_start() != TALLY_OK)
        goto error;
    uint64_t session;
    if (getrandom(&session, sizeof(session), 0) != sizeof(session))
        session = wall_ms() ^ (uint64_t)getpid() << 40;
    repl_init(&g.repl, session | 1); /* never 0, which means "version 1" */
    scope_name_of((const struct tally_group *const *)g.units, &g.ours);
    if ((g.edge && edge_start() != TALLY_OK) || scope_start() != TALLY_OK)
        goto error;
    if (!g.edge) {
        tier_hub_init(&g.tier_hub, g.opt.node_id, session | 1);
        snprintf(g.tier_hub.group, sizeof(g.tier_hub.group), "%s", g.group.name);
        g.tier_hub.persist = g.persist;
    }
    if (!g.edge && group_on(&g.group)) {
        g.presence.scope_levels = (uint8_t)levels;
        for (int k = 0; k < TALLY_LEVELS; k++)
            if (group_on(g.units[k]))
                scope_init(g.scopes[k] = &g.scope[k], g.units[k], &g.presence);
    }
    g.start_ms = mono_ms();
    table_set_clock(&g.table, 0); /* what was loaded is not a recent change */
    check_limits();
    for (size_t i = 0; i < sizeof(callbacks) / sizeof(callbacks[0]); i++) {
        if (mosquitto_callback_register(identifier, callbacks[i].event, callbacks[i].cb,
                                        callbacks[i].event_data, NULL) != MOSQ_ERR_SUCCESS) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot register callback for event %d",
                                 callbacks[i].event);
            goto error;
        }
    }
    if (g.opt.protect_clientids[0] &&
        mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL) !=
            MOSQ_ERR_SUCCESS) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "tally: cannot register callback for logins");
        goto error;
    }
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         "tally: node %s (incarnation %016" PRIx64 "), %zu counters loaded, "
                         "totals on %s/<name>, viewers on %s/<page>",
                         g.opt.node_id, g.incarnation, g.table.ncounters, g.opt.prefix,
                         g.opt.presence_prefix);
    /* Everything loaded from disk is dirty: the first flush publishes it and
     * offers it to the peers. */
    return MOSQ_ERR_SUCCESS;
error:
    mosquitto_log_printf(MOSQ_LOG_ERR, "tally: initialisation failed");
    persist_close(g.persist, &g.table, &g.dedup);
    g.persist = NULL;
    dedup_free(&g.dedup);
    refresh_free(&g.refresh);
    interest_free(&g.interest);
    table_free(&g.table);
    presence_free(&g.presence);
    return MOSQ_ERR_UNKNOWN;
}

TALLY_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
    (void)userdata;
    (void)opts;
    (void)opt_count;
    for (size_t i = 0; i < sizeof(callbacks) / sizeof(callbacks[0]); i++)
        mosquitto_callback_unregister(g.id, callbacks[i].event, callbacks[i].cb,
                                      callbacks[i].event_data);
    if (g.opt.protect_clientids[0])
        mosquitto_callback_unregister(g.id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
    persist_close(g.persist, &g.table, &g.dedup);
    g.persist = NULL;
    sync_writer_free(&g.writer);
    repl_free(&g.repl);
    for (int k = 0; k < TALLY_LEVELS; k++)
        group_free(k ? &g.region[k - 1] : &g.group);
    for (int k = 0; k < TALLY_LEVELS; k++)
        if (g.scopes[k])
            scope_free(g.scopes[k]);
    fold_gc_free(&g.fold);
    tier_edge_free(&g.tier_edge);
    tier_hub_free(&g.tier_hub);
    for (size_t i = 0; i < FORWARD_MAX; i++) {
        free(g.fwd[i].client);
        wbuf_free(&g.fwd[i].request);
        wbuf_free(&g.fwd[i].answer);
    }
    wbuf_free(&g.buf);
    dedup_free(&g.dedup);
    refresh_free(&g.refresh);
    interest_free(&g.interest);
    table_free(&g.table);
    presence_free(&g.presence);
    return MOSQ_ERR_SUCCESS;
}
