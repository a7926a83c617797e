/*
 * buf.c - the growable write buffer that every output of the plugin is built
 * in (replication messages, JSON documents, snapshot and log records), and
 * the text helpers that write into it: decimal integers without printf, JSON
 * strings, and printf-style formatting.
 *
 * A buffer grows by doubling and never truncates: what is written is there
 * whole, or the buffer is marked failed (out of memory, or a format that
 * cannot be rendered) and the caller drops what it was building. Callers
 * reset a buffer and reuse its memory; wbuf_free releases it. array_reserve
 * grows a zeroed array by index the same way (repl.c's per-stream names).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

static void wbuf_reserve(struct wire_buf *b, size_t more)
{
    if (b->failed || b->len + more <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more)
        cap *= 2;
    uint8_t *n = realloc(b->data, cap);
    if (!n) {
        b->failed = true;
        return;
    }
    b->data = n;
    b->cap = cap;
}

int array_reserve(void *arrp, uint32_t *cap, uint32_t i, size_t size)
{
    void **arr = arrp;
    if (i < *cap)
        return TALLY_OK;
    if (i == UINT32_MAX)
        return TALLY_E_NOMEM; /* a cap cannot count it */
    uint64_t ncap = *cap ? *cap : 64;
    while (ncap <= i)
        ncap *= 2;
    if (ncap > UINT32_MAX)
        ncap = UINT32_MAX;
    uint8_t *n = realloc(*arr, (size_t)ncap * size);
    if (!n)
        return TALLY_E_NOMEM;
    memset(n + (size_t)*cap * size, 0, (size_t)(ncap - *cap) * size);
    *arr = n;
    *cap = (uint32_t)ncap;
    return TALLY_OK;
}

void wbuf_free(struct wire_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

void wbuf_reset(struct wire_buf *b)
{
    b->len = 0;
}

void wbuf_bytes(struct wire_buf *b, const void *p, size_t n)
{
    wbuf_reserve(b, n);
    if (b->failed || n == 0)
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void wbuf_u8(struct wire_buf *b, uint8_t v)
{
    wbuf_bytes(b, &v, 1);
}

void wbuf_u64(struct wire_buf *b, uint64_t v)
{
    uint8_t x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    wbuf_bytes(b, x, 8);
}

void wbuf_varint(struct wire_buf *b, uint64_t v)
{
    uint8_t x[10];
    size_t n = 0;
    do {
        x[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            x[n] |= 0x80;
        n++;
    } while (v);
    wbuf_bytes(b, x, n);
}

void wbuf_str8(struct wire_buf *b, const char *s, size_t n)
{
    wbuf_u8(b, (uint8_t)n);
    wbuf_bytes(b, s, n);
}

void wbuf_str(struct wire_buf *b, const char *s)
{
    wbuf_bytes(b, s, strlen(s));
}

/* Decimal without printf: the totals and state document of every changed
 * counter are written on the broker's thread, where vsnprintf and its helpers
 * took about 8% of the user-space time at 100,000 changing counters. */
size_t fmt_i64(char out[21], int64_t v)
{
    char tmp[20];
    size_t n = 0, len = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    return len;
}

void wbuf_dec(struct wire_buf *b, int64_t v)
{
    char d[21];
    wbuf_bytes(b, d, fmt_i64(d, v));
}

/* Formats straight into the buffer, growing it to the formatted length: a
 * value never comes out cut short. On failure the buffer is marked failed. */
void wbuf_printf(struct wire_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    wbuf_reserve(b, (size_t)n + 1);
    if (b->failed)
        return;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Appends s as a JSON string. Names and ids reaching here hold no control
 * characters (codec.c), so only " and \ need escaping. */
void wbuf_json_str(struct wire_buf *b, const char *s, size_t len)
{
    wbuf_u8(b, '"');
    size_t from = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            wbuf_bytes(b, s + from, i - from);
            wbuf_u8(b, '\\');
            from = i;
        }
    }
    wbuf_bytes(b, s + from, len - from);
    wbuf_u8(b, '"');
}
