// Two real Mosquitto nodes on free 127.0.0.1 ports, bridged B -> A, each with
// the tally plugin and a WebSocket listener that serves the built dashboard.
// Everything they write goes to one temporary folder; stop() ends them.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const PLUGIN = path.resolve(REPO, process.env.TALLY_PLUGIN ?? 'build/plugin/mosquitto_tally.so');
export const DIST = path.join(REPO, 'clients/web/dist');
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
export async function waitFor(what, check, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
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

function nodeConfig({ id, mqttPort, wsPort, logFile, bridgeTo }) {
  const lines = [
    'user root',
    'per_listener_settings false',
    'allow_anonymous true',
    `log_dest file ${logFile}`,
    'log_type all',
    `listener ${mqttPort} 127.0.0.1`,
    `listener ${wsPort} 127.0.0.1`,
    'protocol websockets',
    'socket_domain ipv4',
    `http_dir ${DIST}`,
  ];
  if (existsSync(PLUGIN)) {
    lines.push(`plugin ${PLUGIN}`, `plugin_opt_node_id ${id}`, 'plugin_opt_bridge_clientids b-to-a');
  }
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
  constructor(id, dir, mqttPort, wsPort, bridgeTo) {
    this.id = id;
    this.mqttPort = mqttPort;
    this.wsPort = wsPort;
    this.logFile = path.join(dir, `${id}.log`);
    this.confFile = path.join(dir, `${id}.conf`);
    writeFileSync(this.confFile, nodeConfig({ id, mqttPort, wsPort, logFile: this.logFile, bridgeTo }));
    this.proc = null;
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

  async stop() {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }

  // Runs mosquitto_pub against this node's plain MQTT listener.
  pub(topic, message) {
    const args = ['-h', '127.0.0.1', '-p', String(this.mqttPort), '-t', topic, '-m', message];
    const r = spawnSync('mosquitto_pub', args, { encoding: 'utf8', timeout: 5000 });
    if (r.status !== 0) throw new Error(`mosquitto_pub ${args.join(' ')} failed: ${r.stderr}`);
  }

  // Starts mosquitto_sub on this node; lines() holds what it printed so far.
  sub(topic) {
    const args = ['-h', '127.0.0.1', '-p', String(this.mqttPort), '-t', topic, '-W', '30'];
    const proc = track(spawn('mosquitto_sub', args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    let out = '';
    proc.stdout.on('data', (d) => (out += d));
    return {
      lines: () => out.split('\n').filter((l) => l !== ''),
      stop: () => proc.exitCode === null && proc.kill('SIGTERM'),
    };
  }
}

export async function startCluster() {
  const dir = mkdtempSync(path.join(tmpdir(), 'tally-e2e-'));
  const [pa, wa, pb, wb] = await freePorts(4);
  const a = new Node('a', dir, pa, wa, null);
  const b = new Node('b', dir, pb, wb, pa);
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
