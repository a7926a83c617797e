/*
 * tally_options.c - the command line of `tally`: options, usage, and validation of what the
 * user typed, all before connecting, so a typo never reaches a broker.
 *
 * Names, deltas and ids are checked by the plugin's own codec (plugin/codec.c, linked from
 * tally_core): the CLI refuses exactly what the plugin would refuse, and no rule is written
 * twice. This file only turns the codec's reasons into sentences.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <mqtt_protocol.h>

#include "tally.h"
#include "tally_cli.h"

#ifndef TALLY_VERSION
#error "TALLY_VERSION comes from project(VERSION) in CMakeLists.txt"
#endif

struct command_spec {
    const char *word;
    enum command command;
    int min_args;
    int max_args; /* -1: no limit */
};

static const struct command_spec commands[] = {
    {"inc", CMD_INC, 1, 2},     {"get", CMD_GET, 1, -1},       {"watch", CMD_WATCH, 1, -1},
    {"stats", CMD_STATS, 0, 0}, {"health", CMD_HEALTH, 0, -1},
};

enum long_only_option {
    OPT_PREFIX = 256,
    OPT_TIMEOUT,
    OPT_HELP,
    OPT_VERSION,
    OPT_ID,
    OPT_QOS,
    OPT_JSON,
    OPT_PEER_TIMEOUT,
    OPT_CAFILE,
    OPT_CERT,
    OPT_KEY,
    OPT_INSECURE,
};

static const struct option long_options[] = {
    {"host", required_argument, NULL, 'h'},
    {"port", required_argument, NULL, 'p'},
    {"username", required_argument, NULL, 'u'},
    {"password", required_argument, NULL, 'P'},
    {"protocol", required_argument, NULL, 'V'},
    {"prefix", required_argument, NULL, OPT_PREFIX},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {"id", required_argument, NULL, OPT_ID},
    {"qos", required_argument, NULL, OPT_QOS},
    {"json", no_argument, NULL, OPT_JSON},
    {"peer-timeout", required_argument, NULL, OPT_PEER_TIMEOUT},
    {"cafile", required_argument, NULL, OPT_CAFILE},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"insecure", no_argument, NULL, OPT_INSECURE},
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
          "                     print the new total the broker answers with\n"
          "  get NAME...        print the total of each counter as NAME VALUE\n"
          "  watch NAME...      show totals live until Ctrl-C; NAME may be + for every counter\n"
          "  stats              show each node's figures from $tally/stats/<node>; exits 1\n"
          "                     when a peer has been silent past its peer timeout\n"
          "  health [NODE...]   print ok and exit 0, or say what is wrong and exit 1: a node\n"
          "                     without fresh stats, or with a peer silent past its timeout\n"
          "                     (default: every node whose stats this broker holds)\n"
          "\n"
          "Options:\n"
          "  -h, --host HOST        broker host (default 127.0.0.1)\n"
          "  -p, --port PORT        broker port (default 1883, 8883 with --cafile)\n"
          "  -u, --username USER    MQTT username\n"
          "  -P, --password PASS    MQTT password\n"
          "  -V, --protocol VERSION 5 (default) or 311: MQTT 3.1.1, where inc only learns\n"
          "                         that the broker acknowledged the increment\n"
          "      --cafile FILE      use TLS, trusting the certificate authority in FILE\n"
          "      --cert FILE        TLS client certificate (with --key)\n"
          "      --key FILE         TLS client private key (with --cert)\n"
          "      --insecure         TLS without checking the server's host name\n"
          "      --prefix PREFIX    counter topic prefix (default counters)\n"
          "      --timeout SECONDS  how long to wait for the broker (default 2)\n"
          "      --id KEY           inc: idempotency key, at most 64 bytes; an increment\n"
          "                         retried with the same KEY counts once\n"
          "      --qos 0|1|2        inc: MQTT QoS of the increment (default 1)\n"
          "      --peer-timeout MS  stats, health: a peer silent this long is dead, when the\n"
          "                         node's stats do not say (default 15000, the plugin's)\n"
          "      --json             print JSON, one object per line\n"
          "  -v, --verbose          report progress on stderr\n"
          "      --help             show this help and exit\n"
          "      --version          show the version and exit\n"
          "\n"
          "A NAME is 1 to 200 bytes of UTF-8 without '/', '+', '#' or control characters,\n"
          "not starting with '$'. A negative DELTA is written as is: tally inc NAME -3.\n"
          "\n"
          "Exit status: 0 success; 1 the broker answered but the command failed (increment\n"
          "refused, no total, no stats, no answer in time, a dead peer, a node behind);\n"
          "2 bad usage or broker unreachable.\n",
          out);
}

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("tally: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'tally --help' for more information.\n", stderr);
}

/* "bad WHAT "TEXT": WHY" with TEXT escaped. */
static void say_bad(const char *what, const char *text, const char *why)
{
    fprintf(stderr, "tally: bad %s \"", what);
    fput_escaped(stderr, text);
    fprintf(stderr, "\": %s\n", why);
}

/* ==== Validation: the codec decides, these say why in words ==== */

static const char *name_problem(const char *name)
{
    switch (name_check(name, strlen(name))) {
    case TALLY_OK:
        return NULL;
    case TALLY_E_NAME_EMPTY:
        return "is empty";
    case TALLY_E_NAME_TOO_LONG:
        return "is longer than 200 bytes";
    case TALLY_E_NAME_DOLLAR:
        return "must not start with '$'";
    case TALLY_E_NAME_UTF8:
        return "is not valid UTF-8";
    default:
        return "must not contain '/', '+', '#' or control characters";
    }
}

bool name_is_wildcard(const char *name)
{
    return strcmp(name, "+") == 0 || strcmp(name, "#") == 0;
}

bool names_are_valid(char **names, int count, bool allow_wildcards)
{
    bool ok = true;

    for (int i = 0; i < count; i++) {
        const char *problem;
        if (allow_wildcards && name_is_wildcard(names[i])) {
            continue;
        }
        if ((problem = name_problem(names[i]))) {
            say_bad("name", names[i], problem);
            ok = false;
        }
    }
    return ok;
}

bool delta_is_valid(const char *text, long long *delta)
{
    int64_t value = 0;

    switch (parse_int(text, strlen(text), &value)) {
    case TALLY_OK:
        *delta = value;
        return true;
    case TALLY_E_DELTA_RANGE:
        say_bad("delta", text, "must be between -9007199254740991 and 9007199254740991");
        return false;
    default:
        say_bad("delta", text, "must be a whole number such as 5 or -3");
        return false;
    }
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

static bool parse_long(const char *text, long min, long max, long *out)
{
    char *end;
    long value;

    errno = 0;
    value = strtol(text, &end, 10);
    if (errno || end == text || *end || value < min || value > max) {
        return false;
    }
    *out = value;
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

/* mosquitto_pub's spellings: 5, 311, mqttv5, mqttv311. */
static bool parse_protocol(const char *text, int *protocol)
{
    if (strcmp(text, "5") == 0 || strcmp(text, "mqttv5") == 0) {
        *protocol = MQTT_PROTOCOL_V5;
        return true;
    }
    if (strcmp(text, "311") == 0 || strcmp(text, "mqttv311") == 0) {
        *protocol = MQTT_PROTOCOL_V311;
        return true;
    }
    return false;
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

/* ==== Parsing ==== */

/* What only makes sense together is checked after every option is read. */
struct seen {
    bool qos;
    bool peer_timeout;
};

static int print_version(void)
{
    printf("tally %s (libmosquitto %d.%d.%d)\n", TALLY_VERSION, LIBMOSQUITTO_MAJOR,
           LIBMOSQUITTO_MINOR, LIBMOSQUITTO_REVISION);
    return EXIT_SUCCESS;
}

/* Options that take a number. Returns -1 to go on, or EXIT_USAGE. */
static int apply_number_option(struct options *opt, int c, const char *arg, struct seen *seen)
{
    long value;

    switch (c) {
    case 'p':
        if (!parse_long(arg, 1, 65535, &value)) {
            usage_error("bad port '%s': must be a number from 1 to 65535", arg);
            return EXIT_USAGE;
        }
        opt->port = (int)value;
        return -1;
    case OPT_TIMEOUT:
        if (!parse_timeout(arg, &opt->timeout_s)) {
            usage_error("bad timeout '%s': must be a number of seconds above 0", arg);
            return EXIT_USAGE;
        }
        return -1;
    case OPT_QOS:
        if (!parse_long(arg, 0, 2, &value) || strlen(arg) != 1) {
            usage_error("bad QoS '%s': must be 0, 1 or 2", arg);
            return EXIT_USAGE;
        }
        opt->qos = (int)value;
        seen->qos = true;
        return -1;
    default: /* OPT_PEER_TIMEOUT */
        if (!parse_long(arg, 1, 86400000, &value)) {
            usage_error("bad peer timeout '%s': must be milliseconds from 1 to 86400000", arg);
            return EXIT_USAGE;
        }
        opt->peer_timeout_ms = value;
        seen->peer_timeout = true;
        return -1;
    }
}

/* Applies one option. Returns -1 to go on, or the exit status to stop with. */
static int apply_option(struct options *opt, int c, const char *arg, struct seen *seen)
{
    switch (c) {
    case 'h':
        opt->host = arg;
        return -1;
    case 'u':
        opt->username = arg;
        return -1;
    case 'P':
        opt->password = arg;
        return -1;
    case 'V':
        if (!parse_protocol(arg, &opt->protocol)) {
            usage_error("bad protocol '%s': must be 5 or 311", arg);
            return EXIT_USAGE;
        }
        return -1;
    case OPT_PREFIX:
        if (prefix_problem(arg)) {
            usage_error("bad prefix '%s': %s", arg, prefix_problem(arg));
            return EXIT_USAGE;
        }
        opt->prefix = arg;
        return -1;
    case 'p':
    case OPT_TIMEOUT:
    case OPT_QOS:
    case OPT_PEER_TIMEOUT:
        return apply_number_option(opt, c, arg, seen);
    case 'v':
        opt->verbose = true;
        return -1;
    case OPT_HELP:
        print_usage(stdout);
        return EXIT_SUCCESS;
    case OPT_VERSION:
        return print_version();
    case OPT_ID:
        opt->id = arg; /* checked with the payload it goes into (tally_inc.c) */
        return -1;
    case OPT_JSON:
        opt->json = true;
        return -1;
    case OPT_CAFILE:
        opt->cafile = arg;
        return -1;
    case OPT_CERT:
        opt->certfile = arg;
        return -1;
    case OPT_KEY:
        opt->keyfile = arg;
        return -1;
    case OPT_INSECURE:
        opt->insecure = true;
        return -1;
    default:
        return EXIT_USAGE;
    }
}

static int check_tls(const struct options *opt)
{
    if ((opt->certfile || opt->keyfile || opt->insecure) && !opt->cafile) {
        usage_error("--cert, --key and --insecure need --cafile");
        return EXIT_USAGE;
    }
    if (!opt->certfile != !opt->keyfile) {
        usage_error("--cert and --key go together");
        return EXIT_USAGE;
    }
    return -1;
}

/* Checks what only makes sense together: the command, its argument count, its own options. */
static int check_command(struct options *opt, char **positional, int npositional,
                         const struct seen *seen)
{
    const struct command_spec *spec;

    if (npositional == 0) {
        usage_error("no command given (inc, get, watch, stats or health)");
        return EXIT_USAGE;
    }
    spec = find_command(positional[0]);
    if (!spec) {
        usage_error("unknown command '%s' (expected inc, get, watch, stats or health)",
                    positional[0]);
        return EXIT_USAGE;
    }
    opt->command = spec->command;
    opt->args = positional + 1;
    opt->nargs = npositional - 1;
    if (opt->nargs < spec->min_args || (spec->max_args >= 0 && opt->nargs > spec->max_args)) {
        usage_error("wrong number of arguments for '%s'", spec->word);
        return EXIT_USAGE;
    }
    if ((opt->id || seen->qos) && opt->command != CMD_INC) {
        usage_error("--id and --qos only apply to inc");
        return EXIT_USAGE;
    }
    if (seen->peer_timeout && opt->command != CMD_STATS && opt->command != CMD_HEALTH) {
        usage_error("--peer-timeout only applies to stats and health");
        return EXIT_USAGE;
    }
    if (opt->password && !opt->username) {
        usage_error("--password needs --username");
        return EXIT_USAGE;
    }
    return check_tls(opt);
}

/*
 * Options may come before or after the command, so getopt runs in "return in order" mode
 * ('-' in the optstring) and hands back every non-option argument as code 1.
 */
int options_parse(int argc, char **argv, struct options *opt, char **positional)
{
    int npositional = 0;
    struct seen seen = {0};
    int c, status;

    opterr = 0;
    while (true) {
        if (optind < argc && looks_like_negative_number(argv[optind])) {
            positional[npositional++] = argv[optind++];
            continue;
        }
        c = getopt_long(argc, argv, "-:h:p:u:P:V:v", long_options, NULL);
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
        } else if ((status = apply_option(opt, c, optarg, &seen)) >= 0) {
            return status;
        }
    }
    while (optind < argc) { /* everything after "--" */
        positional[npositional++] = argv[optind++];
    }
    if ((status = check_command(opt, positional, npositional, &seen)) >= 0) {
        return status;
    }
    if (opt->port == 0) {
        opt->port = opt->cafile ? 8883 : 1883;
    }
    return -1;
}
