// One timer re-armed for every wait of a connection, instead of a new timer per wait. Node keeps
// a list per timeout duration and makes and drops the list (and its entry in the timer queue)
// whenever it empties: a connection that waits for one thing at a time with a timer set and
// cleared around each wait paid for that on every request (docs/BENCHMARKS.md). Disarming only
// lowers a flag: the timer fires later for nothing.
//
// Arming does not touch Node's timer either when one is pending that fires no later than the new
// deadline: it only notes the deadline, and a timer that fires before it waits out the rest. A
// connection re-armed for every request with the same timeout so sets one timer per timeout
// period, not one per request: Timeout#refresh() looks its duration's list up in an object keyed
// by milliseconds and reads libuv's clock through a binding, about 600 instructions a call, three
// calls a request (callgrind, 2026-12-04).
import { performance } from "node:perf_hooks";

export class RearmableTimer {
  private timer: NodeJS.Timeout | null = null;
  /** When the pending timer fires, by performance.now(). */
  private firesAt = 0;
  /** When the armed deadline is due, by performance.now(). */
  private due = 0;
  private armed = false;

  constructor(private readonly expired: () => void) {}

  /** Calls `expired` in `ms` unless disarmed or armed again before. */
  arm(ms: number): void {
    this.armed = true;
    const now = performance.now();
    this.due = now + ms;
    // A pending timer that fires later than this deadline would be late: it is replaced.
    if (this.timer !== null && this.firesAt <= this.due) return;
    this.schedule(ms, now);
  }

  disarm(): void {
    this.armed = false;
  }

  /** For good: the connection is gone. */
  dispose(): void {
    this.armed = false;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /** A timer `ms` from `now` (performance.now(), read by the caller). */
  private schedule(ms: number, now: number): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.firesAt = now + ms;
    // Unreferenced: what is waited on (a socket reading) keeps the process alive, not its timeout.
    this.timer = setTimeout(this.fire, ms).unref();
  }

  private readonly fire = () => {
    this.timer = null;
    if (!this.armed) return;
    // Armed again since this timer was set: the deadline moved on; wait for what is left of it.
    const now = performance.now();
    const left = this.due - now;
    if (left >= 1) {
      this.schedule(left, now);
      return;
    }
    this.armed = false;
    this.expired();
  };
}
