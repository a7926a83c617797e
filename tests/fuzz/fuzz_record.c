/*
 * fuzz_record.c - a state file's records after arbitrary damage: record_next
 * walks the buffer as load_log does and record_apply applies each record it
 * returns; neither may crash, read out of bounds or break the table's
 * invariants (a scope taken holds valid names), and a refused record
 * changes nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "persist.h"

static void check(bool ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tally_table t;
    struct tally_dedup d;
    table_init(&t, 1u << 16, 1);
    check(dedup_init(&d, 16) == TALLY_OK);
    size_t off = 0;
    while (off < size) {
        const uint8_t *payload;
        size_t len, at = off;
        enum record_status st = record_next(data, size, &off, &payload, &len);
        if (st != RECORD_OK) {
            check(off == at);
            break;
        }
        check(off == at + 8 + len && payload == data + at + 8 && len > 0);
        uint64_t before[TALLY_BUCKETS];
        memcpy(before, t.digest, sizeof(before));
        if (record_apply(payload, len, &t, &d) != TALLY_OK)
            check(memcmp(before, t.digest, sizeof(before)) == 0);
    }
    /* a scope taken is names a hub could be configured with */
    if (t.scope.known) {
        size_t glen = strlen(t.scope.group), rlen = strlen(t.scope.region);
        check(!glen || group_name_check(t.scope.group, glen) == TALLY_OK);
        char names[TALLY_LEVELS - 1][GROUP_NAME_MAX + 1];
        check(region_path(t.scope.region, rlen, names) >= 0); /* "r", or "r/up" */
    }
    struct tally_counter *c, *tmp;
    HASH_ITER(hh, t.counters, c, tmp)
    {
        int64_t v = counter_value(c);
        check(v >= -TALLY_MAX_SAFE && v <= TALLY_MAX_SAFE);
        for (uint16_t i = 0; i < c->nslots; i++)
            check(c->slots[i].p <= (uint64_t)TALLY_MAX_SAFE &&
                  c->slots[i].n <= (uint64_t)TALLY_MAX_SAFE);
    }
    dedup_free(&d);
    table_free(&t);
    return 0;
}
