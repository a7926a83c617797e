/*
 * codec.c - what clients send, checked exactly as CONTRACT.md says.
 *
 * Every function returns TALLY_OK or the reason the input was refused; the
 * caller logs tally_strerror(reason) with the client id and the topic. Nothing
 * here allocates except cJSON's parse of a JSON payload, freed before return.
 * Payloads are not NUL-terminated: every parse takes an explicit length.
 */
#include <string.h>

#include <cjson/cJSON.h>

#include "tally.h"

static const char *const err_names[TALLY_E__COUNT] = {
    [TALLY_OK] = "ok",
    [TALLY_E_NAME_EMPTY] = "name_empty",
    [TALLY_E_NAME_TOO_LONG] = "name_too_long",
    [TALLY_E_NAME_UTF8] = "name_not_utf8",
    [TALLY_E_NAME_CHAR] = "name_bad_char",
    [TALLY_E_NAME_DOLLAR] = "name_starts_with_dollar",
    [TALLY_E_PAYLOAD_TOO_LARGE] = "payload_too_large",
    [TALLY_E_NOT_INTEGER] = "not_an_integer",
    [TALLY_E_DELTA_RANGE] = "delta_out_of_range",
    [TALLY_E_JSON] = "bad_json",
    [TALLY_E_JSON_KEY] = "bad_json_field",
    [TALLY_E_ID] = "bad_id",
    [TALLY_E_DEVICE] = "bad_device",
    [TALLY_E_OVERFLOW] = "total_out_of_range",
    [TALLY_E_MAX_COUNTERS] = "max_counters_reached",
    [TALLY_E_MAX_DEVICES] = "max_devices_reached",
    [TALLY_E_MAX_VIEWERS] = "max_viewers_reached",
    [TALLY_E_FORBIDDEN] = "forbidden_topic",
    [TALLY_E_WIRE] = "bad_replication_message",
    [TALLY_E_DISK] = "state_not_written",
    [TALLY_E_NOMEM] = "out_of_memory",
    [TALLY_E_DEVICE_ASSIGNED] = "device_id_assigned_by_broker",
    [TALLY_E_TOO_LARGE] = "message_too_large",
};

const char *tally_strerror(int err)
{
    if ((unsigned)err >= TALLY_E__COUNT) /* no reason is negative */
        return "unknown";
    return err_names[err];
}

/* ==== UTF-8 and names ==== */

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), or 0 if it is not valid. */
static size_t utf8_seq(const unsigned char *s, size_t left)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (left < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* Valid UTF-8 with no control characters (C0, DEL, C1). Returns the reason. */
static int text_check(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(s + i, len - i);
        if (n == 0)
            return TALLY_E_NAME_UTF8;
        if (n == 1 && (s[i] < 0x20 || s[i] == 0x7f))
            return TALLY_E_NAME_CHAR;
        if (n == 2 && s[i] == 0xc2 && s[i + 1] < 0xa0)
            return TALLY_E_NAME_CHAR; /* U+0080..U+009F */
        i += n;
    }
    return TALLY_OK;
}

/* A counter or page name: one topic level, 1 to 200 bytes of valid UTF-8,
 * none of / + #, no NUL or control characters, not starting with $. */
int name_check(const char *name, size_t len)
{
    if (len == 0)
        return TALLY_E_NAME_EMPTY;
    if (len > TALLY_NAME_MAX)
        return TALLY_E_NAME_TOO_LONG;
    if (name[0] == '$')
        return TALLY_E_NAME_DOLLAR;
    for (size_t i = 0; i < len; i++)
        if (name[i] == '/' || name[i] == '+' || name[i] == '#')
            return TALLY_E_NAME_CHAR;
    return text_check(name, len);
}

/* node_id: [A-Za-z0-9_.-], 1 to 64 bytes. */
int node_id_check(const char *id, size_t len)
{
    if (len == 0 || len > TALLY_NODE_ID_MAX)
        return TALLY_E_NAME_TOO_LONG;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return TALLY_E_NAME_CHAR;
    }
    return TALLY_OK;
}

/* A device id (a client id, or the "device" of a JSON report): 1 to 128 bytes
 * of UTF-8 without control characters. */
int device_id_check(const char *id, size_t len)
{
    if (len == 0 || len > TALLY_DEVICE_MAX || text_check(id, len) != TALLY_OK)
        return TALLY_E_DEVICE;
    return TALLY_OK;
}

/* ==== Numbers ==== */

int parse_int(const char *s, size_t len, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    if (len > 0 && (s[0] == '+' || s[0] == '-')) {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == len)
        return TALLY_E_NOT_INTEGER;
    uint64_t v = 0;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return TALLY_E_NOT_INTEGER;
        v = v * 10 + (uint64_t)(s[i] - '0');
        if (v > (uint64_t)TALLY_MAX_SAFE)
            return TALLY_E_DELTA_RANGE;
    }
    *out = neg ? -(int64_t)v : (int64_t)v;
    return TALLY_OK;
}

/* A JSON number that is an integer within +-(2^53-1). Doubles hold every such
 * integer exactly, and nothing in between, so the test is exact. */
static int json_int(const cJSON *item, int64_t *out)
{
    if (!cJSON_IsNumber(item))
        return TALLY_E_JSON_KEY;
    double d = item->valuedouble;
    if (d != d || d > (double)TALLY_MAX_SAFE || d < -(double)TALLY_MAX_SAFE)
        return TALLY_E_DELTA_RANGE;
    int64_t v = (int64_t)d;
    if ((double)v != d)
        return TALLY_E_NOT_INTEGER;
    *out = v;
    return TALLY_OK;
}

static bool looks_like_json(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')
            continue;
        return s[i] == '{';
    }
    return false;
}

/* True if a string in the JSON text s holds the escape \u0000. cJSON decodes
 * it into a NUL inside the C string, which would cut "order-1\u0000-pear"
 * down to "order-1": two different ids would meet as duplicates. */
static bool json_has_nul(const char *s, size_t len)
{
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"') {
            in_string = !in_string;
        } else if (in_string && s[i] == '\\' && i + 1 < len) {
            if (s[i + 1] == 'u' && i + 5 < len && strncmp(s + i + 2, "0000", 4) == 0)
                return true;
            i++; /* the escaped character: \" does not end the string */
        }
    }
    return false;
}

/* RFC 8259's white space. */
static bool json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* True if s holds a raw control character other than JSON's four white space
 * ones, which RFC 8259 allows nowhere. cJSON takes one for white space between
 * tokens and copies it into a string as is, where a raw NUL cuts the C string:
 * "order-1<NUL>-pear" would meet "order-1" as its duplicate, as \u0000 would. */
static bool json_has_control(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 && !json_space(s[i]))
            return true;
    return false;
}

/* Parses a JSON object whose keys must each be one of `keys`; calls take()
 * for each member. Unknown keys are refused: a typo such as "detla" must not
 * silently count +1. */
typedef int (*member_fn)(const cJSON *member, void *out);

static int parse_object(const char *s, size_t len, const char *const *keys, member_fn take,
                        void *out)
{
    const char *end = NULL;
    if (json_has_control(s, len))
        return TALLY_E_JSON;
    cJSON *root = cJSON_ParseWithLengthOpts(s, len, &end, false);
    if (!root)
        return TALLY_E_JSON;
    /* cJSON stops after the object; anything but white space after it
     * ("{"delta":2}garbage") makes the payload bad JSON. */
    for (; end < s + len; end++) {
        if (!json_space(*end)) {
            cJSON_Delete(root);
            return TALLY_E_JSON;
        }
    }
    int rc = cJSON_IsObject(root) ? TALLY_OK : TALLY_E_JSON;
    unsigned seen = 0;
    for (const cJSON *m = root->child; m && rc == TALLY_OK; m = m->next) {
        unsigned k = 0;
        while (keys[k] && strcmp(m->string, keys[k]) != 0)
            k++;
        if (!keys[k])
            rc = TALLY_E_JSON_KEY;
        else if (seen & (1u << k))
            rc = TALLY_E_JSON; /* {"delta":3,"delta":4}: which one was meant? */
        else
            rc = take(m, out);
        seen |= 1u << k;
    }
    cJSON_Delete(root);
    return rc;
}

/* ==== Increments ==== */

static int take_inc_member(const cJSON *m, void *outp)
{
    struct tally_inc *out = outp;
    if (strcmp(m->string, "delta") == 0)
        return json_int(m, &out->delta);
    if (!cJSON_IsString(m))
        return TALLY_E_ID;
    size_t n = strlen(m->valuestring);
    if (n == 0 || n > TALLY_ID_MAX || text_check(m->valuestring, n) != TALLY_OK)
        return TALLY_E_ID;
    memcpy(out->id, m->valuestring, n + 1);
    return TALLY_OK;
}

/* Empty = +1; a signed decimal integer; or {"delta": 5, "id": "k-123"}. */
int parse_increment(const void *payload, size_t len, struct tally_inc *out)
{
    static const char *const keys[] = {"delta", "id", NULL};
    const char *s = payload;
    out->delta = 1;
    out->id[0] = '\0';
    if (len == 0)
        return TALLY_OK;
    if (len > TALLY_PAYLOAD_MAX)
        return TALLY_E_PAYLOAD_TOO_LARGE;
    if (looks_like_json(s, len))
        return json_has_nul(s, len) ? TALLY_E_ID : parse_object(s, len, keys, take_inc_member, out);
    return parse_int(s, len, &out->delta);
}

/* ==== Device reports ==== */

static int take_report_member(const cJSON *m, void *outp)
{
    struct tally_report *out = outp;
    if (strcmp(m->string, "total") == 0) {
        int64_t v = 0;
        int rc = json_int(m, &v);
        if (rc == TALLY_OK && v < 0)
            rc = TALLY_E_DELTA_RANGE;
        if (rc == TALLY_OK)
            out->total = (uint64_t)v;
        return rc;
    }
    if (!cJSON_IsString(m))
        return TALLY_E_DEVICE;
    size_t n = strlen(m->valuestring);
    if (device_id_check(m->valuestring, n) != TALLY_OK)
        return TALLY_E_DEVICE;
    memcpy(out->device, m->valuestring, n + 1);
    return TALLY_OK;
}

/* A non-negative decimal running total, or {"device": "meter-7", "total": 1234}. */
int parse_report(const void *payload, size_t len, struct tally_report *out)
{
    static const char *const keys[] = {"device", "total", NULL};
    const char *s = payload;
    out->device[0] = '\0';
    out->total = 0;
    if (len > TALLY_PAYLOAD_MAX)
        return TALLY_E_PAYLOAD_TOO_LARGE;
    if (looks_like_json(s, len)) {
        if (json_has_nul(s, len))
            return TALLY_E_DEVICE;
        out->total = UINT64_MAX; /* "missing": a parsed total is <= 2^53-1 */
        int rc = parse_object(s, len, keys, take_report_member, out);
        if (rc == TALLY_OK && (out->total == UINT64_MAX || out->device[0] == '\0'))
            rc = TALLY_E_JSON_KEY;
        return rc;
    }
    int64_t v = 0;
    if (len == 0 || s[0] == '-' || s[0] == '+')
        return TALLY_E_NOT_INTEGER;
    int rc = parse_int(s, len, &v);
    out->total = (uint64_t)v;
    return rc;
}
