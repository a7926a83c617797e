/*
 * test_persist.c - the state on disk (persist.c): the record codec, replay
 * of records into a table, and whole-directory behaviour: a clean reopen, a
 * crash (log only), a torn tail that is cut, damage that refuses to start,
 * and the incarnation rules; and faults from outside: a directory in use by
 * another process, a log rotation that cannot grow a file, a failed msync.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <check.h>

#include "persist.h"

/* What the last change under test reported (the functions' *changed). */
static bool changed;

/* ==== Record codec ==== */

static void payload_of(struct wire_buf *b, size_t len, uint8_t seed)
{
    wbuf_reset(b);
    for (size_t i = 0; i < len; i++)
        wbuf_u8(b, (uint8_t)(seed + i * 31));
}

/* Three records of different sizes, framed one after the other. */
static void three_records(struct wire_buf *file, size_t *starts)
{
    static const size_t sizes[] = {1, 40, 300};
    struct wire_buf payload = {0}, frame = {0};
    wbuf_reset(file);
    for (int i = 0; i < 3; i++) {
        starts[i] = file->len;
        payload_of(&payload, sizes[i], (uint8_t)i);
        record_frame(&frame, &payload);
        ck_assert_uint_eq(frame.len, 8 + sizes[i]);
        wbuf_bytes(file, frame.data, frame.len);
    }
    starts[3] = file->len;
    wbuf_free(&payload);
    wbuf_free(&frame);
}

START_TEST(test_record_round_trip)
{
    struct wire_buf file = {0}, expect = {0};
    size_t starts[4], off = 0;
    three_records(&file, starts);
    for (int i = 0; i < 3; i++) {
        const uint8_t *p;
        size_t len;
        ck_assert_int_eq(record_next(file.data, file.len, &off, &p, &len), RECORD_OK);
        payload_of(&expect, starts[i + 1] - starts[i] - 8, (uint8_t)i);
        ck_assert_uint_eq(len, expect.len);
        ck_assert_mem_eq(p, expect.data, len);
        ck_assert_uint_eq(off, starts[i + 1]);
    }
    wbuf_free(&file);
    wbuf_free(&expect);
}
END_TEST

START_TEST(test_record_every_truncation_is_torn)
{
    struct wire_buf file = {0};
    size_t starts[4];
    three_records(&file, starts);
    for (size_t cut = starts[2]; cut < starts[3]; cut++) {
        uint8_t *copy = malloc(cut + 1);
        memcpy(copy, file.data, cut);
        size_t off = starts[2];
        const uint8_t *p;
        size_t len;
        ck_assert_msg(record_next(copy, cut, &off, &p, &len) == RECORD_TORN, "cut at %zu", cut);
        ck_assert_uint_eq(off, starts[2]);
        free(copy);
    }
    wbuf_free(&file);
}
END_TEST

static enum record_status status_of_first(const uint8_t *data, size_t size, size_t at)
{
    const uint8_t *p;
    size_t len, off = at;
    return record_next(data, size, &off, &p, &len);
}

START_TEST(test_record_flipped_payload_or_crc_is_corrupt)
{
    struct wire_buf file = {0};
    size_t starts[4];
    three_records(&file, starts);
    /* Every bit of the middle record's CRC and payload. */
    for (size_t i = starts[1] + 4; i < starts[2]; i++) {
        for (int bit = 0; bit < 8; bit++) {
            file.data[i] ^= (uint8_t)(1u << bit);
            ck_assert_msg(status_of_first(file.data, file.len, starts[1]) == RECORD_CORRUPT,
                          "byte %zu bit %d", i - starts[1], bit);
            file.data[i] ^= (uint8_t)(1u << bit);
        }
    }
    /* A zero or absurd length is corrupt where whole records follow it, and
     * a torn tail where none does (what a power cut leaves at the end). */
    memset(file.data + starts[1], 0, 4);
    ck_assert_int_eq(status_of_first(file.data, file.len, starts[1]), RECORD_CORRUPT);
    memset(file.data + starts[2], 0xff, 4);
    ck_assert_int_eq(status_of_first(file.data, file.len, starts[2]), RECORD_TORN);
    wbuf_free(&file);
}
END_TEST

/* Damage to the length field of a record that is not the last must not look
 * like a torn tail: load_log would cut the log there and lose every later
 * record with only a warning. Fails on the current record_next, which calls
 * any length that runs past the end of the file RECORD_TORN. */
START_TEST(test_record_flipped_length_is_corrupt)
{
    struct wire_buf file = {0};
    size_t starts[4], bad_byte = 0;
    int bad_bit = -1;
    enum record_status bad = RECORD_CORRUPT;
    three_records(&file, starts);
    for (size_t i = starts[1]; i < starts[1] + 4 && bad_bit < 0; i++) {
        for (int bit = 0; bit < 8 && bad_bit < 0; bit++) {
            file.data[i] ^= (uint8_t)(1u << bit);
            enum record_status st = status_of_first(file.data, file.len, starts[1]);
            file.data[i] ^= (uint8_t)(1u << bit);
            if (st != RECORD_CORRUPT) {
                bad = st;
                bad_byte = i - starts[1];
                bad_bit = bit;
            }
        }
    }
    wbuf_free(&file);
    ck_assert_msg(bad == RECORD_CORRUPT, "length byte %zu bit %d of a middle record gives %s",
                  bad_byte, bad_bit, bad == RECORD_TORN ? "RECORD_TORN" : "RECORD_OK");
}
END_TEST

/* ==== record_apply ==== */

static void slot_record(struct wire_buf *b, const char *name, const char *node, uint64_t inc,
                        uint64_t p, uint64_t n, const struct tally_key *key)
{
    wbuf_reset(b);
    wbuf_u8(b, 'S');
    wbuf_str8(b, name, strlen(name));
    wbuf_str8(b, node, strlen(node));
    wbuf_u64(b, inc);
    wbuf_varint(b, p);
    wbuf_varint(b, n);
    wbuf_u8(b, key != NULL);
    if (key) {
        wbuf_u64(b, key->a);
        wbuf_u64(b, key->b);
    }
}

static void device_record(struct wire_buf *b, const char *name, const char *dev, uint64_t total)
{
    wbuf_reset(b);
    wbuf_u8(b, 'D');
    wbuf_str8(b, name, strlen(name));
    wbuf_str8(b, dev, strlen(dev));
    wbuf_varint(b, total);
}

START_TEST(test_record_apply)
{
    struct tally_table t;
    struct tally_dedup d;
    struct wire_buf b = {0};
    struct tally_key key = {0x1234, 0x5678}, other = {9, 9};
    uint32_t r, dev;
    table_init(&t, 100, 100);
    ck_assert_int_eq(dedup_init(&d, 10), TALLY_OK);

    slot_record(&b, "hits", "n1", 77, 10, 3, &key);
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_OK);
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_OK); /* replay: no change */
    struct tally_counter *c = table_find(&t, "hits", 4);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(table_replica(&t, "n1", strlen("n1"), 77, &r), TALLY_OK);
    ck_assert_uint_eq(counter_slot(c, r)->p, 10);
    ck_assert_uint_eq(counter_slot(c, r)->n, 3);
    ck_assert(dedup_contains(&d, key));
    /* An older state of the slot never lowers it. */
    slot_record(&b, "hits", "n1", 77, 4, 1, NULL);
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_OK);
    ck_assert_int_eq(counter_value(c), 7);

    device_record(&b, "hits", "meter-7", 1000);
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_OK);
    ck_assert_int_eq(table_device(&t, "meter-7", 7, DEVICE_FIND, &dev), TALLY_OK);
    ck_assert_uint_eq(counter_device(c, dev)->total, 1000);
    ck_assert_int_eq(counter_value(c), 1007);

    wbuf_reset(&b);
    wbuf_u8(&b, 'K');
    wbuf_u64(&b, other.a);
    wbuf_u64(&b, other.b);
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_OK);
    ck_assert(dedup_contains(&d, other));

    /* Malformed payloads are refused and change nothing. */
    uint64_t digest[TALLY_BUCKETS];
    memcpy(digest, t.digest, sizeof(digest));
    wbuf_u8(&b, 0); /* a trailing byte */
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_E_WIRE);
    slot_record(&b, "a/b", "n1", 1, 1, 0, NULL);
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_E_WIRE);
    slot_record(&b, "x", "n 1", 1, 1, 0, NULL);
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_E_WIRE);
    slot_record(&b, "x", "n1", 1, (uint64_t)TALLY_MAX_SAFE + 1, 0, NULL);
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_E_WIRE);
    slot_record(&b, "x", "n1", 1, 1, 0, NULL);
    b.data[b.len - 1] = 2; /* has_key must be 0 or 1 */
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_E_WIRE);
    b.len--; /* has_key missing */
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_E_WIRE);
    device_record(&b, "x", "", 1);
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_E_WIRE);
    ck_assert_int_eq(record_apply((const uint8_t *)"X", 1, &t, &d), TALLY_E_WIRE);
    ck_assert_int_eq(record_apply((const uint8_t *)"E", 1, &t, &d), TALLY_E_WIRE);
    ck_assert_int_eq(record_apply((const uint8_t *)"", 0, &t, &d), TALLY_E_WIRE);
    ck_assert_mem_eq(digest, t.digest, sizeof(digest));

    wbuf_free(&b);
    dedup_free(&d);
    table_free(&t);
}
END_TEST

/* ==== A state directory ==== */

static char dir[64];
static char err[512];

static void dir_setup(void)
{
    strcpy(dir, "/tmp/tally-unit-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void dir_teardown(void)
{
    static const char *files[] = {"meta",           "state.log",   "state.snap",
                                  "state.snap.tmp", "meta.tmp",    "lock",
                                  "state.log.new",  "state.log.1", "state.log.2"};
    char file[128];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(file, sizeof(file), "%s/%s", dir, files[i]);
        unlink(file);
    }
    rmdir(dir);
}

static char *file_path(const char *name)
{
    static char buf[128];
    snprintf(buf, sizeof(buf), "%s/%s", dir, name);
    return buf;
}

static off_t file_size(const char *name)
{
    struct stat st;
    return stat(file_path(name), &st) == 0 ? st.st_size : -1;
}

static void flip_byte(const char *name, off_t at)
{
    int fd = open(file_path(name), O_RDWR);
    uint8_t byte;
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pread(fd, &byte, 1, at), 1);
    byte ^= 0x10;
    ck_assert_int_eq(pwrite(fd, &byte, 1, at), 1);
    close(fd);
}

static void append_bytes(const char *name, const void *data, size_t len)
{
    int fd = open(file_path(name), O_WRONLY | O_APPEND);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* A node's state in memory plus its store. */
struct node {
    struct tally_table t;
    struct tally_dedup d;
    struct persist *p;
    uint64_t incarnation;
    uint32_t self;
};

static struct persist *node_open(struct node *n, const char *node_id, long long fsync_ms,
                                 uint32_t window)
{
    table_init(&n->t, 100000, 1000);
    ck_assert_int_eq(dedup_init(&n->d, window), TALLY_OK);
    n->p = persist_open(dir, node_id, fsync_ms, 60000, &n->t, &n->d, &n->incarnation, err,
                        sizeof(err));
    if (n->p)
        ck_assert_int_eq(table_replica(&n->t, node_id, strlen(node_id), n->incarnation, &n->self),
                         TALLY_OK);
    return n->p;
}

static void node_free(struct node *n)
{
    dedup_free(&n->d);
    table_free(&n->t);
}

static struct tally_key key_of(const char *name, int i)
{
    char id[16];
    int len = snprintf(id, sizeof(id), "k%d", i);
    return dedup_key(name, strlen(name), id, (size_t)len);
}

/* What the plugin does for one increment: apply, remember the id, log. */
static void node_increment(struct node *n, const char *name, int64_t delta, int id)
{
    struct tally_counter *c;
    ck_assert_int_eq(table_get(&n->t, name, strlen(name), TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_add(&n->t, c, n->self, delta, &changed), TALLY_OK);
    ck_assert(changed);
    struct tally_key k = key_of(name, id);
    if (id >= 0)
        dedup_insert(&n->d, k);
    ck_assert_int_eq(persist_slot(n->p, &n->t, c, counter_slot(c, n->self), id >= 0 ? &k : NULL),
                     TALLY_OK);
}

static void node_report(struct node *n, const char *name, const char *device, uint64_t total)
{
    struct tally_counter *c;
    uint32_t dev;
    ck_assert_int_eq(table_get(&n->t, name, strlen(name), TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_device(&n->t, device, strlen(device), DEVICE_LOCAL, &dev), TALLY_OK);
    ck_assert_int_eq(table_merge_device(&n->t, c, dev, total, true, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(persist_device(n->p, &n->t, c, counter_device(c, dev)), TALLY_OK);
}

static void node_merge_peer(struct node *n, const char *name, uint64_t p, uint64_t neg)
{
    struct tally_counter *c;
    uint32_t r;
    ck_assert_int_eq(table_get(&n->t, name, strlen(name), TABLE_LOCAL, &c), TALLY_OK);
    ck_assert_int_eq(table_replica(&n->t, "n2", strlen("n2"), 99, &r), TALLY_OK);
    ck_assert_int_eq(table_merge_slot(&n->t, c, r, p, neg, &changed), TALLY_OK);
    ck_assert(changed);
    ck_assert_int_eq(persist_slot(n->p, &n->t, c, counter_slot(c, r), NULL), TALLY_OK);
}

/* Some state of every kind: own slots with and without ids, device reports
 * and a peer's slot. */
static void node_work(struct node *n)
{
    for (int i = 0; i < 50; i++)
        node_increment(n, i % 2 ? "odd" : "even", i % 3 ? i + 1 : -i - 1, i % 5 ? i : -1);
    node_report(n, "meters", "meter-1", 100);
    node_report(n, "meters", "meter-1", 250);
    node_report(n, "meters", "meter-2", 7);
    node_merge_peer(n, "odd", 1000, 10);
}

static void assert_has_work_keys(const struct node *n)
{
    for (int i = 0; i < 50; i++)
        if (i % 5)
            ck_assert_msg(dedup_contains(&n->d, key_of(i % 2 ? "odd" : "even", i)), "key %d", i);
    ck_assert(!dedup_contains(&n->d, key_of("odd", 1000)));
}

START_TEST(test_clean_reopen)
{
    struct node a, b;
    ck_assert_ptr_nonnull(node_open(&a, "n1", 1000, 1000));
    ck_assert_str_eq(err, "");
    node_work(&a);
    persist_close(a.p, &a.t, &a.d);
    ck_assert_int_gt(file_size("state.snap"), 12);

    ck_assert_ptr_nonnull(node_open(&b, "n1", 1000, 1000));
    ck_assert_str_eq(err, "");
    ck_assert_uint_eq(b.incarnation, a.incarnation); /* same boot: kept */
    ck_assert_mem_eq(a.t.digest, b.t.digest, sizeof(a.t.digest));
    ck_assert_uint_eq(b.t.ncounters, 3);
    ck_assert_int_eq(counter_value(table_find(&b.t, "meters", 6)), 257);
    assert_has_work_keys(&b);
    ck_assert_uint_eq(b.d.count, a.d.count);
    ck_assert(!b.t.scope.known); /* none written: as a state_dir of an earlier version */
    /* It keeps working after the reopen, and a second reopen sees that too. */
    node_increment(&b, "even", 5, 500);
    persist_close(b.p, &b.t, &b.d);
    struct node c;
    ck_assert_ptr_nonnull(node_open(&c, "n1", 0, 1000));
    ck_assert_mem_eq(b.t.digest, c.t.digest, sizeof(b.t.digest));
    ck_assert(dedup_contains(&c.d, key_of("even", 500)));
    persist_close(c.p, &c.t, &c.d);
    node_free(&a);
    node_free(&b);
    node_free(&c);
}
END_TEST

/* Runs node_work in a child that dies without closing (like kill -9), so
 * only the log holds its state; returns the child's digest. */
static void crash_after_work(uint64_t *digest, uint64_t *incarnation)
{
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct node n;
        close(fds[0]);
        if (!node_open(&n, "n1", 1000, 1000))
            _exit(1);
        node_work(&n);
        if (write(fds[1], n.t.digest, sizeof(n.t.digest)) != sizeof(n.t.digest) ||
            write(fds[1], &n.incarnation, 8) != 8)
            _exit(1);
        _exit(0);
    }
    close(fds[1]);
    ck_assert_int_eq(read(fds[0], digest, TALLY_BUCKETS * 8), TALLY_BUCKETS * 8);
    ck_assert_int_eq(read(fds[0], incarnation, 8), 8);
    close(fds[0]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* A reset and a delete as the plugin makes them: applied, then logged. */
static void node_reset(struct node *n, const char *name, bool delete)
{
    struct tally_counter *c = table_find(&n->t, name, strlen(name));
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(table_reset(&n->t, c, delete), TALLY_OK);
    ck_assert_int_eq(persist_base(n->p, &n->t, c), TALLY_OK);
}

static void node_resets(struct node *n)
{
    node_work(n);
    node_reset(n, "odd", false);
    node_increment(n, "odd", 3, -1);
    node_reset(n, "meters", true);
}

static void assert_resets(struct node *n)
{
    ck_assert_int_eq(table_value(&n->t, table_find(&n->t, "odd", 3)), 3);
    ck_assert(table_hidden(&n->t, table_find(&n->t, "meters", 6)));
    ck_assert(!table_hidden(&n->t, table_find(&n->t, "even", 4)));
}

START_TEST(test_resets_survive_restarts)
{
    /* From the log after a crash, then from the snapshot of a clean stop. */
    struct node a, b;
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (!node_open(&a, "n1", 1000, 1000))
            _exit(1);
        node_resets(&a);
        _exit(write(fds[1], a.t.digest, sizeof(a.t.digest)) == sizeof(a.t.digest) ? 0 : 1);
    }
    uint64_t digest[TALLY_BUCKETS];
    ck_assert_int_eq(read(fds[0], digest, sizeof(digest)), sizeof(digest));
    close(fds[0]);
    close(fds[1]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert_ptr_nonnull(node_open(&a, "n1", 1000, 1000));
    ck_assert_mem_eq(a.t.digest, digest, sizeof(digest));
    assert_resets(&a);
    persist_close(a.p, &a.t, &a.d);
    ck_assert_ptr_nonnull(node_open(&b, "n1", 1000, 1000));
    ck_assert_mem_eq(b.t.digest, digest, sizeof(digest));
    assert_resets(&b);
    persist_close(b.p, &b.t, &b.d);
    node_free(&a);
    node_free(&b);
}
END_TEST

/* A node that adopted n2 (removeNode, fold.c): the claim and the slot n2's
 * counts were folded into come back from the log after a crash, and from
 * the snapshot of a clean stop: the slot is n1's, not a slot of n2. */
static void node_adopt(struct node *n)
{
    node_work(n);
    table_set_self(&n->t, n->self);
    ck_assert_int_eq(fold_set_adopt(&n->t, n->p, "n2", 2, "n1", UINT64_MAX, false), TALLY_OK);
    ck_assert_int_eq(fold_set_adopt(&n->t, n->p, "n2", 2, "n1", UINT64_MAX, true), TALLY_OK);
    ck_assert_int_eq(fold_ready(&n->t, n->p), TALLY_OK);
    struct tally_counter *c = table_find(&n->t, "odd", 3);
    ck_assert_uint_eq(c->nslots, 1); /* n2's slot folded into n1's */
}

static void assert_adopted(struct node *n, int64_t odd)
{
    table_set_self(&n->t, n->self);
    const struct fold_adopt *a = fold_adoption(&n->t, "n2", 2);
    ck_assert_ptr_nonnull(a);
    ck_assert_str_eq(a->by, "n1");
    ck_assert(a->settled);
    struct tally_counter *c = table_find(&n->t, "odd", 3);
    ck_assert_int_eq(table_value(&n->t, c), odd);
    ck_assert_uint_eq(c->nslots, 1); /* n1's, holding what n2 had */
    ck_assert_uint_ge(counter_slot(c, n->self)->p, 1000);
}

START_TEST(test_adoption_survives_restarts)
{
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct node a;
        if (!node_open(&a, "n1", 1000, 1000))
            _exit(1);
        node_adopt(&a);
        int64_t v = table_value(&a.t, table_find(&a.t, "odd", 3));
        _exit(write(fds[1], &v, sizeof(v)) == sizeof(v) ? 0 : 1); /* no close: a crash */
    }
    int64_t odd;
    ck_assert_int_eq(read(fds[0], &odd, sizeof(odd)), sizeof(odd));
    close(fds[0]);
    close(fds[1]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    struct node a, b;
    ck_assert_ptr_nonnull(node_open(&a, "n1", 1000, 1000));
    assert_adopted(&a, odd);
    persist_close(a.p, &a.t, &a.d);
    ck_assert_ptr_nonnull(node_open(&b, "n1", 1000, 1000));
    assert_adopted(&b, odd);
    persist_close(b.p, &b.t, &b.d);
    node_free(&a);
    node_free(&b);
}
END_TEST

static void assert_scope(const struct node *n, const char *group, const char *region)
{
    ck_assert(n->t.scope.known);
    ck_assert_str_eq(n->t.scope.group, group);
    ck_assert_str_eq(n->t.scope.region, region);
}

/* The group and region the state is made in ('G'): from the log after a
 * crash, from the snapshot after a close, the last one written winning. */
START_TEST(test_the_scope_survives_restarts)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct node a;
        if (!node_open(&a, "n1", 0, 1000))
            _exit(1);
        strcpy(a.t.scope.group, "g1");
        a.t.scope.known = true;
        if (persist_scope(a.p, &a.t) != TALLY_OK)
            _exit(1);
        strcpy(a.t.scope.region, "r1");
        _exit(persist_scope(a.p, &a.t) == TALLY_OK ? 0 : 1); /* no close: a crash */
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    struct node b, c;
    ck_assert_ptr_nonnull(node_open(&b, "n1", 1000, 1000));
    assert_scope(&b, "g1", "r1");
    persist_close(b.p, &b.t, &b.d);
    ck_assert_ptr_nonnull(node_open(&c, "n1", 1000, 1000));
    assert_scope(&c, "g1", "r1");
    persist_close(c.p, &c.t, &c.d);
    node_free(&b);
    node_free(&c);
}
END_TEST

START_TEST(test_a_malformed_scope_is_refused)
{
    struct tally_table t;
    struct tally_dedup d;
    struct wire_buf b = {0};
    table_init(&t, 100, 100);
    ck_assert_int_eq(dedup_init(&d, 10), TALLY_OK);
    const char *bad[][2] = {{".g1", ""},      {"g 1", ""},      {"g1", ".r1"},        {"g1", "r1/"},
                            {"g1", "r1//z1"}, {"g1", "r1/.z1"}, {"g1", "r1/z1/w1/v1"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        wbuf_reset(&b);
        wbuf_u8(&b, 'G');
        wbuf_str8(&b, bad[i][0], strlen(bad[i][0]));
        wbuf_str8(&b, bad[i][1], strlen(bad[i][1]));
        ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_E_WIRE);
        ck_assert(!t.scope.known);
    }
    wbuf_reset(&b);
    wbuf_u8(&b, 'G');
    wbuf_str8(&b, "g1", 2);
    wbuf_str8(&b, "", 0);
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_OK);
    ck_assert(t.scope.known && strcmp(t.scope.group, "g1") == 0 && !t.scope.region[0]);
    wbuf_u8(&b, 0); /* a byte too many */
    ck_assert_int_eq(record_apply(b.data, b.len, &t, &d), TALLY_E_WIRE);
    wbuf_free(&b);
    dedup_free(&d);
    table_free(&t);
}
END_TEST

START_TEST(test_crash_replays_log)
{
    uint64_t digest[TALLY_BUCKETS], inc;
    crash_after_work(digest, &inc);
    ck_assert_int_eq(file_size("state.snap"), -1);
    struct node n;
    ck_assert_ptr_nonnull(node_open(&n, "n1", 1000, 1000));
    ck_assert_str_eq(err, "");
    ck_assert_uint_eq(n.incarnation, inc);
    ck_assert_mem_eq(n.t.digest, digest, sizeof(digest));
    assert_has_work_keys(&n);
    persist_close(n.p, &n.t, &n.d);
    node_free(&n);
}
END_TEST

START_TEST(test_torn_tail_cut)
{
    uint64_t digest[TALLY_BUCKETS], inc;
    crash_after_work(digest, &inc);
    off_t good = file_size("state.log");
    /* Half of one more record, as a write cut by a crash leaves it. */
    struct wire_buf payload = {0}, frame = {0};
    slot_record(&payload, "odd", "n1", inc, 123456, 0, NULL);
    record_frame(&frame, &payload);
    append_bytes("state.log", frame.data, frame.len / 2);

    struct node n;
    ck_assert_ptr_nonnull(node_open(&n, "n1", 1000, 1000));
    ck_assert_msg(strstr(err, "torn") && strstr(err, "state.log"), "err: %s", err);
    ck_assert_mem_eq(n.t.digest, digest, sizeof(digest));
    ck_assert_int_eq(file_size("state.log"), good);
    /* Appends after the cut are read back. */
    node_increment(&n, "after", 3, 1);
    persist_close(n.p, &n.t, &n.d);
    struct node m;
    ck_assert_ptr_nonnull(node_open(&m, "n1", 1000, 1000));
    ck_assert_str_eq(err, "");
    ck_assert_mem_eq(m.t.digest, n.t.digest, sizeof(digest));
    persist_close(m.p, &m.t, &m.d);
    wbuf_free(&payload);
    wbuf_free(&frame);
    node_free(&n);
    node_free(&m);
}
END_TEST

START_TEST(test_damaged_log_refuses)
{
    uint64_t digest[TALLY_BUCKETS], inc;
    crash_after_work(digest, &inc);
    flip_byte("state.log", 12 + 8 + 2); /* inside the first record's payload */
    struct node n;
    ck_assert_ptr_null(node_open(&n, "n1", 1000, 1000));
    ck_assert_msg(strstr(err, "state.log") && strstr(err, "offset 12"), "err: %s", err);
    node_free(&n);
}
END_TEST

/* The user-visible side of test_record_flipped_length_is_corrupt: one
 * damaged length field at the start of the log must refuse to start, not
 * cut the whole log as a "torn tail" and start without its records. */
START_TEST(test_damaged_log_length_refuses)
{
    uint64_t digest[TALLY_BUCKETS], inc;
    crash_after_work(digest, &inc);
    off_t size = file_size("state.log");
    flip_byte("state.log", 12 + 1); /* first record's length += 4096 */
    struct node n;
    struct persist *p = node_open(&n, "n1", 1000, 1000);
    off_t after = file_size("state.log");
    if (p)
        persist_close(p, &n.t, &n.d);
    node_free(&n);
    ck_assert_msg(p == NULL, "opened with err '%s'; state.log cut from %lld to %lld bytes", err,
                  (long long)size, (long long)after);
    ck_assert_msg(strstr(err, "state.log") && strstr(err, "offset 12"), "err: %s", err);
}
END_TEST

START_TEST(test_damaged_snapshot_refuses)
{
    struct node a, b;
    ck_assert_ptr_nonnull(node_open(&a, "n1", 1000, 1000));
    node_work(&a);
    persist_close(a.p, &a.t, &a.d);
    off_t size = file_size("state.snap");
    ck_assert_int_gt(size, 100);
    flip_byte("state.snap", size / 2);
    ck_assert_ptr_null(node_open(&b, "n1", 1000, 1000));
    ck_assert_msg(strstr(err, "state.snap") && strstr(err, "offset"), "err: %s", err);
    /* Still refused on a second try: nothing was overwritten. */
    node_free(&b);
    ck_assert_ptr_null(node_open(&b, "n1", 1000, 1000));
    node_free(&a);
    node_free(&b);
}
END_TEST

START_TEST(test_truncated_snapshot_refuses)
{
    struct node a, b;
    ck_assert_ptr_nonnull(node_open(&a, "n1", 1000, 1000));
    node_work(&a);
    persist_close(a.p, &a.t, &a.d);
    ck_assert_int_eq(truncate(file_path("state.snap"), file_size("state.snap") - 1), 0);
    ck_assert_ptr_null(node_open(&b, "n1", 1000, 1000));
    ck_assert_msg(strstr(err, "state.snap") && strstr(err, "offset"), "err: %s", err);
    node_free(&a);
    node_free(&b);
}
END_TEST

START_TEST(test_other_node_refused)
{
    struct node a, b;
    ck_assert_ptr_nonnull(node_open(&a, "n1", 1000, 1000));
    persist_close(a.p, &a.t, &a.d);
    ck_assert_ptr_null(node_open(&b, "n2", 1000, 1000));
    ck_assert_msg(strstr(err, "'n1'") && strstr(err, "'n2'"), "err: %s", err);
    node_free(&a);
    node_free(&b);
}
END_TEST

START_TEST(test_incarnation_rules)
{
    struct node a, b, c;
    ck_assert_ptr_nonnull(node_open(&a, "n1", 1000, 10));
    persist_close(a.p, &a.t, &a.d);
    /* Another boot (the page cache may have lost records): a fresh life,
     * unless every record was fsynced before its acknowledgement. */
    FILE *f = fopen(file_path("meta"), "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "node n1\nincarnation %016llx\nboot another-boot\n",
            (unsigned long long)a.incarnation);
    fclose(f);
    ck_assert_ptr_nonnull(node_open(&b, "n1", 1000, 10));
    ck_assert_uint_ne(b.incarnation, a.incarnation);
    persist_close(b.p, &b.t, &b.d);
    f = fopen(file_path("meta"), "w");
    fprintf(f, "node n1\nincarnation %016llx\nboot another-boot\n",
            (unsigned long long)b.incarnation);
    fclose(f);
    ck_assert_ptr_nonnull(node_open(&c, "n1", 0, 10));
    ck_assert_uint_eq(c.incarnation, b.incarnation);
    persist_close(c.p, &c.t, &c.d);
    node_free(&a);
    node_free(&b);
    node_free(&c);
}
END_TEST

START_TEST(test_dedup_window_order_survives)
{
    /* A window of 3: after a restart the same 3 newest ids are remembered. */
    struct node a, b;
    ck_assert_ptr_nonnull(node_open(&a, "n1", 1000, 3));
    for (int i = 0; i < 5; i++)
        node_increment(&a, "w", 1, i);
    persist_close(a.p, &a.t, &a.d);
    ck_assert_ptr_nonnull(node_open(&b, "n1", 1000, 3));
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(dedup_contains(&b.d, key_of("w", i)), i >= 2);
    persist_close(b.p, &b.t, &b.d);
    node_free(&a);
    node_free(&b);
}
END_TEST

/* ==== Faults from outside ==== */

/* A broker holding the directory, in another process: it opens it, does
 * node_work, says so, and holds it until *release is closed; then it dies
 * without closing (like kill -9). Returns its pid. */
static pid_t hold_dir(int *release)
{
    int ready[2], hold[2];
    char c = 1;
    ck_assert_int_eq(pipe(ready), 0);
    ck_assert_int_eq(pipe(hold), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct node n;
        close(ready[0]);
        close(hold[1]);
        if (!node_open(&n, "n1", 1000, 10))
            _exit(1);
        node_work(&n);
        if (write(ready[1], &c, 1) != 1 || read(hold[0], &c, 1) < 0)
            _exit(1);
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    ck_assert_int_eq(read(ready[0], &c, 1), 1);
    close(ready[0]);
    *release = hold[1];
    return pid;
}

static uint8_t *file_bytes(const char *name, size_t *len)
{
    FILE *f = fopen(file_path(name), "rb");
    ck_assert_ptr_nonnull(f);
    uint8_t *data = malloc(16u << 20);
    *len = fread(data, 1, 16u << 20, f);
    fclose(f);
    return data;
}

/* Issue 10, item 1: a second broker on a directory in use cut the first's
 * log space (allocated ahead) as a torn tail. It must refuse, naming the
 * directory and the holder, and leave every file as it was. */
START_TEST(test_state_dir_in_use_is_refused_untouched)
{
    int release, status;
    size_t len_before, len_after;
    char holder[32];
    pid_t pid = hold_dir(&release);
    uint8_t *before = file_bytes("state.log", &len_before);
    struct node n;
    ck_assert_ptr_null(node_open(&n, "n1", 1000, 10));
    snprintf(holder, sizeof(holder), "process %ld", (long)pid);
    ck_assert_msg(strstr(err, dir) && strstr(err, "in use") && strstr(err, holder), "err: %s", err);
    node_free(&n);
    uint8_t *after = file_bytes("state.log", &len_after);
    ck_assert_uint_eq(len_after, len_before);
    ck_assert_mem_eq(after, before, len_before);
    free(before);
    free(after);
    /* Once the holder is gone the directory is free, and holds its work. */
    close(release);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert_ptr_nonnull(node_open(&n, "n1", 1000, 10));
    ck_assert_str_eq(err, "");
    ck_assert_int_eq(counter_value(table_find(&n.t, "meters", 6)), 257);
    persist_close(n.p, &n.t, &n.d);
    node_free(&n);
}
END_TEST

/* Issue 10, item 2: a rotation that could not allocate the new log left
 * state.log without its header; once space came back, records went to
 * offset 0 and the next start refused ("bad header"). Here no file may grow
 * (RLIMIT_FSIZE 0, where a full disk gives ENOSPC) when the compaction comes:
 * it must fail whole, the old log must stay in use, and a crash after more
 * increments must lose nothing. */
START_TEST(test_failed_rotation_keeps_the_log_in_use)
{
    char name[201], e[512];
    uint64_t digest[TALLY_BUCKETS];
    int fds[2], status;
    memset(name, 'r', 200);
    name[200] = '\0';
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct node n;
        struct rlimit was, none;
        close(fds[0]);
        if (!node_open(&n, "n1", 1000, 10))
            _exit(1);
        for (int i = 0; i < 20000; i++) /* 4.5 MiB of log: past COMPACT_MIN_BYTES */
            node_increment(&n, name, 1, -1);
        ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &was), 0);
        none = (struct rlimit){0, was.rlim_max};
        signal(SIGXFSZ, SIG_IGN);
        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &none), 0);
        ck_assert_int_eq(persist_tick(n.p, &n.t, &n.d, 1, e, sizeof(e)), TALLY_OK);
        ck_assert_int_eq(persist_tick(n.p, &n.t, &n.d, 60001, e, sizeof(e)), TALLY_E_DISK);
        ck_assert_msg(strstr(e, "a snapshot of"), "err: %s", e);
        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &was), 0);
        node_increment(&n, "after", 5, 7);
        if (write(fds[1], n.t.digest, sizeof(n.t.digest)) != sizeof(n.t.digest))
            _exit(1);
        _exit(0);
    }
    close(fds[1]);
    ck_assert_int_eq(read(fds[0], digest, sizeof(digest)), sizeof(digest));
    close(fds[0]);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    struct node m;
    ck_assert_msg(node_open(&m, "n1", 1000, 10) != NULL, "err: %s", err);
    ck_assert_mem_eq(m.t.digest, digest, sizeof(digest));
    ck_assert_int_eq(counter_value(table_find(&m.t, name, 200)), 20000);
    ck_assert_int_eq(counter_value(table_find(&m.t, "after", 5)), 5);
    ck_assert_int_eq(file_size("state.log.new"), -1); /* nothing of the attempt is left */
    ck_assert_int_eq(file_size("state.log.1"), -1);
    persist_close(m.p, &m.t, &m.d);
    node_free(&m);
}
END_TEST

/* Fault injection at the system-call boundary: this msync takes the place of
 * the C library's in the test binary (persist.c is linked in statically) and
 * fails with EIO, as on a disk error, while msync_fails is set. */
static bool msync_fails;

int msync(void *addr, size_t len, int flags)
{
    if (msync_fails) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_msync, addr, len, flags);
}

static int persist_again(struct node *n, const char *name)
{
    struct tally_counter *c = table_find(&n->t, name, strlen(name));
    ck_assert_ptr_nonnull(c);
    errno = 0;
    return persist_slot(n->p, &n->t, c, counter_slot(c, n->self), NULL);
}

/* Issue 10: msync's result was ignored. With fsync_interval_ms > 0 a failed
 * msync is reported once and withholds every acknowledgement (persist_slot
 * refuses, as when the disk is full) until an msync succeeds again. */
START_TEST(test_failed_msync_withholds_acknowledgements)
{
    char e[512];
    struct node n;
    ck_assert_ptr_nonnull(node_open(&n, "n1", 1000, 10));
    node_increment(&n, "x", 1, 1);
    msync_fails = true;
    ck_assert_int_eq(persist_tick(n.p, &n.t, &n.d, 5000, e, sizeof(e)), TALLY_E_DISK);
    ck_assert_msg(strstr(e, "state.log") && strstr(e, strerror(EIO)), "err: %s", e);
    ck_assert_int_eq(persist_again(&n, "x"), TALLY_E_DISK);
    ck_assert_int_eq(errno, EIO);
    ck_assert_int_eq(persist_tick(n.p, &n.t, &n.d, 7000, e, sizeof(e)), TALLY_OK); /* said once */
    ck_assert_int_eq(persist_again(&n, "x"), TALLY_E_DISK);
    msync_fails = false;
    ck_assert_int_eq(persist_tick(n.p, &n.t, &n.d, 9000, e, sizeof(e)), TALLY_OK);
    node_increment(&n, "x", 1, 2);
    persist_close(n.p, &n.t, &n.d);
    node_free(&n);
}
END_TEST

/* With fsync_interval_ms 0 each record is msynced before it is acknowledged:
 * one that fails is refused and is not in the log when the process dies. */
START_TEST(test_failed_msync_refuses_the_record_when_syncing_each)
{
    int status;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct node n;
        struct tally_slot next;
        if (!node_open(&n, "n1", 0, 10))
            _exit(1);
        node_increment(&n, "x", 1, 1);
        struct tally_counter *c = table_find(&n.t, "x", 1);
        ck_assert_int_eq(counter_add_preview(c, n.self, 1, &next), TALLY_OK);
        msync_fails = true;
        bool refused = persist_slot(n.p, &n.t, c, &next, NULL) == TALLY_E_DISK && errno == EIO;
        msync_fails = false;
        node_increment(&n, "y", 1, 2);
        _exit(refused ? 0 : 2);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    struct node m;
    ck_assert_ptr_nonnull(node_open(&m, "n1", 0, 10));
    ck_assert_int_eq(counter_value(table_find(&m.t, "x", 1)), 1);
    ck_assert_int_eq(counter_value(table_find(&m.t, "y", 1)), 1);
    persist_close(m.p, &m.t, &m.d);
    node_free(&m);
}
END_TEST

Suite *persist_suite(void)
{
    Suite *s = suite_create("persist");
    TCase *tc = tcase_create("records");
    tcase_add_test(tc, test_record_round_trip);
    tcase_add_test(tc, test_record_every_truncation_is_torn);
    tcase_add_test(tc, test_record_flipped_payload_or_crc_is_corrupt);
    tcase_add_test(tc, test_record_flipped_length_is_corrupt);
    tcase_add_test(tc, test_record_apply);
    suite_add_tcase(s, tc);
    tc = tcase_create("state_dir");
    tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
    tcase_add_test(tc, test_clean_reopen);
    tcase_add_test(tc, test_crash_replays_log);
    tcase_add_test(tc, test_adoption_survives_restarts);
    tcase_add_test(tc, test_the_scope_survives_restarts);
    tcase_add_test(tc, test_a_malformed_scope_is_refused);
    tcase_add_test(tc, test_resets_survive_restarts);
    tcase_add_test(tc, test_torn_tail_cut);
    tcase_add_test(tc, test_damaged_log_refuses);
    tcase_add_test(tc, test_damaged_log_length_refuses);
    tcase_add_test(tc, test_damaged_snapshot_refuses);
    tcase_add_test(tc, test_truncated_snapshot_refuses);
    tcase_add_test(tc, test_other_node_refused);
    tcase_add_test(tc, test_incarnation_rules);
    tcase_add_test(tc, test_dedup_window_order_survives);
    suite_add_tcase(s, tc);
    tc = tcase_create("faults");
    tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_state_dir_in_use_is_refused_untouched);
    tcase_add_test(tc, test_failed_rotation_keeps_the_log_in_use);
    tcase_add_test(tc, test_failed_msync_withholds_acknowledgements);
    tcase_add_test(tc, test_failed_msync_refuses_the_record_when_syncing_each);
    suite_add_tcase(s, tc);
    return s;
}
