import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, newPage, screenshot, socket, startGateway } from './browser.mjs';

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

test('the room picker lists a room with viewers and opens rooms', async () => {
  const viewers = [await socket(gw, 'busy-room'), await socket(gw, 'busy-room'), await socket(gw, 'quiet')];
  const page = await newPage(browser);
  await page.goto(gw.http + '/');
  const busy = page.locator('#rooms li', { hasText: 'busy-room' });
  await busy.waitFor({ timeout: 10_000 });
  await page.locator('#rooms li', { hasText: 'busy-room' }).filter({ hasText: '2 watching' }).waitFor({ timeout: 10_000 });
  // Busiest first.
  assert.match(await page.locator('#rooms li').first().textContent(), /busy-room/);
  await screenshot(page, 'index.png');
  await page.fill('#room', 'picked_room');
  await page.click('button[type="submit"]');
  await page.waitForURL(/\/room\/picked_room$/);
  assert.equal(await page.locator('#room-name').textContent(), 'picked_room');
  assert.deepEqual(page.errors, []);
  for (const ws of viewers) ws.close();
  await page.context().close();
});
