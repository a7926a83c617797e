// A rate sparkline drawn by hand on a <canvas>: a filled area of changes per
// second, averaged over BUCKET_S seconds so single bursts read as a shape
// rather than a comb. The scale is the series' own peak, with a floor so an
// idle counter draws a flat line instead of magnified noise. Unknown seconds
// (NaN: the page was not connected) make their bucket a gap: no line is
// drawn there, only a faint band, so an outage never reads as a rate of
// zero. The chart starts where the page's knowledge starts (at most five
// minutes back, at least half a minute), so a short visit is not a stub at
// the right edge.

const BUCKET_S = 5;
const MIN_SPAN_BUCKETS = 6;

// The mean of each bucket's seconds, oldest first; NaN for a bucket with an
// unknown second, so that even a short outage shows. Buckets are aligned on
// the clock (a multiple of BUCKET_S seconds), so one keeps its seconds as
// time goes by; the newest one holds the lastLen seconds elapsed in it
// (1 to BUCKET_S), the oldest whatever the window leaves.
export function bucketRates(perSecond, lastLen = BUCKET_S) {
  const out = [];
  for (let end = perSecond.length; end > 0; ) {
    const len = end === perSecond.length ? lastLen : BUCKET_S;
    const start = Math.max(0, end - len);
    let sum = 0;
    for (let j = start; j < end; j++) sum += perSecond[j];
    out.push(sum / (end - start));
    end = start;
  }
  return out.reverse();
}

// Runs of consecutive known buckets, as [first, last] index pairs.
export function knownRuns(rates) {
  const runs = [];
  let start = null;
  rates.forEach((r, i) => {
    if (Number.isNaN(r)) {
      if (start !== null) runs.push([start, i - 1]);
      start = null;
    } else if (start === null) {
      start = i;
    }
  });
  if (start !== null) runs.push([start, rates.length - 1]);
  return runs;
}

// Sizes the backing store to the element's CSS size times the pixel ratio,
// so lines stay crisp on phones; returns false when the canvas is not laid out.
function fitCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * dpr);
  const h = Math.round(canvas.clientHeight * dpr);
  if (w === 0 || h === 0) return false;
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  return true;
}

// perSecond: the changes of each second, ending with the current one, at
// nowMs; colors: {line, fill, axis}
export function drawSparkline(canvas, perSecond, nowMs, colors) {
  if (!fitCanvas(canvas)) return;
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  const rates = bucketRates(perSecond, (Math.floor(nowMs / 1000) % BUCKET_S) + 1);
  const runs = knownRuns(rates);
  ctx.clearRect(0, 0, w, h);
  if (runs.length === 0) return;
  const known = rates.filter((r) => !Number.isNaN(r));
  const peak = Math.max(1, ...known.map(Math.abs));
  const hasNegative = known.some((r) => r < 0);
  const pad = Math.max(1, Math.round(h * 0.08));
  const zeroY = hasNegative ? h / 2 : h - pad;
  const span = hasNegative ? h / 2 - pad : h - 2 * pad;
  const last = rates.length - 1;
  const start = Math.max(0, Math.min(runs[0][0], last - MIN_SPAN_BUCKETS));
  const x = (i) => ((i - start) / (last - start)) * w;
  const y = (r) => zeroY - (r / peak) * span;

  runs.forEach(([first, end], k) => {
    const points = [];
    for (let i = first; i <= end; i++) points.push([x(i), y(rates[i])]);
    // A lone known bucket still gets a short stroke, so it is seen: leftwards,
    // or rightwards when it stands at the left edge (it would be off the canvas).
    if (points.length === 1) {
      const [px, py] = points[0];
      if (px - h / 4 >= 0) points.unshift([px - h / 4, py]);
      else points.push([px + h / 4, py]);
    }
    drawRun(ctx, points, zeroY, colors);
    const next = k + 1 < runs.length ? x(runs[k + 1][0]) : end < last ? w : null;
    if (next !== null) drawGap(ctx, x(end), next, colors);
  });
}

// Where nothing is known: a faint band, no rate.
function drawGap(ctx, x0, x1, colors) {
  ctx.save();
  ctx.globalAlpha = 0.5;
  ctx.fillStyle = colors.axis;
  ctx.fillRect(x0, 0, x1 - x0, ctx.canvas.height);
  ctx.restore();
}

// One stretch of known rates: its axis, the filled area and the line.
function drawRun(ctx, points, zeroY, colors) {
  const h = ctx.canvas.height;
  const x0 = points[0][0];
  const x1 = points[points.length - 1][0];
  ctx.lineWidth = Math.max(1, h / 32);
  ctx.strokeStyle = colors.axis;
  ctx.beginPath();
  ctx.moveTo(x0, zeroY);
  ctx.lineTo(x1, zeroY);
  ctx.stroke();

  ctx.beginPath();
  ctx.moveTo(x0, zeroY);
  for (const [px, py] of points) ctx.lineTo(px, py);
  ctx.lineTo(x1, zeroY);
  ctx.closePath();
  ctx.fillStyle = colors.fill;
  ctx.fill();

  ctx.beginPath();
  points.forEach(([px, py], i) => (i === 0 ? ctx.moveTo(px, py) : ctx.lineTo(px, py)));
  ctx.lineWidth = Math.max(1.5, h / 20);
  ctx.lineJoin = 'round';
  ctx.strokeStyle = colors.line;
  ctx.stroke();
}
