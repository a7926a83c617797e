// Real Mosquitto nodes on free 127.0.0.1 ports, each with the tally plugin and
// a WebSocket listener that serves the built dashboard: two bridged B -> A
// that let anyone in (startCluster), or one that wants a login and applies
// conf/secure's acl (startSecureNode). Everything they write goes to one
// temporary folder; stop() ends them.

import { spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  cpSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const PLUGIN = path.resolve(REPO, process.env.TALLY_PLUGIN ?? 'build/plugin/mosquitto_tally.so');
const DIST = path.join(REPO, 'clients/web/dist');
const BUILD_LOCK = path.join(tmpdir(), 'tally-e2e-web-build.lock');
const MOSQUITTO = process.env.MOSQUITTO ?? '/usr/sbin/mosquitto';

// Every broker and client process still running: whatever way the test run
// ends, none of them outlives it.
const live = new Set();
process.on('exit', () => {
  for (const proc of live) proc.kill('SIGKILL');
});

function track(proc) {
  live.add(proc);
  proc.once('exit', () => live.delete(proc));
  return proc;
}

// Polls check() every 50 ms until it returns a truthy value or timeoutMs passes.
// Waits until the element with data-testid `testId` shows `want` (trimmed).
export function waitForText(page, testId, want, timeout = 5000) {
  return page.waitForFunction(
    ([id, value]) => document.querySelector(`[data-testid="${id}"]`)?.textContent.trim() === value,
    [testId, want],
    { timeout, polling: 20 },
  );
}

// Waits until the dashboard row of counter `name` shows `want` (digits and sign only).
export function waitForValue(page, name, want, timeout = 5000) {
  return page.waitForFunction(
    ([id, value]) => document.querySelector(`[data-testid="${id}"]`)?.textContent.replace(/[^\d-]/g, '') === value,
    [`counter-value-${name}`, String(want)],
    { timeout, polling: 20 },
  );
}

export async function waitFor(what, check, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

// Takes BUILD_LOCK, waiting up to 2 minutes; a lock older than that was left
// by a run that died, and is taken over.
async function lockBuild() {
  await waitFor(
    'the dashboard build lock',
    () => {
      try {
        closeSync(openSync(BUILD_LOCK, 'wx'));
        return true;
      } catch {
        try {
          if (Date.now() - statSync(BUILD_LOCK).mtimeMs > 120000) rmSync(BUILD_LOCK, { force: true });
        } catch {
          // removed by its owner meanwhile: try again
        }
        return false;
      }
    },
    120000,
  );
}

// Builds the dashboard with clients/web/build.sh and returns a copy of it in a
// new temporary folder, for one test file's brokers to serve: test files run
// in parallel, and another one's rebuild then never pulls files from under
// this one's pages.
export async function buildDashboard() {
  await lockBuild();
  try {
    const build = spawnSync(path.join(REPO, 'clients/web/build.sh'), { encoding: 'utf8', timeout: 300000 });
    if (build.status !== 0) throw new Error(`clients/web/build.sh failed:\n${build.stdout}${build.stderr}`);
    const copy = mkdtempSync(path.join(tmpdir(), 'tally-e2e-www-'));
    cpSync(DIST, copy, { recursive: true });
    return copy;
  } finally {
    rmSync(BUILD_LOCK, { force: true });
  }
}

function portIsFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

// n distinct free ports in 20000-29999, tried in a random order, a bounded number of times.
async function freePorts(n) {
  const ports = [];
  for (let tries = 0; ports.length < n && tries < 200; tries++) {
    const port = 20000 + Math.floor(Math.random() * 10000);
    if (!ports.includes(port) && (await portIsFree(port))) ports.push(port);
  }
  if (ports.length < n) throw new Error('no free ports in 20000-29999');
  return ports;
}

function portAccepts(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

// conf/secure/mosquitto.conf's login and acl lines, with the files in dir.
function secureConfig(dir) {
  return [
    'allow_anonymous false',
    `password_file ${path.join(dir, 'passwords')}`,
    `acl_file ${path.join(REPO, 'conf/secure/acl')}`,
  ];
}

const SECURE_PLUGIN_OPTIONS = [
  'plugin_opt_acl defer',
  'plugin_opt_bridge_usernames tally-bridge',
  'plugin_opt_admin_usernames admin',
  'plugin_opt_reader_usernames browser,presser,admin',
  'plugin_opt_viewer_usernames browser,presser,admin',
];

// Every test needs the plugin: a broker without it would pass for one that counts.
function requirePlugin() {
  if (!existsSync(PLUGIN)) throw new Error(`no plugin at ${PLUGIN}: run scripts/build.sh, or set TALLY_PLUGIN`);
}

function nodeConfig({ id, mqttPort, wsPort, logFile, httpDir, bridgeTo, secureDir, options }) {
  requirePlugin();
  const lines = [
    'user root',
    'per_listener_settings false',
    'set_tcp_nodelay true',
    ...(secureDir ? secureConfig(secureDir) : ['allow_anonymous true']),
    `log_dest file ${logFile}`,
    'log_type all',
    `listener ${mqttPort} 127.0.0.1`,
    `listener ${wsPort} 127.0.0.1`,
    'protocol websockets',
    'socket_domain ipv4',
    `http_dir ${httpDir}`,
  ];
  lines.push(`plugin ${PLUGIN}`, `plugin_opt_node_id ${id}`);
  // Where users log in, only usernames may be trusted: anyone picks any client id.
  lines.push(...(secureDir ? SECURE_PLUGIN_OPTIONS : ['plugin_opt_bridge_clientids b-to-a']));
  lines.push(...options);
  if (bridgeTo) {
    lines.push(
      'connection b-to-a',
      `address 127.0.0.1:${bridgeTo}`,
      'clientid b-to-a',
      'topic $tally/# both 1',
      'restart_timeout 1 1',
      'cleansession true',
    );
  }
  return lines.join('\n') + '\n';
}

class Node {
  // login: {username, password} for pub() and sub(), where the node wants one.
  // options: more plugin_opt_ lines.
  constructor(id, dir, mqttPort, wsPort, httpDir, { bridgeTo = null, secureDir = null, login = null, options = [] } = {}) {
    this.id = id;
    this.mqttPort = mqttPort;
    this.wsPort = wsPort;
    this.login = login;
    this.logFile = path.join(dir, `${id}.log`);
    this.confFile = path.join(dir, `${id}.conf`);
    const config = nodeConfig({ id, mqttPort, wsPort, logFile: this.logFile, httpDir, bridgeTo, secureDir, options });
    writeFileSync(this.confFile, config);
    this.proc = null;
  }

  clientArgs(login) {
    const args = ['-h', '127.0.0.1', '-p', String(this.mqttPort)];
    if (login) args.push('-u', login.username, '-P', login.password);
    return args;
  }

  get url() {
    return `http://127.0.0.1:${this.wsPort}/`;
  }

  log() {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : '';
  }

  async start() {
    const proc = track(spawn(MOSQUITTO, ['-c', this.confFile], { stdio: ['ignore', 'ignore', 'pipe'] }));
    let stderr = '';
    proc.stderr.on('data', (d) => (stderr += d));
    this.proc = proc;
    await waitFor(
      `node ${this.id} listening on ${this.mqttPort} and ${this.wsPort}`,
      async () => {
        if (proc.exitCode !== null) {
          throw new Error(`mosquitto ${this.id} exited ${proc.exitCode}: ${stderr}\n${this.log()}`);
        }
        return (await portAccepts(this.mqttPort)) && (await portAccepts(this.wsPort));
      },
      10000,
    );
  }

  // signal: SIGTERM (a clean stop, SIGKILL after 5 s) or SIGKILL (a crash).
  async stop(signal = 'SIGTERM') {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }

  // The dashboard this node serves, with a query string ('?page=x').
  dashboard(search = '') {
    return `${this.url}${search}`;
  }

  // Runs mosquitto_pub against this node's plain MQTT listener (as login, by default the node's).
  pub(topic, message, login = this.login) {
    const args = [...this.clientArgs(login), '-t', topic, '-m', message];
    const r = spawnSync('mosquitto_pub', args, { encoding: 'utf8', timeout: 5000 });
    if (r.status !== 0) throw new Error(`mosquitto_pub ${args.join(' ')} failed: ${r.stderr}`);
  }

  // Starts mosquitto_sub on this node (as login, by default the node's);
  // lines() holds what it printed so far.
  sub(topic, login = this.login) {
    const args = [...this.clientArgs(login), '-t', topic, '-W', '30'];
    const proc = track(spawn('mosquitto_sub', args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    let out = '';
    proc.stdout.on('data', (d) => (out += d));
    return {
      lines: () => out.split('\n').filter((l) => l !== ''),
      stop: () => proc.exitCode === null && proc.kill('SIGTERM'),
    };
  }
}

// httpDir: the dashboard the nodes serve, from buildDashboard(); options:
// more plugin_opt_ lines for both nodes.
export async function startCluster(httpDir, { options = [] } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'tally-e2e-'));
  const [pa, wa, pb, wb] = await freePorts(4);
  const a = new Node('a', dir, pa, wa, httpDir, { options });
  const b = new Node('b', dir, pb, wb, httpDir, { bridgeTo: pa, options });
  const stop = async () => {
    await b.stop();
    await a.stop();
  };
  try {
    await a.start();
    await b.start();
    await waitFor('bridge b-to-a to connect to node a', () => / as b-to-a /.test(a.log()), 10000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { dir, a, b, stop };
}

// One node alone that lets anyone in; options: more plugin_opt_ lines.
export async function startNode(httpDir, { options = [] } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'tally-e2e-'));
  const [port, wsPort] = await freePorts(2);
  const node = new Node('solo', dir, port, wsPort, httpDir, { options });
  await node.start();
  return node;
}

// The demo passwords of conf/secure/make-passwords.sh.
export const PASSWORDS = {
  device: 'device-demo',
  browser: 'browser-demo',
  presser: 'presser-demo',
  admin: 'admin-demo',
};

// One node set up as conf/secure/mosquitto.conf is: every client logs in with
// a password from make-passwords.sh and is held to conf/secure/acl. Its pub()
// and sub() log in as login (default device, who may count but not read).
export async function startSecureNode(httpDir, login = { username: 'device', password: PASSWORDS.device }) {
  const dir = mkdtempSync(path.join(tmpdir(), 'tally-e2e-secure-'));
  const made = spawnSync(path.join(REPO, 'conf/secure/make-passwords.sh'), [path.join(dir, 'passwords')], {
    encoding: 'utf8',
    timeout: 30000,
    env: {
      ...process.env,
      TALLY_DEVICE_PASSWORD: PASSWORDS.device,
      TALLY_BROWSER_PASSWORD: PASSWORDS.browser,
      TALLY_PRESSER_PASSWORD: PASSWORDS.presser,
      TALLY_ADMIN_PASSWORD: PASSWORDS.admin,
    },
  });
  if (made.status !== 0) throw new Error(`make-passwords.sh failed: ${made.stdout}${made.stderr}`);
  const [port, wsPort] = await freePorts(2);
  const node = new Node('solo', dir, port, wsPort, httpDir, { secureDir: dir, login });
  await node.start();
  return node;
}

/* Debian's Chromium, headless, with nothing that would reach for the
 * network: this machine's closed network refuses (and slows) such calls. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
