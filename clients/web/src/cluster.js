// The cluster strip: one chip per node from its retained `$tally/stats/<node>`.
// Nodes publish at least every 5 s, so a chip not refreshed for STALE_MS while
// we are connected belongs to a node that has stopped (its retained message
// stays behind on the broker); it is dimmed rather than hidden.

import { formatNumber } from './counters.js';

const STALE_MS = 15000;

function stat(value, singular, plural) {
  const n = Number(value) || 0;
  const span = document.createElement('span');
  const b = document.createElement('b');
  b.textContent = formatNumber(n);
  span.append(b, ` ${n === 1 ? singular : plural}`);
  return span;
}

export class ClusterStrip {
  constructor(stripEl) {
    this.stripEl = stripEl;
    this.chips = new Map(); // node -> {chip, seenMs}
  }

  // stats: the parsed JSON, or null when the retained message was cleared.
  set(node, stats, nowMs) {
    let entry = this.chips.get(node);
    if (stats === null) {
      if (entry) entry.chip.remove();
      this.chips.delete(node);
      this.stripEl.hidden = this.chips.size === 0;
      return;
    }
    if (!entry) {
      entry = { chip: document.createElement('div'), seenMs: nowMs };
      entry.chip.className = 'chip';
      entry.chip.dataset.testid = `node-${node}`;
      this.chips.set(node, entry);
      const after = [...this.chips.keys()].sort().find((n) => n > node);
      this.stripEl.insertBefore(entry.chip, after ? this.chips.get(after).chip : null);
      this.stripEl.hidden = false;
    }
    entry.seenMs = nowMs;
    entry.chip.classList.remove('stale');
    entry.chip.replaceChildren(...this.render(node, stats));
    entry.chip.title = this.describe(stats);
  }

  render(node, stats) {
    const name = document.createElement('strong');
    name.textContent = node;
    const peers = stats.peers && typeof stats.peers === 'object' ? Object.keys(stats.peers).length : 0;
    return [
      name,
      stat(stats.counters, 'counter', 'counters'),
      stat(stats.viewers, 'viewer', 'viewers'),
      stat(stats.applied, 'applied', 'applied'),
      stat(peers, 'peer', 'peers'),
    ];
  }

  describe(stats) {
    const lines = [];
    if (stats.devices !== undefined) lines.push(`devices: ${stats.devices}`);
    if (stats.duplicates !== undefined) lines.push(`duplicates dropped: ${stats.duplicates}`);
    if (stats.rejected && typeof stats.rejected === 'object') {
      for (const [reason, n] of Object.entries(stats.rejected)) lines.push(`rejected (${reason}): ${n}`);
    }
    if (stats.repl && typeof stats.repl === 'object') {
      const r = stats.repl;
      lines.push(`replication in: ${r.msgs_in ?? 0} msgs, ${r.bytes_in ?? 0} B`);
      lines.push(`replication out: ${r.msgs_out ?? 0} msgs, ${r.bytes_out ?? 0} B`);
    }
    if (stats.peers && typeof stats.peers === 'object') {
      lines.push(`peers (its neighbours): ${Object.keys(stats.peers).sort().join(', ') || 'none'}`);
    }
    if (stats.nodes && typeof stats.nodes === 'object') {
      lines.push(`other nodes heard: ${stats.nodes.heard ?? 0}, alive: ${stats.nodes.alive ?? 0}`);
    }
    return lines.join('\n');
  }

  // Dims the chips of nodes not heard from lately; only meaningful while connected.
  tick(nowMs) {
    for (const { chip, seenMs } of this.chips.values()) {
      chip.classList.toggle('stale', nowMs - seenMs > STALE_MS);
    }
  }

  clear() {
    for (const node of [...this.chips.keys()]) this.set(node, null);
  }

  // After a reconnect the retained stats arrive again; give them time to.
  touchAll(nowMs) {
    for (const entry of this.chips.values()) entry.seenMs = nowMs;
  }
}
