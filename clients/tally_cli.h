/*
 * tally_cli.h - what the files of the `tally` command-line client share.
 *
 * The client is split as Mosquitto's own clients are (client_shared.c, pub_client.c,
 * sub_client_output.c):
 *
 *   tally.c          main: parse the command line, run one command
 *   tally_options.c  the command line: options, usage, validation of what the user typed
 *                    (names, deltas and ids by the plugin's own codec, plugin/codec.c)
 *   tally_client.c   the connection: MQTT v5 or 3.1.1, TLS, login, subscribe on every
 *                    (re)connection, one network loop run against a deadline
 *   tally_output.c   what is printed: tables, JSON lines, ages, escaped text
 *   tally_inc.c      inc: publish one increment, read the plugin's answer or the PUBACK
 *   tally_read.c     get and watch: retained and live totals
 *   tally_stats.c    stats and health: every node's $tally/stats/<node> document
 *
 * Exit status: 0 success; 1 the broker answered but the command failed (or, for stats and
 * health, something is unhealthy); 2 bad usage, or the broker could not be reached.
 */
#ifndef TALLY_CLI_H
#define TALLY_CLI_H

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>

#include <cjson/cJSON.h>
#include <mosquitto.h>

#define EXIT_FAILED 1 /* the broker answered, but the command did not succeed */
#define EXIT_USAGE 2  /* bad command line, or no broker to talk to */

/* ==== Options (tally_options.c) ==== */

enum command { CMD_INC, CMD_GET, CMD_WATCH, CMD_STATS, CMD_HEALTH };

struct options {
    const char *host;
    int port; /* 0 until given: 1883, or 8883 with TLS */
    const char *username;
    const char *password;
    const char *prefix;
    double timeout_s;
    bool verbose;
    bool json;
    int protocol;              /* MQTT_PROTOCOL_V5 or MQTT_PROTOCOL_V311 */
    const char *client_id;     /* NULL: libmosquitto picks one */
    const char *id;            /* inc: idempotency key, or NULL */
    int qos;                   /* inc: QoS of the increment */
    long long peer_timeout_ms; /* stats, health: when the stats do not carry their own */
    const char *cafile;        /* TLS when set */
    const char *certfile;      /* client certificate, with keyfile */
    const char *keyfile;
    bool insecure; /* TLS without checking the server's host name */
    enum command command;
    char **args; /* the command's own arguments, borrowed from argv */
    int nargs;
};

/* Parses argv into opt; positional must have room for argc pointers. Returns -1 to go on and
 * run opt->command, or the exit status to stop with (help, version, bad usage). */
int options_parse(int argc, char **argv, struct options *opt, char **positional);

/* Prints why the NAME arguments are unusable. Returns true when all are fine. */
bool names_are_valid(char **names, int count, bool allow_wildcards);
/* watch also takes a whole-level wildcard; '#' means the same as '+' since names are one level. */
bool name_is_wildcard(const char *name);
/* The delta text as the plugin reads it, or false after saying why it is unusable. */
bool delta_is_valid(const char *text, long long *delta);

/* ==== Output (tally_output.c) ==== */

/* Exits with EXIT_FAILED when p is NULL (out of memory); returns p. */
void *check_alloc(void *p);
/* A formatted string; caller frees. */
char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double now_monotonic(void);
double now_epoch_ms(void);
/* "0.4s", "12s", "5m", "3h", "2d": short enough for a table cell; caller frees. */
char *format_age(double ms);
/* Writes s with control bytes escaped, so a message never garbles the terminal. */
void fput_escaped(FILE *out, const char *s);
/* Rows of cells (row-major, nrows x ncols) under headers, columns as wide as their cells. */
void table_print(FILE *out, size_t ncols, const char *const *headers, char *const *cells,
                 size_t nrows);
void cells_free(char **cells, size_t count);
/* Prints obj as one line of compact JSON on stdout, and frees it. */
void json_print_line(cJSON *obj);
/* Prints JSON text received from the broker as one line, its numbers exactly as written
 * (cJSON would print 2^53-1 as 9.00719925474099e+15). */
void json_print_text(const char *text, size_t len);
/* Adds "key": text to obj, as a JSON integer when text is a decimal integer (kept exact, as the
 * totals are at most 2^53-1), else as a string; NULL text adds null. */
void json_add_value(cJSON *obj, const char *key, const char *text);

/* ==== Connection (tally_client.c) ==== */

struct client {
    struct mosquitto *mosq;
    const struct options *opt;
    char **topics; /* subscribed on every CONNACK; borrowed */
    int ntopics;
    int sub_qos;
    bool connack_received;
    int connack_reason;
    bool connected;
    bool subscribed; /* the last SUBSCRIBE was answered */
    bool subscribe_refused;
    void *command_state; /* the running command's own state; borrowed */
};

enum wait_result { WAIT_DONE, WAIT_TIMEOUT, WAIT_LOST, WAIT_STOPPED };

extern volatile sig_atomic_t stop_requested;
/* Makes SIGINT and SIGTERM set stop_requested and cut the network loop short. */
void stop_on_signals(void);

typedef bool (*done_fn)(const struct client *c);
typedef void (*message_fn)(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                           const mosquitto_property *props);

/*
 * Connects (MQTT v5 unless --protocol says 3.1.1, TLS when --cafile is given) and waits for the
 * CONNACK within --timeout. Topics (borrowed) are subscribed at sub_qos on every connection and
 * their messages go to on_message (NULL: none). command_state (borrowed) is handed to the
 * callbacks. Returns 0, or EXIT_USAGE after saying why it failed; call client_close either way.
 */
int client_open(struct client *c, const struct options *opt, char **topics, int ntopics,
                int sub_qos, message_fn on_message, void *command_state);
/* Runs the network loop until done(c), the monotonic deadline, a lost connection or a signal. */
enum wait_result client_wait(struct client *c, double deadline, done_fn done);
void client_close(struct client *c);
bool never(const struct client *c);
/* Says on stderr that the connection was lost. */
void client_report_lost(const struct client *c);
/* "<prefix>/<name>" for each name ('+' for a wildcard); caller frees with cells_free. */
char **counter_topics(const char *prefix, char **names, int count);

/* ==== Commands ==== */

int cmd_inc(const struct options *opt);
int cmd_get(const struct options *opt);
int cmd_watch(const struct options *opt);
int cmd_stats(const struct options *opt);
int cmd_health(const struct options *opt);

#endif
