// The dashboard: follows /api/live (server-sent events, one snapshot every
// 2 s) and draws the fleet's numbers, tables and charts; the moderation
// panel acts through the admin HTTP API with a token kept in
// sessionStorage. Every text from the server goes in with textContent.

import { drawChart, shortNumber } from './chart.js';

const $ = (id) => document.getElementById(id);
const READ_KEY = 'danmaku.dashboard.readToken';
const MOD_KEY = 'danmaku.dashboard.modToken';
const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;

let source = null;
let selectedRoom = '';
let search = '';
let lastSnapshot = null;

// ---- small DOM helpers -------------------------------------------------

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function emptyRow(columns, text) {
  const tr = document.createElement('tr');
  const td = cell(tr, text, 'empty');
  td.colSpan = columns;
  return tr;
}

function duration(seconds) {
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  const h = Math.floor(seconds / 3600);
  if (h < 48) return `${h}h ${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function rate(n) {
  return shortNumber(Math.round(n * 100) / 100);
}

// ---- the live view -------------------------------------------------------

function liveUrl(once) {
  const q = new URLSearchParams();
  if (once) q.set('once', '1');
  if (selectedRoom) q.set('room', selectedRoom);
  if (search) q.set('q', search);
  const token = sessionStorage.getItem(READ_KEY) || sessionStorage.getItem(MOD_KEY);
  if (token) q.set('token', token);
  const s = q.toString();
  return s ? `/api/live?${s}` : '/api/live';
}

function setStatus(text, ok) {
  const el = $('status');
  el.textContent = text;
  el.classList.toggle('ok', !!ok);
  el.classList.toggle('bad', !ok);
}

function connect() {
  if (source) source.close();
  source = new EventSource(liveUrl(false));
  source.addEventListener('snapshot', (e) => {
    try {
      render(JSON.parse(e.data));
      setStatus('live', true);
    } catch (err) {
      setStatus(`bad snapshot: ${err.message}`, false);
    }
  });
  source.onerror = () => explainFailure();
}

// EventSource does not say why it failed: ask once to find out.
async function explainFailure() {
  try {
    const res = await fetch(liveUrl(true));
    if (res.ok) {
      setStatus('reconnecting…', false);
      return;
    }
    const body = await res.text();
    let message = body.trim();
    try {
      message = JSON.parse(body).message || message;
    } catch {
      // a plain-text reason
    }
    setStatus(`${res.status}: ${message}`, false);
    if (res.status === 401 || res.status === 403 || res.status === 400) {
      source.close();
    }
  } catch {
    setStatus('gateway unreachable, retrying…', false);
  }
}

function render(s) {
  lastSnapshot = s;
  const rejects = Object.values(s.rejects_per_s || {}).reduce((a, b) => a + b, 0);
  $('total-online').textContent = shortNumber(s.total_online);
  $('total-rooms').textContent = shortNumber(s.total_rooms);
  $('comments-per-s').textContent = rate(s.comments_per_s);
  $('posts-per-s').textContent = rate(s.posts_per_s);
  $('rejects-per-s').textContent = rate(rejects);
  $('drops-per-s').textContent = rate(s.drops_per_s);
  $('evictions-per-s').textContent = rate(s.evictions_per_s);
  renderInstances(s.instances);
  renderRooms(s.rooms);
  renderRejects(s.rejects_per_s || {});
  renderCharts(s);
}

function renderInstances(instances) {
  const rows = instances.map((i) => {
    const tr = document.createElement('tr');
    cell(tr, i.id);
    cell(tr, i.address);
    cell(tr, shortNumber(i.connections), 'num');
    cell(tr, shortNumber(i.rooms), 'num');
    cell(tr, duration(i.uptime_s), 'num');
    cell(tr, `${(i.heartbeat_age_ms / 1000).toFixed(1)}s ago`, 'num');
    cell(tr, i.healthy ? 'healthy' : 'stale', i.healthy ? 'healthy' : 'stale');
    return tr;
  });
  replaceRows($('instances').tBodies[0], rows.length ? rows : [emptyRow(7, 'no instance has reported yet')]);
}

function renderRooms(rooms) {
  const shown = rooms.filter((r) => !search || r.room.includes(search));
  const rows = shown.map((r) => {
    const tr = document.createElement('tr');
    tr.dataset.room = r.room;
    tr.tabIndex = 0;
    if (r.room === selectedRoom) tr.className = 'selected';
    cell(tr, r.room);
    cell(tr, shortNumber(r.online), 'num');
    cell(tr, rate(r.comments_per_s), 'num');
    return tr;
  });
  replaceRows($('rooms').tBodies[0], rows.length ? rows : [emptyRow(3, search ? 'no room matches' : 'no rooms')]);
}

function renderRejects(byCode) {
  const codes = Object.keys(byCode).sort((a, b) => byCode[b] - byCode[a]);
  const rows = codes.map((code) => {
    const tr = document.createElement('tr');
    cell(tr, code);
    cell(tr, rate(byCode[code]), 'num');
    return tr;
  });
  replaceRows($('rejects').tBodies[0], rows.length ? rows : [emptyRow(2, 'none')]);
}

function renderCharts(s) {
  const now = s.t;
  const windowMs = 300 * s.interval_ms;
  const fleet = s.history.fleet;
  drawChart($('chart-fleet-online'), fleet.map((p) => ({ t: p.t, value: p.online })), { now, windowMs });
  drawChart($('chart-fleet-cps'), fleet.map((p) => ({ t: p.t, value: p.comments_per_s })), { now, windowMs, color: '#d9480f' });
  const room = s.history.room || [];
  $('chart-room-name').textContent = selectedRoom || '(pick a room)';
  drawChart($('chart-room-online'), room.map((p) => ({ t: p.t, value: p.online })), { now, windowMs });
  drawChart($('chart-room-cps'), room.map((p) => ({ t: p.t, value: p.comments_per_s })), { now, windowMs, color: '#d9480f' });
}

function selectRoom(room) {
  if (!ROOM_RE.test(room)) return;
  selectedRoom = room;
  $('mod-room').value = room;
  connect();
  loadModeration();
}

// ---- moderation ----------------------------------------------------------

function showResult(text, ok) {
  const el = $('mod-result');
  el.textContent = text;
  el.classList.toggle('ok', ok);
  el.classList.toggle('bad', !ok);
}

/** Calls the admin API; resolves to the parsed body, or throws its message. */
async function api(method, path, body) {
  const token = sessionStorage.getItem(MOD_KEY);
  if (!token) throw new Error('enter an admin or moderator token first');
  const init = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!res.ok) {
    const message = (parsed && parsed.message) || text.trim() || res.statusText;
    throw new Error(`${res.status}: ${message}`);
  }
  return parsed;
}

function modRoom() {
  const room = $('mod-room').value.trim();
  if (!ROOM_RE.test(room)) throw new Error('room: 1–64 characters of A-Z, a-z, 0-9, _ and -');
  return room;
}

async function act(what, run) {
  try {
    await run();
    showResult(`${what}: done`, true);
    loadModeration();
  } catch (err) {
    showResult(`${what}: ${err.message}`, false);
  }
}

const enc = encodeURIComponent;

function fillList(id, words, label) {
  const items = words.map((w) => {
    const li = document.createElement('li');
    li.textContent = label(w);
    return li;
  });
  if (!items.length) {
    const li = document.createElement('li');
    li.textContent = '(empty)';
    li.className = 'empty';
    items.push(li);
  }
  $(id).replaceChildren(...items);
}

async function loadModeration() {
  if (!sessionStorage.getItem(MOD_KEY)) return;
  try {
    const [blocked, allowed] = await Promise.all([api('GET', '/api/blocklist'), api('GET', '/api/allowlist')]);
    fillList('blocklist', blocked.words, (w) => (w.action === 'mask' ? `${w.word} (mask)` : w.word));
    fillList('allowlist', allowed.words, (w) => w.word);
  } catch (err) {
    showResult(`word lists: ${err.message}`, false);
  }
  const room = $('mod-room').value.trim();
  if (!ROOM_RE.test(room)) return;
  try {
    const m = await api('GET', `/api/rooms/${enc(room)}/moderation`);
    const slow = m.settings.slow_mode_secs ? `slow mode ${m.settings.slow_mode_secs}s` : 'no slow mode';
    $('mod-modes').textContent = `${m.room}: ${slow}, ${m.settings.locked ? 'locked' : 'open'}`;
    fillList('mutes', m.mutes, (mu) => {
      const until = mu.until_ms ? `until ${new Date(mu.until_ms).toLocaleTimeString()}` : 'permanent';
      return `${mu.user} — ${mu.room ? 'this room' : 'every room'}, ${until}${mu.shadow ? ', shadow' : ''} (by ${mu.by})`;
    });
    const rows = m.actions.map((a) => {
      const tr = document.createElement('tr');
      cell(tr, new Date(a.at_ms).toLocaleTimeString());
      cell(tr, a.by);
      cell(tr, a.action);
      cell(tr, typeof a.detail === 'string' ? a.detail : JSON.stringify(a.detail));
      return tr;
    });
    replaceRows($('actions').tBodies[0], rows.length ? rows : [emptyRow(4, 'no actions yet')]);
  } catch (err) {
    showResult(`room state: ${err.message}`, false);
  }
}

function wireModeration() {
  const mute = $('mute-form');
  mute.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = mute.elements;
    act('mute', () => {
      const body = { user: f.user.value.trim(), seconds: Number(f.seconds.value || 0), shadow: f.shadow.checked };
      const path = f.global.checked ? '/api/mutes' : `/api/rooms/${enc(modRoom())}/mutes`;
      return api('POST', path, body);
    });
  });
  $('unmute').addEventListener('click', () => {
    const f = mute.elements;
    act('unmute', () => {
      const user = enc(f.user.value.trim());
      const path = f.global.checked ? `/api/mutes/${user}` : `/api/rooms/${enc(modRoom())}/mutes/${user}`;
      return api('DELETE', path);
    });
  });
  const settings = $('settings-form');
  settings.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = settings.elements;
    act('room modes', () =>
      api('PUT', `/api/rooms/${enc(modRoom())}/settings`, {
        slow_mode_secs: Number(f.slow.value || 0),
        locked: f.locked.checked,
      }),
    );
  });
  const recall = $('recall-form');
  recall.addEventListener('submit', (e) => {
    e.preventDefault();
    const id = recall.elements.id.value.trim();
    act('recall', () => api('DELETE', `/api/rooms/${enc(modRoom())}/danmaku/${enc(id)}`));
  });
  const words = $('words-form');
  const list = () => (words.elements.list.value === 'allow' ? 'allowlist' : 'blocklist');
  words.addEventListener('submit', (e) => {
    e.preventDefault();
    const word = words.elements.word.value.trim();
    const kind = words.elements.list.value;
    const body = kind === 'allow' ? { word } : { word, action: kind };
    act(`add to ${list()}`, () => api('POST', `/api/${list()}`, body));
  });
  $('word-remove').addEventListener('click', () => {
    const word = words.elements.word.value.trim();
    act(`remove from ${list()}`, () => api('DELETE', `/api/${list()}/${enc(word)}`));
  });
  $('mod-refresh').addEventListener('click', () => loadModeration());
}

// ---- start -----------------------------------------------------------------

function wireTokens() {
  const read = $('read-token');
  const mod = $('mod-token');
  read.value = sessionStorage.getItem(READ_KEY) || '';
  mod.value = sessionStorage.getItem(MOD_KEY) || '';
  const save = (key, input, then) =>
    input.addEventListener('change', () => {
      const v = input.value.trim();
      if (v) sessionStorage.setItem(key, v);
      else sessionStorage.removeItem(key);
      then();
    });
  save(READ_KEY, read, connect);
  save(MOD_KEY, mod, () => {
    if (!sessionStorage.getItem(READ_KEY)) connect();
    loadModeration();
  });
}

function wireRooms() {
  let timer = 0;
  $('room-search').addEventListener('input', (e) => {
    search = e.target.value.trim();
    if (lastSnapshot) renderRooms(lastSnapshot.rooms);
    // The server lists the busiest matches, beyond the top rooms shown.
    clearTimeout(timer);
    timer = setTimeout(connect, 400);
  });
  const pick = (e) => {
    const tr = e.target.closest('tr[data-room]');
    if (tr) selectRoom(tr.dataset.room);
  };
  const tbody = $('rooms').tBodies[0];
  tbody.addEventListener('click', pick);
  tbody.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') pick(e);
  });
  $('mod-room').addEventListener('change', (e) => {
    const room = e.target.value.trim();
    if (ROOM_RE.test(room)) selectRoom(room);
  });
  window.addEventListener('resize', () => {
    if (lastSnapshot) renderCharts(lastSnapshot);
  });
}

wireTokens();
wireRooms();
wireModeration();
const initial = new URLSearchParams(location.search).get('room');
if (initial && ROOM_RE.test(initial)) {
  selectedRoom = initial;
  $('mod-room').value = initial;
}
connect();
loadModeration();
