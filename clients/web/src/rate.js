// Rate of change of one counter over the last five minutes.
//
// The dashboard only sees totals (retained, coalesced by the plugin), so a
// rate is the difference between consecutive totals, booked in the second it
// arrived. One slot per second in a ring of WINDOW_S slots keeps memory fixed
// per counter whatever the traffic; reading walks the ring oldest first.
//
// A second in which the page was not connected is unknown (NaN), not zero:
// nothing was seen then, so the chart leaves a gap there and the rate is
// taken over the known seconds only. So is every second before the tracker
// existed.

export const WINDOW_S = 300;

export class RateTracker {
  constructor() {
    this.slots = new Float64Array(WINDOW_S).fill(NaN);
    this.headSecond = null; // absolute second held by the newest slot
    this.last = null; // last total seen, null until a baseline exists
    this.live = true; // connected: passing seconds are known
  }

  // A total arrived at time nowMs. The first total after a (re)connect is a
  // baseline only: what changed while we were away is not a rate.
  observe(total, nowMs) {
    this.advance(nowMs);
    if (this.last !== null) {
      const i = this.headSecond % WINDOW_S;
      this.slots[i] = (Number.isNaN(this.slots[i]) ? 0 : this.slots[i]) + (total - this.last);
    }
    this.last = total;
  }

  // The connection came back at nowMs: the seconds from now on are known,
  // and the next total is a baseline, not a jump.
  resume(nowMs) {
    this.advance(nowMs);
    this.live = true;
    const i = this.headSecond % WINDOW_S;
    if (Number.isNaN(this.slots[i])) this.slots[i] = 0;
    this.last = null;
  }

  // The connection was lost at nowMs: the seconds after this one are unknown.
  pause(nowMs) {
    this.advance(nowMs);
    this.live = false;
  }

  // Moves the ring forward to nowMs: seconds that passed are zero while
  // live, unknown while not.
  advance(nowMs) {
    const second = Math.floor(nowMs / 1000);
    const fill = this.live ? 0 : NaN;
    if (this.headSecond === null) {
      this.headSecond = second;
      this.slots[second % WINDOW_S] = fill;
      return;
    }
    if (second <= this.headSecond) return;
    const from = Math.max(this.headSecond + 1, second - WINDOW_S + 1);
    for (let s = from; s <= second; s++) this.slots[s % WINDOW_S] = fill;
    this.headSecond = second;
  }

  // Per-second changes, oldest first, ending with the current second; NaN
  // for seconds not seen.
  series(nowMs) {
    this.advance(nowMs);
    const out = new Array(WINDOW_S);
    for (let i = 0; i < WINDOW_S; i++) {
      out[i] = this.slots[(this.headSecond - WINDOW_S + 1 + i) % WINDOW_S];
    }
    return out;
  }

  // How many of the last `seconds` seconds are known.
  knownSeconds(nowMs, seconds = 10) {
    return this.series(nowMs)
      .slice(WINDOW_S - seconds)
      .filter((v) => !Number.isNaN(v)).length;
  }

  // Changes per second over the known seconds among the last `seconds`
  // (the current one included so a click shows at once), or null when none
  // of them is known.
  recent(nowMs, seconds = 10) {
    const s = this.series(nowMs);
    let sum = 0;
    let known = 0;
    for (let i = WINDOW_S - seconds; i < WINDOW_S; i++) {
      if (Number.isNaN(s[i])) continue;
      sum += s[i];
      known++;
    }
    return known === 0 ? null : sum / known;
  }
}
