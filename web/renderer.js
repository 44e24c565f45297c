// The danmaku stage renderer: places comments in lanes and moves them with
// the Web Animations API (compositor-driven transforms, no layout per frame).
//
// Scrolling comments all take the same time to cross the stage, so a wide
// comment moves faster than a narrow one. A lane takes a new scrolling
// comment only when the lane's last comment has fully entered the stage
// with a gap behind it, and the new one, given both speeds, cannot close
// that gap before the old one has left. A comment that finds no lane, or
// arrives over the density budget, is dropped: nothing is ever queued.
//
// Text goes in with textContent only.

const FONT_FAMILY = '"Noto Sans CJK SC", "Microsoft YaHei", "PingFang SC", system-ui, sans-serif';
const COLOR = /^#[0-9a-fA-F]{6}$/;

export const DEFAULTS = Object.freeze({
  fontSize: 25, // px
  opacity: 0.9, // 0..1
  density: 30, // comments shown per second, at most
  scrollMs: 8000, // time for a scrolling comment to cross the stage
  fixedMs: 4000, // how long top and bottom comments stay
  reserveBottom: false, // keep the bottom 20 % free (subtitles)
  modes: { scroll: true, top: true, bottom: true },
});

/** Fraction of the stage kept free at the bottom when reserveBottom is on. */
export const RESERVED_FRACTION = 0.2;
/** Most comments on the stage at once, whatever the lanes allow. */
export const MAX_ACTIVE = 300;
/** Most idle nodes kept for reuse. */
const MAX_POOL = 60;

export class Renderer {
  /**
   * @param {HTMLElement} stage the positioned element comments fly over
   * @param {object} settings see DEFAULTS
   */
  constructor(stage, settings = {}) {
    this.stage = stage;
    this.settings = { ...DEFAULTS, ...settings, modes: { ...DEFAULTS.modes, ...(settings.modes || {}) } };
    this.active = new Map(); // id -> item
    this.pool = [];
    this.scrollLanes = []; // per lane: last item placed, or null
    // Top and bottom comments share one column of lanes (top fills from
    // the top, bottom from the bottom) so the two never overlap.
    this.fixedLanes = []; // per lane: expiry time (ms, performance.now())
    this.stats = { shown: 0, dropped: 0 };
    this.tokens = this.settings.density;
    this.tokensAt = performance.now();
    this.width = 0;
    this.height = 0;
    this.applySettings();
    this.resize();
    if (typeof ResizeObserver === 'function') {
      this.observer = new ResizeObserver(() => this.resize());
      this.observer.observe(stage);
    }
  }

  /** Updates settings; takes effect for comments placed from now on. */
  update(settings) {
    Object.assign(this.settings, settings);
    if (settings.modes) this.settings.modes = { ...this.settings.modes, ...settings.modes };
    this.applySettings();
    this.resize();
  }

  applySettings() {
    const s = this.settings;
    this.stage.style.setProperty('--dm-font-size', `${s.fontSize}px`);
    this.stage.style.setProperty('--dm-opacity', String(s.opacity));
    this.stage.style.setProperty('--dm-reserved', s.reserveBottom ? `${RESERVED_FRACTION * 100}%` : '0%');
    this.font = `bold ${s.fontSize}px ${FONT_FAMILY}`;
    this.stage.style.setProperty('--dm-font-family', FONT_FAMILY);
    this.lineHeight = Math.round(s.fontSize * 1.3);
    this.gap = Math.max(16, Math.round(s.fontSize));
    this.tokens = Math.min(this.tokens, s.density);
    // Hide comments of a mode turned off, now.
    for (const item of [...this.active.values()]) {
      if (!s.modes[item.mode]) this.release(item);
    }
  }

  /** Recomputes the stage size and the number of lanes. */
  resize() {
    const rect = this.stage.getBoundingClientRect();
    this.width = rect.width;
    this.height = rect.height;
    const usable = this.height * (this.settings.reserveBottom ? 1 - RESERVED_FRACTION : 1);
    const lanes = Math.max(1, Math.floor(usable / this.lineHeight));
    const resizeLanes = (arr, empty) => {
      arr.length = Math.min(arr.length, lanes);
      while (arr.length < lanes) arr.push(empty);
    };
    resizeLanes(this.scrollLanes, null);
    resizeLanes(this.fixedLanes, 0);
    this.usableHeight = usable;
  }

  /** Whether the density budget lets one more comment through now. */
  takeToken(now) {
    const rate = this.settings.density;
    this.tokens = Math.min(rate, this.tokens + ((now - this.tokensAt) / 1000) * rate);
    this.tokensAt = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Whether the density budget has a comment to spare, without spending it. */
  hasToken(now) {
    const rate = this.settings.density;
    return Math.min(rate, this.tokens + ((now - this.tokensAt) / 1000) * rate) >= 1;
  }

  /**
   * The rendered width of `el`, which is on the stage but not yet placed.
   * Read from the layout, not estimated with a canvas: the page's fonts and
   * the browser's fallback for missing glyphs are what is drawn, and a
   * canvas may measure another font. One layout read per comment shown,
   * never one per frame.
   */
  measure(el) {
    // Padding for the outline drawn around the glyphs.
    return Math.ceil(el.getBoundingClientRect().width) + 4;
  }

  /** A free lane for a scrolling comment of width w, or -1. */
  scrollLane(now, w, speed) {
    const W = this.width;
    for (let i = 0; i < this.scrollLanes.length; i++) {
      const prev = this.scrollLanes[i];
      if (!prev || !this.active.has(prev.id) || prev.item !== this.active.get(prev.id)) return i;
      // How far it has really moved: the animation's own clock, not the
      // time it was added, since under load an animation starts frames
      // after it was created (still 0 while it waits for its first frame).
      const clock = prev.item.anim && prev.item.anim.currentTime;
      const elapsed = typeof clock === 'number' ? clock : 0;
      // Distance between the previous comment's tail and the stage's right
      // edge (where the new comment's head starts). It started from the
      // stage's width at its time, which a resize may have changed since.
      const tail = prev.x0 - prev.speed * elapsed + prev.w;
      const gap = W - tail;
      if (gap < this.gap) continue;
      // Time until the previous comment has left the stage.
      const left = (prev.x0 + prev.w) / prev.speed - elapsed;
      if (speed > prev.speed && gap - (speed - prev.speed) * Math.max(0, left) < 0) continue;
      return i;
    }
    return -1;
  }

  fixedLane(mode, now) {
    const lanes = this.fixedLanes;
    const n = lanes.length;
    for (let k = 0; k < n; k++) {
      const i = mode === 'top' ? k : n - 1 - k;
      if (lanes[i] <= now) return i;
    }
    return -1;
  }

  /**
   * Shows one comment if it fits. Returns true when it is on the stage,
   * false when it was dropped (mode off, hidden tab, over the density
   * budget, no free lane, too many on the stage).
   * @param {{id:string,text:string,color?:string,mode?:string}} d
   */
  add(d) {
    const mode = d.mode === 'top' || d.mode === 'bottom' ? d.mode : 'scroll';
    if (!this.settings.modes[mode] || (typeof document !== 'undefined' && document.hidden)) {
      this.stats.dropped++;
      return false;
    }
    if (this.active.has(d.id) || this.active.size >= MAX_ACTIVE || this.width < 1) {
      this.stats.dropped++;
      return false;
    }
    const now = performance.now();
    // Over the budget: dropped before it costs a layout.
    if (!this.hasToken(now)) {
      this.stats.dropped++;
      return false;
    }
    const el = this.pool.pop() || this.makeNode();
    el.textContent = d.text;
    el.style.color = COLOR.test(d.color || '') ? d.color : '#ffffff';
    el.className = `dm dm-${mode}`;
    // Parked off the stage's right edge while it is measured.
    el.style.top = '0px';
    el.style.transform = `translate3d(${this.width}px,0,0)`;
    this.stage.appendChild(el);
    const w = this.measure(el);
    let lane;
    let speed = 0;
    if (mode === 'scroll') {
      speed = (this.width + w) / this.settings.scrollMs; // px per ms
      lane = this.scrollLane(now, w, speed);
    } else {
      lane = this.fixedLane(mode, now);
    }
    // The density budget is spent only on comments that have a place.
    if (lane < 0 || !this.takeToken(now)) {
      el.remove();
      el.textContent = '';
      if (this.pool.length < MAX_POOL) this.pool.push(el);
      this.stats.dropped++;
      return false;
    }
    el.style.transform = '';
    el.dataset.id = d.id;
    const item = { id: d.id, data: d, el, mode, lane, anim: null };
    let anim;
    if (mode === 'scroll') {
      el.style.top = `${lane * this.lineHeight}px`;
      anim = el.animate(
        [{ transform: `translate3d(${this.width}px,0,0)` }, { transform: `translate3d(${-w}px,0,0)` }],
        { duration: this.settings.scrollMs, easing: 'linear', fill: 'both' },
      );
      this.scrollLanes[lane] = { id: d.id, item, x0: this.width, w, speed };
    } else {
      // Lanes lie within the usable height, above any reserved band.
      el.style.top = `${lane * this.lineHeight}px`;
      this.fixedLanes[lane] = now + this.settings.fixedMs;
      anim = el.animate([{ opacity: 1 }, { opacity: 1 }], { duration: this.settings.fixedMs });
    }
    item.anim = anim;
    anim.onfinish = () => this.release(item);
    this.active.set(d.id, item);
    this.stats.shown++;
    return true;
  }

  makeNode() {
    const el = document.createElement('div');
    el.setAttribute('aria-hidden', 'true');
    return el;
  }

  /** Takes a comment off the stage and keeps its node for reuse. */
  release(item) {
    if (this.active.get(item.id) !== item) return;
    this.active.delete(item.id);
    if (item.anim) {
      item.anim.onfinish = null;
      item.anim.cancel();
    }
    if (item.mode !== 'scroll' && this.fixedLanes[item.lane] !== undefined) this.fixedLanes[item.lane] = 0;
    const el = item.el;
    el.remove();
    el.textContent = '';
    delete el.dataset.id;
    if (this.pool.length < MAX_POOL) this.pool.push(el);
  }

  /** Removes one comment (a recall). */
  remove(id) {
    const item = this.active.get(id);
    if (item) this.release(item);
  }

  /** Removes every comment. */
  clear() {
    for (const item of [...this.active.values()]) this.release(item);
    this.scrollLanes.fill(null);
    this.fixedLanes.fill(0);
  }

  /** The comment data of an element on the stage, if it is one. */
  dataOf(el) {
    const node = el && el.closest ? el.closest('.dm') : null;
    const item = node && node.dataset.id ? this.active.get(node.dataset.id) : null;
    return item ? item.data : null;
  }

  destroy() {
    this.clear();
    if (this.observer) this.observer.disconnect();
  }
}
