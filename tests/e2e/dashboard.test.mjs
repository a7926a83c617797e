// The dashboard in a real browser (Debian's Chromium driven by playwright-core)
// against two real bridged Mosquitto nodes with the tally plugin: what a
// person sees when counting, viewing, clicking +1 and losing the broker.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PLUGIN, buildDashboard, launchChromium, startCluster, waitFor } from './cluster.mjs';

const SCREENSHOT_DESKTOP = '/tmp/tally-dashboard.png';
const SCREENSHOT_PHONE = '/tmp/tally-dashboard-phone.png';

// The counter value as shown, separators dropped ("1,234" -> 1234), or null.
async function shownValue(page, name) {
  const loc = page.getByTestId(`counter-value-${name}`);
  if ((await loc.count()) === 0) return null;
  const text = (await loc.textContent()).replace(/[^\d-]/g, '');
  return text === '' ? null : Number(text);
}

function waitForValue(page, name, want, timeout) {
  return page.waitForFunction(
    ([id, value]) => {
      const e = document.querySelector(`[data-testid="${id}"]`);
      return e !== null && e.textContent.replace(/[^\d-]/g, '') === value;
    },
    [`counter-value-${name}`, String(want)],
    { timeout, polling: 20 },
  );
}

function waitForText(page, testId, want, timeout) {
  return page.waitForFunction(
    ([id, value]) => document.querySelector(`[data-testid="${id}"]`)?.textContent.trim() === value,
    [testId, want],
    { timeout, polling: 50 },
  );
}

describe('web dashboard', () => {
  let cluster;
  let browser;
  let context;
  let page;
  const requests = [];
  const pageErrors = [];

  async function openDashboard(ctx) {
    const p = await ctx.newPage();
    p.on('pageerror', (err) => pageErrors.push(err.message));
    await p.goto(cluster.a.url);
    await waitForText(p, 'conn-state', 'connected', 10000);
    return p;
  }

  before(async () => {
    cluster = await startCluster(await buildDashboard());
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
    context.on('request', (req) => requests.push(req.url()));
  });

  after(async () => {
    try {
      await browser?.close();
    } finally {
      await cluster?.stop();
    }
  });

  test('the tally plugin is built', () => {
    assert.ok(existsSync(PLUGIN), `no plugin at ${PLUGIN}: build it first, or set TALLY_PLUGIN`);
  });

  test('is served by the broker and connects back to it', async () => {
    page = await openDashboard(context);
    assert.equal(await page.getByTestId('conn-state').textContent(), 'connected');
    assert.match(await page.title(), /tally · dashboard/);
  });

  test('an increment published elsewhere shows within a second', async () => {
    cluster.a.pub('counters/e2e/inc', '1');
    await page.getByTestId('counter-row-e2e').waitFor({ timeout: 5000 });
    await waitFor('the first total of e2e', () => shownValue(page, 'e2e'), 5000);
    const was = await shownValue(page, 'e2e');

    const start = Date.now();
    cluster.a.pub('counters/e2e/inc', '1');
    await waitForValue(page, 'e2e', was + 1, 1000);
    assert.ok(Date.now() - start < 1000, `took ${Date.now() - start} ms`);
  });

  test('counts viewers: two tabs show 2, closing one shows 1', async () => {
    await waitForText(page, 'viewers', '1', 5000);
    const second = await openDashboard(context);
    await Promise.all([waitForText(page, 'viewers', '2', 5000), waitForText(second, 'viewers', '2', 5000)]);
    await second.close();
    await waitForText(page, 'viewers', '1', 5000);
  });

  test('another page name is another presence page', async () => {
    const other = await context.newPage();
    await other.goto(`${cluster.a.url}?page=e2e-other`);
    await waitForText(other, 'conn-state', 'connected', 10000);
    await waitForText(other, 'viewers', '1', 5000);
    await waitForText(page, 'viewers', '1', 1000);
    await other.close();
  });

  test('+1 in the page reaches the other node', async () => {
    const onB = cluster.b.sub('counters/e2e');
    try {
      const current = await shownValue(page, 'e2e');
      await waitFor(`node b to hold total ${current}`, () => onB.lines().includes(String(current)), 5000);
      await page.getByTestId('inc-e2e').click();
      await waitFor(`node b to publish ${current + 1}`, () => onB.lines().includes(String(current + 1)), 5000);
      await waitForValue(page, 'e2e', current + 1, 2000);
    } finally {
      onB.stop();
    }
  });

  test('the form adds any delta to any counter', async () => {
    await page.getByLabel('Name', { exact: true }).fill('e2e-form');
    await page.getByLabel('Delta', { exact: true }).fill('5');
    await page.getByRole('button', { name: 'Add', exact: true }).click();
    await waitForValue(page, 'e2e-form', 5, 5000);
    const names = await page.locator('[data-testid^="counter-row-"]').evaluateAll((rows) =>
      rows.map((r) => r.dataset.testid.slice('counter-row-'.length)),
    );
    assert.deepEqual(names, [...names].sort(), 'rows are sorted by name');
  });

  test('an increment the plugin refuses is reported and changes nothing', async () => {
    // 5 + (2^53 - 1) would leave the exact range, so the PUBACK carries a failure.
    await page.getByLabel('Name', { exact: true }).fill('e2e-form');
    await page.getByLabel('Delta', { exact: true }).fill(String(Number.MAX_SAFE_INTEGER));
    await page.getByRole('button', { name: 'Add', exact: true }).click();
    const message = page.locator('#form-msg.error');
    await message.waitFor({ timeout: 5000 });
    assert.match(await message.textContent(), /^e2e-form: /);
    await sleep(500);
    assert.equal(await shownValue(page, 'e2e-form'), 5);
  });

  test('looks right on a desktop and a phone', async () => {
    const phone = await browser.newContext({
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
      colorScheme: 'dark',
    });
    try {
      const p = await openDashboard(phone);
      // Some traffic through both nodes so the rate charts have a shape.
      for (let i = 0; i < 12; i++) {
        cluster.b.pub('counters/signups/inc', String(1 + (i % 3)));
        cluster.a.pub('counters/visits/inc', String(5 * i));
        await sleep(250);
      }
      await Promise.all([waitForValue(page, 'visits', 330, 5000), waitForValue(p, 'visits', 330, 5000)]);
      await sleep(1100); // one chart tick, and the value highlight fades
      await page.screenshot({ path: SCREENSHOT_DESKTOP, fullPage: true });
      const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `page is ${overflow} px wider than the phone`);
      await p.screenshot({ path: SCREENSHOT_PHONE, fullPage: true });
    } finally {
      await phone.close();
    }
  });

  test('fetches nothing from anywhere but the broker', () => {
    // blob: URLs are MQTT.js's own timer worker, made in the page.
    const foreign = requests.filter((u) => new URL(u).origin !== new URL(cluster.a.url).origin);
    assert.deepEqual(foreign, []);
    assert.deepEqual(pageErrors, []);
  });

  test('shows reconnecting, then offline, while the broker is gone, and reconnects when it returns', async () => {
    const was = await shownValue(page, 'e2e');
    await cluster.a.stop();
    await waitForText(page, 'conn-state', 'reconnecting', 5000);
    assert.equal(await page.getByTestId('inc-e2e').isDisabled(), true, '+1 is disabled while not connected');
    await waitForText(page, 'conn-state', 'offline', 15000);
    await cluster.a.start();
    await waitForText(page, 'conn-state', 'connected', 15000);
    // Subscribed again: it counts as a viewer and gets the totals back.
    await waitForText(page, 'viewers', '1', 5000);
    await waitForValue(page, 'e2e', was, 10000);
  });
});
