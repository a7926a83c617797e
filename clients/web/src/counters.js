// The counter list: one row per counter, kept sorted by name, fed by the
// retained totals on `counters/<name>` and the per-node detail on
// `counters/<name>/state`. Totals drive the value and the rate; the state
// message only adds the breakdown (and a value until the first total lands).

import { RateTracker } from './rate.js';
import { drawSparkline } from './sparkline.js';

const number = new Intl.NumberFormat();

export function formatNumber(n) {
  return number.format(n);
}

// r: changes per second, or null when nothing is known (the page was away).
function formatRate(r) {
  if (r === null) return '–/s';
  const abs = Math.abs(r);
  const digits = abs === 0 || abs >= 10 ? 0 : abs >= 1 ? 1 : 2;
  return `${r.toFixed(digits)}/s`;
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

// "a 12 · b 3 · 2 devices 40", and the exact P and N in the tooltip.
function describeState(state) {
  const parts = [];
  const detail = [];
  const nodes = state.nodes && typeof state.nodes === 'object' ? state.nodes : {};
  for (const node of Object.keys(nodes).sort()) {
    const { p = 0, n = 0 } = nodes[node] || {};
    parts.push(`${node} ${formatNumber(p - n)}`);
    detail.push(`node ${node}: +${formatNumber(p)} −${formatNumber(n)}`);
  }
  const devices = state.devices && typeof state.devices === 'object' ? state.devices : {};
  const ids = Object.keys(devices);
  if (ids.length > 0) {
    const sum = ids.reduce((acc, id) => acc + (Number(devices[id]) || 0), 0);
    parts.push(`${ids.length} device${ids.length === 1 ? '' : 's'} ${formatNumber(sum)}`);
    for (const id of ids.sort()) detail.push(`device ${id}: ${formatNumber(devices[id])}`);
  }
  return { text: parts.join(' · '), title: detail.join('\n') };
}

export class CounterList {
  // onIncrement(name) is called when a row's +1 button is pressed.
  constructor(listEl, emptyEl, onIncrement) {
    this.listEl = listEl;
    this.emptyEl = emptyEl;
    this.onIncrement = onIncrement;
    this.rows = new Map(); // name -> row record
    this.sorted = []; // names, in display order
    this.enabled = false;
    this.colors = null; // sparkline colours, from the last tick
  }

  // A retained total; null removes the counter (its retained message was cleared).
  setTotal(name, total, nowMs) {
    if (total === null) {
      this.remove(name);
      return;
    }
    const row = this.ensure(name);
    row.hasTotal = true;
    row.rate.observe(total, nowMs);
    this.showValue(row, total);
    this.draw(row, nowMs);
  }

  setState(name, state) {
    const row = this.ensure(name);
    const { text, title } = describeState(state);
    row.nodesEl.textContent = text;
    row.nodesEl.title = title;
    if (!row.hasTotal && Number.isSafeInteger(state.value)) this.showValue(row, state.value);
  }

  // The connection was lost at nowMs: the charts show a gap from then.
  pause(nowMs) {
    for (const row of this.rows.values()) row.rate.pause(nowMs);
  }

  // After a reconnect the retained totals arrive again; they are baselines,
  // not changes, or the chart would show whatever moved while we were away.
  resume(nowMs) {
    for (const row of this.rows.values()) row.rate.resume(nowMs);
  }

  setEnabled(enabled) {
    this.enabled = enabled;
    for (const row of this.rows.values()) row.button.disabled = !enabled;
  }

  // Redraws every chart and rate label for the time nowMs.
  tick(nowMs, colors) {
    this.colors = colors;
    for (const row of this.rows.values()) this.draw(row, nowMs);
  }

  draw(row, nowMs) {
    if (!this.colors) return;
    row.rateEl.textContent = formatRate(row.rate.recent(nowMs));
    drawSparkline(row.canvas, row.rate.series(nowMs), nowMs, this.colors);
  }

  showValue(row, value) {
    const text = formatNumber(value);
    if (row.valueEl.textContent === text) return;
    row.valueEl.textContent = text;
    row.valueEl.dataset.value = String(value);
    // Restart the highlight animation: removing the class alone would not
    // replay it without a style flush in between.
    row.valueEl.classList.remove('bump');
    void row.valueEl.offsetWidth;
    row.valueEl.classList.add('bump');
  }

  ensure(name) {
    const existing = this.rows.get(name);
    if (existing) return existing;
    const row = this.createRow(name);
    this.rows.set(name, row);
    const at = this.insertionIndex(name);
    this.listEl.insertBefore(row.li, at < this.sorted.length ? this.rows.get(this.sorted[at]).li : null);
    this.sorted.splice(at, 0, name);
    this.emptyEl.hidden = true;
    return row;
  }

  remove(name) {
    const row = this.rows.get(name);
    if (!row) return;
    row.li.remove();
    this.rows.delete(name);
    this.sorted.splice(this.sorted.indexOf(name), 1);
    this.emptyEl.hidden = this.rows.size > 0;
  }

  // Forgets every counter: what another user was allowed to read is not shown to the next.
  clear() {
    for (const name of [...this.rows.keys()]) this.remove(name);
  }

  insertionIndex(name) {
    let lo = 0;
    let hi = this.sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.sorted[mid] < name) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  createRow(name) {
    const li = el('li', 'row');
    li.dataset.testid = `counter-row-${name}`;
    const info = el('div', 'info');
    const nameEl = el('span', 'name', name);
    nameEl.title = name;
    const nodesEl = el('span', 'nodes');
    info.append(nameEl, nodesEl);

    const chart = el('div', 'chart');
    const canvas = el('canvas', 'spark');
    canvas.setAttribute('aria-hidden', 'true');
    const rateEl = el('span', 'rate', formatRate(0));
    rateEl.title = 'changes per second, last 10 s; chart: last 5 min';
    chart.append(canvas, rateEl);

    const valueEl = el('span', 'value', '–');
    valueEl.dataset.testid = `counter-value-${name}`;

    const button = el('button', 'inc', '+1');
    button.type = 'button';
    button.dataset.testid = `inc-${name}`;
    button.setAttribute('aria-label', `add one to ${name}`);
    button.disabled = !this.enabled;
    button.addEventListener('click', () => this.onIncrement(name, button));

    li.append(info, chart, valueEl, button);
    return { li, nodesEl, canvas, rateEl, valueEl, button, rate: new RateTracker(), hasTotal: false };
  }
}
