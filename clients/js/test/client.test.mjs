// The client against real gateway processes (DANMAKU_GATEWAY_BIN).

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';

import { connect, DanmakuError } from '../danmaku.js';
import { startGateway } from './gateway.mjs';
import { record, startRedis, until, waitFor } from './util.mjs';

// Everything a test starts, stopped after it whatever happened.
const cleanups = [];
function later(fn) {
  cleanups.push(fn);
}
afterEach(async () => {
  while (cleanups.length) {
    try {
      await cleanups.pop()();
    } catch {
      // keep cleaning
    }
  }
});

const FAST = { baseMs: 100, capMs: 1000, connectTimeoutMs: 3000 };

async function gateway(env = {}) {
  const gw = await startGateway(env);
  later(() => gw.stop('SIGKILL'));
  return gw;
}

function client(url, room, options = {}) {
  const c = connect(url, room, options);
  later(() => c.close());
  return c;
}

/** A client that has had its hello. */
async function joined(url, room, options) {
  const c = client(url, room, options);
  await waitFor(c, 'hello');
  return c;
}

test('hello arrives and the state goes connecting then open', async () => {
  const gw = await gateway();
  const c = client(gw.ws, 'lobby', { nick: '小明' });
  const states = record(c, ['state']);
  assert.equal(c.state, 'connecting');
  const hello = await waitFor(c, 'hello');
  assert.equal(hello.room, 'lobby');
  assert.equal(hello.name, '小明');
  assert.match(hello.user, /^guest-/);
  assert.equal(c.state, 'open');
  assert.equal(c.user, hello.user);
  assert.deepEqual(states.map((s) => s.payload), ['connecting', 'open']);
  c.close();
  assert.equal(c.state, 'closed');
  const closed = await waitFor(c, 'close');
  assert.equal(closed.reconnect, false);
});

test('an http:// base URL works too', async () => {
  const gw = await gateway();
  const c = client(gw.http, 'lobby');
  await waitFor(c, 'hello');
});

test('a post resolves with the ack id and another viewer receives the comment', async () => {
  const gw = await gateway();
  const [alice, bob] = await Promise.all([joined(gw.ws, 'room1', { nick: 'alice' }), joined(gw.ws, 'room1')]);
  const seen = waitFor(bob, 'danmaku', (d) => d.text === 'hello bob');
  const id = await alice.post('  hello bob  ', { color: '#FFDD00', mode: 'top' });
  assert.equal(typeof id, 'string');
  const d = await seen;
  assert.equal(d.id, id);
  assert.equal(d.name, 'alice');
  assert.equal(d.user, alice.user);
  assert.equal(d.color, '#ffdd00');
  assert.equal(d.mode, 'top');
});

test('rejects carry the code and message: too_long, empty, not_connected', async () => {
  const gw = await gateway();
  const c = await joined(gw.ws, 'room2');
  await assert.rejects(c.post('x'.repeat(101)), (e) => {
    assert.ok(e instanceof DanmakuError);
    assert.equal(e.code, 'too_long');
    assert.ok(e.message.length > 0);
    return true;
  });
  await assert.rejects(c.post('   '), (e) => e.code === 'empty' && e instanceof Error);
  // 100 characters counted as code points: emoji take two UTF-16 units each.
  assert.equal(typeof (await c.post('😀'.repeat(100))), 'string');
  c.close();
  await assert.rejects(c.post('after close'), (e) => e.code === 'not_connected');
});

test('batch frames are unpacked: every quick post reaches the other viewer in order', async () => {
  const gw = await gateway();
  let batches = 0;
  // Counts the batch frames the receiver gets, to show they happened.
  class Spy extends WebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (ev) => {
        if (typeof ev.data === 'string' && ev.data.includes('"type":"batch"')) batches += 1;
      });
    }
  }
  const [sender, receiver] = await Promise.all([joined(gw.ws, 'busy'), joined(gw.ws, 'busy', { WebSocket: Spy })]);
  const got = [];
  receiver.on('danmaku', (d) => got.push(d.id));
  const ids = await Promise.all(Array.from({ length: 40 }, (_, i) => sender.post(`quick ${i}`)));
  await until(() => got.length >= ids.length, 5000, 'all 40 comments');
  assert.deepEqual(got, ids);
  assert.ok(batches > 0, 'no batch frame came');
});

test('online counts are emitted', async () => {
  const gw = await gateway({ DANMAKU_ONLINE_INTERVAL_MS: '200' });
  const a = await joined(gw.ws, 'watch');
  await joined(gw.ws, 'watch');
  const o = await waitFor(a, 'online', (o) => o.count === 2, 5000);
  assert.equal(o.room, 'watch');
  assert.equal(a.online, 2);
});

test('a recall through the admin API arrives as delete', async () => {
  const gw = await gateway({ DANMAKU_ADMIN_TOKEN: 'x' });
  const [a, b] = await Promise.all([joined(gw.ws, 'mod'), joined(gw.ws, 'mod')]);
  const shown = waitFor(b, 'danmaku', (d) => d.text === 'take me back');
  const id = await a.post('take me back');
  assert.equal((await shown).id, id);
  const deleted = waitFor(b, 'delete', (d) => d.id === id);
  const res = await fetch(`${gw.http}/api/rooms/mod/danmaku/${id}`, {
    method: 'DELETE',
    headers: { Authorization: 'Bearer x' },
  });
  assert.equal(res.status, 200, await res.text());
  const d = await deleted;
  assert.equal(d.room, 'mod');
});

test('the client reconnects by itself across a gateway restart', async () => {
  const first = await gateway();
  // Small backoff numbers: the test is about reconnecting, not the timing.
  const c = await joined(first.ws, 'restart', { backoff: FAST });
  const firstHello = c.hello;
  const closed = waitFor(c, 'close');
  const reconnecting = waitFor(c, 'reconnecting');
  await first.stop('SIGTERM');
  const info = await closed;
  assert.equal(info.code, 1001);
  assert.equal(info.reconnect, true);
  await reconnecting;
  assert.equal(c.state, 'reconnecting');
  await assert.rejects(c.post('while down'), (e) => e.code === 'not_connected');
  const hello = waitFor(c, 'hello', () => true, 20_000);
  await gateway({ DANMAKU_LISTEN: first.addr });
  const second = await hello;
  assert.notEqual(second, firstHello);
  assert.equal(c.state, 'open');
  // Listen before posting: the comment can follow its ack in the same read.
  const mine = waitFor(c, 'danmaku', (d) => d.text === 'back again');
  const id = await c.post('back again');
  assert.equal((await mine).id, id);
});

test('after a reconnect, hello.recent does not repeat comments already shown (Redis history)', async () => {
  const redis = await startRedis();
  later(() => redis.stop());
  const env = { DANMAKU_REDIS_URL: redis.url };
  const first = await gateway(env);
  const other = await gateway(env);
  const c = await joined(first.ws, 'history', { backoff: FAST });
  const log = record(c, ['danmaku']);
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await c.post(`before ${i}`));
  await until(() => ids.every((id) => log.some((l) => l.payload.id === id)), 5000, 'own comments');
  // A viewer on another instance shares the history.
  const late = client(other.ws, 'history');
  const lateLog = record(late, ['danmaku']);
  await waitFor(late, 'hello');
  assert.deepEqual(lateLog.map((l) => [l.payload.id, l.meta.recent]), ids.map((id) => [id, true]));

  await first.stop('SIGTERM');
  const hello = waitFor(c, 'hello', () => true, 20_000);
  await gateway({ ...env, DANMAKU_LISTEN: first.addr });
  const again = await hello;
  // The history survived the restart, so recent repeats what we saw...
  assert.deepEqual(again.recent.map((r) => r.id), ids);
  const id = await c.post('after');
  await until(() => log.some((l) => l.payload.id === id), 5000, 'the new comment');
  // ...but each comment was emitted once.
  assert.deepEqual(log.map((l) => l.payload.id), [...ids, id]);
});
