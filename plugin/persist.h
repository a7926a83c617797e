/*
 * persist.h - the node's state on disk: an append-only log of changes and a
 * snapshot that compacts it. See persist.c for the format and the guarantees.
 */
#ifndef TALLY_PERSIST_H
#define TALLY_PERSIST_H

#include <stddef.h>
#include <stdint.h>

#include "tally.h"

struct persist;

/* Locks state_dir (a broker already using it makes this fail, naming it),
 * loads the snapshot and replays the log into t and d, and chooses this
 * life's incarnation (*incarnation). Returns NULL with a message in err (on
 * corruption, naming the file and offset); on success err may hold a warning
 * (a torn log tail that was repaired). The lock is held until persist_close. */
struct persist *persist_open(const char *state_dir, const char *node_id,
                             long long fsync_interval_ms, long long snapshot_interval_ms,
                             struct tally_table *t, struct tally_dedup *d, uint64_t *incarnation,
                             char *err, size_t errlen);
/* Appends one slot's state s of counter c (and the idempotency key that
 * raised it, if any). Returns TALLY_OK, or TALLY_E_DISK with errno set when it
 * is not in the log (nothing of it is): the caller must not acknowledge what
 * it stands for. */
int persist_slot(struct persist *p, const struct tally_table *t, const struct tally_counter *c,
                 const struct tally_slot *s, const struct tally_key *key);
/* Appends a device's maximum d of counter c; returns as persist_slot. */
int persist_device(struct persist *p, const struct tally_table *t, const struct tally_counter *c,
                   const struct tally_dev *d);
/* Appends c's whole base (reset.c), one record per entry; returns as
 * persist_slot. Records are states: a base written in part (the disk filled
 * up in the middle) is a reset that observed less. */
int persist_base(struct persist *p, const struct tally_table *t, const struct tally_counter *c);
/* Appends c's fold entry for replica (fold.c), with the slot it was folded
 * into when `with` is not NULL: one record, so the two are on disk together
 * or not at all. Returns as persist_slot. */
int persist_fold(struct persist *p, const struct tally_table *t, const struct tally_counter *c,
                 uint32_t replica, const struct tally_slot *with);
/* Appends the group and region the state is made in (t->scope); returns as
 * persist_slot. */
int persist_scope(struct persist *p, const struct tally_table *t);
/* Appends node's retirement watermark (fold.c); returns as persist_slot. */
int persist_retired(struct persist *p, const char *node, size_t len, uint64_t below);
struct fold_adopt;
int persist_adopt(struct persist *p, const struct fold_adopt *a);
/* msyncs the log on the configured interval and compacts it into a snapshot
 * in a child process. Returns TALLY_E_DISK with a message for the log in err
 * when a snapshot failed or the log could not be synced (from then on
 * persist_slot and persist_device refuse, until it syncs again); TALLY_OK
 * otherwise. */
int persist_tick(struct persist *p, const struct tally_table *t, const struct tally_dedup *d,
                 uint64_t now_ms, char *err, size_t errlen);
/* Writes a final snapshot and frees p (NULL is fine). */
void persist_close(struct persist *p, const struct tally_table *t, const struct tally_dedup *d);

/* ==== The record codec, exposed for tests and fuzzers ==== */

/* Frames payload as one record: u32 length, u32 CRC-32 of the payload. */
void record_frame(struct wire_buf *out, const struct wire_buf *payload);
enum record_status { RECORD_OK, RECORD_TORN, RECORD_CORRUPT };
/* Reads the record at data[*off]; on RECORD_OK sets payload/len and advances
 * *off. RECORD_TORN: the file ends inside this record. */
enum record_status record_next(const uint8_t *data, size_t size, size_t *off,
                               const uint8_t **payload, size_t *len);
/* Applies one record's payload to the state. Returns TALLY_OK or TALLY_E_WIRE. */
int record_apply(const uint8_t *payload, size_t len, struct tally_table *t, struct tally_dedup *d);

#endif
