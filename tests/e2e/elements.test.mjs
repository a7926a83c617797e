// The embeddable elements (clients/web/elements) in a real browser, on a
// page served by another origin (a small node HTTP server on `localhost`,
// another host name and port) than the broker that serves the script, as a
// site embedding tally would: live totals, a reader counted as a viewer
// while the page is open and not after, the button, formatting, and the
// stale state while the broker is gone.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  PASSWORDS,
  REPO,
  buildDashboard,
  launchChromium,
  startCluster,
  startNode,
  startSecureNode,
  waitFor,
} from './cluster.mjs';

const SCREENSHOT_LIVE = '/tmp/tally-elements-live.png';
const SCREENSHOT_STALE = '/tmp/tally-elements-stale.png';

// The three-line snippet of the README, and a little more.
function sitePage(scriptUrl) {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Launch</title>
<style>body { font: 18px system-ui; margin: 24px; } tally-counter, tally-viewers { font-weight: 700; }</style>
</head>
<body>
<h1>We launched</h1>
<script src="${scriptUrl}"></script>
<p><tally-counter name="likes" data-testid="likes"></tally-counter> likes ·
   <tally-viewers page="launch" data-testid="viewers"></tally-viewers> reading now</p>
<p><tally-button name="likes" data-testid="like">♥ Like</tally-button></p>
<p>Downloads: <tally-counter name="downloads" locale="de-DE" data-testid="downloads"></tally-counter>
   (<tally-counter name="downloads" notation="compact" locale="en" data-testid="downloads-compact"></tally-counter>)</p>
<p><tally-button name="likes" delta="9007199254740991" data-testid="too-much">too much</tally-button></p>
</body>
</html>`;
}

function serveSite(html) {
  const server = http.createServer((req, res) => {
    res.writeHead(req.url === '/' ? 200 : 404, { 'content-type': 'text/html; charset=utf-8' });
    res.end(req.url === '/' ? html : 'not found');
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

// The text an element shows (inside its shadow root).
function shown(page, testId) {
  return page.locator(`[data-testid="${testId}"] [part~="value"]`).textContent();
}

function waitForShown(page, testId, want, timeout = 5000) {
  return page.waitForFunction(
    ([id, value]) =>
      document.querySelector(`[data-testid="${id}"]`)?.shadowRoot.querySelector('[part~="value"]').textContent === value,
    [testId, want],
    { timeout, polling: 20 },
  );
}

describe('tally elements on another site', () => {
  let cluster;
  let site;
  let siteUrl;
  let browser;
  let context;
  const requests = [];
  const sockets = [];
  const pageErrors = [];

  async function openSite() {
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('websocket', (ws) => sockets.push(ws.url()));
    await page.goto(siteUrl);
    return page;
  }

  before(async () => {
    cluster = await startCluster(await buildDashboard());
    site = await serveSite(sitePage(`${cluster.a.url}tally-elements.js`));
    siteUrl = `http://localhost:${site.address().port}/`;
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 700, height: 360 } });
    context.on('request', (req) => requests.push(req.url()));
  });

  after(async () => {
    try {
      await browser?.close();
      site?.close();
    } finally {
      await cluster?.stop();
    }
  });

  let page;

  test('<tally-counter> shows a total counted on another node, and follows it live', async () => {
    cluster.b.pub('counters/likes/inc', '5');
    page = await openSite();
    assert.notEqual(new URL(page.url()).origin, new URL(cluster.a.url).origin, 'another origin than the broker');
    await waitForShown(page, 'likes', '5');
    const start = Date.now();
    cluster.b.pub('counters/likes/inc', '2');
    await waitForShown(page, 'likes', '7', 2000);
    assert.ok(Date.now() - start < 2000);
    assert.equal(await page.getByTestId('likes').evaluate((e) => e.value), 7, 'the value property');
    assert.equal(sockets.length, 1, 'the page’s six elements share one connection');
  });

  test('formats with Intl.NumberFormat: locale and notation', async () => {
    cluster.a.pub('counters/downloads/inc', '1234567');
    await waitForShown(page, 'downloads', '1.234.567');
    await waitForShown(page, 'downloads-compact', '1.2M');
  });

  test('<tally-viewers> counts the reader while the page is open and not after it closes', async () => {
    const counts = cluster.b.sub('presence/+'); // a wildcard: not a viewer itself
    try {
      await waitForShown(page, 'viewers', '1');
      await waitFor('node b to count one viewer', () => counts.lines().at(-1) === '1', 5000);
      const second = await openSite();
      await Promise.all([waitForShown(page, 'viewers', '2'), waitForShown(second, 'viewers', '2')]);
      await waitFor('node b to count two viewers', () => counts.lines().at(-1) === '2', 5000);
      await second.close();
      await waitForShown(page, 'viewers', '1');
      await waitFor('node b to count one viewer again', () => counts.lines().at(-1) === '1', 5000);
    } finally {
      counts.stop();
    }
  });

  test('<tally-button> increments, and says when the plugin refuses', async () => {
    const totals = cluster.b.sub('counters/likes');
    try {
      await waitFor('node b to hold 7 likes', () => totals.lines().includes('7'), 5000);
      const acked = page.getByTestId('like').evaluate(
        (e) => new Promise((resolve) => e.addEventListener('tally-increment', (ev) => resolve(ev.detail), { once: true })),
      );
      await page.getByTestId('like').locator('button').click();
      assert.equal((await acked).accepted, true);
      await waitForShown(page, 'likes', '8');
      await waitFor('node b to count the click', () => totals.lines().includes('8'), 5000);
    } finally {
      totals.stop();
    }
    await page.getByTestId('too-much').locator('button').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="too-much"]').hasAttribute('refused'));
    assert.equal(await shown(page, 'likes'), '8', 'a refused increment changes nothing');
    assert.equal(await page.getByTestId('like').evaluate((e) => e.hasAttribute('refused')), false);
    await page.screenshot({ path: SCREENSHOT_LIVE });
  });

  test('greyed "as of" while the broker is gone, live again when it is back', async () => {
    await cluster.a.stop('SIGKILL');
    await page.waitForFunction(() => document.querySelector('[data-testid="likes"]').hasAttribute('stale'), null, {
      timeout: 5000,
    });
    const look = await page.getByTestId('likes').evaluate((e) => {
      const face = e.shadowRoot.querySelector('[part~="value"]');
      return { opacity: Number(getComputedStyle(face).opacity), title: face.title };
    });
    assert.ok(look.opacity < 0.7, `greyed (opacity ${look.opacity})`);
    assert.match(look.title, /^as of \d/);
    assert.equal(await shown(page, 'likes'), '8', 'the last total is kept');
    assert.equal(await page.getByTestId('like').locator('button').isDisabled(), true, 'the button waits');
    assert.equal(await page.getByTestId('viewers').evaluate((e) => e.hasAttribute('stale')), true);
    await page.screenshot({ path: SCREENSHOT_STALE });

    await cluster.a.start();
    await page.waitForFunction(() => !document.querySelector('[data-testid="likes"]').hasAttribute('stale'), null, {
      timeout: 15000,
    });
    cluster.b.pub('counters/likes/inc', '1');
    await waitForShown(page, 'likes', '9', 10000);
    await waitForShown(page, 'viewers', '1');
    assert.equal(await page.getByTestId('like').locator('button').isDisabled(), false);
  });

  test('fetches only the page and the script, and talks only to the broker', () => {
    const origins = new Set(requests.map((u) => new URL(u).origin));
    const broker = new URL(cluster.a.url);
    assert.deepEqual([...origins].sort(), [new URL(siteUrl).origin, broker.origin].sort());
    assert.deepEqual([...new Set(sockets)], [`ws://${broker.host}/mqtt`], 'every connection goes to the broker');
    assert.deepEqual(pageErrors, []);
  });
});

describe('tally elements with a login, on a broker named by attribute', () => {
  let node;
  let site;
  let browser;

  before(async () => {
    const www = await buildDashboard();
    node = await startSecureNode(www);
    // The script comes from the site itself here (as from an npm install),
    // so the broker is named by the attribute, not guessed from the script.
    const broker = `ws://127.0.0.1:${node.wsPort}/mqtt`;
    const script = readFileSync(path.join(www, 'tally-elements.js'), 'utf8');
    site = await serveSite(`<!doctype html><meta charset="utf-8"><title>members</title>
<script>${script}</script>
<p><tally-counter name="secure-likes" broker="${broker}" username="browser" password="${PASSWORDS.browser}" data-testid="likes"></tally-counter>
<tally-viewers page="members" broker="${broker}" username="browser" password="${PASSWORDS.browser}" data-testid="viewers"></tally-viewers>
<tally-button name="secure-likes" broker="${broker}" username="presser" password="${PASSWORDS.presser}" data-testid="press">+1</tally-button>
<tally-button name="secure-likes" broker="${broker}" username="browser" password="${PASSWORDS.browser}" data-testid="look">+1</tally-button>
<tally-counter name="secure-likes" broker="${broker}" username="browser" password="wrong" data-testid="refused"></tally-counter></p>`);
    browser = await launchChromium();
  });

  after(async () => {
    try {
      await browser?.close();
      site?.close();
    } finally {
      await node?.stop();
    }
  });

  test('reads as one user, counts as another, and a refused login stops retrying', async () => {
    node.pub('counters/secure-likes/inc', '3');
    const page = await browser.newPage();
    await page.goto(`http://localhost:${site.address().port}/`);
    await waitForShown(page, 'likes', '3');
    await waitForShown(page, 'viewers', '1');
    const press = (id) =>
      page.getByTestId(id).evaluate(
        (e) =>
          new Promise((resolve) => {
            e.addEventListener('tally-increment', (ev) => resolve(ev.detail), { once: true });
            e.shadowRoot.querySelector('button').click();
          }),
      );
    await page.waitForFunction(() => !document.querySelector('[data-testid="press"]').shadowRoot.querySelector('button').disabled);
    assert.equal((await press('press')).accepted, true, 'presser may count');
    await waitForShown(page, 'likes', '4');
    await page.waitForFunction(() => !document.querySelector('[data-testid="look"]').shadowRoot.querySelector('button').disabled);
    const refused = await press('look');
    assert.deepEqual(refused, { accepted: false, reasonCode: 0x87 }, 'browser may not: not authorised');
    assert.equal(await shown(page, 'likes'), '4');
    // The wrong password: refused once, marked, and not tried again.
    await page.waitForFunction(() => document.querySelector('[data-testid="refused"]').hasAttribute('login-refused'));
    const wsConnections = () => node.log().split('\n').filter((l) => l.endsWith(`on port ${node.wsPort}.`)).length;
    const tries = wsConnections();
    await new Promise((resolve) => setTimeout(resolve, 2500)); // longer than the 2 s reconnect period
    assert.equal(wsConnections(), tries, 'no retry with refused credentials');
    assert.equal(await shown(page, 'refused'), '–');
  });
});

describe('tally elements as the npm package’s ES module, unbundled', () => {
  let node;
  let site;
  let browser;

  before(async () => {
    node = await startNode(await buildDashboard());
    const src = path.join(REPO, 'clients/web/elements/src');
    const broker = `ws://127.0.0.1:${node.wsPort}/mqtt`;
    const html = `<!doctype html><meta charset="utf-8"><title>module</title>
<script type="module">
  import { configure } from '/tally-elements/index.js';
  configure({ broker: '${broker}', locale: 'en-US' });
</script>
<p><tally-counter name="mod" data-testid="mod"></tally-counter> <tally-button name="mod" delta="1000" data-testid="add"></tally-button></p>`;
    // The package's files as a CDN or a bundler-free server would give them.
    site = http.createServer((req, res) => {
      const file = req.url.startsWith('/tally-elements/') ? path.join(src, path.basename(req.url)) : null;
      if (req.url === '/') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(html);
      } else if (file) {
        res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
        res.end(readFileSync(file));
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
    browser = await launchChromium();
  });

  after(async () => {
    try {
      await browser?.close();
      site?.close();
    } finally {
      await node?.stop();
    }
  });

  test('import, configure(), and the elements count', async () => {
    node.pub('counters/mod/inc', '2');
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (err) => errors.push(err.message));
    await page.goto(`http://localhost:${site.address().port}/`);
    await waitForShown(page, 'mod', '2');
    await page.waitForFunction(() => !document.querySelector('[data-testid="add"]').shadowRoot.querySelector('button').disabled);
    await page.getByTestId('add').locator('button').click();
    await waitForShown(page, 'mod', '1,002');
    assert.equal(await page.getByTestId('add').locator('button').textContent(), '+1', 'the default label');
    assert.deepEqual(errors, []);
  });
});
