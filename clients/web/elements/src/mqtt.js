// A small MQTT 5 client over WebSocket: what the elements need and nothing
// more. MQTT.js does all of this and far more, but it is 340 kB minified,
// more than most pages that would show one live number; this is a few kB.
//
// It speaks MQTT 5.0 (OASIS standard, 2019) over one WebSocket with the
// `mqtt` subprotocol: CONNECT with a clean start, SUBSCRIBE and UNSUBSCRIBE
// at QoS 0, PUBLISH in at QoS 0 or 1 (acknowledged), PUBLISH out at QoS 1
// with the PUBACK's reason code handed back, PINGREQ as the heartbeat. Every
// packet is <fixed header byte><remaining length, a variable byte integer>
// <body>; strings are a 16-bit big-endian length and UTF-8 bytes. No
// properties are sent, and those received are skipped. The session is clean,
// so after each reconnect the owner subscribes again ('connect' event).

const CONNECT = 1;
const CONNACK = 2;
const PUBLISH = 3;
const PUBACK = 4;
const SUBSCRIBE = 8;
const UNSUBSCRIBE = 10;
const PINGREQ = 12;
const DISCONNECT = 14;

export const BAD_LOGIN = 0x86;
export const NOT_AUTHORISED = 0x87;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/* ==== Encoding ==== */

function varint(n) {
  const out = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 128;
    out.push(byte);
  } while (n > 0);
  return out;
}

function u16(n) {
  return [n >> 8, n & 255];
}

function str(s) {
  const bytes = encoder.encode(s);
  return [...u16(bytes.length), ...bytes];
}

function packet(first, body) {
  return new Uint8Array([first, ...varint(body.length), ...body]);
}

export function connectPacket(clientId, keepalive, username, password) {
  let flags = 0x02; // clean start
  const tail = [...str(clientId)];
  if (username != null) {
    flags |= 0x80;
    tail.push(...str(username));
  }
  if (password != null) {
    flags |= 0x40;
    tail.push(...str(password));
  }
  return packet(CONNECT << 4, [...str('MQTT'), 5, flags, ...u16(keepalive), 0, ...tail]);
}

/* ==== Decoding ==== */

// The first whole packet in buf: {type, flags, body, size}, or null when
// more bytes are needed.
export function readPacket(buf) {
  let length = 0;
  let mult = 1;
  for (let i = 1; i <= 4; i++) {
    if (i >= buf.length) return null;
    length += (buf[i] & 127) * mult;
    mult *= 128;
    if ((buf[i] & 128) === 0) {
      const start = i + 1;
      if (buf.length < start + length) return null;
      return { type: buf[0] >> 4, flags: buf[0] & 15, body: buf.subarray(start, start + length), size: start + length };
    }
  }
  throw new Error('malformed remaining length');
}

// A variable byte integer at body[at]: [value, bytes used].
function readVarint(body, at) {
  let value = 0;
  let mult = 1;
  for (let i = at; i < at + 4; i++) {
    value += (body[i] & 127) * mult;
    mult *= 128;
    if ((body[i] & 128) === 0) return [value, i - at + 1];
  }
  throw new Error('malformed variable byte integer');
}

// An incoming PUBLISH: {topic, payload (string), qos, id}.
export function parsePublish(flags, body) {
  const qos = (flags >> 1) & 3;
  const topicLen = (body[0] << 8) | body[1];
  let at = 2 + topicLen;
  const topic = decoder.decode(body.subarray(2, at));
  let id = 0;
  if (qos > 0) {
    id = (body[at] << 8) | body[at + 1];
    at += 2;
  }
  const [propsLen, used] = readVarint(body, at);
  at += used + propsLen;
  return { topic, payload: decoder.decode(body.subarray(at)), qos, id };
}

/* ==== The client ==== */

// Events: 'connect' (each time a connection is accepted), 'close' (each
// time one ends or fails), 'message' (topic, payload), 'refused' (CONNACK
// reason code: a refused login, after which it stops retrying).
export class MqttClient {
  constructor(url, { clientId, username = null, password = null, keepalive = 20, reconnectMs = 2000 }) {
    Object.assign(this, { url, clientId, username, password, keepalive, reconnectMs });
    this.handlers = {};
    this.connected = false;
    this.ended = false;
    this.nextId = 1;
    this.pending = new Map(); // packet id -> callback(reasonCode)
    this.open();
  }

  on(event, fn) {
    (this.handlers[event] ??= []).push(fn);
  }

  emit(event, ...args) {
    for (const fn of this.handlers[event] ?? []) fn(...args);
  }

  open() {
    this.buf = new Uint8Array(0);
    const ws = new WebSocket(this.url, ['mqtt']);
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => ws.send(connectPacket(this.clientId, this.keepalive, this.username, this.password));
    ws.onmessage = (event) => this.receive(new Uint8Array(event.data));
    ws.onclose = () => this.closed(ws);
    ws.onerror = () => ws.close();
  }

  closed(ws) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearInterval(this.pinger);
    this.connected = false;
    for (const done of this.pending.values()) done(-1);
    this.pending.clear();
    if (this.ended) return;
    this.emit('close');
    this.retry = setTimeout(() => this.open(), this.reconnectMs);
  }

  receive(bytes) {
    const buf = new Uint8Array(this.buf.length + bytes.length);
    buf.set(this.buf);
    buf.set(bytes, this.buf.length);
    let at = 0;
    for (let p; (p = readPacket(buf.subarray(at))) !== null; at += p.size) this.handle(p);
    this.buf = buf.slice(at);
  }

  handle({ type, flags, body }) {
    if (type === CONNACK) {
      const reason = body[1];
      if (reason !== 0) {
        this.ended = reason === BAD_LOGIN || reason === NOT_AUTHORISED;
        if (this.ended) this.emit('refused', reason);
        this.ws?.close();
        return;
      }
      this.connected = true;
      this.lastHeard = Date.now();
      this.pinger = setInterval(() => this.ping(), (this.keepalive * 1000) / 2);
      this.emit('connect');
    } else if (type === PUBLISH) {
      const msg = parsePublish(flags, body);
      if (msg.qos === 1) this.send(PUBACK << 4, u16(msg.id));
      this.emit('message', msg.topic, msg.payload);
    } else if (type === PUBACK) {
      const id = (body[0] << 8) | body[1];
      const done = this.pending.get(id);
      this.pending.delete(id);
      done?.(body.length > 2 ? body[2] : 0);
    } else if (type === DISCONNECT) {
      this.ws?.close();
    }
    this.lastHeard = Date.now();
  }

  // The heartbeat; a broker silent for a whole keepalive is taken as gone.
  ping() {
    if (Date.now() - this.lastHeard > this.keepalive * 1000) {
      this.ws?.close();
      return;
    }
    this.send(PINGREQ << 4, []);
  }

  send(first, body) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(packet(first, body));
  }

  id() {
    const id = this.nextId;
    this.nextId = (this.nextId % 65535) + 1;
    return id;
  }

  subscribe(topic) {
    this.send((SUBSCRIBE << 4) | 2, [...u16(this.id()), 0, ...str(topic), 0]);
  }

  unsubscribe(topic) {
    this.send((UNSUBSCRIBE << 4) | 2, [...u16(this.id()), 0, ...str(topic)]);
  }

  // At QoS 1; done(reasonCode) with the PUBACK's code (0: accepted), or -1
  // when the connection went first.
  publish(topic, payload, done) {
    if (!this.connected) {
      done(-1);
      return;
    }
    const id = this.id();
    this.pending.set(id, done);
    this.send((PUBLISH << 4) | 2, [...str(topic), ...u16(id), 0, ...encoder.encode(payload)]);
  }

  end() {
    this.ended = true;
    clearTimeout(this.retry);
    this.ws?.close();
  }
}
