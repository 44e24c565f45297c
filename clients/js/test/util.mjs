// Test helpers: bounded waits on client events, free ports and a
// throwaway redis-server.

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';

/**
 * Resolves with the payload of the next `event` of `client` for which
 * `predicate(payload, meta)` holds; rejects after `ms`.
 */
export function waitFor(client, event, predicate = () => true, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no matching '${event}' within ${ms} ms (state ${client.state})`));
    }, ms);
    const off = client.on(event, (payload, meta) => {
      let ok;
      try {
        ok = predicate(payload, meta);
      } catch (err) {
        ok = false;
      }
      if (ok) {
        clearTimeout(timer);
        off();
        resolve(payload);
      }
    });
  });
}

/** Polls `check` until it returns truthy; rejects after `ms`. */
export async function until(check, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`${what} not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Records every payload of `events` on `client`, in order. */
export function record(client, events) {
  const log = [];
  for (const e of events) client.on(e, (payload, meta) => log.push({ event: e, payload, meta }));
  return log;
}

/** A TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts a redis-server without persistence on a free port. Resolves to
 * { url, stop() }.
 */
export async function startRedis() {
  const port = await freePort();
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise((resolve) => child.once('exit', resolve));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('redis-server did not start within 10 s')), 10_000);
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      if (/ready to accept connections/i.test(buf)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited with ${code}`));
    });
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
