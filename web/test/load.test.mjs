// A busy room: 500 comments a second for 10 s. The page must drop what it
// cannot show rather than queue it, and keep its DOM and heap bounded.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, openRoom, screenshot, socket, startGateway } from './browser.mjs';

const RATE = 500; // comments per second, all posters together
const POSTERS = 5;
const SECONDS = 10;
const MAX_NODES = 2000;
const MAX_HEAP = 64 * 1024 * 1024;

let gw;
let browser;

before(async () => {
  gw = await startGateway();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
});

async function measure(page, cdp) {
  await cdp.send('HeapProfiler.collectGarbage');
  const { metrics } = await cdp.send('Performance.getMetrics');
  const m = Object.fromEntries(metrics.map((x) => [x.name, x.value]));
  const overlaps = await page.evaluate(() => {
    // Scrolling comments in one lane must not overlap.
    const byLane = new Map();
    for (const el of document.querySelectorAll('#stage .dm-scroll')) {
      const r = el.getBoundingClientRect();
      if (!byLane.has(el.style.top)) byLane.set(el.style.top, []);
      byLane.get(el.style.top).push([r.left, r.right]);
    }
    let n = 0;
    for (const spans of byLane.values()) {
      spans.sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < spans.length; i++) if (spans[i][0] < spans[i - 1][1] - 1) n++;
    }
    return n;
  });
  const stage = await page.evaluate(() => ({
    onStage: document.querySelectorAll('#stage .dm').length,
    log: document.querySelectorAll('#log li').length,
    ...window.danmakuPage.renderer.stats,
  }));
  return { nodes: m.Nodes, heap: m.JSHeapUsedSize, overlaps, ...stage };
}

test('the page survives 500 comments a second with bounded DOM and heap', async () => {
  const page = await openRoom(browser, gw, 'flood');
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');
  const posters = [];
  for (let i = 0; i < POSTERS; i++) posters.push(await socket(gw, 'flood'));

  // Frame pacing, measured in the page.
  await page.evaluate(() => {
    window.frameGaps = [];
    let last = performance.now();
    const tick = (t) => { window.frameGaps.push(t - last); last = t; requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
  });

  let sent = 0;
  const started = Date.now();
  const words = ['草', '233333', 'nice', '前方高能', 'what a play', 'ohhhhhhhhhhhhhhhh', '好耶好耶好耶好耶'];
  const timer = setInterval(() => {
    // Catch up to the schedule: RATE per second since the start.
    const due = Math.min(Math.floor(((Date.now() - started) / 1000) * RATE), RATE * SECONDS);
    while (sent < due) {
      const ws = posters[sent % POSTERS];
      const text = `${words[sent % words.length]} ${sent}`;
      const mode = sent % 10 === 0 ? 'top' : sent % 10 === 1 ? 'bottom' : 'scroll';
      ws.send(JSON.stringify({ type: 'post', text, mode, color: sent % 3 ? '#ffffff' : '#ffcc00' }));
      sent++;
    }
  }, 10);

  await new Promise((r) => setTimeout(r, 3000));
  const early = await measure(page, cdp);
  await screenshot(page, 'load.png');
  await new Promise((r) => setTimeout(r, SECONDS * 1000 - 3000));
  const late = await measure(page, cdp);
  clearInterval(timer);
  const gaps = await page.evaluate(() => window.frameGaps.slice(30));

  console.log('load test', { sent, early, late });
  // The flood really was offered (most of it, however busy the machine).
  assert.ok(sent >= RATE * SECONDS * 0.5, `sent ${sent}`);
  // The page saw the flood and kept up by dropping.
  assert.ok(late.shown > 100, `shown ${late.shown}`);
  assert.ok(late.dropped > late.shown, `dropped ${late.dropped} of ${late.shown + late.dropped}`);
  assert.ok(late.nodes < MAX_NODES, `DOM nodes ${late.nodes}`);
  assert.ok(early.nodes < MAX_NODES, `DOM nodes ${early.nodes}`);
  assert.ok(late.heap < MAX_HEAP, `JS heap ${late.heap}`);
  // No growth without bound between 3 s and 10 s.
  assert.ok(late.nodes < early.nodes + 500, `nodes grew from ${early.nodes} to ${late.nodes}`);
  assert.ok(late.heap < early.heap * 2 + 8 * 1024 * 1024, `heap grew from ${early.heap} to ${late.heap}`);
  assert.equal(early.overlaps, 0, 'comments overlap in a lane');
  assert.equal(late.overlaps, 0, 'comments overlap in a lane');
  assert.ok(late.log <= 50, `log has ${late.log} entries`);
  // Frame pacing is reported, not asserted: it depends on how busy the
  // machine is, and performance is shown by benchmarks, not timed tests.
  gaps.sort((a, b) => a - b);
  console.log('frame gaps', { frames: gaps.length, median: gaps[Math.floor(gaps.length / 2)] });
  assert.deepEqual(page.errors, []);
  for (const ws of posters) ws.close();
  await page.context().close();
});

test('a hidden tab drops comments instead of keeping them for later', async () => {
  const page = await openRoom(browser, gw, 'hidden');
  const ws = await socket(gw, 'hidden');
  await page.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  for (let i = 0; i < 50; i++) ws.send(JSON.stringify({ type: 'post', text: `while hidden ${i}` }));
  await new Promise((r) => setTimeout(r, 1000));
  await page.evaluate(() => {
    delete document.hidden;
    document.dispatchEvent(new Event('visibilitychange'));
  });
  ws.send(JSON.stringify({ type: 'post', text: 'after showing' }));
  await page.locator('#log li', { hasText: 'after showing' }).waitFor({ timeout: 5000 });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await page.locator('#stage .dm', { hasText: 'while hidden' }).count(), 0);
  assert.equal(await page.locator('#log li', { hasText: 'while hidden' }).count(), 0);
  ws.close();
  await page.context().close();
});
