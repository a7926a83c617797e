/*
 * fuzz_name.c - name_check against an independent reading of CONTRACT.md
 * ("1 to 200 bytes of valid UTF-8, none of / + #, no NUL or control
 * characters, not starting with $"): the two must agree on every input.
 * node_id_check and device_id_check run on the same bytes for crashes.
 */
#include <stdbool.h>
#include <stdlib.h>

#include "tally.h"

/* Decodes one code point the slow, obvious way; returns its length, or 0 if
 * the bytes at s are not the shortest encoding of a Unicode scalar value. */
static size_t decode(const uint8_t *s, size_t left, uint32_t *cp)
{
    size_t n = s[0] < 0x80         ? 1
               : (s[0] >> 5) == 6  ? 2
               : (s[0] >> 4) == 14 ? 3
               : (s[0] >> 3) == 30 ? 4
                                   : 0;
    if (n == 0 || n > left)
        return 0;
    *cp = n == 1 ? s[0] : s[0] & (0x7f >> n);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        *cp = (*cp << 6) | (s[i] & 0x3f);
    }
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (*cp < min[n] || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff))
        return 0;
    return n;
}

static bool contract_allows(const uint8_t *s, size_t len)
{
    if (len < 1 || len > 200 || s[0] == '$')
        return false;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t n = decode(s + i, len - i, &cp);
        if (n == 0 || cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == '/' || cp == '+' ||
            cp == '#')
            return false;
        i += n;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    bool ok = name_check(s, size) == TALLY_OK;
    if (ok != contract_allows(data, size))
        abort();
    node_id_check(s, size);
    device_id_check(s, size);
    return 0;
}
