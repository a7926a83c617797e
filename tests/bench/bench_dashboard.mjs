#!/usr/bin/env node
// The dashboard on one node holding many counters (default 1,000,000), in
// Debian's Chromium: how long until the first screen shows live counts, how
// long a prefix search takes to answer on screen, what the tab's JavaScript
// heap holds, and what the broker holds. Figures, not pass/fail.
//
//   node tests/bench/bench_dashboard.mjs [counters]
//
// Needs scripts/build.sh (the plugin, tally-load, the dashboard).

import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO, buildDashboard, launchChromium, startNode } from '../e2e/cluster.mjs';

const N = Number(process.argv[2] ?? 1000000);
const LOAD = path.join(REPO, 'build/clients/tally-load');

function rssMiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return Math.round(Number(m[1]) / 1024);
}

function cpuSeconds(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in clock ticks of 10 ms
}

const node = await startNode(await buildDashboard(), { options: [`plugin_opt_max_counters ${Math.max(N + 100, 1000)}`] });
const pid = node.proc.pid;
let hot = null;
let browser = null;
try {
  let start = Date.now();
  const load = spawnSync(
    LOAD,
    ['-p', String(node.mqttPort), '-n', String(N), '-k', String(N), '-t', 'counters/c%u/inc', '-c', '4', '--timeout', '1200'],
    { encoding: 'utf8', timeout: 1300000 },
  );
  if (load.status !== 0) throw new Error(`tally-load failed: ${load.stdout}${load.stderr}`);
  console.log(`loaded ${N.toLocaleString('en')} counters in ${((Date.now() - start) / 1000).toFixed(1)} s; broker RSS ${rssMiB(pid)} MiB`);
  // Ten counters that keep moving, for the trending view.
  hot = spawn(LOAD, ['-p', String(node.mqttPort), '-n', '1000000', '-k', '10', '-t', 'counters/hot%u/inc', '-r', '200'], {
    stdio: 'ignore',
  });
  await sleep(3000);

  browser = await launchChromium();
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const cpu0 = cpuSeconds(pid);
  start = Date.now();
  await page.goto(node.url);
  await page.waitForFunction(
    () => {
      const values = [...document.querySelectorAll('[data-testid^="counter-value-"]')];
      return values.length >= 10 && values.every((v) => /\d/.test(v.textContent));
    },
    null,
    { timeout: 60000, polling: 10 },
  );
  const firstScreen = Date.now() - start;
  start = Date.now();
  await page.getByTestId('view-all').click();
  await page.waitForFunction(
    (n) => document.querySelector('[data-testid="range"]').textContent === `1–50 of ${n}`,
    (N + 10).toLocaleString('en'),
    { timeout: 60000, polling: 10 },
  );
  const allView = Date.now() - start;
  // Each search's time on screen, less the page's 150 ms typing debounce.
  const searches = [];
  for (const prefix of ['c12345', 'c9', 'c77777', 'c1']) {
    start = Date.now();
    await page.getByTestId('search').fill(prefix);
    await page.waitForFunction(
      (p) => document.querySelector('[data-testid="list-info"]').textContent.includes(`“${p}”`),
      prefix,
      { timeout: 60000, polling: 10 },
    );
    searches.push(Date.now() - start - 150);
  }
  await page.getByTestId('next').click();
  await sleep(30000); // half a minute of trending refreshes and live rows
  await page.getByTestId('view-trending').click();
  await sleep(30000);
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('HeapProfiler.collectGarbage');
  await cdp.send('Performance.enable');
  const { metrics } = await cdp.send('Performance.getMetrics');
  const heap = metrics.find((m) => m.name === 'JSHeapUsedSize').value;
  const nodes = metrics.find((m) => m.name === 'Nodes').value;
  const cpu = cpuSeconds(pid) - cpu0;
  console.log(`first trending screen with live counts: ${firstScreen} ms`);
  console.log(`All view, first page of ${N.toLocaleString('en')}: ${allView} ms`);
  console.log(`prefix searches answered on screen (debounce taken off): ${searches.join(', ')} ms`);
  console.log(`tab after 60 s more: JS heap ${(heap / 1048576).toFixed(1)} MiB, ${nodes} DOM nodes`);
  console.log(`broker: RSS ${rssMiB(pid)} MiB, ${cpu.toFixed(1)} s of CPU while the tab was open (trending every 3 s, 200 increments/s)`);
  console.log(`machine load average: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} (2 cores, shared)`);
} finally {
  hot?.kill();
  await browser?.close();
  await node.stop();
}
