/*
 * fuzz_report.c - parse_report on any payload: never crashes, and a report
 * it accepts has a total within 0..2^53-1 and either no device (the client
 * id is used) or a valid device id.
 */
#include <stdlib.h>
#include <string.h>

#include "tally.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tally_report rep;
    if (parse_report(data, size, &rep) != TALLY_OK)
        return 0;
    if (rep.total > (uint64_t)TALLY_MAX_SAFE || size == 0 || size > TALLY_PAYLOAD_MAX)
        abort();
    size_t dlen = strlen(rep.device);
    if (dlen > 0 && device_id_check(rep.device, dlen) != TALLY_OK)
        abort();
    return 0;
}
