// The reconnect timing, as pure functions.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  DEFAULT_BACKOFF,
  backoffDelay,
  failuresAfterClose,
  planReconnect,
  roomUrl,
} from '../danmaku.js';

const top = () => 0.999999;
const bottom = () => 0;

test('backoff delay doubles from 500 ms and is capped at 10 s', () => {
  assert.equal(DEFAULT_BACKOFF.baseMs, 500);
  assert.equal(DEFAULT_BACKOFF.capMs, 10_000);
  const windows = [0, 1, 2, 3, 4, 5, 6, 50, 5000].map((n) => backoffDelay(n, {}, top) + 1);
  assert.deepEqual(windows, [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000]);
});

test('backoff delay is full jitter: anywhere from 0 to the window', () => {
  for (let n = 0; n < 10; n++) assert.equal(backoffDelay(n, {}, bottom), 0);
  for (let i = 0; i < 1000; i++) {
    const n = i % 12;
    const d = backoffDelay(n, {}, Math.random);
    assert.ok(Number.isInteger(d));
    assert.ok(d >= 0 && d < Math.min(10_000, 500 * 2 ** n), `${d} for ${n}`);
  }
  assert.equal(backoffDelay(3, { baseMs: 100, capMs: 300 }, top), 299);
});

test('a connection that stayed up 10 s resets the failure count', () => {
  assert.equal(failuresAfterClose(7, 10_000), 0);
  assert.equal(failuresAfterClose(7, 60_000), 0);
  assert.equal(failuresAfterClose(7, 9_999), 7);
  assert.equal(failuresAfterClose(7, null), 7);
  const stable = planReconnect({ code: 1006, failures: 9, openForMs: 20_000 }, {}, top);
  assert.deepEqual(stable, { reconnect: true, delay: 499, failures: 1 });
  const flapping = planReconnect({ code: 1006, failures: 3, openForMs: 200 }, {}, top);
  assert.deepEqual(flapping, { reconnect: true, delay: 3999, failures: 4 });
  const refused = planReconnect({ code: 1006, failures: 2, openForMs: null }, {}, top);
  assert.deepEqual(refused, { reconnect: true, delay: 1999, failures: 3 });
});

test('close codes: 1001 soon, 1008 slowly or never, client bugs never', () => {
  const away = planReconnect({ code: 1001, failures: 0, openForMs: 50 }, {}, top);
  assert.equal(away.reconnect, true);
  assert.ok(away.delay < 1000 && away.delay >= 900);
  // Repeated 1001 without a stable connection falls back on the normal window.
  assert.equal(planReconnect({ code: 1001, failures: 4, openForMs: 50 }, {}, top).delay, 7999);
  const slow = planReconnect({ code: 1008, failures: 0, openForMs: 50 }, {}, bottom);
  assert.deepEqual(slow, { reconnect: true, delay: 5000, failures: 1 });
  assert.equal(planReconnect({ code: 1008, failures: 0, openForMs: 50 }, {}, top).delay, 9999);
  assert.deepEqual(planReconnect({ code: 1008, failures: 0, openForMs: 50, sawErrors: true }), { reconnect: false });
  for (const code of [1002, 1007, 1009]) {
    assert.deepEqual(planReconnect({ code, failures: 0, openForMs: 50 }), { reconnect: false });
  }
  assert.equal(planReconnect({ code: 1000, failures: 0, openForMs: 50 }, {}, top).reconnect, true);
  assert.deepEqual(planReconnect({ code: 1006, failures: 3, openForMs: null }, { maxFailures: 3 }), { reconnect: false });
});

test('gateway URLs: http(s) become ws(s), nick and token are encoded', () => {
  assert.equal(roomUrl('ws://127.0.0.1:8080', 'lobby'), 'ws://127.0.0.1:8080/ws/lobby');
  assert.equal(roomUrl('http://h:1/', 'a-b_C'), 'ws://h:1/ws/a-b_C');
  assert.equal(roomUrl('https://h', 'r', { nick: '小明 x', token: 't.k' }), 'wss://h/ws/r?nick=%E5%B0%8F%E6%98%8E%20x&token=t.k');
  assert.throws(() => roomUrl('ws://h', 'no/slash'), RangeError);
  assert.throws(() => roomUrl('ftp://h', 'r'), TypeError);
});
