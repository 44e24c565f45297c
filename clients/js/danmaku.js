// danmaku.js: a client for the danmaku wire protocol, version 1
// (proto/PROTOCOL.md), over the `danmaku.v1.json` subprotocol.
//
// A plain ES module with no dependencies and no build step. It runs in
// browsers and in Node 20+ (global `WebSocket`; Node 20 needs
// `--experimental-websocket`), or anywhere else a WHATWG-style WebSocket
// constructor is passed as `options.WebSocket`.
//
// See README.md next to this file for the events, the errors and the
// reconnect policy.

/** The subprotocol this client speaks. */
export const SUBPROTOCOL = 'danmaku.v1.json';

/**
 * Reconnect timing, in milliseconds. README.md explains the choice.
 *
 * - `baseMs`: the window of the first retry after a drop; doubled on every
 *   failure in a row.
 * - `capMs`: the largest window; also the delay window after a 1008.
 * - `resetAfterMs`: a connection that stayed up this long counts as stable,
 *   and the next drop starts again from `baseMs`.
 * - `goingAwayMs`: the window after a 1001 (server shutting down or
 *   draining).
 * - `maxFailures`: give up (state `closed`) after this many failed attempts
 *   in a row; Infinity never gives up.
 * - `connectTimeoutMs`: an attempt whose `hello` has not come this long
 *   after it started is abandoned and counts as failed (1006). Without it,
 *   a handshake that hangs (a balancer or a server going away mid-accept)
 *   would hold the viewer in `reconnecting` with no retry.
 */
export const DEFAULT_BACKOFF = Object.freeze({
  baseMs: 500,
  capMs: 10_000,
  resetAfterMs: 10_000,
  goingAwayMs: 1_000,
  maxFailures: Infinity,
  connectTimeoutMs: 10_000,
});

/** How many comment ids the client remembers to skip repeats. */
export const SEEN_IDS = 1000;

const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * The delay before retry number `failures` (0 for the first retry after a
 * stable connection): "full jitter", a uniform random delay between 0 and
 * min(capMs, baseMs * 2^failures). Pure apart from `random`.
 */
export function backoffDelay(failures, options = {}, random = Math.random) {
  const { baseMs, capMs } = { ...DEFAULT_BACKOFF, ...options };
  const n = Math.max(0, Math.floor(failures));
  // 2^n overflows to Infinity for huge n, which min() then caps.
  const window = Math.min(capMs, baseMs * 2 ** n);
  return Math.floor(random() * window);
}

/**
 * The failure count to use for the next delay, given the count so far and
 * how long the connection that just ended was open (`openForMs`, or null if
 * it never opened). A connection open for `resetAfterMs` or longer resets
 * the count to 0.
 */
export function failuresAfterClose(failures, openForMs, options = {}) {
  const { resetAfterMs } = { ...DEFAULT_BACKOFF, ...options };
  if (openForMs != null && openForMs >= resetAfterMs) return 0;
  return failures;
}

/**
 * What to do after a socket closed: `{ reconnect: false }` or
 * `{ reconnect: true, delay, failures }` where `failures` is the count to
 * keep for the next time. Pure apart from `random`.
 *
 * - 1002, 1007, 1009: the client broke the protocol; retrying repeats it.
 * - 1008 after `error` events on that connection (`sawErrors`): the server
 *   closed a client that sends bad frames; stop. Other 1008 (`too slow`):
 *   retry after half to all of `capMs`.
 * - 1001: retry within `goingAwayMs` (or the normal window, if larger).
 * - anything else (1000 the client didn't ask for, 1006, a refused
 *   handshake, unknown codes): the normal backoff.
 */
export function planReconnect({ code, failures, openForMs, sawErrors = false }, options = {}, random = Math.random) {
  const opts = { ...DEFAULT_BACKOFF, ...options };
  if (code === 1002 || code === 1007 || code === 1009) return { reconnect: false };
  if (code === 1008 && sawErrors) return { reconnect: false };
  let n = failuresAfterClose(failures, openForMs, opts);
  if (n >= opts.maxFailures) return { reconnect: false };
  let delay;
  if (code === 1008) {
    delay = Math.floor(opts.capMs / 2 + (random() * opts.capMs) / 2);
  } else if (code === 1001) {
    const window = Math.max(opts.goingAwayMs, Math.min(opts.capMs, opts.baseMs * 2 ** n));
    delay = Math.floor(random() * window);
  } else {
    delay = backoffDelay(n, opts, random);
  }
  return { reconnect: true, delay, failures: n + 1 };
}

/** A refused post, or one that could not be sent. */
export class DanmakuError extends Error {
  constructor(code, message, retryAfterMs) {
    super(message || code);
    this.name = 'DanmakuError';
    /** The reject code (PROTOCOL.md §8.1), or `not_connected` / `disconnected`. */
    this.code = code;
    /** Present when the server said how long to wait. */
    if (retryAfterMs !== undefined) this.retry_after_ms = retryAfterMs;
  }
}

/** Turns a gateway base URL into the WebSocket URL of `room`. */
export function roomUrl(base, room, { nick, token } = {}) {
  if (!base) {
    const loc = globalThis.location;
    if (!loc) throw new TypeError('danmaku: no gateway URL given and no location to default to');
    base = loc.origin;
  }
  let u = String(base).replace(/\/+$/, '');
  if (/^http:/i.test(u)) u = 'ws:' + u.slice(5);
  else if (/^https:/i.test(u)) u = 'wss:' + u.slice(6);
  else if (!/^wss?:/i.test(u)) throw new TypeError(`danmaku: the gateway URL must be ws(s):// or http(s)://, not ${base}`);
  if (!ROOM_RE.test(room)) {
    throw new RangeError(`danmaku: a room id is 1 to 64 of A-Z a-z 0-9 _ -, not ${JSON.stringify(room)}`);
  }
  const query = [];
  if (nick != null && nick !== '') query.push('nick=' + encodeURIComponent(nick));
  if (token != null && token !== '') query.push('token=' + encodeURIComponent(token));
  return `${u}/ws/${room}${query.length ? '?' + query.join('&') : ''}`;
}

/** An insertion-ordered set that forgets its oldest entries past `max`. */
class BoundedSet {
  constructor(max) {
    this.max = max;
    this.set = new Set();
  }
  has(v) {
    return this.set.has(v);
  }
  add(v) {
    this.set.delete(v);
    this.set.add(v);
    while (this.set.size > this.max) {
      this.set.delete(this.set.values().next().value);
    }
  }
  delete(v) {
    this.set.delete(v);
  }
}

function reportListenerError(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else setTimeout(() => { throw err; }, 0);
}

function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === 'function') {
    const b = c.getRandomValues(new Uint8Array(6));
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }
  return Math.random().toString(16).slice(2, 14);
}

/**
 * One viewer's connection to one room, reconnecting on its own until
 * `close()`. Create it with `connect()`.
 */
export class DanmakuClient {
  #listeners = new Map();
  #WebSocket;
  #backoff;
  #url;
  #ws = null;
  #timer = null;
  #connectTimer = null;
  #failures = 0;
  #openedAt = null;
  #sawErrors = false;
  #pending = new Map();
  #nonceTag = randomId();
  #nonceSeq = 0;
  #seen = new BoundedSet(SEEN_IDS);

  constructor(url, room, options = {}) {
    const WS = options.WebSocket || globalThis.WebSocket;
    if (typeof WS !== 'function') {
      throw new TypeError('danmaku: no WebSocket here; pass options.WebSocket (Node 20 needs --experimental-websocket)');
    }
    this.#WebSocket = WS;
    this.#backoff = { ...DEFAULT_BACKOFF, ...(options.backoff || {}) };
    this.#url = roomUrl(url, room, options);
    /** The room id. */
    this.room = room;
    /** `connecting`, `open`, `reconnecting` or `closed`. */
    this.state = 'connecting';
    /** The latest `hello`, or null before the first. */
    this.hello = null;
    /** Our user id on the current connection (from `hello.user`). */
    this.user = null;
    /** The latest viewer count (from `hello.online` and `online`). */
    this.online = null;
    // Start after the caller had a chance to subscribe.
    queueMicrotask(() => {
      if (this.state !== 'closed') this.#open();
    });
  }

  /** Subscribes `fn` to `event`; returns a function that unsubscribes. */
  on(event, fn) {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    // Wrap so that the same function can be added twice and removed once.
    const entry = { fn };
    set.add(entry);
    return () => set.delete(entry);
  }

  /** Like `on`, but only for the next `event`. */
  once(event, fn) {
    const off = this.on(event, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }

  /** Unsubscribes `fn` from `event` (every subscription of it). */
  off(event, fn) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const entry of set) if (entry.fn === fn) set.delete(entry);
  }

  #emit(event, ...args) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const entry of [...set]) {
      try {
        entry.fn(...args);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }

  #setState(state, detail) {
    if (this.state === state && state !== 'reconnecting') return;
    const prev = this.state;
    this.state = state;
    this.#emit('state', state, prev);
    this.#emit(state, detail);
  }

  #open() {
    let ws;
    try {
      ws = new this.#WebSocket(this.#url, SUBPROTOCOL);
    } catch (err) {
      // A malformed URL: nothing a retry would fix.
      this.#emit('error', { type: 'error', code: 'bad_url', message: String(err && err.message) });
      this.close();
      return;
    }
    this.#ws = ws;
    this.#openedAt = null;
    this.#clearConnectTimer();
    this.#connectTimer = setTimeout(() => {
      this.#connectTimer = null;
      if (this.#ws !== ws || this.#openedAt !== null) return;
      // Abandon this socket; its own close event, if one ever comes, finds
      // it replaced and is ignored.
      try {
        ws.close();
      } catch {
        // not closable in its state
      }
      this.#onClose({ code: 1006, reason: 'no hello within connectTimeoutMs', wasClean: false });
    }, this.#backoff.connectTimeoutMs);
    if (this.state === 'connecting') {
      // The first attempt: announced here, once, so listeners added right
      // after connect() see it.
      this.#emit('state', 'connecting', null);
      this.#emit('connecting', { url: this.#url });
    }
    this.#sawErrors = false;
    ws.onmessage = (ev) => {
      if (this.#ws !== ws || typeof ev.data !== 'string') return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame && typeof frame === 'object' && !Array.isArray(frame)) this.#dispatch(frame);
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#onClose(ev);
    };
    // Every error is followed by a close event, which does the work.
    ws.onerror = () => {};
  }

  #dispatch(frame, inBatch = false) {
    switch (frame.type) {
      case 'hello':
        this.#onHello(frame);
        break;
      case 'batch':
        if (!inBatch && Array.isArray(frame.items)) {
          for (const item of frame.items) {
            if (item && typeof item === 'object') this.#dispatch(item, true);
          }
        }
        break;
      case 'danmaku':
        if (typeof frame.id !== 'string' || this.#seen.has(frame.id)) break;
        this.#seen.add(frame.id);
        this.#emit('danmaku', frame, { recent: false });
        break;
      case 'online':
        this.online = frame.count;
        this.#emit('online', frame);
        break;
      case 'delete':
        this.#seen.delete(frame.id);
        this.#emit('delete', frame);
        break;
      case 'ack':
      case 'reject': {
        const p = this.#pending.get(frame.nonce);
        if (!p) break;
        this.#pending.delete(frame.nonce);
        if (frame.type === 'ack') p.resolve(frame.id);
        else p.reject(new DanmakuError(frame.code, frame.message, frame.retry_after_ms));
        break;
      }
      case 'pong': {
        const p = this.#pending.get(frame.nonce);
        if (p && p.ping) {
          this.#pending.delete(frame.nonce);
          p.resolve(Date.now() - p.sentAt);
        }
        this.#emit('pong', frame);
        break;
      }
      case 'error':
        this.#sawErrors = true;
        this.#emit('error', frame);
        break;
      default:
        // auth_ok, moderated and types added later: passed on as they are.
        if (typeof frame.type === 'string') this.#emit(frame.type, frame);
    }
  }

  #onHello(hello) {
    this.hello = hello;
    this.user = hello.user;
    this.online = hello.online;
    this.#openedAt = Date.now();
    this.#clearConnectTimer();
    this.#setState('open', hello);
    this.#emit('hello', hello);
    for (const item of Array.isArray(hello.recent) ? hello.recent : []) {
      if (!item || typeof item.id !== 'string' || this.#seen.has(item.id)) continue;
      this.#seen.add(item.id);
      this.#emit('danmaku', { type: 'danmaku', ...item }, { recent: true });
    }
  }

  #clearConnectTimer() {
    if (this.#connectTimer !== null) {
      clearTimeout(this.#connectTimer);
      this.#connectTimer = null;
    }
  }

  #onClose(ev) {
    this.#ws = null;
    this.#clearConnectTimer();
    const opened = this.#openedAt !== null;
    const openForMs = opened ? Date.now() - this.#openedAt : null;
    this.#openedAt = null;
    this.#failPending('disconnected', 'the connection closed before the server answered');
    const info = {
      code: ev.code,
      reason: ev.reason || '',
      wasClean: !!ev.wasClean,
      opened,
      reconnect: false,
      delay: null,
    };
    if (this.state === 'closed') {
      this.#emit('close', info);
      return;
    }
    const plan = planReconnect(
      { code: ev.code, failures: this.#failures, openForMs, sawErrors: this.#sawErrors },
      this.#backoff,
    );
    if (!plan.reconnect) {
      this.#emit('close', info);
      this.close();
      return;
    }
    this.#failures = plan.failures;
    info.reconnect = true;
    info.delay = plan.delay;
    this.#emit('close', info);
    this.#setState('reconnecting', { attempt: plan.failures, delay: plan.delay, code: ev.code });
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (this.state !== 'closed') this.#open();
    }, plan.delay);
  }

  #failPending(code, message) {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.reject(new DanmakuError(code, message));
  }

  #nonce() {
    this.#nonceSeq += 1;
    return `${this.#nonceTag}-${this.#nonceSeq}`;
  }

  #send(frame, kind) {
    if (this.state !== 'open' || !this.#ws) {
      return Promise.reject(new DanmakuError('not_connected', 'not connected to the room right now'));
    }
    const nonce = this.#nonce();
    const text = JSON.stringify({ ...frame, nonce });
    const max = this.hello && this.hello.limits && this.hello.limits.max_frame_bytes;
    // The server closes the connection (1009) over a frame this large.
    if (max && new TextEncoder().encode(text).length > max) {
      return Promise.reject(new DanmakuError('too_long', `the ${kind} is larger than ${max} bytes`));
    }
    return new Promise((resolve, reject) => {
      this.#pending.set(nonce, { resolve, reject, ping: kind === 'ping', sentAt: Date.now() });
      try {
        this.#ws.send(text);
      } catch (err) {
        this.#pending.delete(nonce);
        reject(new DanmakuError('disconnected', String(err && err.message)));
      }
    });
  }

  /**
   * Posts a comment. Resolves with the published comment's id (the `ack`)
   * or rejects with a DanmakuError whose `code` is the `reject`'s (with its
   * `message` and `retry_after_ms`), `not_connected` or `disconnected`.
   */
  post(text, { color, mode } = {}) {
    if (typeof text !== 'string') {
      return Promise.reject(new TypeError('danmaku: post text must be a string'));
    }
    const frame = { type: 'post', text };
    if (color != null) frame.color = color;
    if (mode != null) frame.mode = mode;
    return this.#send(frame, 'post');
  }

  /** Sends a `ping` event; resolves with the round trip in ms. */
  ping() {
    return this.#send({ type: 'ping' }, 'ping');
  }

  /** Closes the connection for good: no more reconnects. */
  close() {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    this.#clearConnectTimer();
    this.#failPending('disconnected', 'the client was closed');
    const ws = this.#ws;
    if (this.state !== 'closed') this.#setState('closed');
    if (ws && ws.readyState < 2) {
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
  }
}

/**
 * Connects to `room` on the gateway at `url` (`ws(s)://host[:port]` or
 * `http(s)://...`, converted to ws(s); empty means this page's origin).
 * The connection starts on the next microtask, so listeners added right
 * away see every event.
 */
export function connect(url, room, options = {}) {
  return new DanmakuClient(url, room, options);
}
