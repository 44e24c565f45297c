// The dashboard in a real headless Chromium against a real gateway: the
// live view counts a room's viewers, the charts draw, a moderator's token
// changes a room's modes through the panel, and an error from the API is
// shown as its message. Saves a screenshot for a person to look at.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { launch, startGateway } from './browser.mjs';

const ADMIN = 'dashboard-admin-token';
let gw;
let browser;
const sockets = [];

before(async () => {
  gw = await startGateway({ DANMAKU_ADMIN_TOKEN: ADMIN, DANMAKU_HEARTBEAT_INTERVAL_MS: '500' });
  browser = await launch();
});

after(async () => {
  for (const ws of sockets) ws.close();
  if (browser) await browser.close();
  if (gw) await gw.stop();
});

/** Opens a viewer of `room` and resolves once it has its `hello`. */
function viewer(room) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${gw.ws}/ws/${room}`);
    sockets.push(ws);
    ws.onmessage = (e) => {
      const event = JSON.parse(e.data);
      if (event.type === 'hello') resolve(ws);
    };
    ws.onerror = () => reject(new Error(`viewer of ${room} failed`));
  });
}

test('the dashboard shows each room with its online count, and the charts', async () => {
  const busy = await Promise.all([1, 2, 3, 4, 5].map(() => viewer('dash-busy')));
  await Promise.all([1, 2].map(() => viewer('dash-quiet')));
  let n = 0;
  const posting = setInterval(() => busy[0].send(JSON.stringify({ type: 'post', text: `hi ${n++}`, nonce: `n${n}` })), 100);

  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  try {
    await page.goto(`${gw.http}/dashboard`);
    const row = (room) => page.locator(`#rooms tbody tr[data-room="${room}"]`);
    await row('dash-busy').locator('td').nth(1).filter({ hasText: /^5$/ }).waitFor({ timeout: 10_000 });
    assert.equal(await row('dash-quiet').locator('td').nth(1).textContent(), '2');
    await page.locator('#total-online').filter({ hasText: /^7$/ }).waitFor();
    assert.equal(await page.locator('#instances tbody tr').count(), 1);
    assert.equal(await page.locator('#instances tbody td.healthy').count(), 1);
    // Busiest first.
    assert.equal(await page.locator('#rooms tbody tr').first().getAttribute('data-room'), 'dash-busy');

    // Picking a room selects it for the room charts and the panel.
    await row('dash-busy').click();
    await page.locator('#chart-room-name').filter({ hasText: 'dash-busy' }).waitFor();
    assert.equal(await page.inputValue('#mod-room'), 'dash-busy');
    await page.waitForFunction(() => Number(document.getElementById('comments-per-s').textContent) > 0, null, { timeout: 10_000 });

    // The search box narrows the list.
    await page.fill('#room-search', 'quiet');
    await page.locator('#rooms tbody tr').first().filter({ hasText: 'dash-quiet' }).waitFor();
    assert.equal(await row('dash-busy').count(), 0);
    await page.fill('#room-search', '');

    // Charts have drawn something: some pixels are not blank.
    const inked = await page.evaluate(() => {
      const c = document.getElementById('chart-fleet-online');
      const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
      return n;
    });
    assert.ok(inked > 100, `the fleet chart drew ${inked} pixels`);

    // Moderation: without a token, the API's refusal is shown.
    await page.click('#settings-form button[type=submit]');
    await page.locator('#mod-result').filter({ hasText: 'token' }).waitFor();
    await page.fill('#mod-token', 'wrong');
    await page.dispatchEvent('#mod-token', 'change');
    await page.click('#settings-form button[type=submit]');
    await page.locator('#mod-result').filter({ hasText: '401' }).waitFor();
    // With the admin token: slow mode on, seen in the room's state and log.
    await page.fill('#mod-token', ADMIN);
    await page.dispatchEvent('#mod-token', 'change');
    await page.fill('#settings-form input[name=slow]', '7');
    await page.click('#settings-form button[type=submit]');
    await page.locator('#mod-result').filter({ hasText: 'room modes: done' }).waitFor();
    await page.locator('#mod-modes').filter({ hasText: 'slow mode 7s' }).waitFor();
    await page.locator('#actions tbody td').filter({ hasText: 'room_settings' }).first().waitFor();
    // A bad value: the API's message names the field.
    await page.fill('#settings-form input[name=slow]', '999');
    await page.click('#settings-form button[type=submit]');
    await page.locator('#mod-result').filter({ hasText: 'slow_mode_secs' }).waitFor();
    // Slow mode off again, so the room's comments flow for the picture.
    await page.fill('#settings-form input[name=slow]', '0');
    await page.click('#settings-form button[type=submit]');
    await page.locator('#mod-modes').filter({ hasText: 'no slow mode' }).waitFor();
    // A masked word appears in the list.
    await page.fill('#words-form input[name=word]', 'spoiler');
    await page.selectOption('#words-form select[name=list]', 'mask');
    await page.click('#words-form button[type=submit]');
    await page.locator('#blocklist li').filter({ hasText: 'spoiler (mask)' }).waitFor();

    // Wait for a few samples so the charts show a line, then keep a picture.
    await page.waitForFunction(() => document.querySelectorAll('#rooms tbody tr').length === 2);
    await new Promise((r) => setTimeout(r, 4500));
    const dir = process.env.DANMAKU_ARTIFACTS || 'target/test-artifacts';
    mkdirSync(dir, { recursive: true });
    await page.screenshot({ path: join(dir, 'dashboard.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    clearInterval(posting);
    await page.close();
  }
});

test('the live view asks for the read token when one is configured', async () => {
  const guarded = await startGateway({ DANMAKU_API_READ_TOKEN: 'reader' });
  const page = await browser.newPage();
  try {
    await page.goto(`${guarded.http}/dashboard`);
    await page.locator('#status').filter({ hasText: '401' }).waitFor({ timeout: 10_000 });
    await page.fill('#read-token', 'reader');
    await page.dispatchEvent('#read-token', 'change');
    await page.locator('#status').filter({ hasText: 'live' }).waitFor({ timeout: 10_000 });
    assert.equal(await page.locator('#instances tbody tr').count(), 1);
  } finally {
    await page.close();
    await guarded.stop();
  }
});

test('a recall from the dashboard removes the comment from a viewer page', async () => {
  const room = 'dash-recall';
  const viewerPage = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const dashboard = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  try {
    await viewerPage.goto(`${gw.http}/room/${room}`);
    await viewerPage.waitForFunction(() => window.danmakuPage && window.danmakuPage.user, null, { timeout: 10_000 });
    // A comment from another viewer, whose id the ack gives.
    const poster = await viewer(room);
    const id = await new Promise((resolve) => {
      poster.onmessage = (e) => {
        const event = JSON.parse(e.data);
        if (event.type === 'ack') resolve(event.id);
      };
      poster.send(JSON.stringify({ type: 'post', text: 'take this back', nonce: 'r1' }));
    });
    const shown = viewerPage.locator('#log li', { hasText: 'take this back' });
    await shown.waitFor({ timeout: 10_000 });

    await dashboard.goto(`${gw.http}/dashboard`);
    await dashboard.fill('#mod-token', ADMIN);
    await dashboard.dispatchEvent('#mod-token', 'change');
    await dashboard.fill('#mod-room', room);
    await dashboard.dispatchEvent('#mod-room', 'change');
    await dashboard.fill('#recall-form input[name=id]', id);
    await dashboard.click('#recall-form button[type=submit]');
    await dashboard.locator('#mod-result').filter({ hasText: 'done' }).waitFor({ timeout: 10_000 });

    // Gone from the viewer's log and stage.
    await shown.waitFor({ state: 'detached', timeout: 10_000 });
    assert.equal(await viewerPage.locator('#stage .dm', { hasText: 'take this back' }).count(), 0);
  } finally {
    await viewerPage.close();
    await dashboard.close();
  }
});
