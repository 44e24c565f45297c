// A small line chart on a canvas, for the dashboard: one series of
// {t, value} points over a fixed time window, with the latest value, the
// maximum and the window's start and end written along the axes. No
// dependencies; redrawn whole on every update (a few hundred points).

const PAD = { left: 44, right: 10, top: 10, bottom: 20 };

/** A number as a short label: 1234 → "1.2k". */
export function shortNumber(n) {
  if (!Number.isFinite(n)) return '0';
  const abs = Math.abs(n);
  if (abs >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (abs >= 1e4) return `${(n / 1e3).toFixed(0)}k`;
  if (abs >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  if (Number.isInteger(n)) return String(n);
  return n.toFixed(abs >= 10 ? 1 : 2);
}

/** A round number at least `max`, so the axis ends on a readable value. */
function niceCeiling(max) {
  if (max <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (m * step >= max) return m * step;
  }
  return 10 * step;
}

/**
 * Draws `points` ([{t, value}], oldest first) on `canvas`, over the
 * `windowMs` ending at `now`. Sized to the canvas's CSS box and the
 * device's pixel ratio, so it stays sharp.
 */
export function drawChart(canvas, points, { now = Date.now(), windowMs = 600_000, color = '#2b7de9' } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 120;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const start = now - windowMs;
  const shown = points.filter((p) => p.t >= start && p.t <= now);
  // Headroom above the highest point, so a flat line does not hide on the top rule.
  const top = niceCeiling(1.15 * Math.max(0, ...shown.map((p) => p.value)));
  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - start) / windowMs) * plotW;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  const style = getComputedStyle(canvas);
  const ink = style.color || '#333';
  ctx.font = '11px system-ui, sans-serif';
  ctx.strokeStyle = 'rgba(128,128,128,0.35)';
  ctx.fillStyle = ink;
  ctx.lineWidth = 1;
  ctx.textBaseline = 'middle';
  ctx.textAlign = 'right';
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(PAD.left, yy);
    ctx.lineTo(width - PAD.right, yy);
    ctx.stroke();
    ctx.fillText(shortNumber(v), PAD.left - 6, yy);
  }
  ctx.textBaseline = 'alphabetic';
  ctx.textAlign = 'left';
  ctx.fillText(`-${Math.round(windowMs / 60_000)} min`, PAD.left, height - 5);
  ctx.textAlign = 'right';
  ctx.fillText('now', width - PAD.right, height - 5);

  if (shown.length === 0) {
    ctx.textAlign = 'center';
    ctx.fillText('no data yet', PAD.left + plotW / 2, PAD.top + plotH / 2);
    return;
  }
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.lineJoin = 'round';
  ctx.beginPath();
  shown.forEach((p, i) => (i === 0 ? ctx.moveTo(x(p.t), y(p.value)) : ctx.lineTo(x(p.t), y(p.value))));
  ctx.stroke();
  if (shown.length === 1) {
    ctx.fillStyle = color;
    ctx.beginPath();
    ctx.arc(x(shown[0].t), y(shown[0].value), 3, 0, 2 * Math.PI);
    ctx.fill();
  }
}
