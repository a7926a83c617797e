/*
 * fuzz_increment.c - parse_increment on any payload: never crashes, and
 * what it accepts is within the contract (|delta| <= 2^53-1, id at most 64
 * bytes).
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tally_inc inc;
    if (parse_increment(data, size, &inc) != TALLY_OK)
        return 0;
    if (inc.delta > TALLY_MAX_SAFE || inc.delta < -TALLY_MAX_SAFE)
        abort();
    if (strlen(inc.id) > TALLY_ID_MAX || size > TALLY_PAYLOAD_MAX)
        abort();
    if (size == 0 && (inc.delta != 1 || inc.id[0] != '\0'))
        abort();
    return 0;
}
