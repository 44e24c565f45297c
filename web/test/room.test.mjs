import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { launch, openRoom, screenshot, socket, startGateway } from './browser.mjs';

const SECRET = 'web-test-secret';
let gw;
let browser;

before(async () => {
  gw = await startGateway({ DANMAKU_AUTH_SECRET: SECRET });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
});

function jwt(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

async function post(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

test('a comment posted on one page appears on another page of the room', async () => {
  const a = await openRoom(browser, gw, 'shared');
  const b = await openRoom(browser, gw, 'shared');
  await post(a, 'hello from page a');
  await b.locator('#stage .dm', { hasText: 'hello from page a' }).waitFor({ timeout: 5000 });
  await b.locator('#log li', { hasText: 'hello from page a' }).waitFor({ timeout: 5000 });
  await a.locator('#notice', { hasText: 'Sent' }).waitFor({ timeout: 5000 });
  await screenshot(b, 'room.png');
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
  await a.context().close();
  await b.context().close();
});

test('markup in a comment is shown as text', async () => {
  const a = await openRoom(browser, gw, 'markup');
  const b = await openRoom(browser, gw, 'markup');
  const dialogs = [];
  for (const p of [a, b]) p.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
  const evil = '<img src=x onerror=alert(1)>';
  await post(a, evil);
  const entry = b.locator('#log li', { hasText: evil });
  await entry.waitFor({ timeout: 5000 });
  assert.equal(await b.locator('#stage .dm', { hasText: evil }).first().textContent(), evil);
  await new Promise((r) => setTimeout(r, 300));
  for (const p of [a, b]) assert.equal(await p.locator('img').count(), 0);
  assert.deepEqual(dialogs, []);
  await a.context().close();
  await b.context().close();
});

test('an over-long comment is refused and the poster sees why', async () => {
  const a = await openRoom(browser, gw, 'refusal');
  await post(a, 'x'.repeat(400));
  const notice = a.locator('#notice.refused');
  await notice.waitFor({ timeout: 5000 });
  assert.match(await notice.textContent(), /too_long/);
  // Nothing was published, and the text stays for editing.
  assert.equal(await a.locator('#text').inputValue(), 'x'.repeat(400));
  assert.equal(await a.locator('#stage .dm').count(), 0);
  await screenshot(a, 'refused.png');
  await a.context().close();
});

test('top and bottom comments stay centred for about four seconds', async () => {
  const a = await openRoom(browser, gw, 'fixed');
  await a.selectOption('#mode', 'top');
  await post(a, 'fixed on top');
  const el = a.locator('#stage .dm-top', { hasText: 'fixed on top' });
  await el.waitFor({ timeout: 5000 });
  const box = await el.boundingBox();
  const stage = await a.locator('#stage').boundingBox();
  const centre = box.x + box.width / 2;
  assert.ok(Math.abs(centre - (stage.x + stage.width / 2)) < 3, `centred: ${centre}`);
  assert.ok(box.y - stage.y < 5, 'at the top');
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal(await el.count(), 1, 'still there after 2.5 s');
  await el.waitFor({ state: 'detached', timeout: 4000 });
  await a.context().close();
});

test('a moderator recalls a comment from its log entry', async () => {
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const token = jwt({ sub: 'mod-1', name: 'Mod', role: 'moderator', exp });
  const mod = await openRoom(browser, gw, 'modroom', `?token=${token}`);
  const viewer = await openRoom(browser, gw, 'modroom');
  assert.equal(await mod.evaluate(() => window.danmakuPage.role), 'moderator');
  await post(viewer, 'please recall me');
  await mod.locator('#log li', { hasText: 'please recall me' }).click();
  await mod.locator('#menu-recall').click();
  await viewer.locator('#log li', { hasText: 'please recall me' }).waitFor({ state: 'detached', timeout: 5000 });
  assert.equal(await mod.locator('#log li', { hasText: 'please recall me' }).count(), 0);
  // And mutes the author: the next post is refused `muted`.
  await post(viewer, 'second one');
  await mod.locator('#log li', { hasText: 'second one' }).click({ button: 'right' });
  await mod.locator('#menu-mute').click();
  await mod.locator('#notice', { hasText: 'muted' }).waitFor({ timeout: 5000 });
  await new Promise((r) => setTimeout(r, 1200));
  await post(viewer, 'third one');
  await viewer.locator('#notice.refused', { hasText: 'muted' }).waitFor({ timeout: 5000 });
  await mod.context().close();
  await viewer.context().close();
});

test('settings are remembered across visits', async () => {
  const a = await openRoom(browser, gw, 'settings');
  await a.locator('#settings-panel summary').click();
  await a.locator('#show-top').uncheck();
  await a.locator('#reserve').check();
  await a.fill('#blocked', 'spoiler');
  await a.locator('#blocked').blur();
  await a.reload();
  await a.waitForFunction(() => window.danmakuPage && window.danmakuPage.user);
  assert.equal(await a.locator('#show-top').isChecked(), false);
  assert.equal(await a.locator('#reserve').isChecked(), true);
  assert.equal(await a.locator('#blocked').inputValue(), 'spoiler');
  // A blocked word keeps a comment off the stage and out of the log.
  const ws = await socket(gw, 'settings');
  ws.send(JSON.stringify({ type: 'post', text: 'big spoiler here' }));
  ws.send(JSON.stringify({ type: 'post', text: 'harmless' }));
  await a.locator('#log li', { hasText: 'harmless' }).waitFor({ timeout: 5000 });
  assert.equal(await a.locator('#log li', { hasText: 'spoiler' }).count(), 0);
  ws.close();
  await a.context().close();
});
