// Rate of change of one counter over the last five minutes.
//
// The dashboard only sees totals (retained, coalesced by the plugin), so a
// rate is the difference between consecutive totals, booked in the second it
// arrived. One slot per second in a ring of WINDOW_S slots keeps memory fixed
// per counter whatever the traffic; reading walks the ring oldest first.

export const WINDOW_S = 300;

export class RateTracker {
  constructor() {
    this.slots = new Float64Array(WINDOW_S);
    this.headSecond = null; // absolute second held by the newest slot
    this.last = null; // last total seen, null until a baseline exists
  }

  // A total arrived at time nowMs. The first total after a (re)connect is a
  // baseline only: what changed while we were away is not a rate.
  observe(total, nowMs) {
    if (this.last !== null) {
      this.advance(nowMs);
      this.slots[this.headSecond % WINDOW_S] += total - this.last;
    }
    this.last = total;
  }

  // Forget the baseline so the next total does not count as a jump.
  rebase() {
    this.last = null;
  }

  // Moves the ring forward to nowMs, zeroing the seconds that passed.
  advance(nowMs) {
    const second = Math.floor(nowMs / 1000);
    if (this.headSecond === null || second - this.headSecond >= WINDOW_S) {
      this.slots.fill(0);
    } else {
      for (let s = this.headSecond + 1; s <= second; s++) this.slots[s % WINDOW_S] = 0;
    }
    if (this.headSecond === null || second > this.headSecond) this.headSecond = second;
  }

  // Per-second changes, oldest first, ending with the current second.
  series(nowMs) {
    this.advance(nowMs);
    const out = new Array(WINDOW_S);
    for (let i = 0; i < WINDOW_S; i++) {
      out[i] = this.slots[(this.headSecond - WINDOW_S + 1 + i) % WINDOW_S];
    }
    return out;
  }

  // Changes per second over the last `seconds` seconds, the current one
  // included so a click shows at once.
  recent(nowMs, seconds = 10) {
    const s = this.series(nowMs);
    let sum = 0;
    for (let i = WINDOW_S - seconds; i < WINDOW_S; i++) sum += s[i];
    return sum / seconds;
  }
}
