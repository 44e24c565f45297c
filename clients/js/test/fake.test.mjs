// The client's own logic against a scripted stand-in for WebSocket: no
// gateway, so the timing-sensitive cases are deterministic.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { connect, DanmakuError } from '../danmaku.js';
import { record, until } from './util.mjs';

/** A WebSocket look-alike the test drives by hand. */
function fakeSockets() {
  const sockets = [];
  class FakeSocket {
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code = 1005) {
      if (this.readyState >= 2) return;
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ code, reason: '', wasClean: true }));
    }
    // Test side:
    serverSends(frame) {
      this.readyState = 1;
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    drop(code = 1006) {
      this.readyState = 3;
      this.onclose?.({ code, reason: '', wasClean: false });
    }
  }
  return { sockets, FakeSocket };
}

const HELLO = {
  type: 'hello', room: 'r', user: 'guest-1', online: 1, server: 'gw',
  limits: { max_text_chars: 100, max_frame_bytes: 4096, max_nonce_bytes: 64 },
  recent: [],
};
const comment = (id) => ({ id, room: 'r', user: 'u', text: `t${id}`, color: '#ffffff', mode: 'scroll', ts: 1 });

test('posts reject not_connected before hello and disconnected when the socket drops', async () => {
  const { sockets, FakeSocket } = fakeSockets();
  const client = connect('ws://fake', 'r', { WebSocket: FakeSocket, backoff: { baseMs: 10 } });
  try {
    await assert.rejects(client.post('early'), (e) => e instanceof DanmakuError && e.code === 'not_connected');
    await until(() => sockets.length === 1);
    assert.equal(sockets[0].url, 'ws://fake/ws/r');
    assert.equal(sockets[0].protocol, 'danmaku.v1.json');
    sockets[0].serverSends(HELLO);
    assert.equal(client.state, 'open');
    const a = client.post('one', { color: '#FFDD00', mode: 'top' });
    const b = client.post('two');
    const [p1, p2] = sockets[0].sent;
    assert.deepEqual({ ...p1, nonce: undefined }, { type: 'post', text: 'one', color: '#FFDD00', mode: 'top', nonce: undefined });
    assert.deepEqual(Object.keys(p2).sort(), ['nonce', 'text', 'type']);
    assert.notEqual(p1.nonce, p2.nonce);
    sockets[0].serverSends({ type: 'ack', nonce: p1.nonce, id: 'c-1' });
    assert.equal(await a, 'c-1');
    sockets[0].drop(1006);
    await assert.rejects(b, (e) => e.code === 'disconnected');
    assert.equal(client.state, 'reconnecting');
    await until(() => sockets.length === 2, 2000, 'a second socket');
  } finally {
    client.close();
  }
  assert.equal(client.state, 'closed');
});

test('batches are unpacked and repeats from hello.recent are skipped', async () => {
  const { sockets, FakeSocket } = fakeSockets();
  const client = connect('ws://fake', 'r', { WebSocket: FakeSocket, backoff: { baseMs: 10 } });
  const log = record(client, ['danmaku', 'online', 'delete']);
  try {
    await until(() => sockets.length === 1);
    sockets[0].serverSends({ ...HELLO, recent: [comment('a'), comment('b')] });
    sockets[0].serverSends({
      type: 'batch',
      items: [{ type: 'danmaku', ...comment('b') }, { type: 'danmaku', ...comment('c') }, { type: 'online', room: 'r', count: 4 }],
    });
    sockets[0].serverSends({ type: 'danmaku', ...comment('d') });
    sockets[0].serverSends({ type: 'delete', room: 'r', id: 'a' });
    sockets[0].drop(1001);
    await until(() => sockets.length === 2, 3000, 'a second socket');
    sockets[1].serverSends({ ...HELLO, recent: [comment('b'), comment('c'), comment('d'), comment('e')] });
    assert.deepEqual(
      log.map((l) => [l.event, l.payload.id ?? l.payload.count, l.meta?.recent]),
      [
        ['danmaku', 'a', true], ['danmaku', 'b', true], ['danmaku', 'c', false], ['online', 4, undefined],
        ['danmaku', 'd', false], ['delete', 'a', undefined], ['danmaku', 'e', true],
      ],
    );
    assert.equal(log[0].payload.type, 'danmaku');
    assert.equal(client.online, 1);
  } finally {
    client.close();
  }
});

test('a 1009 close stops reconnecting, and an oversized post is refused locally', async () => {
  const { sockets, FakeSocket } = fakeSockets();
  const client = connect('ws://fake', 'r', { WebSocket: FakeSocket, backoff: { baseMs: 10 } });
  const states = record(client, ['state']);
  try {
    await until(() => sockets.length === 1);
    sockets[0].serverSends({ ...HELLO, limits: { ...HELLO.limits, max_frame_bytes: 100 } });
    await assert.rejects(client.post('x'.repeat(200)), (e) => e.code === 'too_long');
    assert.equal(sockets[0].sent.length, 0);
    sockets[0].drop(1009);
    assert.equal(client.state, 'closed');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(sockets.length, 1);
    assert.deepEqual(states.map((s) => s.payload), ['connecting', 'open', 'closed']);
  } finally {
    client.close();
  }
});

test('an attempt that never gets its hello is abandoned after connectTimeoutMs and retried', async () => {
  const { sockets, FakeSocket } = fakeSockets();
  const client = connect('ws://fake', 'r', {
    WebSocket: FakeSocket,
    backoff: { baseMs: 10, connectTimeoutMs: 50 },
  });
  const log = record(client, ['close']);
  try {
    await until(() => sockets.length === 1);
    // The first socket hangs: no open, no close, no hello.
    await until(() => sockets.length === 2, 2000, 'a retry after the timeout');
    assert.equal(sockets[0].readyState, 3, 'the hung socket was closed');
    assert.equal(log.length, 1);
    assert.equal(log[0].payload.code, 1006);
    assert.equal(log[0].payload.reconnect, true);
    // A socket that answers in time stays: no timeout fires after hello.
    sockets[1].serverSends(HELLO);
    assert.equal(client.state, 'open');
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(sockets.length, 2);
    assert.equal(client.state, 'open');
  } finally {
    client.close();
  }
});
