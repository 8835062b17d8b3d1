// Idle timeouts of running pumps: one interval per check period, shared by every pump that
// uses it, instead of a setInterval and a clearInterval per transfer. An interval that finds
// nobody to check stops itself, so an idle process is not woken for it.
import { performance } from "node:perf_hooks";

/** What a pump shows the watch: its progress, and how to stop it. */
export interface Watchable {
  progress(): number;
  cancel(code: string): void;
}

/** A watched pump: its progress when last checked, and when that changed (performance.now()). */
export interface Watched {
  run: Watchable;
  timeoutMs: number;
  last: number;
  lastChange: number;
  /** Its place in its group's list, or -1 once unwatched. */
  slot: number;
  group: Watched[];
}

/**
 * How often a pump's progress is checked against its idle timeout: the cut comes at most this
 * long after the timeout (a quarter of it for short ones, never more than a second: a 60 s
 * body_idle used to be cut at up to 75 s).
 */
export function idleCheckEveryMs(idleTimeoutMs: number): number {
  return Math.max(10, Math.min(1000, Math.floor(idleTimeoutMs / 4)));
}

/** The pumps checked at each period, in a list (a Set's add and delete cost more, per transfer). */
const groups = new Map<number, Watched[]>();

function check(every: number, members: Watched[], timer: NodeJS.Timeout): void {
  if (members.length === 0) {
    clearInterval(timer);
    groups.delete(every);
    return;
  }
  const now = performance.now();
  // A pump cancelled here leaves the list later (its transfer unwatches it when it settles).
  for (let i = 0; i < members.length; i++) {
    const w = members[i] as Watched;
    const p = w.run.progress();
    if (p !== w.last) {
      w.last = p;
      w.lastChange = now;
    } else if (now - w.lastChange >= w.timeoutMs) w.run.cancel("ETIMEDOUT");
  }
}

/**
 * Cancels `run` with ETIMEDOUT once it has made no progress for `timeoutMs` (cut at most one
 * check period later). Give the result to unwatchIdle when the pump is done.
 */
export function watchIdle(run: Watchable, timeoutMs: number): Watched {
  const every = idleCheckEveryMs(timeoutMs);
  let members = groups.get(every);
  if (members === undefined) {
    const list: Watched[] = [];
    const timer: NodeJS.Timeout = setInterval(() => check(every, list, timer), every);
    timer.unref();
    groups.set(every, list);
    members = list;
  }
  // performance.now(), not Date.now(): a call into the runtime, twice the instructions.
  // A pump starts at no progress: one stalled from the start is cut one timeout after this.
  const w: Watched = { run, timeoutMs, last: 0, lastChange: performance.now(), slot: members.length, group: members };
  members.push(w);
  return w;
}

/** Stops watching `w` (once; later calls do nothing). */
export function unwatchIdle(w: Watched): void {
  const list = w.group;
  if (w.slot === -1) return;
  const moved = list.pop() as Watched;
  if (moved !== w) {
    list[w.slot] = moved;
    moved.slot = w.slot;
  }
  w.slot = -1;
}

/** Check periods with an interval running now (tests: none is left behind for long). */
export function idleWatchPeriods(): number[] {
  return [...groups.keys()];
}
