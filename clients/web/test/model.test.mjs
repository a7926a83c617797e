// The dashboard's pure parts: rate bookkeeping, name rules and settings.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { nameProblem, parseTotal } from '../elements/src/names.js';
import { describeState } from '../src/counters.js';
import { RateTracker, WINDOW_S } from '../src/rate.js';
import { brokerUrl, readSettings } from '../src/settings.js';
import { bucketRates, knownRuns } from '../src/sparkline.js';

const T0 = 1_700_000_000_000;

test('the first total is a baseline, later totals are changes', () => {
  const r = new RateTracker();
  r.observe(100, T0);
  assert.equal(r.recent(T0), 0);
  r.observe(105, T0 + 200);
  r.observe(110, T0 + 1200);
  // Two seconds seen, 10 changes: 5 a second (the seconds before the
  // tracker existed are unknown, not idle).
  assert.equal(r.recent(T0 + 1500, 10), 5);
  const s = r.series(T0 + 1500);
  assert.equal(s.length, WINDOW_S);
  assert.deepEqual(s.slice(-2), [5, 5]);
  assert.ok(Number.isNaN(s[0]));
});

test('seconds while disconnected are unknown, not zero', () => {
  const r = new RateTracker();
  r.observe(0, T0);
  r.observe(4, T0 + 1000);
  r.pause(T0 + 1500);
  assert.equal(r.knownSeconds(T0 + 1500, 10), 2);
  const away = r.series(T0 + 20000);
  assert.deepEqual(away.slice(-21, -19), [0, 4]);
  assert.ok(away.slice(-19).every(Number.isNaN), 'the outage is a gap');
  assert.equal(r.recent(T0 + 20000, 10), null, 'no rate is known');
  assert.equal(r.knownSeconds(T0 + 20000, 10), 0);
  r.resume(T0 + 20000);
  r.observe(100, T0 + 20100); // a baseline: what changed while away is no rate
  assert.equal(r.recent(T0 + 20500, 10), 0);
  r.observe(103, T0 + 21000);
  assert.equal(r.recent(T0 + 21000, 10), 1.5);
});


test('a reconnect is a new baseline: what changed while away is no rate', () => {
  const r = new RateTracker();
  r.observe(1, T0);
  r.pause(T0 + 500);
  r.resume(T0 + 900);
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
  r.observe(40, T0 + (WINDOW_S + 2) * 1000);
  r.observe(40, T0 + 10 * WINDOW_S * 1000);
  assert.equal(r.recent(T0 + 10 * WINDOW_S * 1000, 10), 0);
});

test('the chart averages per-second changes into 5 s buckets', () => {
  const perSecond = new Array(WINDOW_S).fill(0);
  perSecond[WINDOW_S - 1] = 10;
  const rates = bucketRates(perSecond);
  assert.equal(rates.length, WINDOW_S / 5);
  assert.equal(rates.at(-1), 2);
  // Aligned on the clock: two seconds into the current bucket, it holds two.
  const aligned = bucketRates(perSecond, 2);
  assert.equal(aligned.length, WINDOW_S / 5 + 1);
  assert.deepEqual([aligned[0], aligned.at(-2), aligned.at(-1)], [0, 0, 5]);
});

test('a bucket with an unknown second is a gap in the chart', () => {
  const perSecond = new Array(WINDOW_S).fill(NaN);
  perSecond.fill(0, 0, 16);
  perSecond[12] = 5;
  perSecond.fill(3, WINDOW_S - 5);
  const rates = bucketRates(perSecond);
  assert.deepEqual(rates.slice(0, 4).map(String), ['0', '0', '1', 'NaN']);
  assert.equal(rates.at(-1), 3);
  assert.deepEqual(knownRuns(rates), [
    [0, 2],
    [rates.length - 1, rates.length - 1],
  ]);
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

test('the page and the topic roots come from the URL when valid', () => {
  const page = (search) => readSettings(search, 'http://h:1').page;
  assert.equal(page(''), 'dashboard');
  assert.equal(page('?page=shop'), 'shop');
  assert.equal(page('?page=a%2Fb'), 'dashboard');
  assert.equal(page('?page='), 'dashboard');
  const s = readSettings('?prefix=votes&presence_prefix=here', 'http://h:1');
  assert.deepEqual([s.prefix, s.presencePrefix], ['votes', 'here']);
  const d = readSettings('?prefix=a%2Fb&presence_prefix=%23', 'http://h:1');
  assert.deepEqual([d.prefix, d.presencePrefix], ['counters', 'presence']);
  const same = readSettings('?prefix=x&presence_prefix=x', 'http://h:1');
  assert.deepEqual([same.prefix, same.presencePrefix], ['x', 'presence']);
});

test('other nodes come from ?nodes=, this one first, each once', () => {
  const s = readSettings('?nodes=http://b:2/,nonsense,ftp://c,https://d:4/x,http://h:1', 'http://h:1');
  assert.deepEqual(s.nodes, ['http://h:1', 'http://b:2', 'https://d:4']);
  assert.equal(brokerUrl('http://b:2'), 'ws://b:2/mqtt');
  assert.equal(brokerUrl('https://d:4'), 'wss://d:4/mqtt');
});

test('totals are exact integers or nothing', () => {
  assert.equal(parseTotal('42'), 42);
  assert.equal(parseTotal('-3'), -3);
  assert.equal(parseTotal('+2'), 2);
  assert.equal(parseTotal('9007199254740991'), 2 ** 53 - 1);
  assert.equal(parseTotal('9007199254740992'), null);
  for (const bad of ['', '1.5', '1e3', ' 1', 'abc', '0x10']) assert.equal(parseTotal(bad), null);
});

test('a state document with devices left out shows their count and sum from its totals', () => {
  const small = describeState({
    nodes: { b: { p: 3, n: 0 }, a: { p: 12, n: 0 } },
    devices: { 'meter-2': 30, 'meter-1': 10 },
    devices_total: 40,
  });
  assert.equal(small.text, 'a 12 · b 3 · 2 devices 40');
  const big = describeState({
    nodes: { a: { p: 5, n: 1 } },
    nodes_omitted: 2,
    devices: { 'meter-9': 900, 'meter-8': 800 },
    devices_total: 4500,
    devices_omitted: 7,
  });
  assert.equal(big.text, 'a 4 · 2 more nodes · 9 devices 4,500');
  assert.deepEqual(big.title.split('\n'), [
    'node a: +5 −1', 'and 2 more nodes',
    'device meter-9: 900', 'device meter-8: 800', 'and 7 more devices',
  ]);
});
