// Custom elements that show tally's live numbers on any page:
//
//   <tally-counter name="likes">      the counter's live total
//   <tally-viewers page="launch">     counts this reader as a viewer of the
//                                     page (it subscribes to exactly
//                                     presence/<page>) and shows the count
//   <tally-button name="likes">       adds delta (default 1) to the counter
//
// Attributes every element takes: broker (a ws:// or wss:// URL; default:
// the node that served this script, else this page's host), username and
// password, prefix and presence-prefix (the plugin's topic roots), locale and
// notation (Intl.NumberFormat: "en-IN", "compact"). Elements with the same
// broker and credentials share one connection; it reconnects every 2 s. While
// it is down, every element gets the `stale` attribute (greyed by default)
// and a title saying "as of <time>"; a button is disabled.

import { brokerUrl } from './broker.js';
import { MqttClient } from './mqtt.js';
import { nameProblem, parseTotal } from './names.js';

export const defaults = {
  broker: null,
  username: null,
  password: null,
  prefix: 'counters',
  presencePrefix: 'presence',
  locale: undefined,
};

// The elements in a document now.
const present = new Set();

// Sets what an element uses where it has no attribute of its own. Elements
// already on the page take it at once: an ES module defines them when
// imported, before the importer gets to call this.
export function configure(options) {
  Object.assign(defaults, options);
  for (const element of present) element.rejoin();
}

/* ==== Shared connections ==== */

// One MQTT connection and who listens to what on it. Each topic is
// subscribed once, however many elements show it, and unsubscribed when the
// last one goes; its last payload is kept for elements that come later
// (a retained message arrives only once per subscription).
class Connection {
  constructor(key, url, username, password) {
    this.key = key;
    this.topics = new Map(); // topic -> {listeners: Set, last: string|null}
    this.states = new Set(); // fn(state) for connection changes
    this.state = { connected: false, everConnected: false, lostAt: null, refused: null };
    this.client = new MqttClient(url, {
      clientId: `tally-el-${Math.random().toString(16).slice(2, 10)}`,
      username,
      password,
    });
    this.client.on('connect', () => {
      this.setState({ connected: true, everConnected: true, lostAt: null });
      for (const topic of this.topics.keys()) this.client.subscribe(topic);
    });
    this.client.on('close', () => {
      if (this.state.connected) this.setState({ connected: false, lostAt: Date.now() });
    });
    this.client.on('refused', (code) => this.setState({ connected: false, refused: code }));
    this.client.on('message', (topic, payload) => {
      const entry = this.topics.get(topic);
      if (!entry) return;
      entry.last = payload;
      for (const fn of entry.listeners) fn(payload);
    });
  }

  setState(change) {
    Object.assign(this.state, change);
    for (const fn of this.states) fn(this.state);
  }

  // Calls onPayload with each payload on topic (the last one at once, when
  // known) and onState on each change of the connection; returns the way out.
  watch(topic, onPayload, onState) {
    let entry = this.topics.get(topic);
    if (!entry) {
      entry = { listeners: new Set(), last: null };
      this.topics.set(topic, entry);
      if (this.client.connected) this.client.subscribe(topic);
    }
    entry.listeners.add(onPayload);
    this.states.add(onState);
    onState(this.state);
    if (entry.last !== null) onPayload(entry.last);
    return () => {
      entry.listeners.delete(onPayload);
      this.states.delete(onState);
      if (entry.listeners.size === 0) {
        this.topics.delete(topic);
        this.client.unsubscribe(topic);
      }
      release(this);
    };
  }

  // Watching connection changes only (a button): the way out.
  follow(onState) {
    this.states.add(onState);
    onState(this.state);
    return () => {
      this.states.delete(onState);
      release(this);
    };
  }
}

const connections = new Map(); // key -> {conn, users}

function acquire(url, username, password) {
  const key = JSON.stringify([url, username, password]);
  let entry = connections.get(key);
  if (!entry) {
    entry = { conn: new Connection(key, url, username, password), users: 0 };
    connections.set(key, entry);
  }
  entry.users++;
  return entry.conn;
}

// The last element gone: the connection closes (a viewer stops viewing).
function release(conn) {
  const entry = connections.get(conn.key);
  if (!entry || --entry.users > 0) return;
  connections.delete(conn.key);
  conn.client.end();
}

/* ==== The elements ==== */

const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

const STYLE = `
:host { font-variant-numeric: tabular-nums; }
:host([stale]) [part~="value"] { opacity: 0.5; }
:host([hidden]) { display: none; }
`;

class TallyElement extends HTMLElement {
  static get observedAttributes() {
    return ['name', 'page', 'broker', 'username', 'password', 'prefix', 'presence-prefix', 'locale', 'notation'];
  }

  constructor() {
    super();
    this.live = false; // in a document
    this.leave = null; // undoes join()
    this.root = this.attachShadow({ mode: 'open' });
  }

  setting(attribute, fallback) {
    return this.getAttribute(attribute) ?? fallback;
  }

  // A topic level from an attribute, or null (and the `invalid` attribute) when it is not one.
  level(attribute, fallback) {
    const value = this.setting(attribute, fallback);
    const ok = value !== null && nameProblem(value) === null;
    this.toggleAttribute('invalid', !ok);
    return ok ? value : null;
  }

  connection() {
    const fallback = defaults.broker ?? brokerUrl(location.origin);
    return acquire(
      this.setting('broker', fallback),
      this.setting('username', defaults.username),
      this.setting('password', defaults.password),
    );
  }

  connectedCallback() {
    this.live = true;
    present.add(this);
    this.rejoin();
  }

  disconnectedCallback() {
    this.live = false;
    present.delete(this);
    this.leave?.();
    this.leave = null;
  }

  attributeChangedCallback() {
    if (this.live) this.rejoin();
  }

  rejoin() {
    this.leave?.();
    this.leave = this.join();
  }

  // Greyed with "as of" (on the inner element's title) while the connection
  // is down after it was up.
  showState(state) {
    const stale = !state.connected && state.everConnected;
    this.toggleAttribute('stale', stale);
    this.toggleAttribute('login-refused', state.refused !== null);
    this.face.title = stale ? `as of ${clock.format(state.lostAt)}` : '';
    this.dispatchEvent(new CustomEvent('tally-state', { detail: { ...state } }));
  }
}

// The shared body of <tally-counter> and <tally-viewers>: one number from one topic.
class TallyNumber extends TallyElement {
  constructor() {
    super();
    this.root.innerHTML = `<style>${STYLE}</style><span part="value">–</span>`;
    this.face = this.root.querySelector('span');
    this.value = null;
  }

  join() {
    const topic = this.topic();
    if (topic === null) return null;
    const format = new Intl.NumberFormat(this.setting('locale', defaults.locale), {
      notation: this.setting('notation', 'standard'),
    });
    const conn = this.connection();
    return conn.watch(
      topic,
      (payload) => this.show(payload === '' ? 0 : parseTotal(payload), format),
      (state) => this.showState(state),
    );
  }

  show(value, format) {
    if (value === null) return;
    this.value = value;
    this.face.textContent = format.format(value);
    this.dispatchEvent(new CustomEvent('tally-change', { detail: { value } }));
  }
}

export class TallyCounter extends TallyNumber {
  topic() {
    const prefix = this.level('prefix', defaults.prefix);
    const name = this.level('name', null);
    return prefix && name ? `${prefix}/${name}` : null;
  }
}

// Subscribing to exactly <presence-prefix>/<page> is what makes this reader
// a viewer of the page; the plugin publishes the count there.
export class TallyViewers extends TallyNumber {
  topic() {
    const prefix = this.level('presence-prefix', defaults.presencePrefix);
    const page = this.level('page', null);
    return prefix && page ? `${prefix}/${page}` : null;
  }
}

export class TallyButton extends TallyElement {
  static get observedAttributes() {
    return [...TallyElement.observedAttributes, 'delta'];
  }

  constructor() {
    super();
    this.root.innerHTML = `<style>${STYLE}</style><button part="button" type="button" disabled><slot>+1</slot></button>`;
    this.face = this.root.querySelector('button');
    this.face.addEventListener('click', () => this.press());
    this.conn = null;
  }

  join() {
    const prefix = this.level('prefix', defaults.prefix);
    const name = this.level('name', null);
    const delta = parseTotal(this.setting('delta', '1'));
    if (!prefix || !name || delta === null) return null;
    this.incTopic = `${prefix}/${name}/inc`;
    this.payload = delta === 1 ? '' : String(delta);
    this.conn = this.connection();
    const leave = this.conn.follow((state) => {
      this.face.disabled = !state.connected;
      this.showState(state);
    });
    return () => {
      this.face.disabled = true;
      this.conn = null;
      leave();
    };
  }

  // At QoS 1: the PUBACK says whether the plugin took it (a code below
  // 0x80; 0x10 "no matching subscribers" is one) or why not.
  press() {
    this.conn?.client.publish(this.incTopic, this.payload, (code) => {
      const accepted = code >= 0 && code < 0x80;
      const detail = { accepted, reasonCode: code };
      this.toggleAttribute('refused', !accepted);
      this.dispatchEvent(new CustomEvent('tally-increment', { detail }));
    });
  }
}

export function define() {
  for (const [tag, cls] of [
    ['tally-counter', TallyCounter],
    ['tally-viewers', TallyViewers],
    ['tally-button', TallyButton],
  ]) {
    if (!customElements.get(tag)) customElements.define(tag, cls);
  }
}
