/*
 * tally: the command-line client of the tally counter service.
 *
 *   tally inc NAME [DELTA]   publish an increment, wait for the broker's PUBACK
 *   tally get NAME...        print the retained totals
 *   tally watch NAME...      follow totals live (a table on a terminal, lines otherwise)
 *   tally stats              print every node's figures from $tally/stats/<node>
 *
 * One function per command (cmd_inc, cmd_get, cmd_watch, cmd_stats) on top of a small client
 * layer over libmosquitto that connects with MQTT v5, waits for the CONNACK, subscribes on every
 * (re)connection and runs the network loop until a condition holds, a deadline passes or Ctrl-C.
 *
 * The loop is driven by hand with mosquitto_loop() rather than mosquitto_loop_forever() or a
 * loop thread: every command waits for "this happened, or that much time passed", and one
 * thread looping against a deadline says exactly that, with no locks and no thread to stop.
 * SIGINT (in watch) only sets a flag; select() inside mosquitto_loop() returns on the signal.
 *
 * Everything the user typed is validated before connecting, so a typo never reaches a broker.
 * Exit status: 0 success; 1 the broker answered but the command failed; 2 bad usage, or the
 * broker could not be reached.
 */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <uthash.h>

#define TALLY_VERSION "0.1.0"

#define EXIT_FAILED 1 /* the broker answered, but the command did not succeed */
#define EXIT_USAGE 2  /* bad command line, or no broker to talk to */

#define NAME_MAX_BYTES 200
#define ID_MAX_BYTES 64
#define MAX_SAFE_INTEGER 9007199254740991LL /* 2^53-1, exact in a JavaScript number */
#define KEEPALIVE_S 30
#define STATS_TOPIC "$tally/stats/+"
#define STATS_ROOT "$tally/stats/"

#define RATE_WINDOW_S 10.0
#define RATE_SAMPLES 128   /* totals are coalesced to ~10/s, so 10 s fit with room to spare */
#define REDRAW_TICK_S 0.25 /* the table redraws at most this often, and at least once a second */

/* ==== Command line ==== */

enum command { CMD_INC, CMD_GET, CMD_WATCH, CMD_STATS };

struct options {
    const char *host;
    int port;
    const char *username;
    const char *password;
    const char *prefix;
    double timeout_s;
    bool verbose;
    bool json;
    const char *id; /* inc: idempotency key, or NULL */
    int qos;        /* inc: QoS of the increment */
    enum command command;
    char **args; /* the command's own arguments, borrowed from argv */
    int nargs;
};

struct command_spec {
    const char *word;
    enum command command;
    int min_args;
    int max_args; /* -1: no limit */
};

static const struct command_spec commands[] = {
    {"inc", CMD_INC, 1, 2},
    {"get", CMD_GET, 1, -1},
    {"watch", CMD_WATCH, 1, -1},
    {"stats", CMD_STATS, 0, 0},
};

enum long_only_option {
    OPT_PREFIX = 256,
    OPT_TIMEOUT,
    OPT_HELP,
    OPT_VERSION,
    OPT_ID,
    OPT_QOS,
    OPT_JSON,
};

static const struct option long_options[] = {
    {"host", required_argument, NULL, 'h'},
    {"port", required_argument, NULL, 'p'},
    {"username", required_argument, NULL, 'u'},
    {"password", required_argument, NULL, 'P'},
    {"prefix", required_argument, NULL, OPT_PREFIX},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {"id", required_argument, NULL, OPT_ID},
    {"qos", required_argument, NULL, OPT_QOS},
    {"json", no_argument, NULL, OPT_JSON},
    {NULL, 0, NULL, 0},
};

static void print_usage(FILE *out)
{
    fputs("Usage: tally [OPTIONS] COMMAND [ARGS] [OPTIONS]\n"
          "\n"
          "Count with the tally plugin for Mosquitto.\n"
          "\n"
          "Commands:\n"
          "  inc NAME [DELTA]   add DELTA (a signed integer, default +1) to counter NAME and\n"
          "                     wait until the broker acknowledges it\n"
          "  get NAME...        print the total of each counter as NAME VALUE\n"
          "  watch NAME...      show totals live until Ctrl-C; NAME may be + for every counter\n"
          "  stats              show each node's figures from $tally/stats/<node>\n"
          "\n"
          "Options:\n"
          "  -h, --host HOST        broker host (default 127.0.0.1)\n"
          "  -p, --port PORT        broker port (default 1883)\n"
          "  -u, --username USER    MQTT username\n"
          "  -P, --password PASS    MQTT password\n"
          "      --prefix PREFIX    counter topic prefix (default counters)\n"
          "      --timeout SECONDS  how long to wait for the broker (default 2)\n"
          "      --id KEY           inc: idempotency key, at most 64 bytes; an increment\n"
          "                         retried with the same KEY counts once\n"
          "      --qos 0|1|2        inc: MQTT QoS of the increment (default 1; with 0 a\n"
          "                         rejection cannot be reported)\n"
          "      --json             stats: print each node's JSON, one object per line\n"
          "  -v, --verbose          report progress on stderr\n"
          "      --help             show this help and exit\n"
          "      --version          show the version and exit\n"
          "\n"
          "A NAME is 1 to 200 bytes of UTF-8 without '/', '+', '#' or control characters,\n"
          "not starting with '$'. A negative DELTA is written as is: tally inc NAME -3.\n"
          "\n"
          "Exit status: 0 success; 1 the broker answered but the command failed (increment\n"
          "rejected, no total, no stats, no answer in time); 2 bad usage or broker unreachable.\n",
          out);
}

static void usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("tally: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'tally --help' for more information.\n", stderr);
}

/* Writes s with control bytes escaped, so an error message never garbles the terminal. */
static void fput_escaped(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            fprintf(out, "\\x%02x", *p);
        } else {
            fputc(*p, out);
        }
    }
}

/* ==== Validation: each returns NULL when the text is acceptable, else why it is not ==== */

static const char *name_problem(const char *name)
{
    size_t len = strlen(name);

    if (len == 0) {
        return "is empty";
    }
    if (len > NAME_MAX_BYTES) {
        return "is longer than 200 bytes";
    }
    if (strpbrk(name, "/+#")) {
        return "must not contain '/', '+' or '#'";
    }
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            return "must not contain control characters";
        }
    }
    if (name[0] == '$') {
        return "must not start with '$'";
    }
    if (mosquitto_validate_utf8(name, (int)len) != MOSQ_ERR_SUCCESS) {
        return "is not valid UTF-8";
    }
    return NULL;
}

/* watch also takes a whole-level wildcard; '#' means the same as '+' since names are one level. */
static bool name_is_wildcard(const char *name)
{
    return strcmp(name, "+") == 0 || strcmp(name, "#") == 0;
}

static const char *delta_problem(const char *text, long long *delta)
{
    const char *p = text;
    bool negative = false;
    long long magnitude = 0;

    if (*p == '+' || *p == '-') {
        negative = *p == '-';
        p++;
    }
    if (*p == '\0') {
        return "must be a whole number such as 5 or -3";
    }
    for (; *p; p++) {
        if (*p < '0' || *p > '9') {
            return "must be a whole number such as 5 or -3";
        }
        magnitude = magnitude * 10 + (*p - '0');
        if (magnitude > MAX_SAFE_INTEGER) {
            return "must be between -9007199254740991 and 9007199254740991";
        }
    }
    *delta = negative ? -magnitude : magnitude;
    return NULL;
}

static const char *id_problem(const char *id)
{
    if (id[0] == '\0' || strlen(id) > ID_MAX_BYTES) {
        return "must be 1 to 64 bytes";
    }
    for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            return "must not contain control characters";
        }
    }
    if (mosquitto_validate_utf8(id, (int)strlen(id)) != MOSQ_ERR_SUCCESS) {
        return "is not valid UTF-8";
    }
    return NULL;
}

static const char *prefix_problem(const char *prefix)
{
    size_t len = strlen(prefix);

    if (len == 0) {
        return "is empty";
    }
    if (strpbrk(prefix, "+#")) {
        return "must not contain '+' or '#'";
    }
    if (prefix[len - 1] == '/') {
        return "must not end with '/'";
    }
    return NULL;
}

static bool parse_port(const char *text, int *port)
{
    char *end;
    long value;

    errno = 0;
    value = strtol(text, &end, 10);
    if (errno || end == text || *end || value < 1 || value > 65535) {
        return false;
    }
    *port = (int)value;
    return true;
}

static bool parse_timeout(const char *text, double *seconds)
{
    char *end;
    double value;

    errno = 0;
    value = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(value) || value <= 0 || value > 86400) {
        return false;
    }
    *seconds = value;
    return true;
}

/* A negative DELTA such as -3 is an argument, not a cluster of short options. */
static bool looks_like_negative_number(const char *arg)
{
    return arg[0] == '-' && arg[1] != '\0' && strspn(arg + 1, "0123456789") == strlen(arg + 1);
}

static const struct command_spec *find_command(const char *word)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].word, word) == 0) {
            return &commands[i];
        }
    }
    return NULL;
}

/* Applies one option. Returns -1 to go on, or the exit status to stop with. */
static int apply_option(struct options *opt, int c, const char *arg, bool *qos_given)
{
    const char *problem;

    switch (c) {
    case 'h':
        opt->host = arg;
        return -1;
    case 'p':
        if (!parse_port(arg, &opt->port)) {
            usage_error("bad port '%s': must be a number from 1 to 65535", arg);
            return EXIT_USAGE;
        }
        return -1;
    case 'u':
        opt->username = arg;
        return -1;
    case 'P':
        opt->password = arg;
        return -1;
    case OPT_PREFIX:
        if ((problem = prefix_problem(arg))) {
            usage_error("bad prefix '%s': %s", arg, problem);
            return EXIT_USAGE;
        }
        opt->prefix = arg;
        return -1;
    case OPT_TIMEOUT:
        if (!parse_timeout(arg, &opt->timeout_s)) {
            usage_error("bad timeout '%s': must be a number of seconds above 0", arg);
            return EXIT_USAGE;
        }
        return -1;
    case 'v':
        opt->verbose = true;
        return -1;
    case OPT_HELP:
        print_usage(stdout);
        return EXIT_SUCCESS;
    case OPT_VERSION:
        printf("tally %s (libmosquitto %d.%d.%d)\n", TALLY_VERSION, LIBMOSQUITTO_MAJOR,
               LIBMOSQUITTO_MINOR, LIBMOSQUITTO_REVISION);
        return EXIT_SUCCESS;
    case OPT_ID:
        if ((problem = id_problem(arg))) {
            fputs("tally: bad --id \"", stderr);
            fput_escaped(stderr, arg);
            fprintf(stderr, "\": %s\n", problem);
            return EXIT_USAGE;
        }
        opt->id = arg;
        return -1;
    case OPT_QOS:
        if (strlen(arg) != 1 || arg[0] < '0' || arg[0] > '2') {
            usage_error("bad QoS '%s': must be 0, 1 or 2", arg);
            return EXIT_USAGE;
        }
        opt->qos = arg[0] - '0';
        *qos_given = true;
        return -1;
    case OPT_JSON:
        opt->json = true;
        return -1;
    default:
        return EXIT_USAGE;
    }
}

/* Checks what only makes sense together: the command, its argument count, its own options. */
static int check_command(struct options *opt, char **positional, int npositional, bool qos_given)
{
    const struct command_spec *spec;

    if (npositional == 0) {
        usage_error("no command given (inc, get, watch or stats)");
        return EXIT_USAGE;
    }
    spec = find_command(positional[0]);
    if (!spec) {
        usage_error("unknown command '%s' (expected inc, get, watch or stats)", positional[0]);
        return EXIT_USAGE;
    }
    opt->command = spec->command;
    opt->args = positional + 1;
    opt->nargs = npositional - 1;
    if (opt->nargs < spec->min_args || (spec->max_args >= 0 && opt->nargs > spec->max_args)) {
        usage_error("wrong number of arguments for '%s'", spec->word);
        return EXIT_USAGE;
    }
    if ((opt->id || qos_given) && opt->command != CMD_INC) {
        usage_error("--id and --qos only apply to inc");
        return EXIT_USAGE;
    }
    if (opt->password && !opt->username) {
        usage_error("--password needs --username");
        return EXIT_USAGE;
    }
    if (opt->json && opt->command != CMD_STATS) {
        usage_error("--json only applies to stats");
        return EXIT_USAGE;
    }
    return -1;
}

/*
 * Options may come before or after the command, so getopt runs in "return in order" mode
 * ('-' in the optstring) and hands back every non-option argument as code 1.
 * `positional` must have room for argc pointers. Returns -1 to go on, or the exit status.
 */
static int parse_command_line(int argc, char **argv, struct options *opt, char **positional)
{
    int npositional = 0;
    bool qos_given = false;
    int c;

    opterr = 0;
    while (true) {
        if (optind < argc && looks_like_negative_number(argv[optind])) {
            positional[npositional++] = argv[optind++];
            continue;
        }
        c = getopt_long(argc, argv, "-:h:p:u:P:v", long_options, NULL);
        if (c == -1) {
            break;
        }
        if (c == 1) {
            positional[npositional++] = optarg;
        } else if (c == '?') {
            usage_error("unknown option '%s'", argv[optind - 1]);
            return EXIT_USAGE;
        } else if (c == ':') {
            usage_error("option '%s' needs a value", argv[optind - 1]);
            return EXIT_USAGE;
        } else {
            int status = apply_option(opt, c, optarg, &qos_given);
            if (status >= 0) {
                return status;
            }
        }
    }
    while (optind < argc) { /* everything after "--" */
        positional[npositional++] = argv[optind++];
    }
    return check_command(opt, positional, npositional, qos_given);
}

/* Prints why the NAME arguments are unusable. Returns true when all are fine. */
static bool names_are_valid(char **names, int count, bool allow_wildcards)
{
    bool ok = true;

    for (int i = 0; i < count; i++) {
        const char *problem;
        if (allow_wildcards && name_is_wildcard(names[i])) {
            continue;
        }
        if ((problem = name_problem(names[i]))) {
            fputs("tally: bad name \"", stderr);
            fput_escaped(stderr, names[i]);
            fprintf(stderr, "\": %s\n", problem);
            ok = false;
        }
    }
    return ok;
}

/* ==== Small helpers ==== */

static void *check_alloc(void *p)
{
    if (!p) {
        fputs("tally: out of memory\n", stderr);
        exit(EXIT_FAILED);
    }
    return p;
}

/* Returns a formatted string; caller frees. */
static char *format(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return check_alloc(n < 0 ? NULL : s);
}

static double now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_epoch_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* "0.4s", "12s", "5m", "3h", "2d": short enough for a table cell. */
static char *format_age(double ms)
{
    double s = ms < 0 ? 0 : ms / 1000.0;

    if (s < 10) {
        return format("%.1fs", s);
    }
    if (s < 120) {
        return format("%llds", (long long)s);
    }
    if (s < 7200) {
        return format("%lldm", (long long)(s / 60));
    }
    if (s < 172800) {
        return format("%lldh", (long long)(s / 3600));
    }
    return format("%lldd", (long long)(s / 86400));
}

/*
 * Prints rows of cells (row-major, nrows x ncols) under headers, each column as wide as its
 * widest cell: the first and last columns left-aligned (names, lists), the rest right-aligned
 * (numbers).
 */
static void table_print(FILE *out, size_t ncols, const char *const *headers, char *const *cells,
                        size_t nrows)
{
    int width[16] = {0};

    assert(ncols <= sizeof(width) / sizeof(width[0]));
    for (size_t c = 0; c < ncols; c++) {
        width[c] = (int)strlen(headers[c]);
        for (size_t r = 0; r < nrows; r++) {
            int w = (int)strlen(cells[r * ncols + c]);
            width[c] = w > width[c] ? w : width[c];
        }
    }
    for (size_t r = 0; r <= nrows; r++) {
        for (size_t c = 0; c < ncols; c++) {
            const char *text = r == 0 ? headers[c] : cells[(r - 1) * ncols + c];
            bool left = c == 0 || c == ncols - 1;
            if (c == ncols - 1) {
                fprintf(out, "%s\n", text);
            } else {
                fprintf(out, left ? "%-*s  " : "%*s  ", width[c], text);
            }
        }
    }
}

static void cells_free(char **cells, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(cells[i]);
    }
    free(cells);
}

/* ==== MQTT client: connect, subscribe on every connection, loop until something ==== */

struct client {
    struct mosquitto *mosq;
    const struct options *opt;
    char **topics; /* subscribed on every CONNACK; borrowed */
    int ntopics;
    bool connack_received;
    int connack_reason;
    bool connected;
    bool subscribe_refused;
    void *command_state; /* the running command's own state; borrowed */
};

enum wait_result { WAIT_DONE, WAIT_TIMEOUT, WAIT_LOST, WAIT_STOPPED };

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int signum)
{
    (void)signum;
    stop_requested = 1;
}

static void on_connect(struct mosquitto *mosq, void *obj, int reason, int flags,
                       const mosquitto_property *props)
{
    struct client *c = obj;
    (void)flags;
    (void)props;

    c->connack_received = true;
    c->connack_reason = reason;
    c->connected = reason == 0;
    if (c->connected && c->ntopics > 0) {
        mosquitto_subscribe_multiple(mosq, NULL, c->ntopics, c->topics, 0, 0, NULL);
    }
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int reason,
                          const mosquitto_property *props)
{
    struct client *c = obj;
    (void)mosq;
    (void)reason;
    (void)props;

    c->connected = false;
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int count, const int *granted,
                         const mosquitto_property *props)
{
    struct client *c = obj;
    (void)mosq;
    (void)mid;
    (void)props;

    for (int i = 0; i < count; i++) {
        if (granted[i] >= 0x80) {
            fprintf(stderr, "tally: the broker refused the subscription to %s: %s\n", c->topics[i],
                    mosquitto_reason_string(granted[i]));
            c->subscribe_refused = true;
        }
    }
}

typedef bool (*done_fn)(const struct client *c);
typedef void (*message_fn)(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                           const mosquitto_property *props);

/* Runs the network loop until done(c), the monotonic deadline, a lost connection or a signal. */
static enum wait_result client_wait(struct client *c, double deadline, done_fn done)
{
    while (!done(c)) {
        double left = deadline - now_monotonic();
        int rc;

        if (stop_requested) {
            return WAIT_STOPPED;
        }
        if (left <= 0) {
            return WAIT_TIMEOUT;
        }
        rc = mosquitto_loop(c->mosq, left > 0.1 ? 100 : (int)(left * 1000) + 1, 1);
        if (rc != MOSQ_ERR_SUCCESS) {
            return done(c) ? WAIT_DONE : WAIT_LOST;
        }
    }
    return WAIT_DONE;
}

static bool connack_received(const struct client *c)
{
    return c->connack_received;
}

static bool never(const struct client *c)
{
    (void)c;
    return false;
}

static void client_close(struct client *c)
{
    if (c->mosq) {
        if (c->connected) {
            mosquitto_disconnect_v5(c->mosq, MQTT_RC_NORMAL_DISCONNECTION, NULL);
        }
        mosquitto_destroy(c->mosq);
        c->mosq = NULL;
    }
}

/*
 * Connects with MQTT v5 and waits for the CONNACK within --timeout. Topics (borrowed) are
 * subscribed on every connection, and their messages go to on_message (NULL: none), which is
 * set before connecting so that no retained message can slip past it. command_state (borrowed)
 * is handed to the callbacks. Returns 0, or EXIT_USAGE after saying why it failed.
 */
static int client_open(struct client *c, const struct options *opt, char **topics, int ntopics,
                       message_fn on_message, void *command_state)
{
    int rc;

    memset(c, 0, sizeof(*c));
    c->opt = opt;
    c->topics = topics;
    c->ntopics = ntopics;
    c->command_state = command_state;
    c->mosq = check_alloc(mosquitto_new(NULL, true, c));
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_connect_v5_callback_set(c->mosq, on_connect);
    mosquitto_disconnect_v5_callback_set(c->mosq, on_disconnect);
    mosquitto_subscribe_v5_callback_set(c->mosq, on_subscribe);
    if (on_message) {
        mosquitto_message_v5_callback_set(c->mosq, on_message);
    }
    if (opt->username) {
        mosquitto_username_pw_set(c->mosq, opt->username, opt->password);
    }

    rc = mosquitto_connect_bind_v5(c->mosq, opt->host, opt->port, KEEPALIVE_S, NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "tally: cannot connect to %s:%d: %s\n", opt->host, opt->port,
                rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        return EXIT_USAGE;
    }
    switch (client_wait(c, now_monotonic() + opt->timeout_s, connack_received)) {
    case WAIT_DONE:
        if (c->connack_reason != 0) {
            fprintf(stderr, "tally: %s:%d refused the connection: %s\n", opt->host, opt->port,
                    mosquitto_reason_string(c->connack_reason));
            return EXIT_USAGE;
        }
        if (opt->verbose) {
            fprintf(stderr, "tally: connected to %s:%d\n", opt->host, opt->port);
        }
        return 0;
    case WAIT_TIMEOUT:
        fprintf(stderr, "tally: cannot connect to %s:%d: no answer within %g s\n", opt->host,
                opt->port, opt->timeout_s);
        return EXIT_USAGE;
    default:
        fprintf(stderr, "tally: cannot connect to %s:%d: the connection was closed\n", opt->host,
                opt->port);
        return EXIT_USAGE;
    }
}

/* Returns "<prefix>/<name>" for each name; caller frees with cells_free(topics, count). */
static char **counter_topics(const char *prefix, char **names, int count)
{
    char **topics = check_alloc(calloc((size_t)count, sizeof(*topics)));

    for (int i = 0; i < count; i++) {
        topics[i] = format("%s/%s", prefix, name_is_wildcard(names[i]) ? "+" : names[i]);
    }
    return topics;
}

/* ==== inc ==== */

struct inc_state {
    int mid;
    bool acknowledged;
    int reason;
    char *reason_string; /* the broker's explanation, if it sent one; owned */
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

static bool inc_acknowledged(const struct client *c)
{
    return ((const struct inc_state *)c->command_state)->acknowledged;
}

/* The payload the contract asks for: empty (+1), a decimal, or JSON with the id. Caller frees. */
static char *inc_payload(const char *delta_text, long long delta, const char *id)
{
    cJSON *obj;
    char *delta_json;
    char *payload;

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

static int inc_report(const struct options *opt, const struct inc_state *st, const char *name,
                      const char *topic, const char *payload, enum wait_result waited)
{
    if (waited == WAIT_TIMEOUT) {
        fprintf(stderr, "tally: no acknowledgement of the increment of %s within %g s\n", name,
                opt->timeout_s);
        return EXIT_FAILED;
    }
    if (waited != WAIT_DONE) {
        fprintf(stderr,
                "tally: the connection to %s:%d was lost before the increment of %s was "
                "acknowledged\n",
                opt->host, opt->port, name);
        return EXIT_FAILED;
    }
    if (st->reason >= 0x80) {
        fprintf(stderr, "tally: the increment of %s was rejected: %s (0x%02x)%s%s\n", name,
                mosquitto_reason_string(st->reason), st->reason, st->reason_string ? ": " : "",
                st->reason_string ? st->reason_string : "");
        return EXIT_FAILED;
    }
    if (opt->verbose) {
        fprintf(stderr, "tally: published '%s' to %s (QoS %d): %s\n", payload, topic, opt->qos,
                opt->qos == 0 ? "sent" : "acknowledged");
    }
    return EXIT_SUCCESS;
}

static int cmd_inc(const struct options *opt)
{
    const char *name = opt->args[0];
    const char *delta_text = opt->nargs > 1 && opt->args[1][0] ? opt->args[1] : NULL;
    long long delta = 1;
    const char *problem;
    struct inc_state st = {.mid = -1};
    struct client c;
    char *topic, *payload;
    int status;

    if (!names_are_valid(opt->args, 1, false)) {
        return EXIT_USAGE;
    }
    if (delta_text && (problem = delta_problem(delta_text, &delta))) {
        fputs("tally: bad delta \"", stderr);
        fput_escaped(stderr, delta_text);
        fprintf(stderr, "\": %s\n", problem);
        return EXIT_USAGE;
    }
    if ((status = client_open(&c, opt, NULL, 0, NULL, &st)) != 0) {
        client_close(&c);
        return status;
    }
    mosquitto_publish_v5_callback_set(c.mosq, inc_on_publish);
    topic = format("%s/%s/inc", opt->prefix, name);
    payload = inc_payload(delta_text, delta, opt->id);
    if (mosquitto_publish_v5(c.mosq, &st.mid, topic, (int)strlen(payload), payload, opt->qos, false,
                             NULL) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "tally: cannot publish to %s\n", topic);
        status = EXIT_FAILED;
    } else {
        enum wait_result waited =
            client_wait(&c, now_monotonic() + opt->timeout_s, inc_acknowledged);
        status = inc_report(opt, &st, name, topic, payload, waited);
    }
    client_close(&c);
    free(st.reason_string);
    free(topic);
    free(payload);
    return status;
}

/* ==== get ==== */

struct get_state {
    char **topics; /* one per name, in argument order; borrowed */
    char **values; /* the total seen for each name, or NULL; owned */
    int count;
};

static void get_on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                           const mosquitto_property *props)
{
    struct get_state *st = ((struct client *)obj)->command_state;
    (void)mosq;
    (void)props;

    if (msg->payloadlen == 0) {
        return;
    }
    for (int i = 0; i < st->count; i++) {
        if (strcmp(msg->topic, st->topics[i]) == 0) {
            free(st->values[i]);
            st->values[i] = format("%.*s", msg->payloadlen, (const char *)msg->payload);
        }
    }
}

static bool get_complete(const struct client *c)
{
    const struct get_state *st = c->command_state;

    if (c->subscribe_refused) {
        return true;
    }
    for (int i = 0; i < st->count; i++) {
        if (!st->values[i]) {
            return false;
        }
    }
    return true;
}

static int cmd_get(const struct options *opt)
{
    struct get_state st = {.count = opt->nargs};
    struct client c;
    int status;

    if (!names_are_valid(opt->args, opt->nargs, false)) {
        return EXIT_USAGE;
    }
    st.topics = counter_topics(opt->prefix, opt->args, opt->nargs);
    st.values = check_alloc(calloc((size_t)st.count, sizeof(*st.values)));
    status = client_open(&c, opt, st.topics, st.count, get_on_message, &st);
    if (status == 0) {
        if (client_wait(&c, now_monotonic() + opt->timeout_s, get_complete) == WAIT_LOST) {
            fprintf(stderr, "tally: the connection to %s:%d was lost\n", opt->host, opt->port);
        }
        for (int i = 0; i < st.count; i++) {
            if (st.values[i]) {
                printf("%s %s\n", opt->args[i], st.values[i]);
            } else {
                fprintf(stderr, "tally: no total for %s within %g s (nothing retained on %s)\n",
                        opt->args[i], opt->timeout_s, st.topics[i]);
                status = EXIT_FAILED;
            }
        }
    }
    client_close(&c);
    cells_free(st.values, (size_t)st.count);
    cells_free(st.topics, (size_t)st.count);
    return status;
}

/* ==== watch ==== */

struct sample {
    double t; /* monotonic seconds */
    long long value;
};

struct watched {
    char *name; /* owned; the hash key */
    char value[32];
    bool numeric;
    time_t updated;
    struct sample samples[RATE_SAMPLES]; /* ring, oldest at `first` */
    int first;
    int count;
    UT_hash_handle hh;
};

struct watch_state {
    const char *prefix;
    bool table; /* stdout is a terminal: redraw a table rather than print lines */
    bool dirty;
    struct watched *counters; /* uthash, keyed by name */
};

static void rate_add_sample(struct watched *w, double t, long long value)
{
    if (w->count == RATE_SAMPLES) {
        w->first = (w->first + 1) % RATE_SAMPLES;
        w->count--;
    }
    w->samples[(w->first + w->count) % RATE_SAMPLES] = (struct sample){t, value};
    w->count++;
}

/*
 * The rate over the last RATE_WINDOW_S seconds. The total is a step function, so the newest
 * sample at or before the window's start is its value there; older ones are dropped. A counter
 * first seen inside the window is measured from that first sighting instead.
 */
static bool rate_per_second(struct watched *w, double now, double *rate)
{
    double start = now - RATE_WINDOW_S;
    const struct sample *base, *last;

    while (w->count >= 2 && w->samples[(w->first + 1) % RATE_SAMPLES].t <= start) {
        w->first = (w->first + 1) % RATE_SAMPLES;
        w->count--;
    }
    if (w->count == 0) {
        return false;
    }
    base = &w->samples[w->first];
    last = &w->samples[(w->first + w->count - 1) % RATE_SAMPLES];
    double span = base->t <= start ? RATE_WINDOW_S : now - base->t;
    *rate = (double)(last->value - base->value) / (span < 1.0 ? 1.0 : span);
    return true;
}

/* Returns the counter name in a total's topic "<prefix>/<name>", or NULL for any other topic. */
static const char *name_from_topic(const char *prefix, const char *topic)
{
    size_t len = strlen(prefix);

    if (strncmp(topic, prefix, len) != 0 || topic[len] != '/' || strchr(topic + len + 1, '/')) {
        return NULL;
    }
    return topic + len + 1;
}

static void watch_record(struct watch_state *st, const char *name, const char *value)
{
    struct watched *w;
    char *end;
    long long number;

    HASH_FIND_STR(st->counters, name, w);
    if (!w) {
        w = check_alloc(calloc(1, sizeof(*w)));
        w->name = format("%s", name);
        HASH_ADD_KEYPTR(hh, st->counters, w->name, strlen(w->name), w);
    }
    snprintf(w->value, sizeof(w->value), "%s", value);
    errno = 0;
    number = strtoll(value, &end, 10);
    w->numeric = errno == 0 && end != value && *end == '\0';
    if (w->numeric) {
        rate_add_sample(w, now_monotonic(), number);
    }
    w->updated = time(NULL);
    st->dirty = true;
}

static void watch_on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                             const mosquitto_property *props)
{
    struct watch_state *st = ((struct client *)obj)->command_state;
    const char *name = name_from_topic(st->prefix, msg->topic);
    char *value;
    (void)mosq;
    (void)props;

    if (!name || msg->payloadlen == 0) {
        return;
    }
    value = format("%.*s", msg->payloadlen, (const char *)msg->payload);
    if (st->table) {
        watch_record(st, name, value);
    } else {
        printf("%s %s\n", name, value);
    }
    free(value);
}

static int by_name(const struct watched *a, const struct watched *b)
{
    return strcmp(a->name, b->name);
}

/* Redraws the whole screen: a status line, then one row per counter as fits the terminal. */
static void watch_redraw(struct watch_state *st, const struct client *c)
{
    static const char *const headers[] = {"NAME", "VALUE", "RATE/S", "UPDATED"};
    struct winsize ws = {0};
    size_t total = HASH_COUNT(st->counters);
    size_t rows = total, n = 0;
    double now = now_monotonic();
    char **cells;

    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 4 && rows > ws.ws_row - 4u) {
        rows = ws.ws_row - 4u;
    }
    HASH_SORT(st->counters, by_name);
    cells = check_alloc(calloc(rows * 4 + 1, sizeof(*cells)));
    for (struct watched *w = st->counters; w && n < rows; w = w->hh.next, n++) {
        double rate;
        char clock[16];
        strftime(clock, sizeof(clock), "%H:%M:%S", localtime(&w->updated));
        cells[n * 4] = format("%s", w->name);
        cells[n * 4 + 1] = format("%s", w->value);
        cells[n * 4 + 2] =
            w->numeric && rate_per_second(w, now, &rate) ? format("%.1f", rate) : format("-");
        cells[n * 4 + 3] = format("%s", clock);
    }
    printf("\033[H\033[J"); /* home, clear to end of screen */
    printf("tally watch  %s:%d  %s  (Ctrl-C to quit)\n\n", c->opt->host, c->opt->port,
           c->connected ? "connected" : "reconnecting...");
    table_print(stdout, 4, headers, cells, rows);
    if (rows < total) {
        printf("... and %zu more\n", total - rows);
    }
    fflush(stdout);
    cells_free(cells, rows * 4);
    st->dirty = false;
}

static void watch_free(struct watch_state *st)
{
    struct watched *w, *tmp;

    HASH_ITER(hh, st->counters, w, tmp)
    {
        HASH_DEL(st->counters, w);
        free(w->name);
        free(w);
    }
}

/* Loops until Ctrl-C, reconnecting (and so resubscribing) whenever the broker goes away. */
static int watch_loop(struct client *c, struct watch_state *st)
{
    double last_redraw = 0;

    while (!stop_requested) {
        enum wait_result waited = client_wait(c, now_monotonic() + REDRAW_TICK_S, never);
        if (c->subscribe_refused) {
            return EXIT_FAILED;
        }
        if (waited == WAIT_LOST) {
            if (c->opt->verbose || !st->table) {
                fprintf(stderr, "tally: lost the connection to %s:%d, reconnecting\n", c->opt->host,
                        c->opt->port);
            }
            c->connected = false;
            while (!stop_requested && mosquitto_reconnect(c->mosq) != MOSQ_ERR_SUCCESS) {
                sleep(1); /* interrupted by Ctrl-C */
            }
        }
        if (st->table && (st->dirty || now_monotonic() - last_redraw >= 1.0)) {
            watch_redraw(st, c);
            last_redraw = now_monotonic();
        }
    }
    return EXIT_SUCCESS;
}

static int cmd_watch(const struct options *opt)
{
    struct watch_state st = {.prefix = opt->prefix, .table = isatty(STDOUT_FILENO)};
    struct sigaction sa = {.sa_handler = on_stop_signal};
    struct client c;
    char **topics;
    int status;

    if (!names_are_valid(opt->args, opt->nargs, true)) {
        return EXIT_USAGE;
    }
    /* No SA_RESTART: the signal must cut the loop's select() short. */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    topics = counter_topics(opt->prefix, opt->args, opt->nargs);
    status = client_open(&c, opt, topics, opt->nargs, watch_on_message, &st);
    if (status == 0) {
        status = watch_loop(&c, &st);
    }
    client_close(&c);
    watch_free(&st);
    cells_free(topics, (size_t)opt->nargs);
    return status;
}

/* ==== stats ==== */

struct node_stats {
    char *node; /* owned; the hash key, from the topic */
    cJSON *json;
    UT_hash_handle hh;
};

static void stats_on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                             const mosquitto_property *props)
{
    struct node_stats **nodes = ((struct client *)obj)->command_state;
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
    HASH_FIND_STR(*nodes, node, ns);
    if (!ns) {
        ns = check_alloc(calloc(1, sizeof(*ns)));
        ns->node = format("%s", node);
        HASH_ADD_KEYPTR(hh, *nodes, ns->node, strlen(ns->node), ns);
    }
    cJSON_Delete(ns->json);
    ns->json = json;
}

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

/* "n2 0.4s ago, n3 12s ago": each peer and how long ago it was last heard (epoch ms). */
static char *peers_cell(const cJSON *obj, double now_ms)
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
        const cJSON *heard = cJSON_GetObjectItemCaseSensitive(peer, "last_heard_ms");
        fprintf(out, "%s%s ", peer == peers->child ? "" : ", ", peer->string);
        if (cJSON_IsNumber(heard) && heard->valuedouble > 0) {
            char *age = format_age(now_ms - heard->valuedouble);
            fprintf(out, "%s ago", age);
            free(age);
        } else {
            fputs("never", out);
        }
    }
    fclose(out);
    return check_alloc(text);
}

static char *repl_cell(const cJSON *obj, const char *key)
{
    return number_cell(cJSON_GetObjectItemCaseSensitive(obj, "repl"), key);
}

static void stats_print_table(struct node_stats *nodes)
{
    static const char *const headers[] = {"NODE",     "COUNTERS",          "DEVICES",    "VIEWERS",
                                          "APPLIED",  "REJECTED",          "DUPLICATES", "REPL IN",
                                          "REPL OUT", "PEERS (LAST HEARD)"};
    enum { NCOLS = sizeof(headers) / sizeof(headers[0]) };
    size_t nrows = HASH_COUNT(nodes), r = 0;
    char **cells = check_alloc(calloc(nrows * NCOLS, sizeof(*cells)));
    double now_ms = now_epoch_ms();

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
        row[9] = peers_cell(ns->json, now_ms);
    }
    table_print(stdout, NCOLS, headers, cells, nrows);
    cells_free(cells, nrows * NCOLS);
}

static int by_node(const struct node_stats *a, const struct node_stats *b)
{
    return strcmp(a->node, b->node);
}

/* Nodes republish every few seconds; waiting the whole --timeout catches the non-retained. */
static int cmd_stats(const struct options *opt)
{
    char *topics[] = {STATS_TOPIC};
    struct node_stats *nodes = NULL, *ns, *tmp;
    struct client c;
    int status = client_open(&c, opt, topics, 1, stats_on_message, &nodes);

    if (status == 0) {
        if (client_wait(&c, now_monotonic() + opt->timeout_s, never) == WAIT_LOST) {
            fprintf(stderr, "tally: the connection to %s:%d was lost\n", opt->host, opt->port);
        }
        HASH_SORT(nodes, by_node);
        if (!nodes) {
            fprintf(stderr,
                    "tally: no node published stats on %s within %g s (is the tally "
                    "plugin loaded?)\n",
                    STATS_TOPIC, opt->timeout_s);
            status = EXIT_FAILED;
        }
        for (ns = nodes; ns && opt->json; ns = ns->hh.next) {
            char *line = check_alloc(cJSON_PrintUnformatted(ns->json));
            puts(line);
            free(line);
        }
        if (nodes && !opt->json) {
            stats_print_table(nodes);
        }
    }
    client_close(&c);
    HASH_ITER(hh, nodes, ns, tmp)
    {
        HASH_DEL(nodes, ns);
        cJSON_Delete(ns->json);
        free(ns->node);
        free(ns);
    }
    return status;
}

/* ==== main ==== */

int main(int argc, char **argv)
{
    struct options opt = {
        .host = "127.0.0.1",
        .port = 1883,
        .prefix = "counters",
        .timeout_s = 2.0,
        .qos = 1,
    };
    char **positional = check_alloc(calloc((size_t)argc + 1, sizeof(*positional)));
    int status = parse_command_line(argc, argv, &opt, positional);

    if (status < 0) {
        mosquitto_lib_init();
        switch (opt.command) {
        case CMD_INC:
            status = cmd_inc(&opt);
            break;
        case CMD_GET:
            status = cmd_get(&opt);
            break;
        case CMD_WATCH:
            status = cmd_watch(&opt);
            break;
        case CMD_STATS:
            status = cmd_stats(&opt);
            break;
        }
        mosquitto_lib_cleanup();
    }
    free(positional);
    return status;
}
