// The dashboard on a node holding 5,000 counters, signed in as conf/secure's
// read-only `browser` user, in a real browser: it never subscribes to every
// counter; it lists them through the control API (listCounters, paged, by
// prefix, in natural order, "N of M") and shows the fastest-moving ones
// first (topCounters), subscribed to exactly the rows on screen, with
// Mosquitto's default max_queued_messages.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { PASSWORDS, buildDashboard, launchChromium, startSecureNode, waitFor, waitForText } from './cluster.mjs';

const COUNTERS = 5000;
const SCREENSHOT_TRENDING = '/tmp/tally-listing-trending.png';
const SCREENSHOT_SEARCH = '/tmp/tally-listing-search.png';
const DEVICE = ['device', PASSWORDS.device];
// Debian's, with python3-paho-mqtt (scripts/install-deps.sh).
const PYTHON = '/usr/bin/python3';

// Publishes +1 to counters/item-1 .. item-<n> as the device user (paho, one
// connection, QoS 1 with many in flight): seconds, not minutes.
const LOAD = `
import sys, paho.mqtt.client as mqtt
port, user, password, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
c = mqtt.Client(client_id="loader")
c.username_pw_set(user, password)
c.max_inflight_messages_set(500)
c.connect("127.0.0.1", port)
c.loop_start()
sent = [c.publish(f"counters/item-{i}/inc", "1", qos=1) for i in range(1, n + 1)]
for m in sent:
    m.wait_for_publish(60)
c.disconnect()
c.loop_stop()
`;

// Two counters that keep moving, hot-a five times as fast as warm-b, until killed.
const STREAM = `
import sys, time, paho.mqtt.client as mqtt
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = mqtt.Client(client_id="streamer")
c.username_pw_set(user, password)
c.connect("127.0.0.1", port)
c.loop_start()
for i in range(1200):
    c.publish("counters/hot-a/inc", "5", qos=1)
    if i % 5 == 0:
        c.publish("counters/warm-b/inc", "5", qos=1)
    time.sleep(0.1)
`;

// The rows on screen: [{name, value}] with the value as shown, digits only.
function rows(page) {
  return page.locator('[data-testid^="counter-row-"]').evaluateAll((els) =>
    els.map((r) => ({
      name: r.dataset.testid.slice('counter-row-'.length),
      value: r.querySelector('.value').textContent.replace(/[^\d-]/g, ''),
    })),
  );
}

describe('web dashboard on 5,000 counters, as a read-only user', () => {
  let node;
  let browser;
  let page;
  let streamer;
  const pageErrors = [];

  // The page's MQTT client id, from the broker's log of its connection.
  function clientId() {
    const ids = [...node.log().matchAll(/ as (tally-web-[0-9a-f]+) \(.*u'browser'\)/g)].map((m) => m[1]);
    assert.ok(ids.length > 0, 'the page connected as browser');
    return ids.at(-1);
  }

  // The topics that client holds now, replaying the broker's log of its
  // SUBSCRIBE ("<id> <qos> <topic>") and UNSUBSCRIBE ("<id> <topic>") lines.
  function subscriptions() {
    const id = clientId();
    const held = new Set();
    for (const line of node.log().split('\n')) {
      const m = line.match(/^\d+: (\S+) (?:(\d) )?(\S+)$/);
      if (!m || m[1] !== id) continue;
      if (m[2] !== undefined) held.add(m[3]);
      else held.delete(m[3]);
    }
    return held;
  }

  function rowTopics(names) {
    return names.flatMap((n) => [`counters/${n}`, `counters/${n}/state`]);
  }

  // Waits until the client holds exactly the rows' topics and the page's own two.
  async function subscribedToExactly(names) {
    const want = new Set([...rowTopics(names), 'presence/dashboard', '$tally/stats/+']);
    await waitFor(
      `the page to hold exactly the ${names.length} rows' subscriptions`,
      () => {
        const held = subscriptions();
        return held.size === want.size && [...want].every((t) => held.has(t));
      },
      5000,
    ).catch((err) => {
      const held = subscriptions();
      const extra = [...held].filter((t) => !want.has(t));
      const missing = [...want].filter((t) => !held.has(t));
      throw new Error(`${err.message}; extra ${extra.slice(0, 5)}, missing ${missing.slice(0, 5)}`);
    });
  }

  before(async () => {
    node = await startSecureNode(await buildDashboard());
    const started = Date.now();
    const load = spawnSync(PYTHON, ['-c', LOAD, String(node.mqttPort), ...DEVICE, String(COUNTERS)], {
      encoding: 'utf8',
      timeout: 120000,
    });
    assert.equal(load.status, 0, `loading ${COUNTERS} counters failed: ${load.stderr}`);
    console.log(`# ${COUNTERS} counters created in ${Date.now() - started} ms`);
    streamer = spawn(PYTHON, ['-c', STREAM, String(node.mqttPort), ...DEVICE], { stdio: 'ignore' });
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    page.on('pageerror', (err) => pageErrors.push(err.message));
  });

  after(async () => {
    try {
      streamer?.kill();
      await browser?.close();
    } finally {
      await node?.stop();
    }
  });

  test('trending first: the counters moving fastest, fastest on top, live', async () => {
    await page.goto(node.url);
    await page.getByTestId('login-form').waitFor({ state: 'visible', timeout: 10000 });
    await page.getByTestId('login-user').fill('browser');
    await page.getByTestId('login-pass').fill(PASSWORDS.browser);
    const start = Date.now();
    await page.getByTestId('login-submit').click();
    await page.waitForFunction(
      () => {
        const top = document.querySelectorAll('[data-testid^="counter-row-"]');
        return top.length >= 2 && top[0].dataset.testid === 'counter-row-hot-a' && top[1].dataset.testid === 'counter-row-warm-b';
      },
      null,
      { timeout: 15000, polling: 20 },
    );
    console.log(`# sign-in to the first trending screen: ${Date.now() - start} ms`);
    assert.equal(await page.getByTestId('view-trending').getAttribute('aria-selected'), 'true');
    assert.match(await page.getByTestId('list-info').textContent(), /changing fastest/);
    const shown = await rows(page);
    assert.ok(shown.length <= 20, `at most 20 trending rows, not ${shown.length}`);
    const hot = Number(shown[0].value);
    await page.waitForFunction(
      (was) => Number(document.querySelector('[data-testid="counter-value-hot-a"]').textContent.replace(/[^\d]/g, '')) > was,
      hot,
      { timeout: 3000 },
    );
    await subscribedToExactly((await rows(page)).map((r) => r.name));
    assert.ok(![...subscriptions()].some((t) => t.includes('+') && t.startsWith('counters')), 'no wildcard on counters');
    await page.screenshot({ path: SCREENSHOT_TRENDING });
  });

  test('All: 50 a page in natural order, "N of M", subscribed to exactly the rows on screen', async () => {
    await page.getByTestId('view-all').click();
    await waitForText(page, 'range', '1–50 of 5,002');
    let shown = await rows(page);
    assert.deepEqual(
      shown.map((r) => r.name),
      ['hot-a', ...Array.from({ length: 49 }, (_, i) => `item-${i + 1}`)],
    );
    // Every row has its total: nothing dropped by max_queued_messages.
    await waitFor('every row to show its total', async () => (await rows(page)).every((r) => r.value !== ''), 5000);
    assert.ok((await rows(page)).slice(1).every((r) => r.value === '1'));
    await subscribedToExactly(shown.map((r) => r.name));
    assert.equal(await page.getByTestId('prev').isDisabled(), true);

    await page.getByTestId('next').click();
    await waitForText(page, 'range', '51–100 of 5,002');
    shown = await rows(page);
    assert.deepEqual(
      shown.map((r) => r.name),
      Array.from({ length: 50 }, (_, i) => `item-${i + 50}`),
    );
    await subscribedToExactly(shown.map((r) => r.name));
    assert.match(page.url(), /view=all/);
    assert.match(page.url(), /from=50/);
  });

  test('a prefix search: what starts with it, "N of M", paged; a row updates live', async () => {
    const start = Date.now();
    await page.getByTestId('search').fill('item-12');
    await waitForText(page, 'range', '1–50 of 111');
    console.log(`# search answered on screen in ${Date.now() - start} ms (150 ms of it typing debounce)`);
    assert.equal(await page.getByTestId('list-info').textContent(), '111 of 5,002 counters start with “item-12”.');
    const names = (await rows(page)).map((r) => r.name);
    assert.deepEqual(names.slice(0, 13), [
      'item-12',
      ...Array.from({ length: 10 }, (_, i) => `item-${120 + i}`),
      'item-1200',
      'item-1201',
    ]);
    await subscribedToExactly(names);

    const before = Date.now();
    node.pub('counters/item-12/inc', '41');
    await page.waitForFunction(
      () => document.querySelector('[data-testid="counter-value-item-12"]').textContent === '42',
      null,
      { timeout: 3000, polling: 20 },
    );
    console.log(`# a row's live update took ${Date.now() - before} ms (mosquitto_pub included)`);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: SCREENSHOT_SEARCH });

    await page.getByTestId('next').click();
    await waitForText(page, 'range', '51–100 of 111');
    await page.getByTestId('next').click();
    await waitForText(page, 'range', '101–111 of 111');
    assert.equal(await page.getByTestId('next').isDisabled(), true);
    assert.deepEqual(
      (await rows(page)).map((r) => r.name).slice(-1),
      ['item-1299'],
    );
    await subscribedToExactly((await rows(page)).map((r) => r.name));

    await page.getByTestId('search').fill('nothing-like-this');
    await waitForText(page, 'range', '0–0 of 0');
    assert.equal(await page.locator('[data-testid^="counter-row-"]').count(), 0);
    await subscribedToExactly([]);
  });

  test('back to trending: the search is cleared and the fastest are on top again', async () => {
    await page.getByTestId('view-trending').click();
    await page.waitForFunction(
      () => document.querySelector('[data-testid^="counter-row-"]')?.dataset.testid === 'counter-row-hot-a',
      null,
      { timeout: 5000 },
    );
    assert.equal(await page.getByTestId('search').inputValue(), '');
    assert.equal(await page.getByTestId('pager').isVisible(), false);
    assert.deepEqual(pageErrors, []);
  });
});
