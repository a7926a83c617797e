// The embeddable elements' pure parts: the MQTT 5 packets the small client
// writes and reads, byte for byte as the standard lays them out, and the
// TypeScript declarations (compiled against a usage file by Debian's tsc).

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { brokerUrl } from '../elements/src/broker.js';
import { connectPacket, parsePublish, readPacket } from '../elements/src/mqtt.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

test('CONNECT: MQTT 5, clean start, keepalive, client id, user name and password', () => {
  const p = connectPacket('id', 20, 'u', 'pw');
  const body = [0, 4, 77, 81, 84, 84, 5, 0xc2, 0, 20, 0, 0, 2, 105, 100, 0, 1, 117, 0, 2, 112, 119];
  assert.deepEqual([...p], [0x10, body.length, ...body]);
  const anonymous = connectPacket('id', 60, null, null);
  assert.equal(anonymous[9], 0x02, 'no login flags without credentials');
});

test('a packet is read only when whole, and its length may take several bytes', () => {
  const body = new Uint8Array(200).fill(7);
  const bytes = new Uint8Array([0x30, 0xc8, 0x01, ...body, 0xd0, 0x00]);
  assert.equal(readPacket(bytes.subarray(0, 2)), null);
  assert.equal(readPacket(bytes.subarray(0, 150)), null);
  const first = readPacket(bytes);
  assert.deepEqual([first.type, first.flags, first.body.length, first.size], [3, 0, 200, 203]);
  const second = readPacket(bytes.subarray(first.size));
  assert.deepEqual([second.type, second.body.length], [13, 0]);
});

test('PUBLISH in: topic, packet id at QoS 1, properties skipped, payload', () => {
  const topic = [0, 8, ...Buffer.from('counters')];
  const qos0 = parsePublish(1, new Uint8Array([...topic, 0, ...Buffer.from('42')]));
  assert.deepEqual(qos0, { topic: 'counters', payload: '42', qos: 0, id: 0 });
  // QoS 1, id 0x0102, a 3-byte property block (message expiry is longer, any will do).
  const qos1 = parsePublish(2, new Uint8Array([...topic, 1, 2, 3, 1, 1, 0, ...Buffer.from('7')]));
  assert.deepEqual(qos1, { topic: 'counters', payload: '7', qos: 1, id: 0x0102 });
});

test('a node’s broker URL follows the page’s scheme and host', () => {
  assert.equal(brokerUrl('http://10.0.0.2:18080'), 'ws://10.0.0.2:18080/mqtt');
  assert.equal(brokerUrl('https://tally.example'), 'wss://tally.example/mqtt');
});

test('the TypeScript declarations compile against a typical use', () => {
  const tsc = spawnSync('tsc', ['-p', path.join(HERE, '../elements/test/tsconfig.json')], { encoding: 'utf8' });
  assert.equal(tsc.error, undefined, 'tsc runs (Debian package node-typescript)');
  assert.equal(tsc.status, 0, tsc.stdout + tsc.stderr);
});
