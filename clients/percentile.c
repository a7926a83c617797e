/*
 * percentile.c - nearest-rank percentiles for the load clients (see percentile.h).
 */
#include "percentile.h"

#include <stdlib.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

void percentile_sort(double *v, size_t n)
{
    if (n > 1) { /* qsort of NULL, 0 is undefined behaviour */
        qsort(v, n, sizeof(*v), cmp_double);
    }
}

double percentile(const double *sorted, size_t n, unsigned p)
{
    size_t rank;

    if (n == 0) {
        return 0;
    }
    if (p > 100) {
        p = 100;
    }
    rank = ((size_t)p * n + 99) / 100; /* ceil(p% of n), in integers: no rounding error */
    return sorted[rank == 0 ? 0 : rank - 1];
}
