/*
 * tally_output.c - what `tally` prints: aligned tables for people, one compact JSON object per
 * line for programs (--json, every command), ages such as "12s", and text with its control
 * bytes escaped. Every command prints through these, so the two forms stay alike.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tally_cli.h"

void *check_alloc(void *p)
{
    if (!p) {
        fputs("tally: out of memory\n", stderr);
        exit(EXIT_FAILED);
    }
    return p;
}

char *format(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return check_alloc(n < 0 ? NULL : s);
}

double now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double now_epoch_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

char *format_age(double ms)
{
    double s = ms < 0 ? 0 : ms / 1000.0;

    if (s < 10) {
        return format("%.1fs", s);
    }
    if (s < 120) {
        return format("%llds", (long long)s);
    }
    if (s < 7200) {
        return format("%lldm", (long long)(s / 60));
    }
    if (s < 172800) {
        return format("%lldh", (long long)(s / 3600));
    }
    return format("%lldd", (long long)(s / 86400));
}

void fput_escaped(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            fprintf(out, "\\x%02x", *p);
        } else {
            fputc(*p, out);
        }
    }
}

/*
 * The first and last columns are left-aligned (names, lists), the rest right-aligned
 * (numbers).
 */
void table_print(FILE *out, size_t ncols, const char *const *headers, char *const *cells,
                 size_t nrows)
{
    int width[16] = {0};

    assert(ncols <= sizeof(width) / sizeof(width[0]));
    for (size_t c = 0; c < ncols; c++) {
        width[c] = (int)strlen(headers[c]);
        for (size_t r = 0; r < nrows; r++) {
            int w = (int)strlen(cells[r * ncols + c]);
            width[c] = w > width[c] ? w : width[c];
        }
    }
    for (size_t r = 0; r <= nrows; r++) {
        for (size_t c = 0; c < ncols; c++) {
            const char *text = r == 0 ? headers[c] : cells[(r - 1) * ncols + c];
            bool left = c == 0 || c == ncols - 1;
            if (c == ncols - 1) {
                fprintf(out, "%s\n", text);
            } else {
                fprintf(out, left ? "%-*s  " : "%*s  ", width[c], text);
            }
        }
    }
}

void cells_free(char **cells, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(cells[i]);
    }
    free(cells);
}

void json_print_line(cJSON *obj)
{
    char *line = check_alloc(cJSON_PrintUnformatted(obj));

    puts(line);
    free(line);
    cJSON_Delete(obj);
}

void json_print_text(const char *text, size_t len)
{
    char *copy = format("%.*s", (int)len, text);

    cJSON_Minify(copy); /* drops the white space, newlines included; keeps the rest */
    puts(copy);
    free(copy);
}

/* A decimal integer as the plugin writes totals: optional '-', digits, nothing else. */
static bool is_integer_text(const char *text)
{
    const char *digits = text[0] == '-' ? text + 1 : text;
    size_t len = strlen(digits);

    return len > 0 && len <= 16 && strspn(digits, "0123456789") == len &&
           (digits[0] != '0' || len == 1); /* JSON has no leading zeros */
}

void json_add_value(cJSON *obj, const char *key, const char *text)
{
    if (!text) {
        check_alloc(cJSON_AddNullToObject(obj, key));
    } else if (is_integer_text(text)) {
        /* Raw keeps the integer exact; a double could print 2^53-1 in exponent form. */
        check_alloc(cJSON_AddRawToObject(obj, key, text));
    } else {
        check_alloc(cJSON_AddStringToObject(obj, key, text));
    }
}
