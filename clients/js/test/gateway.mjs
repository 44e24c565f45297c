// Test helper: starts a real gateway process (the binary `cargo test`
// built, named by DANMAKU_GATEWAY_BIN) on a free loopback port and says
// where it listens, from its "Gateway listening" log line.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

// Settings for tests: state in memory, and no practical post budget, since
// every test client posts from 127.0.0.1. `env` overrides them.
const TEST_ENV = {
  DANMAKU_LISTEN: '127.0.0.1:0',
  DANMAKU_LOG_FORMAT: 'json',
  RUST_LOG: 'info',
  DANMAKU_DATA_DIR: '',
  DANMAKU_POST_RATE_COUNT: '1000000',
  DANMAKU_POST_BURST: '1000000',
  DANMAKU_IP_RATE_COUNT: '1000000',
  DANMAKU_IP_BURST: '1000000',
  DANMAKU_DUPLICATE_WINDOW_MS: '0',
  DANMAKU_MAX_CONNECTIONS_PER_IP: '0',
};

/**
 * Starts a gateway. Resolves to { addr, http, ws, stop(signal) } once it
 * listens; `stop` resolves when the process has exited.
 */
export async function startGateway(env = {}) {
  const bin = process.env.DANMAKU_GATEWAY_BIN;
  if (!bin) {
    throw new Error('DANMAKU_GATEWAY_BIN is not set: run these tests through `cargo test`');
  }
  // The gateway refuses DANMAKU_* variables it doesn't know, and the test
  // runner's own (DANMAKU_GATEWAY_BIN, DANMAKU_ARTIFACTS) are among them.
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('DANMAKU_')),
  );
  const child = spawn(bin, [], {
    env: { ...inherited, ...TEST_ENV, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const lines = createInterface({ input: child.stdout });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the gateway did not start within 10 s')), 10_000);
    lines.on('line', (line) => {
      let v;
      try {
        v = JSON.parse(line);
      } catch {
        return;
      }
      if (v.fields && v.fields.message === 'Gateway listening') {
        clearTimeout(timer);
        resolve(v.fields.addr);
      }
    });
    exited.then((code) => reject(new Error(`the gateway exited with ${code} before listening`)));
  });
  return {
    addr,
    http: `http://${addr}`,
    ws: `ws://${addr}`,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
      }
      await exited;
    },
  };
}
