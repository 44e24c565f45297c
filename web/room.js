// The room viewer page: connects with the JS client, draws comments with
// the renderer, posts, remembers viewer settings, keeps an accessible log
// and gives moderators recall and mute actions.

import { connect } from '/client/danmaku.js';
import { Renderer, DEFAULTS } from '/static/renderer.js';

const SETTINGS_KEY = 'danmaku.viewer.v1';
const LOG_MAX = 50;
const MUTE_SECONDS = 600;

const $ = (id) => document.getElementById(id);

const room = decodeURIComponent(location.pathname.replace(/^\/room\//, '').replace(/\/.*$/, ''));
const params = new URLSearchParams(location.search);
const token = params.get('token') || undefined;

// ---- settings ------------------------------------------------------------

function loadSettings() {
  const base = {
    density: DEFAULTS.density,
    opacity: DEFAULTS.opacity,
    fontSize: DEFAULTS.fontSize,
    modes: { ...DEFAULTS.modes },
    reserveBottom: false,
    blocked: [],
    log: true,
    nick: '',
  };
  try {
    const saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}');
    if (saved && typeof saved === 'object') {
      const num = (v, lo, hi, d) => (typeof v === 'number' && v >= lo && v <= hi ? v : d);
      base.density = num(saved.density, 1, 1000, base.density);
      base.opacity = num(saved.opacity, 0.05, 1, base.opacity);
      base.fontSize = num(saved.fontSize, 8, 96, base.fontSize);
      if (saved.modes && typeof saved.modes === 'object') {
        for (const m of ['scroll', 'top', 'bottom']) {
          if (typeof saved.modes[m] === 'boolean') base.modes[m] = saved.modes[m];
        }
      }
      if (typeof saved.reserveBottom === 'boolean') base.reserveBottom = saved.reserveBottom;
      if (Array.isArray(saved.blocked)) base.blocked = saved.blocked.filter((w) => typeof w === 'string' && w);
      if (typeof saved.log === 'boolean') base.log = saved.log;
      if (typeof saved.nick === 'string') base.nick = saved.nick;
    }
  } catch {
    // Unreadable or unavailable storage: defaults.
  }
  return base;
}

const settings = loadSettings();

function saveSettings() {
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  } catch {
    // Storage full or disabled: settings last for this visit only.
  }
}

let blockedLower = [];
function setBlocked(words) {
  settings.blocked = words.map((w) => w.trim()).filter(Boolean);
  blockedLower = settings.blocked.map((w) => w.toLowerCase());
}
setBlocked(settings.blocked);

function isBlocked(text) {
  if (blockedLower.length === 0) return false;
  const t = text.toLowerCase();
  return blockedLower.some((w) => t.includes(w));
}

// ---- page elements -----------------------------------------------------------

const stage = $('stage');
const logEl = $('log');
const notice = $('notice');
const statusEl = $('status');
const onlineEl = $('online');
const textEl = $('text');
const countEl = $('count');
const sendBtn = $('send');
const menu = $('menu');

$('room-name').textContent = room;
document.title = `${room} · danmaku`;

const renderer = new Renderer(stage, {
  density: settings.density,
  opacity: settings.opacity,
  fontSize: settings.fontSize,
  modes: settings.modes,
  reserveBottom: settings.reserveBottom,
});
stage.classList.toggle('reserve', settings.reserveBottom);

function bindRange(id, key, fmt = String) {
  const input = $(id);
  const out = $(`${id}-out`);
  input.value = String(settings[key]);
  out.textContent = fmt(settings[key]);
  input.addEventListener('input', () => {
    settings[key] = Number(input.value);
    out.textContent = fmt(settings[key]);
    renderer.update({ [key]: settings[key] });
    saveSettings();
  });
}
bindRange('density', 'density');
bindRange('opacity', 'opacity', (v) => `${Math.round(v * 100)} %`);
bindRange('font-size', 'fontSize');

for (const m of ['scroll', 'top', 'bottom']) {
  const box = $(`show-${m}`);
  box.checked = settings.modes[m];
  box.addEventListener('change', () => {
    settings.modes[m] = box.checked;
    renderer.update({ modes: { [m]: box.checked } });
    saveSettings();
  });
}

const reserveBox = $('reserve');
reserveBox.checked = settings.reserveBottom;
reserveBox.addEventListener('change', () => {
  settings.reserveBottom = reserveBox.checked;
  stage.classList.toggle('reserve', settings.reserveBottom);
  renderer.update({ reserveBottom: settings.reserveBottom });
  renderer.clear();
  saveSettings();
});

const blockedEl = $('blocked');
blockedEl.value = settings.blocked.join('\n');
blockedEl.addEventListener('change', () => {
  setBlocked(blockedEl.value.split('\n'));
  saveSettings();
});

const logToggle = $('log-toggle');
function applyLog() {
  logToggle.checked = settings.log;
  logEl.classList.toggle('off', !settings.log);
  logEl.setAttribute('aria-live', settings.log ? 'polite' : 'off');
  if (!settings.log) logEl.replaceChildren();
}
applyLog();
logToggle.addEventListener('change', () => {
  settings.log = logToggle.checked;
  applyLog();
  saveSettings();
});

const nickEl = $('nick');
nickEl.value = settings.nick;
nickEl.addEventListener('change', () => {
  settings.nick = nickEl.value.trim();
  saveSettings();
  reconnect();
});

// ---- the log ---------------------------------------------------------------------

const logItems = new Map(); // id -> li

function addToLog(d) {
  if (!settings.log) return;
  const li = document.createElement('li');
  li.dataset.id = d.id;
  const swatch = document.createElement('span');
  swatch.className = 'swatch';
  swatch.style.background = /^#[0-9a-fA-F]{6}$/.test(d.color || '') ? d.color : '#ffffff';
  swatch.setAttribute('aria-hidden', 'true');
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = `${d.name || d.user}:`;
  const text = document.createElement('span');
  text.textContent = d.text;
  li.append(swatch, who, text);
  li.tabIndex = moderating ? 0 : -1;
  logEl.append(li);
  logItems.set(d.id, { li, data: d });
  while (logEl.childElementCount > LOG_MAX) {
    const first = logEl.firstElementChild;
    logItems.delete(first.dataset.id);
    first.remove();
  }
  // Keep the newest in view unless the reader scrolled up.
  if (logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 80) logEl.scrollTop = logEl.scrollHeight;
}

function removeFromLog(id) {
  const entry = logItems.get(id);
  if (entry) {
    entry.li.remove();
    logItems.delete(id);
  }
}

// ---- the connection ----------------------------------------------------------------

let client = null;
let me = null;
let role = 'viewer';
let moderating = false;
let maxChars = 100;

function setStatus(text, kind = '') {
  statusEl.textContent = text;
  statusEl.className = `pill ${kind}`;
}

function onDanmaku(d) {
  if (!d || typeof d.text !== 'string' || (d.room && d.room !== room)) return;
  // A hidden tab drops everything: nothing piles up to replay later.
  if (document.hidden) return;
  if (isBlocked(d.text) || (d.name && isBlocked(d.name))) return;
  if (renderer.add(d)) addToLog(d);
}

function reconnect() {
  if (client && typeof client.close === 'function') client.close();
  const opts = {};
  if (token) opts.token = token;
  if (settings.nick) opts.nick = settings.nick;
  client = connect(location.origin, room, opts);
  const c = client;
  c.on('connecting', () => c === client && setStatus('connecting…', 'warn'));
  c.on('open', () => c === client && setStatus('connected', 'ok'));
  c.on('reconnecting', () => c === client && setStatus('reconnecting…', 'warn'));
  c.on('close', () => c === client && setStatus('disconnected', 'warn'));
  c.on('hello', (h) => {
    if (c !== client) return;
    me = h.user;
    role = h.role || 'viewer';
    moderating = role === 'moderator' || role === 'admin';
    stage.classList.toggle('moderating', moderating);
    logEl.classList.toggle('moderating', moderating);
    if (h.limits && typeof h.limits.max_text_chars === 'number') maxChars = h.limits.max_text_chars;
    onlineEl.textContent = String(h.online);
    setStatus(moderating ? `connected · ${role}` : 'connected', 'ok');
    updateCount();
  });
  c.on('online', (e) => {
    if (c === client && e.room === room) onlineEl.textContent = String(e.count);
  });
  c.on('danmaku', (d) => c === client && onDanmaku(d));
  c.on('delete', (e) => {
    if (c !== client) return;
    renderer.remove(e.id);
    removeFromLog(e.id);
  });
}

document.addEventListener('visibilitychange', () => {
  // Comments already flying would be stale when the viewer comes back.
  if (document.hidden) renderer.clear();
});

// ---- posting -------------------------------------------------------------------------

const colorEl = $('color');
const modeEl = $('mode');
let retryTimer = null;
let retryUntil = 0;

function charCount(s) {
  return Array.from(s.trim()).length;
}

function updateCount() {
  const n = charCount(textEl.value);
  countEl.textContent = `${n} / ${maxChars}`;
  countEl.classList.toggle('over', n > maxChars);
}
textEl.addEventListener('input', updateCount);
updateCount();

function showNotice(text, kind) {
  notice.textContent = text;
  notice.className = `notice ${kind || ''}`;
}

function startCountdown(reason, ms) {
  clearInterval(retryTimer);
  retryUntil = Date.now() + ms;
  const tick = () => {
    const left = retryUntil - Date.now();
    if (left <= 0) {
      clearInterval(retryTimer);
      retryTimer = null;
      sendBtn.disabled = false;
      showNotice('You can post again.', '');
      return;
    }
    sendBtn.disabled = true;
    showNotice(`${reason} — you can post again in ${Math.ceil(left / 1000)} s`, 'refused');
  };
  tick();
  retryTimer = setInterval(tick, 250);
}

$('composer').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = textEl.value;
  if (!text.trim() || !client || sendBtn.disabled) return;
  sendBtn.disabled = true;
  try {
    await client.post(text, { color: colorEl.value.toLowerCase(), mode: modeEl.value });
    textEl.value = '';
    updateCount();
    showNotice('Sent.', 'sent');
    sendBtn.disabled = false;
  } catch (err) {
    const reason = (err && err.message) || 'Your comment was refused';
    const code = err && err.code ? ` (${err.code})` : '';
    if (err && typeof err.retry_after_ms === 'number' && err.retry_after_ms > 0) {
      startCountdown(`Refused: ${reason}${code}`, err.retry_after_ms);
    } else {
      sendBtn.disabled = false;
      showNotice(`Refused: ${reason}${code}`, 'refused');
    }
  }
  textEl.focus();
});

// ---- moderation ----------------------------------------------------------------------

let menuTarget = null;

function openMenu(d, x, y) {
  menuTarget = d;
  $('menu-what').textContent = `${d.name || d.user}: ${d.text}`;
  menu.hidden = false;
  const w = menu.offsetWidth;
  const h = menu.offsetHeight;
  menu.style.left = `${Math.max(4, Math.min(x, innerWidth - w - 4))}px`;
  menu.style.top = `${Math.max(4, Math.min(y, innerHeight - h - 4))}px`;
  $('menu-recall').focus();
}

function closeMenu() {
  menu.hidden = true;
  menuTarget = null;
}

function pick(ev, d) {
  if (!moderating || !d) return;
  ev.preventDefault();
  const x = ev.clientX || (ev.target.getBoundingClientRect().left + 10);
  const y = ev.clientY || (ev.target.getBoundingClientRect().bottom);
  openMenu(d, x, y);
}

for (const type of ['click', 'contextmenu']) {
  stage.addEventListener(type, (ev) => pick(ev, renderer.dataOf(ev.target)));
  logEl.addEventListener(type, (ev) => {
    const li = ev.target.closest('li');
    const entry = li && logItems.get(li.dataset.id);
    pick(ev, entry && entry.data);
  });
}
logEl.addEventListener('keydown', (ev) => {
  if (ev.key !== 'Enter' && ev.key !== ' ' && ev.key !== 'ContextMenu') return;
  const li = ev.target.closest('li');
  const entry = li && logItems.get(li.dataset.id);
  pick(ev, entry && entry.data);
});
document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && !menu.hidden) closeMenu();
});
document.addEventListener('pointerdown', (ev) => {
  if (!menu.hidden && !menu.contains(ev.target)) closeMenu();
});
$('menu-close').addEventListener('click', closeMenu);

async function moderate(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${token}`,
      ...(body ? { 'Content-Type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!res.ok) {
    let msg = `HTTP ${res.status}`;
    try {
      const j = await res.json();
      if (j && j.message) msg = j.message;
    } catch {
      // Not JSON: keep the status.
    }
    throw new Error(msg);
  }
}

$('menu-recall').addEventListener('click', async () => {
  const d = menuTarget;
  closeMenu();
  if (!d) return;
  try {
    await moderate('DELETE', `/api/rooms/${encodeURIComponent(room)}/danmaku/${encodeURIComponent(d.id)}`);
    renderer.remove(d.id);
    removeFromLog(d.id);
    showNotice('Comment recalled.', 'sent');
  } catch (e) {
    showNotice(`Could not recall: ${e.message}`, 'refused');
  }
});

$('menu-mute').addEventListener('click', async () => {
  const d = menuTarget;
  closeMenu();
  if (!d) return;
  try {
    await moderate('POST', `/api/rooms/${encodeURIComponent(room)}/mutes`, { user: d.user, seconds: MUTE_SECONDS });
    showNotice(`${d.name || d.user} is muted for 10 minutes.`, 'sent');
  } catch (e) {
    showNotice(`Could not mute: ${e.message}`, 'refused');
  }
});

// For tests and curious people: what the renderer did.
window.danmakuPage = { renderer, get user() { return me; }, get role() { return role; } };

reconnect();
