// Which counters the dashboard shows. It never subscribes to every counter:
// a node may hold a million, and Mosquitto would queue at most
// max_queued_messages (1000 by default) of their retained totals and drop the
// rest without a word. Instead it asks the control API for one screen of
// names and subscribes to exactly those rows (two topics each), dropping the
// subscriptions of rows that leave the screen:
//
//   trending  topCounters: the TRENDING_COUNT counters whose totals moved
//             most a second over the last ~10 s, asked again every
//             TRENDING_EVERY_MS;
//   all       listCounters: PAGE_SIZE names at a time in natural order
//             ("c2" before "c10"), optionally those starting with a prefix,
//             with "first–last of matched"; asked again every ALL_EVERY_MS
//             so new counters appear.
//
// The view, search and page live in the URL (?view=all&q=c1&from=50), so a
// reload or a link to another node shows the same screen.

import { formatNumber } from './counters.js';

export const PAGE_SIZE = 50;
export const TRENDING_COUNT = 20;
const TRENDING_EVERY_MS = 3000;
const ALL_EVERY_MS = 10000;

export class CounterView {
  // els: {tabs: {trending, all}, search, info, pager, prev, next, range};
  // watch(names) / unwatch(names) subscribe and unsubscribe rows' topics.
  constructor({ list, control, els, watch, unwatch }) {
    Object.assign(this, { list, control, els, watch, unwatch });
    const query = new URLSearchParams(location.search);
    this.mode = query.get('view') === 'all' || query.get('q') ? 'all' : 'trending';
    this.prefix = query.get('q') ?? '';
    this.offset = Math.max(0, Math.floor(Number(query.get('from')) || 0));
    this.live = false; // connected: requests may go out
    this.inFlight = false;
    this.dueMs = 0;
    this.searchTimer = null;
    els.search.value = this.prefix;
    els.tabs.trending.addEventListener('click', () => this.setMode('trending'));
    els.tabs.all.addEventListener('click', () => this.setMode('all'));
    els.prev.addEventListener('click', () => this.page(-1));
    els.next.addEventListener('click', () => this.page(1));
    els.search.addEventListener('input', () => {
      clearTimeout(this.searchTimer);
      this.searchTimer = setTimeout(() => this.search(els.search.value), 150);
    });
    this.showMode();
  }

  /* ==== Changes the user makes ==== */

  setMode(mode) {
    if (mode === this.mode) return;
    this.mode = mode;
    this.offset = 0;
    if (mode === 'trending') {
      this.prefix = '';
      this.els.search.value = '';
    }
    this.changed();
  }

  search(prefix) {
    this.prefix = prefix;
    this.mode = prefix === '' && this.mode === 'trending' ? 'trending' : 'all';
    this.offset = 0;
    this.changed();
  }

  page(direction) {
    this.offset = Math.max(0, this.offset + direction * PAGE_SIZE);
    this.changed();
  }

  changed() {
    this.showMode();
    this.keepInUrl();
    this.refresh();
  }

  keepInUrl() {
    const query = new URLSearchParams(location.search);
    const set = (key, value) => (value ? query.set(key, value) : query.delete(key));
    set('view', this.mode === 'all' ? 'all' : '');
    set('q', this.prefix);
    set('from', this.offset ? String(this.offset) : '');
    const search = query.toString();
    history.replaceState(null, '', search ? `?${search}` : location.pathname);
  }

  showMode() {
    for (const [mode, tab] of Object.entries(this.els.tabs)) {
      tab.setAttribute('aria-selected', String(mode === this.mode));
    }
    this.els.pager.hidden = this.mode !== 'all';
  }

  /* ==== Connection ==== */

  // A fresh connection (clean session): the rows on screen are subscribed
  // again and the list asked for at once.
  connected() {
    this.live = true;
    this.inFlight = false;
    this.watch(this.list.names());
    this.refresh();
  }

  disconnected() {
    this.live = false;
  }

  // Called every second: asks again when due.
  tick(nowMs) {
    if (this.live && !this.inFlight && nowMs >= this.dueMs) this.refresh();
  }

  /* ==== Asking and showing ==== */

  async refresh() {
    if (!this.live) return;
    const mode = this.mode;
    const prefix = this.prefix;
    const offset = this.offset;
    this.inFlight = true;
    this.dueMs = Date.now() + (mode === 'trending' ? TRENDING_EVERY_MS : ALL_EVERY_MS);
    try {
      const data =
        mode === 'trending'
          ? await this.control.request({ command: 'topCounters', count: TRENDING_COUNT })
          : await this.control.request({ command: 'listCounters', prefix, offset, count: PAGE_SIZE, order: 'natural' });
      // Answers to a screen the user has left are dropped.
      if (mode !== this.mode || prefix !== this.prefix || offset !== this.offset) return;
      this.apply(mode, data);
    } catch (err) {
      if (this.live) this.showInfo(`Cannot list counters: ${err.message}`, true);
    } finally {
      this.inFlight = false;
    }
  }

  apply(mode, data) {
    const items = Array.isArray(data.counters) ? data.counters.filter((c) => typeof c?.name === 'string') : [];
    const { added, gone } = this.list.show(items);
    this.unwatch(gone);
    this.watch(added);
    if (mode === 'trending') {
      this.showInfo(
        items.length === 0
          ? 'Nothing has changed in the last few seconds. See all counters.'
          : `The ${formatNumber(items.length)} counters changing fastest, over the last ~10 s.`,
      );
      return;
    }
    const matched = Number.isSafeInteger(data.matched) ? data.matched : items.length;
    const total = Number.isSafeInteger(data.totalCount) ? data.totalCount : matched;
    const first = items.length ? this.offset + 1 : 0;
    const last = this.offset + items.length;
    this.els.range.textContent = `${formatNumber(first)}–${formatNumber(last)} of ${formatNumber(matched)}`;
    this.els.prev.disabled = this.offset === 0;
    this.els.next.disabled = last >= matched;
    this.showInfo(
      this.prefix
        ? `${formatNumber(matched)} of ${formatNumber(total)} counters start with “${this.prefix}”.`
        : `${formatNumber(total)} counters, in natural order.`,
    );
  }

  showInfo(text, isError = false) {
    this.els.info.textContent = text;
    this.els.info.classList.toggle('error', isError);
  }
}
