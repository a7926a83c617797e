// A rate sparkline drawn by hand on a <canvas>: a filled area of changes per
// second, averaged over BUCKET_S seconds so single bursts read as a shape
// rather than a comb. The scale is the series' own peak, with a floor so an
// idle counter draws a flat line instead of magnified noise.

const BUCKET_S = 5;

export function bucketRates(perSecond) {
  const out = [];
  for (let i = 0; i + BUCKET_S <= perSecond.length; i += BUCKET_S) {
    let sum = 0;
    for (let j = i; j < i + BUCKET_S; j++) sum += perSecond[j];
    out.push(sum / BUCKET_S);
  }
  return out;
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

// colors: {line, fill, axis}
export function drawSparkline(canvas, perSecond, colors) {
  if (!fitCanvas(canvas)) return;
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  const rates = bucketRates(perSecond);
  const peak = Math.max(1, ...rates.map(Math.abs));
  const hasNegative = rates.some((r) => r < 0);
  const pad = Math.max(1, Math.round(h * 0.08));
  const zeroY = hasNegative ? h / 2 : h - pad;
  const span = hasNegative ? h / 2 - pad : h - 2 * pad;
  const x = (i) => (rates.length === 1 ? w : (i / (rates.length - 1)) * w);
  const y = (r) => zeroY - (r / peak) * span;

  ctx.clearRect(0, 0, w, h);
  ctx.lineWidth = Math.max(1, h / 32);
  ctx.strokeStyle = colors.axis;
  ctx.beginPath();
  ctx.moveTo(0, zeroY);
  ctx.lineTo(w, zeroY);
  ctx.stroke();

  ctx.beginPath();
  ctx.moveTo(0, zeroY);
  rates.forEach((r, i) => ctx.lineTo(x(i), y(r)));
  ctx.lineTo(w, zeroY);
  ctx.closePath();
  ctx.fillStyle = colors.fill;
  ctx.fill();

  ctx.beginPath();
  rates.forEach((r, i) => (i === 0 ? ctx.moveTo(x(i), y(r)) : ctx.lineTo(x(i), y(r))));
  ctx.lineWidth = Math.max(1.5, h / 20);
  ctx.lineJoin = 'round';
  ctx.strokeStyle = colors.line;
  ctx.stroke();
}
