// Shared helpers of the web page tests: a real gateway, a headless Chromium
// and screenshots in DANMAKU_ARTIFACTS.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
// A real gateway process (the helper keeps the runner's own DANMAKU_*
// variables from it).
export { startGateway } from '../../clients/js/test/gateway.mjs';

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** A new page in its own context (own localStorage). */
export async function newPage(browser, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  page.errors = errors;
  return page;
}

/** Opens a room page and waits until its hello has arrived. */
export async function openRoom(browser, gw, room, query = '') {
  const page = await newPage(browser);
  await page.goto(`${gw.http}/room/${room}${query}`);
  await page.waitForFunction(() => window.danmakuPage && window.danmakuPage.user, null, { timeout: 10_000 });
  return page;
}

export async function screenshot(page, name) {
  const dir = process.env.DANMAKU_ARTIFACTS;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, name) });
}

/** A WebSocket to the gateway (Node's own), open and past its hello. */
export function socket(gw, room) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${gw.ws}/ws/${room}`, 'danmaku.v1.json');
    ws.addEventListener('error', () => reject(new Error('WebSocket failed')), { once: true });
    ws.addEventListener('message', (e) => {
      const m = JSON.parse(e.data);
      if (m.type === 'hello') resolve(ws);
    }, { once: true });
  });
}
