/*
 * bench_table.c - what one counter costs the plugin in memory and time.
 *
 * Builds a table of 1,000,000 counters ("c0" .. "c999999", one slot each, as
 * on a single broker), then the same with 3 replicas per counter (a cluster
 * of 3), and reports the heap bytes per counter measured by mallinfo2()
 * (table, counters, slots and uthash buckets: everything the table allocated)
 * and the time of table_get + table_add, and of the control API's listing
 * and ranking over the whole table. Then one counter as a hub holds it in a
 * tree of 100,000 edges that all write it (a slot each): the time of a sum
 * (every publish of its total, every hub tick's DOWNs) before and after a
 * reset, whose base holds an entry per slot, and the ratio of the two; and
 * the time of the reset. Figures, not pass/fail: prints one JSON line and
 * one line for people.
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tally.h"

#define COUNTERS 1000000

static size_t heap_in_use(void)
{
    return mallinfo2().uordblks;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_table: %s: %s\n", what, tally_strerror(rc));
    exit(1);
}

/* What the plugin's next ticks do: publish (the dirty list) and replicate
 * (the replication list, freed once drained). */
static void drain(struct tally_table *t)
{
    while (table_pop_dirty(t))
        ;
    while (table_pop_repl(t))
        ;
}

/* table_get + table_add(+1) for every counter; returns seconds taken. */
static double get_and_add(struct tally_table *t, uint32_t replica)
{
    char name[16];
    double start = now_s();
    for (int i = 0; i < COUNTERS; i++) {
        struct tally_counter *c;
        int len = snprintf(name, sizeof(name), "c%d", i);
        int rc = table_get(t, name, (size_t)len, TABLE_LOCAL, &c);
        if (rc != TALLY_OK)
            die("table_get", rc);
        bool changed;
        rc = table_add(t, c, replica, 1, &changed);
        if (rc != TALLY_OK)
            die("table_add", rc);
    }
    double took = now_s() - start;
    drain(t);
    return took;
}

/* Gives every counter the slots of two more nodes, as merged from peers. */
static void add_peer_slots(struct tally_table *t)
{
    uint32_t peers[2];
    if (table_replica(t, "n2", strlen("n2"), 2, &peers[0]) ||
        table_replica(t, "n3", strlen("n3"), 3, &peers[1]))
        die("table_replica", TALLY_E_NOMEM);
    struct tally_counter *c, *tmp;
    bool changed;
    HASH_ITER(hh, t->counters, c, tmp)
    {
        for (int k = 0; k < 2; k++)
            if (table_merge_slot(t, c, peers[k], 5, 1, &changed) != TALLY_OK)
                die("table_merge_slot", TALLY_E_NOMEM);
    }
    drain(t);
}

/* Milliseconds one control API command takes over the whole table: a
 * listing or ranking scans every counter. */
static double control_ms(struct tally_table *t, const char *command)
{
    char req[256];
    snprintf(req, sizeof(req), "{\"commands\":[%s]}", command);
    struct control_req rq = {.t = t, .node_id = "n1", .max_bytes = 65536};
    double start = now_s();
    char *out = control_process(req, strlen(req), &rq);
    double took = now_s() - start;
    if (!out || strstr(out, "\"error\""))
        die("control_process", TALLY_E_NOMEM);
    free(out);
    return took * 1e3;
}

#define EDGES 100000

/* A hub's counter of EDGES slots, one per edge: milliseconds a sum takes
 * before a reset (*plain), after it (*reset), and the reset itself. */
static void hub_counter(double *plain, double *reset, double *reset_ms)
{
    struct tally_table t;
    struct tally_counter *c;
    table_init(&t, 10, 10);
    if (table_get(&t, "likes", 5, TABLE_LOCAL, &c) != TALLY_OK)
        die("table_get", TALLY_E_NOMEM);
    char id[24];
    bool changed;
    for (int i = 0; i < EDGES; i++) {
        uint32_t r;
        int len = snprintf(id, sizeof(id), "edge-%d", i);
        if (table_replica(&t, id, (size_t)len, 1, &r) != TALLY_OK ||
            table_merge_slot(&t, c, r, 10 + (uint64_t)i % 7, (uint64_t)i % 3, &changed) != TALLY_OK)
            die("table_merge_slot", TALLY_E_NOMEM);
    }
    enum { SUMS = 100 };
    struct tally_sums s;
    double start = now_s();
    for (int k = 0; k < SUMS; k++)
        table_sums(&t, c, &s);
    *plain = (now_s() - start) * 1e3 / SUMS;
    start = now_s();
    if (table_reset(&t, c, false) != TALLY_OK)
        die("table_reset", TALLY_E_NOMEM);
    *reset_ms = (now_s() - start) * 1e3;
    start = now_s();
    for (int k = 0; k < SUMS; k++)
        table_sums(&t, c, &s);
    *reset = (now_s() - start) * 1e3 / SUMS;
    if (s.value != 0)
        die("the reset counter's total", TALLY_E_OVERFLOW);
    table_free(&t);
}

int main(void)
{
    struct tally_table t;
    uint32_t self;

    size_t base = heap_in_use();
    table_init(&t, COUNTERS, 1000);
    if (table_replica(&t, "n1", strlen("n1"), 1, &self))
        die("table_replica", TALLY_E_NOMEM);
    double insert_s = get_and_add(&t, self);
    size_t one = heap_in_use() - base;
    double update_s = get_and_add(&t, self);
    add_peer_slots(&t);
    size_t three = heap_in_use() - base;
    double list_ms = control_ms(&t, "{\"command\":\"listCounters\",\"count\":1000}");
    double deep_ms =
        control_ms(&t, "{\"command\":\"listCounters\",\"offset\":100000,\"count\":1000}");
    double top_ms = control_ms(&t, "{\"command\":\"topCounters\",\"count\":20}");
    table_free(&t);
    double sum_plain_ms, sum_reset_ms, reset_ms;
    hub_counter(&sum_plain_ms, &sum_reset_ms, &reset_ms);

    double per_one = (double)one / COUNTERS, per_three = (double)three / COUNTERS;
    double insert_ns = insert_s * 1e9 / COUNTERS, update_ns = update_s * 1e9 / COUNTERS;
    printf("{\"bench\":\"table\",\"counters\":%d,\"bytes_per_counter\":%.1f,"
           "\"bytes_per_counter_3_replicas\":%.1f,\"ns_per_get_add_new\":%.1f,"
           "\"ns_per_get_add_existing\":%.1f,\"ms_list_first_1000\":%.1f,"
           "\"ms_list_at_100000\":%.1f,\"ms_top_20\":%.1f,\"hub_counter_slots\":%d,"
           "\"ms_sum\":%.3f,\"ms_sum_after_reset\":%.3f,\"ms_reset\":%.1f}\n",
           COUNTERS, per_one, per_three, insert_ns, update_ns, list_ms, deep_ms, top_ms, EDGES,
           sum_plain_ms, sum_reset_ms, reset_ms);
    printf("%d counters: %.1f bytes/counter with 1 replica, %.1f with 3; "
           "table_get+table_add %.0f ns (new counter), %.0f ns (existing); "
           "listCounters %.0f ms (first 1000), %.0f ms (1000 at offset 100000); "
           "topCounters %.0f ms\n",
           COUNTERS, per_one, per_three, insert_ns, update_ns, list_ms, deep_ms, top_ms);
    printf("a hub's counter of %d edges' slots: a sum %.3f ms, %.3f ms once reset (x%.1f); "
           "the reset %.1f ms\n",
           EDGES, sum_plain_ms, sum_reset_ms, sum_reset_ms / sum_plain_ms, reset_ms);
    return 0;
}
