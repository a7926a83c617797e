// The dashboard's pure parts: rate bookkeeping and name rules.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { nameProblem, pageFromSearch, parseTotal } from '../src/names.js';
import { RateTracker, WINDOW_S } from '../src/rate.js';
import { bucketRates } from '../src/sparkline.js';

const T0 = 1_700_000_000_000;

test('the first total is a baseline, later totals are changes', () => {
  const r = new RateTracker();
  r.observe(100, T0);
  assert.equal(r.recent(T0), 0);
  r.observe(105, T0 + 200);
  r.observe(110, T0 + 1200);
  assert.equal(r.recent(T0 + 1500, 10), 1);
  const s = r.series(T0 + 1500);
  assert.equal(s.length, WINDOW_S);
  assert.deepEqual(s.slice(-2), [5, 5]);
});

test('rebase drops what changed while away', () => {
  const r = new RateTracker();
  r.observe(1, T0);
  r.rebase();
  r.observe(1000, T0 + 1000);
  assert.equal(r.recent(T0 + 1000), 0);
});

test('changes older than the window fall out, decreases count negative', () => {
  const r = new RateTracker();
  r.observe(0, T0);
  r.observe(50, T0 + 1000);
  assert.equal(r.series(T0 + WINDOW_S * 1000)[0], 50);
  assert.equal(r.series(T0 + (WINDOW_S + 1) * 1000).reduce((a, b) => a + b, 0), 0);
  r.observe(40, T0 + (WINDOW_S + 1) * 1000);
  assert.equal(r.recent(T0 + (WINDOW_S + 1) * 1000, 10), -1);
  r.observe(40, T0 + 10 * WINDOW_S * 1000);
  assert.equal(r.recent(T0 + 10 * WINDOW_S * 1000, 10), 0);
});

test('the chart averages per-second changes into 5 s buckets', () => {
  const perSecond = new Array(WINDOW_S).fill(0);
  perSecond[WINDOW_S - 1] = 10;
  const rates = bucketRates(perSecond);
  assert.equal(rates.length, WINDOW_S / 5);
  assert.equal(rates.at(-1), 2);
});

test('names follow the contract', () => {
  assert.equal(nameProblem('visits'), null);
  assert.equal(nameProblem('größe'), null);
  assert.equal(nameProblem('x'.repeat(200)), null);
  assert.match(nameProblem(''), /empty/);
  assert.match(nameProblem('é'.repeat(101)), /200 bytes/);
  assert.match(nameProblem('$sys'), /\$/);
  for (const bad of ['a/b', 'a+', '#']) assert.match(nameProblem(bad), /\/ \+ or #/);
  assert.match(nameProblem('a\nb'), /control/);
});

test('the page comes from ?page= when valid', () => {
  assert.equal(pageFromSearch(''), 'dashboard');
  assert.equal(pageFromSearch('?page=shop'), 'shop');
  assert.equal(pageFromSearch('?page=a%2Fb'), 'dashboard');
  assert.equal(pageFromSearch('?page='), 'dashboard');
});

test('totals are exact integers or nothing', () => {
  assert.equal(parseTotal('42'), 42);
  assert.equal(parseTotal('-3'), -3);
  assert.equal(parseTotal('+2'), 2);
  assert.equal(parseTotal('9007199254740991'), 2 ** 53 - 1);
  assert.equal(parseTotal('9007199254740992'), null);
  for (const bad of ['', '1.5', '1e3', ' 1', 'abc', '0x10']) assert.equal(parseTotal(bad), null);
});
