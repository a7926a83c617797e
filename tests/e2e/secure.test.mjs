// The dashboard in a real browser against one real Mosquitto node set up as
// conf/secure ships it: every client logs in (password file from
// make-passwords.sh) and is held to conf/secure/acl, tally loaded with
// plugin_opt_acl defer. What a person sees when the broker wants a login:
// the sign-in form, a refused password, a user who may look but not count,
// and one who may count.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PASSWORDS, buildDashboard, launchChromium, startSecureNode, waitFor, waitForText, waitForValue } from './cluster.mjs';

const STORAGE_KEY = 'tally.login';
const SCREENSHOT_LOGIN = '/tmp/tally-dashboard-login.png';
const SCREENSHOT_SIGNED_IN = '/tmp/tally-dashboard-signed-in.png';
const BROWSER = { username: 'browser', password: PASSWORDS.browser };
const PRESSER = { username: 'presser', password: PASSWORDS.presser };

async function signIn(page, { username, password }) {
  await page.getByTestId('login-user').fill(username);
  await page.getByTestId('login-pass').fill(password);
  await page.getByTestId('login-submit').click();
}

// The page's two stores, to check where a password went.
function storage(page) {
  return page.evaluate(() => ({ session: { ...sessionStorage }, local: { ...localStorage } }));
}

describe('web dashboard on a broker that wants a login', () => {
  let node;
  let browser;
  let context;
  let page;
  const requests = [];
  const pageErrors = [];

  async function openDashboard() {
    const p = await context.newPage();
    p.on('pageerror', (err) => pageErrors.push(err.message));
    await p.goto(node.url);
    return p;
  }

  // Connections the broker saw on its WebSocket listener so far.
  function wsConnections() {
    return node.log().split('\n').filter((l) => l.endsWith(`on port ${node.wsPort}.`)).length;
  }

  before(async () => {
    node = await startSecureNode(await buildDashboard());
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    context.on('request', (req) => requests.push(req.url()));
  });

  after(async () => {
    try {
      await browser?.close();
    } finally {
      await node?.stop();
    }
  });

  test('asks for a login instead of reconnecting', async () => {
    node.pub('counters/secure/inc', '3');
    page = await openDashboard();
    await page.getByTestId('login-form').waitFor({ state: 'visible', timeout: 10000 });
    await waitForText(page, 'conn-state', 'signed out', 1000);
    assert.equal(await page.getByTestId('login-error').textContent(), '', 'no error before a first try');
    assert.equal(await page.getByTestId('viewers').isVisible(), false, 'nothing else is shown');
    assert.equal(await page.getByTestId('signout').isVisible(), false);
    await page.screenshot({ path: SCREENSHOT_LOGIN });
    const tries = wsConnections();
    assert.ok(tries >= 1, 'the broker saw the page connect');
    await sleep(2500); // longer than the 2 s reconnect period
    assert.equal(wsConnections(), tries, 'the page tried again without new credentials');
  });

  test('a wrong password is refused and not kept', async () => {
    await signIn(page, { username: 'browser', password: 'not-the-password' });
    await page.waitForFunction(
      () => document.querySelector('[data-testid="login-error"]').textContent !== '',
      null,
      { timeout: 5000 },
    );
    assert.match(await page.getByTestId('login-error').textContent(), /wrong user name or password/i);
    assert.equal(await page.getByTestId('login-form').isVisible(), true);
    assert.equal(await page.getByTestId('login-user').inputValue(), 'browser', 'the user name is kept');
    assert.equal(await page.getByTestId('login-pass').inputValue(), '', 'the password is cleared');
    assert.deepEqual(await storage(page), { session: {}, local: {} });
  });

  test('browser signs in: sees counters and viewers, and who is signed in', async () => {
    await signIn(page, BROWSER);
    await waitForText(page, 'conn-state', 'connected', 10000);
    await waitForValue(page, 'secure', 3, 5000);
    await waitForText(page, 'viewers', '1', 5000);
    assert.equal(await page.getByTestId('login-form').isVisible(), false);
    assert.equal(await page.getByTestId('signed-in-user').textContent(), 'browser');
    assert.equal(await page.getByTestId('signout').isVisible(), true);
    assert.equal(await page.getByTestId('login-error').textContent(), '', 'the old error is gone');
    const { session, local } = await storage(page);
    assert.deepEqual(JSON.parse(session[STORAGE_KEY]), BROWSER, 'kept for this tab');
    assert.deepEqual(local, {}, 'never in localStorage');
    assert.ok(!page.url().includes(PASSWORDS.browser), 'never in the URL');
  });

  test('browser may not count: +1 shows the refusal and changes nothing', async () => {
    await page.getByTestId('inc-secure').click();
    const message = page.locator('#form-msg.error');
    await message.waitFor({ timeout: 5000 });
    assert.match(await message.textContent(), /^secure: .*not authori[sz]ed/i);
    await sleep(500);
    assert.equal(await page.getByTestId('counter-value-secure').textContent(), '3');
    assert.equal(await page.getByTestId('conn-state').textContent(), 'connected', 'a refusal does not disconnect');
  });

  test('a reload signs in again from this tab’s storage', async () => {
    await page.reload();
    await waitForText(page, 'conn-state', 'connected', 10000);
    await waitForText(page, 'signed-in-user', 'browser', 1000);
    assert.equal(await page.getByTestId('login-form').isVisible(), false);
    await waitForText(page, 'viewers', '1', 5000);
  });

  test('presser signs in in another tab, and +1 counts', async () => {
    const second = await openDashboard();
    await second.getByTestId('login-form').waitFor({ state: 'visible', timeout: 10000 });
    await signIn(second, PRESSER);
    await waitForText(second, 'conn-state', 'connected', 10000);
    await waitForText(second, 'signed-in-user', 'presser', 1000);
    await Promise.all([waitForText(page, 'viewers', '2', 5000), waitForText(second, 'viewers', '2', 5000)]);
    await waitForValue(second, 'secure', 3, 5000);

    const totals = node.sub('counters/secure', BROWSER);
    try {
      await waitFor('mosquitto_sub as browser to get the total 3', () => totals.lines().includes('3'), 5000);
      await second.getByTestId('inc-secure').click();
      await waitFor('mosquitto_sub as browser to get the total 4', () => totals.lines().includes('4'), 5000);
    } finally {
      totals.stop();
    }
    await Promise.all([waitForValue(page, 'secure', 4, 2000), waitForValue(second, 'secure', 4, 2000)]);
    assert.equal(await second.locator('#form-msg.error').count(), 0);
    await second.screenshot({ path: SCREENSHOT_SIGNED_IN });
    assert.equal(await page.getByTestId('signed-in-user').textContent(), 'browser', 'each tab keeps its own user');
  });

  test('signing out forgets the login and asks again', async () => {
    await page.getByTestId('signout').click();
    await page.getByTestId('login-form').waitFor({ state: 'visible', timeout: 10000 });
    await waitForText(page, 'conn-state', 'signed out', 1000);
    assert.equal(await page.getByTestId('login-error').textContent(), '');
    assert.equal(await page.getByTestId('counter-row-secure').count(), 0, 'what browser could read is gone');
    assert.deepEqual(await storage(page), { session: {}, local: {} });
    const [other] = context.pages().filter((p) => p !== page);
    await waitForText(other, 'viewers', '1', 5000);
  });

  test('fetches nothing from anywhere but the broker', () => {
    // Every request of the tabs above, sign-in and sign-out included.
    const own = requests.filter((u) => new URL(u).origin === new URL(node.url).origin);
    assert.ok(own.some((u) => new URL(u).pathname === '/app.js'), 'the tabs loaded the dashboard');
    const foreign = requests.filter((u) => new URL(u).origin !== new URL(node.url).origin);
    assert.deepEqual(foreign, []);
    assert.ok(!requests.some((u) => u.includes(PASSWORDS.browser) || u.includes(PASSWORDS.presser)));
    assert.deepEqual(pageErrors, []);
  });
});
