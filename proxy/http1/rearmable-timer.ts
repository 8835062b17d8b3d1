// One timer re-armed for every wait of a connection, instead of a new timer per wait. Node keeps
// a list per timeout duration and makes and drops the list (and its entry in the timer queue)
// whenever it empties: a connection that waits for one thing at a time with a timer set and
// cleared around each wait paid for that on every request (docs/BENCHMARKS.md). Disarming only
// lowers a flag: the timer fires later for nothing, or is pushed back by the next arm().
export class RearmableTimer {
  private timer: NodeJS.Timeout | null = null;
  private ms = 0;
  private armed = false;

  constructor(private readonly expired: () => void) {}

  /** Calls `expired` in `ms` unless disarmed or armed again before. */
  arm(ms: number): void {
    this.armed = true;
    if (this.timer !== null && this.ms === ms) {
      this.timer.refresh();
      return;
    }
    if (this.timer !== null) clearTimeout(this.timer);
    this.ms = ms;
    // Unreferenced: what is waited on (a socket reading) keeps the process alive, not its timeout.
    this.timer = setTimeout(this.fire, ms).unref();
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

  // Every arm() pushes the timer back to `ms` from then, so when it fires armed, the last arm was `ms` ago.
  private readonly fire = () => {
    if (!this.armed) return;
    this.armed = false;
    this.expired();
  };
}
