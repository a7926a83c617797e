// The dashboard when its own node dies, in a real browser against two real
// bridged nodes: the page keeps its last numbers greyed "as of" the loss,
// links to the other node it was told of (?nodes=), and moves its
// connection there by itself, live again.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildDashboard, launchChromium, startCluster, waitFor, waitForText, waitForValue } from './cluster.mjs';

const SCREENSHOT_LIVE = '/tmp/tally-failover-live.png';
const SCREENSHOT_STALE = '/tmp/tally-failover-stale.png';
const SCREENSHOT_MOVED = '/tmp/tally-failover-moved.png';

// A row's chart column by column: L where a rate line is drawn (a pixel
// at least half opaque), . where not (blank, or the faint band of a gap).
function chartColumns(page, name) {
  return page.evaluate((testId) => {
    const canvas = document.querySelector(`[data-testid="${testId}"] canvas`);
    const { data, width, height } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    let out = '';
    for (let x = 0; x < width; x++) {
      let drawn = false;
      for (let y = 0; y < height && !drawn; y++) drawn = data[(y * width + x) * 4 + 3] >= 128;
      out += drawn ? 'L' : '.';
    }
    return out;
  }, `counter-row-${name}`);
}

function opacity(page, testId) {
  return page.getByTestId(testId).evaluate((e) => Number(getComputedStyle(e).opacity));
}

describe('web dashboard when its node dies', () => {
  let cluster;
  let browser;
  let page;
  const pageErrors = [];

  before(async () => {
    cluster = await startCluster(await buildDashboard());
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1100, height: 560 } });
    page.on('pageerror', (err) => pageErrors.push(err.message));
  });

  after(async () => {
    try {
      await browser?.close();
    } finally {
      await cluster?.stop();
    }
  });

  test('live on its own node, told of the other', async () => {
    await page.goto(cluster.a.dashboard(`?nodes=${encodeURIComponent(cluster.b.url)}`));
    await waitForText(page, 'conn-state', 'connected', 10000);
    assert.equal(await page.getByTestId('via').isVisible(), false, 'on its own node, no "via"');
    // The row appears only when the trending view lists it (asked every
    // 3 s), and its chart knows only the seconds since; a 5 s bucket with an
    // unknown second is drawn as a gap. So the ten seconds of traffic start
    // once the row is there: they hold a full bucket, drawn before the outage
    // however late the row came.
    cluster.a.pub('counters/orders/inc', '1');
    await page.getByTestId('counter-row-orders').waitFor({ timeout: 10000 });
    for (let i = 2; i <= 8; i++) {
      await sleep(1300);
      cluster.a.pub('counters/orders/inc', String(i));
    }
    await waitForValue(page, 'orders', 36, 5000);
    await waitForText(page, 'viewers', '1', 5000);
    await sleep(1100); // a chart tick
    await page.screenshot({ path: SCREENSHOT_LIVE });
  });

  test('node a killed: numbers greyed as of the loss, a link to node b', async () => {
    const lost = Date.now();
    await cluster.a.stop('SIGKILL');
    await page.getByTestId('stale').waitFor({ state: 'visible', timeout: 5000 });
    assert.equal(await page.getByTestId('conn-state').textContent(), 'reconnecting');
    const asOf = Date.parse(await page.getByTestId('as-of').getAttribute('datetime'));
    assert.ok(Math.abs(asOf - lost) < 3000, 'as of the moment the connection was lost');
    assert.ok((await opacity(page, 'counter-value-orders')) < 0.7, 'the total is greyed');
    assert.ok((await opacity(page, 'viewers')) < 0.7, 'the viewer count is greyed');
    assert.equal(await page.getByTestId('counter-value-orders').textContent(), '36', 'and kept');
    const link = page.getByTestId('other-nodes').getByRole('link');
    assert.equal(await link.textContent(), new URL(cluster.b.url).host);
    const href = new URL(await link.getAttribute('href'));
    assert.equal(href.origin, new URL(cluster.b.url).origin, 'the link opens node b’s dashboard');
    assert.equal(href.searchParams.get('nodes'), cluster.b.url, 'with the same settings');
    await page.screenshot({ path: SCREENSHOT_STALE });
  });

  test('moves to node b by itself and is live there', async () => {
    await waitForText(page, 'conn-state', 'connected', 20000);
    assert.equal(await page.getByTestId('via').textContent(), `via ${new URL(cluster.b.url).host}`);
    assert.equal(await page.getByTestId('stale').isVisible(), false);
    assert.equal(await opacity(page, 'counter-value-orders'), 1, 'no longer greyed');
    const clientId = await page.evaluate(() => document.querySelector('[data-testid="conn-state"]').title);
    assert.match(clientId, new RegExp(`connected to ${new URL(cluster.b.url).host}`));
    assert.match(cluster.b.log(), / as tally-web-[0-9a-f]+ /, 'the page is a client of node b');
    // Node b's count holds the page (and node a's view of it until b's
    // peer_timeout_ms drops a): at least 1, and shown live.
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="viewers"]').textContent) >= 1);
    assert.equal(await opacity(page, 'viewers'), 1);
    cluster.b.pub('counters/orders/inc', '4');
    await waitForValue(page, 'orders', 40, 5000);
    await page.getByTestId('inc-orders').click();
    await waitForValue(page, 'orders', 41, 5000);
    // Live again long enough for full chart buckets after the outage.
    for (let i = 0; i < 6; i++) {
      cluster.b.pub('counters/orders/inc', '2');
      await sleep(1200);
    }
    await waitForValue(page, 'orders', 53, 5000);
    await page.screenshot({ path: SCREENSHOT_MOVED });
    const columns = await chartColumns(page, 'orders');
    assert.match(columns, /L+\.{3,}L+\.{0,8}$/, `the outage is a gap between two drawn stretches: ${columns}`);
    assert.deepEqual(pageErrors, []);
  });
});
