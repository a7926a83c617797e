/*
 * tally_read.c - `tally get` and `tally watch`: the retained totals on <prefix>/<name>, once
 * or live.
 *
 * get subscribes to each name's total and prints them in argument order as soon as every one
 * has arrived (retained, so at once), or after --timeout with what is missing named.
 * watch prints each new total as a line, or, on a terminal, redraws a table with the rate of
 * each counter over the last 10 seconds; it reconnects (and so resubscribes) until Ctrl-C.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <uthash.h>

#include "tally_cli.h"

#define RATE_WINDOW_S 10.0
#define RATE_SAMPLES 128   /* totals are coalesced to ~10/s, so 10 s fit with room to spare */
#define REDRAW_TICK_S 0.25 /* the table redraws at most this often, and at least once a second */

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

/* Prints NAME VALUE lines, or {"name","value"} objects with value null when none came. */
static int get_print(const struct options *opt, const struct get_state *st)
{
    int status = EXIT_SUCCESS;

    for (int i = 0; i < st->count; i++) {
        if (opt->json) {
            cJSON *obj = check_alloc(cJSON_CreateObject());
            check_alloc(cJSON_AddStringToObject(obj, "name", opt->args[i]));
            json_add_value(obj, "value", st->values[i]);
            json_print_line(obj);
        } else if (st->values[i]) {
            printf("%s %s\n", opt->args[i], st->values[i]);
        }
        if (!st->values[i]) {
            fprintf(stderr, "tally: no total for %s within %g s (nothing retained on %s)\n",
                    opt->args[i], opt->timeout_s, st->topics[i]);
            status = EXIT_FAILED;
        }
    }
    return status;
}

int cmd_get(const struct options *opt)
{
    struct get_state st = {.count = opt->nargs};
    struct client c;
    int status;

    if (!names_are_valid(opt->args, opt->nargs, false)) {
        return EXIT_USAGE;
    }
    st.topics = counter_topics(opt->prefix, opt->args, opt->nargs);
    st.values = check_alloc(calloc((size_t)st.count, sizeof(*st.values)));
    status = client_open(&c, opt, st.topics, st.count, 0, get_on_message, &st);
    if (status == 0) {
        if (client_wait(&c, now_monotonic() + opt->timeout_s, get_complete) == WAIT_LOST) {
            client_report_lost(&c);
        }
        status = get_print(opt, &st);
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
    bool json;
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
    } else if (st->json) {
        cJSON *obj = check_alloc(cJSON_CreateObject());
        check_alloc(cJSON_AddStringToObject(obj, "name", name));
        json_add_value(obj, "value", value);
        json_print_line(obj);
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

int cmd_watch(const struct options *opt)
{
    struct watch_state st = {
        .prefix = opt->prefix, .json = opt->json, .table = !opt->json && isatty(STDOUT_FILENO)};
    struct client c;
    char **topics;
    int status;

    if (!names_are_valid(opt->args, opt->nargs, true)) {
        return EXIT_USAGE;
    }
    stop_on_signals();
    setvbuf(stdout, NULL, _IOLBF, 0);
    topics = counter_topics(opt->prefix, opt->args, opt->nargs);
    status = client_open(&c, opt, topics, opt->nargs, 0, watch_on_message, &st);
    if (status == 0) {
        status = watch_loop(&c, &st);
    }
    client_close(&c);
    watch_free(&st);
    cells_free(topics, (size_t)opt->nargs);
    return status;
}
