// The counter rows on screen: exactly the counters the current view lists
// (show()), in its order, each fed by the retained total on
// `<prefix>/<name>` and the per-node detail on `<prefix>/<name>/state`
// that the page subscribes to for that row alone. Totals drive the value and
// the rate; the state message only adds the breakdown. Messages for a name
// not on screen (one that just left) are ignored.

import { RateTracker } from './rate.js';
import { drawSparkline } from './sparkline.js';

const number = new Intl.NumberFormat();
// Seconds a row must have seen before its own rate replaces the plugin's.
const OWN_RATE_AFTER_S = 5;

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

// "a 12 · b 3 · 2 devices 40", and the exact P and N in the tooltip. The
// plugin lists the largest shares first, as many as fit in its message
// bound, and counts the rest (nodes_omitted, devices_omitted): the count and
// the sum of the devices come from the document's totals, not from the list.
export function describeState(state) {
  const parts = [];
  const detail = [];
  const nodes = state.nodes && typeof state.nodes === 'object' ? state.nodes : {};
  for (const node of Object.keys(nodes).sort()) {
    const { p = 0, n = 0 } = nodes[node] || {};
    parts.push(`${node} ${formatNumber(p - n)}`);
    detail.push(`node ${node}: +${formatNumber(p)} −${formatNumber(n)}`);
  }
  const nodesOmitted = Number(state.nodes_omitted) || 0;
  if (nodesOmitted > 0) {
    parts.push(`${formatNumber(nodesOmitted)} more node${nodesOmitted === 1 ? '' : 's'}`);
    detail.push(`and ${formatNumber(nodesOmitted)} more nodes`);
  }
  const devices = state.devices && typeof state.devices === 'object' ? state.devices : {};
  const ids = Object.keys(devices);
  const devicesOmitted = Number(state.devices_omitted) || 0;
  const count = ids.length + devicesOmitted;
  if (count > 0) {
    const sum = Number.isSafeInteger(state.devices_total)
      ? state.devices_total
      : ids.reduce((acc, id) => acc + (Number(devices[id]) || 0), 0);
    parts.push(`${formatNumber(count)} device${count === 1 ? '' : 's'} ${formatNumber(sum)}`);
    // in the document's order: largest first
    for (const id of ids) detail.push(`device ${id}: ${formatNumber(devices[id])}`);
    if (devicesOmitted > 0) detail.push(`and ${formatNumber(devicesOmitted)} more devices`);
  }
  return { text: parts.join(' · '), title: detail.join('\n') };
}

export class CounterList {
  // onIncrement(name) is called when a row's +1 button is pressed.
  constructor(listEl, emptyEl, onIncrement) {
    this.listEl = listEl;
    this.emptyEl = emptyEl;
    this.onIncrement = onIncrement;
    this.rows = new Map(); // name -> row record, in display order
    this.enabled = false;
    this.colors = null; // sparkline colours, from the last tick
  }

  // Shows exactly these counters ([{name, value, rate}]), in this order; a
  // new row starts with the listed value until its live total arrives, and
  // with the plugin's rate (topCounters) until it has seen a few seconds of
  // its own. Returns
  // the names that came and went, for the caller's subscriptions.
  show(items) {
    const want = new Set(items.map((item) => item.name));
    const gone = [...this.rows.keys()].filter((name) => !want.has(name));
    for (const name of gone) this.remove(name);
    const added = [];
    let before = this.listEl.firstChild;
    for (const { name, value, rate } of items) {
      let row = this.rows.get(name);
      if (!row) {
        row = this.createRow(name);
        this.rows.set(name, row);
        added.push(name);
        if (Number.isSafeInteger(value)) this.showValue(row, value);
      }
      row.serverRate = typeof rate === 'number' ? rate : null;
      if (row.li !== before) this.listEl.insertBefore(row.li, before);
      before = row.li.nextSibling;
    }
    this.emptyEl.hidden = items.length > 0;
    return { added, gone };
  }

  names() {
    return [...this.rows.keys()];
  }

  // A retained total of a row on screen; null: the counter was deleted.
  setTotal(name, total, nowMs) {
    const row = this.rows.get(name);
    if (!row) return;
    if (total === null) {
      row.valueEl.textContent = '–';
      return;
    }
    row.hasTotal = true;
    row.rate.observe(total, nowMs);
    this.showValue(row, total);
    this.draw(row, nowMs);
  }

  setState(name, state) {
    const row = this.rows.get(name);
    if (!row) return;
    const { text, title } = describeState(state);
    row.nodesEl.textContent = text;
    row.nodesEl.title = title;
    if (!row.hasTotal && Number.isSafeInteger(state.value)) this.showValue(row, state.value);
  }

  // The connection was lost at nowMs: the charts show a gap from then.
  pause(nowMs) {
    for (const row of this.rows.values()) {
      row.rate.pause(nowMs);
      row.serverRate = null; // as old as the last answer: no rate is claimed
    }
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
    const ownRate = row.rate.knownSeconds(nowMs) >= OWN_RATE_AFTER_S || row.serverRate === null;
    row.rateEl.textContent = formatRate(ownRate ? row.rate.recent(nowMs) : row.serverRate);
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

  remove(name) {
    const row = this.rows.get(name);
    if (!row) return;
    row.li.remove();
    this.rows.delete(name);
    this.emptyEl.hidden = this.rows.size > 0;
  }

  // Forgets every counter: what another user was allowed to read is not shown to the next.
  clear() {
    this.show([]);
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
    return { li, nodesEl, canvas, rateEl, valueEl, button, rate: new RateTracker(), hasTotal: false, serverRate: null };
  }
}
