/*
 * tally_client.c - the connection of `tally`: a small layer over libmosquitto that connects
 * (MQTT v5, or 3.1.1 on request; TLS with --cafile), waits for the CONNACK, subscribes on every
 * (re)connection and runs the network loop until a condition holds, a deadline passes or a
 * signal arrives.
 *
 * The loop is driven by hand with mosquitto_loop() rather than mosquitto_loop_forever() or a
 * loop thread: every command waits for "this happened, or that much time passed", and one
 * thread looping against a deadline says exactly that, with no locks and no thread to stop.
 * SIGINT only sets a flag; select() inside mosquitto_loop() returns on the signal.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mqtt_protocol.h>

#include "tally_cli.h"

#define KEEPALIVE_S 30

volatile sig_atomic_t stop_requested;

static void on_stop_signal(int signum)
{
    (void)signum;
    stop_requested = 1;
}

void stop_on_signals(void)
{
    struct sigaction sa = {.sa_handler = on_stop_signal};

    /* No SA_RESTART: the signal must cut the loop's select() short. */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
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
    c->subscribed = false;
    if (c->connected && c->ntopics > 0) {
        mosquitto_subscribe_multiple(mosq, NULL, c->ntopics, c->topics, c->sub_qos, 0, NULL);
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

    c->subscribed = true;
    for (int i = 0; i < count && i < c->ntopics; i++) {
        if (granted[i] >= 0x80) {
            fprintf(stderr, "tally: the broker refused the subscription to %s: %s\n", c->topics[i],
                    mosquitto_reason_string(granted[i]));
            c->subscribe_refused = true;
        }
    }
}

enum wait_result client_wait(struct client *c, double deadline, done_fn done)
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

bool never(const struct client *c)
{
    (void)c;
    return false;
}

void client_close(struct client *c)
{
    if (c->mosq) {
        if (c->connected) {
            mosquitto_disconnect_v5(c->mosq, MQTT_RC_NORMAL_DISCONNECTION, NULL);
        }
        mosquitto_destroy(c->mosq);
        c->mosq = NULL;
    }
}

void client_report_lost(const struct client *c)
{
    fprintf(stderr, "tally: the connection to %s:%d was lost\n", c->opt->host, c->opt->port);
}

/* TLS as mosquitto_pub sets it up. Returns 0, or EXIT_USAGE after saying why. */
static int client_set_tls(struct client *c, const struct options *opt)
{
    int rc;

    if (!opt->cafile) {
        return 0;
    }
    rc = mosquitto_tls_set(c->mosq, opt->cafile, NULL, opt->certfile, opt->keyfile, NULL);
    if (rc == MOSQ_ERR_SUCCESS && opt->insecure) {
        rc = mosquitto_tls_insecure_set(c->mosq, true);
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "tally: cannot use the TLS files given (--cafile %s%s%s): %s\n",
                opt->cafile, opt->certfile ? ", --cert " : "", opt->certfile ? opt->certfile : "",
                rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        return EXIT_USAGE;
    }
    return 0;
}

static int client_connect(struct client *c, const struct options *opt)
{
    int rc = mosquitto_connect_bind_v5(c->mosq, opt->host, opt->port, KEEPALIVE_S, NULL, NULL);

    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "tally: cannot connect to %s:%d: %s\n", opt->host, opt->port,
                rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        return EXIT_USAGE;
    }
    switch (client_wait(c, now_monotonic() + opt->timeout_s, connack_received)) {
    case WAIT_DONE:
        if (c->connack_reason != 0) {
            fprintf(stderr, "tally: %s:%d refused the connection: %s\n", opt->host, opt->port,
                    opt->protocol == MQTT_PROTOCOL_V5
                        ? mosquitto_reason_string(c->connack_reason)
                        : mosquitto_connack_string(c->connack_reason));
            return EXIT_USAGE;
        }
        if (opt->verbose) {
            fprintf(stderr, "tally: connected to %s:%d (MQTT %s%s)\n", opt->host, opt->port,
                    opt->protocol == MQTT_PROTOCOL_V5 ? "v5" : "v3.1.1",
                    opt->cafile ? ", TLS" : "");
        }
        return 0;
    case WAIT_TIMEOUT:
        fprintf(stderr, "tally: cannot connect to %s:%d: no answer within %g s\n", opt->host,
                opt->port, opt->timeout_s);
        return EXIT_USAGE;
    default:
        fprintf(stderr, "tally: cannot connect to %s:%d: the connection was closed%s\n", opt->host,
                opt->port, opt->cafile ? " (TLS handshake failed?)" : "");
        return EXIT_USAGE;
    }
}

int client_open(struct client *c, const struct options *opt, char **topics, int ntopics,
                int sub_qos, message_fn on_message, void *command_state)
{
    int status;

    memset(c, 0, sizeof(*c));
    c->opt = opt;
    c->topics = topics;
    c->ntopics = ntopics;
    c->sub_qos = sub_qos;
    c->command_state = command_state;
    c->mosq = check_alloc(mosquitto_new(opt->client_id, true, c));
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, opt->protocol);
    /* request and answer: no 40 ms wait for a delayed ACK (Nagle) between them */
    mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_v5_callback_set(c->mosq, on_connect);
    mosquitto_disconnect_v5_callback_set(c->mosq, on_disconnect);
    mosquitto_subscribe_v5_callback_set(c->mosq, on_subscribe);
    /* Set before connecting, so that no retained message can slip past it. */
    if (on_message) {
        mosquitto_message_v5_callback_set(c->mosq, on_message);
    }
    if (opt->username) {
        mosquitto_username_pw_set(c->mosq, opt->username, opt->password);
    }
    if ((status = client_set_tls(c, opt)) != 0) {
        return status;
    }
    return client_connect(c, opt);
}

char **counter_topics(const char *prefix, char **names, int count)
{
    char **topics = check_alloc(calloc((size_t)count, sizeof(*topics)));

    for (int i = 0; i < count; i++) {
        topics[i] = format("%s/%s", prefix, name_is_wildcard(names[i]) ? "+" : names[i]);
    }
    return topics;
}
