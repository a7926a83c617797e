/*
 * percentile.h - the one percentile definition of tally's load clients (tally-load,
 * tally-wsload), so that their latency figures can be compared.
 *
 * Nearest rank (Hyndman & Fan's definition 1; NIST's "nearest rank"): the p-th percentile of
 * n sorted samples is the smallest sample such that at least p% of all samples are at or below
 * it, that is sorted[ceil(p * n / 100) - 1]. It is always one of the measured values (never an
 * interpolation between two), p100 is the maximum, and p50 of an even count is the lower
 * middle one.
 */
#ifndef TALLY_PERCENTILE_H
#define TALLY_PERCENTILE_H

#include <stddef.h>

/* Sorts v[0..n) in ascending order, in place. */
void percentile_sort(double *v, size_t n);

/* The p-th percentile (0 <= p <= 100; p 0 is the minimum) of sorted[0..n); 0 when n is 0. */
double percentile(const double *sorted, size_t n, unsigned p);

#endif
