// tally dashboard: connects over MQTT-over-WebSocket to the broker that
// served this page (signing in first when the broker asks for a login),
// views one presence page, shows one screen of counters live (view.js picks
// them through the control API), and publishes increments. The broker and
// the plugin do all the counting; this page only subscribes to retained
// topics and draws what arrives.
// When its broker stays away, the page says how old its numbers are and
// moves to another node of the cluster when it was told of one (?nodes=).

import mqtt from 'mqtt';
import { ClusterStrip } from './cluster.js';
import { ControlClient, RESPONSE_TOPIC } from './control.js';
import { CounterList, formatNumber } from './counters.js';
import { forgetLogin, isLoginRefusal, LoginPanel, loadLogin, refusalText, saveLogin } from './login.js';
import { nameProblem, parseTotal } from '../elements/src/names.js';
import { brokerUrl, readSettings } from './settings.js';
import { CounterView } from './view.js';

const KEEPALIVE_S = 20;
const RECONNECT_MS = 2000;
// Down longer than this (or the browser says it has no network): "offline".
const RECONNECTING_GRACE_MS = 10000;
// Down this long on one node, with others known: try the next one.
const FAILOVER_MS = 6000;

const settings = readSettings(location.search, location.origin);
const { page, prefix, presencePrefix } = settings;
const presenceTopic = `${presencePrefix}/${page}`;

const $ = (id) => document.getElementById(id);
const connEl = document.querySelector('[data-testid="conn-state"]');
const viaEl = document.querySelector('[data-testid="via"]');
const viewersEl = document.querySelector('[data-testid="viewers"]');
const staleEl = document.querySelector('[data-testid="stale"]');
const asOfEl = document.querySelector('[data-testid="as-of"]');
const form = $('add-form');
const formMsg = $('form-msg');

const counters = new CounterList($('rows'), $('empty'), increment);
const cluster = new ClusterStrip($('cluster'));
const control = new ControlClient((topic, payload, done) => {
  if (client?.connected) client.publish(topic, payload, { qos: 1 }, done);
  else done(new Error('not connected'));
});
const testEl = (id) => document.querySelector(`[data-testid="${id}"]`);
const view = new CounterView({
  list: counters,
  control,
  els: {
    tabs: { trending: testEl('view-trending'), all: testEl('view-all') },
    search: testEl('search'),
    info: testEl('list-info'),
    pager: testEl('pager'),
    prev: testEl('prev'),
    next: testEl('next'),
    range: testEl('range'),
  },
  watch: (names) => rowTopics(names, (topics) => client.subscribe(Object.fromEntries(topics.map((t) => [t, { qos: 0 }])))),
  unwatch: (names) => rowTopics(names, (topics) => client.unsubscribe(topics)),
});

// The two topics of each row, handed to act while connected.
function rowTopics(names, act) {
  if (!client?.connected || names.length === 0) return;
  act(names.flatMap((name) => [`${prefix}/${name}`, `${prefix}/${name}/state`]));
}

$('page-name').textContent = page;
$('inc-topic').textContent = `${prefix}/<name>/inc`;
document.title = `tally · ${page}`;

const CLIENT_ID = `tally-web-${Math.random().toString(16).slice(2, 10)}`;
const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/* ==== Connection state ==== */

// The node the page talks to: an index into settings.nodes (0: this page's own).
let nodeIndex = 0;
let nodeSinceMs = Date.now();
// When the connection was lost (the numbers are as of then), or null.
let downSinceMs = null;
let everConnected = false;

function showConn(state, detail) {
  connEl.dataset.state = state;
  connEl.textContent = state;
  connEl.title = detail;
  const connected = state === 'connected';
  counters.setEnabled(connected);
  form.querySelector('button').disabled = !connected;
}

// Greys every number and says how old it is, or (sinceMs null) undoes that.
function showStale(sinceMs) {
  const stale = sinceMs !== null && everConnected;
  document.body.classList.toggle('stale', stale);
  staleEl.hidden = !stale;
  if (!stale) return;
  listOtherNodes(); // with the settings of now: view, search and page included
  asOfEl.textContent = clock.format(sinceMs);
  asOfEl.dateTime = new Date(sinceMs).toISOString();
}

function showDown() {
  const now = Date.now();
  if (downSinceMs === null) {
    downSinceMs = now;
    counters.pause(now);
    view.disconnected();
    control.failAll();
    showStale(now);
  }
  const long = now - downSinceMs > RECONNECTING_GRACE_MS;
  const state = navigator.onLine === false || long ? 'offline' : 'reconnecting';
  showConn(state, `connection to ${nodeHost()} lost; retrying every ${RECONNECT_MS / 1000} s`);
}

function nodeHost() {
  return new URL(settings.nodes[nodeIndex]).host;
}

// Down on this node for FAILOVER_MS: the next node of ?nodes= gets its turn.
function failOver(now) {
  if (settings.nodes.length < 2 || now - Math.max(downSinceMs, nodeSinceMs) < FAILOVER_MS) return;
  nodeIndex = (nodeIndex + 1) % settings.nodes.length;
  connect();
}

// Links to the other nodes' dashboards, with this page's settings (its URL's query).
function listOtherNodes() {
  const nav = $('other-nodes');
  const links = settings.nodes.slice(1).map((origin) => {
    const a = document.createElement('a');
    a.href = `${origin}/${location.search}`;
    a.textContent = new URL(origin).host;
    return a;
  });
  nav.hidden = links.length === 0;
  nav.querySelector('span').replaceChildren(...links.flatMap((a, i) => (i ? [', ', a] : [a])));
}

/* ==== Connecting, as a user or anonymously ==== */

// The credentials of this tab, or null to connect anonymously.
let login = loadLogin();
// null while the broker waits for credentials: nothing to reconnect.
let client = null;

const loginPanel = new LoginPanel($('login-form'), $('account'), signIn, signOut);

function onConnect() {
  const now = Date.now();
  downSinceMs = null;
  everConnected = true;
  showStale(null);
  loginPanel.signedIn(login?.username ?? null);
  showConn('connected', `connected to ${nodeHost()}${login ? ` as ${login.username}` : ''}`);
  viaEl.hidden = nodeIndex === 0;
  viaEl.textContent = `via ${nodeHost()}`;
  counters.resume(now);
  cluster.touchAll(now);
  client.subscribe({
    [presenceTopic]: { qos: 0 },
    '$tally/stats/+': { qos: 0 },
  });
  view.connected();
}

// A refused login is final for these credentials: retrying them every 2 s
// would only fill the broker's log, so the page asks for others instead.
function onError(err) {
  if (!isLoginRefusal(err)) {
    connEl.title = err.message;
    return;
  }
  const refused = login;
  disconnect();
  if (refused) forgetLogin();
  login = null;
  downSinceMs = null;
  showStale(null);
  showConn('signed out', err.message);
  loginPanel.ask(refusalText(err.code, refused), refused?.username);
}

// Drops the current connection, if any, and everything it would still report.
function disconnect() {
  if (!client) return;
  const old = client;
  client = null;
  old.removeAllListeners();
  old.on('error', () => {});
  old.end(true);
}

function connect() {
  disconnect();
  nodeSinceMs = Date.now();
  client = mqtt.connect(brokerUrl(settings.nodes[nodeIndex]), {
    protocolVersion: 5,
    keepalive: KEEPALIVE_S,
    reconnectPeriod: RECONNECT_MS,
    connectTimeout: 10000,
    clean: true,
    clientId: CLIENT_ID,
    username: login?.username,
    password: login?.password,
    // Subscriptions are made on every clean connect, so mqtt.js must not
    // replay them a second time.
    resubscribe: false,
  });
  client.on('connect', onConnect);
  client.on('reconnect', showDown);
  client.on('close', showDown);
  client.on('error', onError);
  client.on('message', onMessage);
}

function signIn(credentials) {
  login = credentials;
  saveLogin(login);
  showConn('connecting', `signing in as ${login.username}`);
  connect();
}

// Forgets the credentials and what they let us read, then connects
// anonymously: a broker that allows that shows its public view, any other
// asks for a login again.
function signOut() {
  forgetLogin();
  login = null;
  downSinceMs = null;
  showStale(null);
  counters.clear();
  cluster.clear();
  viewersEl.textContent = '–';
  viewersEl.dataset.pending = '';
  loginPanel.signedIn(null);
  showConn('connecting', 'signed out');
  connect();
}

/* ==== Incoming messages ==== */

function onViewers(text) {
  const n = text === '' ? 0 : parseTotal(text);
  if (n === null) return;
  viewersEl.textContent = formatNumber(n);
  delete viewersEl.dataset.pending;
}

function parseJson(text) {
  try {
    const v = JSON.parse(text);
    return v && typeof v === 'object' ? v : null;
  } catch {
    return null;
  }
}

function onMessage(topic, payload) {
  const text = payload.toString();
  const now = Date.now();
  if (topic === presenceTopic) {
    onViewers(text);
    return;
  }
  if (topic === RESPONSE_TOPIC) {
    control.onResponse(text);
    return;
  }
  const levels = topic.split('/');
  if (levels[0] === '$tally' && levels[1] === 'stats' && levels.length === 3) {
    const stats = text === '' ? null : parseJson(text);
    if (text === '' || stats) cluster.set(levels[2], stats, now);
    return;
  }
  if (levels[0] !== prefix) return;
  if (levels.length === 2) {
    const total = text === '' ? null : parseTotal(text);
    if (text === '' || total !== null) counters.setTotal(levels[1], total, now);
  } else if (levels.length === 3 && levels[2] === 'state' && text !== '') {
    const state = parseJson(text);
    if (state) counters.setState(levels[1], state);
  }
}

/* ==== Increments ==== */

let toastTimer = null;

function toast(text, isError) {
  formMsg.textContent = text;
  formMsg.classList.toggle('error', Boolean(isError));
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (formMsg.textContent = ''), 4000);
}

// Publishes at QoS 1 so the plugin's verdict comes back in the PUBACK.
function publishIncrement(name, payload, done) {
  if (!client) return;
  client.publish(`${prefix}/${name}/inc`, payload, { qos: 1 }, (err) => {
    if (err) toast(`${name}: ${err.message}`, true);
    else done?.();
  });
}

function increment(name, button) {
  publishIncrement(name, '', () => {
    button.classList.remove('acked');
    void button.offsetWidth;
    button.classList.add('acked');
  });
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  const name = form.elements.name.value.trim();
  const delta = parseTotal(form.elements.delta.value.trim());
  const problem = nameProblem(name) ?? (delta === null ? 'delta must be a whole number' : null);
  if (problem) {
    toast(problem, true);
    return;
  }
  publishIncrement(name, String(delta), () => {
    toast(`added ${formatNumber(delta)} to ${name}`);
    view.refresh(); // a new counter, or one that now trends, shows at once
  });
});

/* ==== Clock: charts, rates, staleness ==== */

let colors = null;

function readColors() {
  const css = getComputedStyle(document.documentElement);
  colors = {
    line: css.getPropertyValue('--spark-line').trim(),
    fill: css.getPropertyValue('--spark-fill').trim(),
    axis: css.getPropertyValue('--spark-axis').trim(),
  };
}

function tick() {
  const now = Date.now();
  if (!client?.connected && downSinceMs !== null) {
    showDown();
    failOver(now);
  }
  if (document.hidden) return;
  if (client?.connected) view.tick(now);
  counters.tick(now, colors);
  if (client?.connected) cluster.tick(now);
}

listOtherNodes();
readColors();
tick();
matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
  readColors();
  tick();
});
document.addEventListener('visibilitychange', tick);
window.addEventListener('resize', tick);
setInterval(tick, 1000);
connect();
