// The process's limit on open file descriptors (RLIMIT_NOFILE, soft), read from /proc: Node
// has no getrlimit, and the limit can change while sluice runs (prlimit), so it is re-read.
import { readFileSync } from "node:fs";

/** The soft limit on open descriptors, or null where /proc is not there or says "unlimited". */
export function openFileLimit(): number | null {
  try {
    const line = /^Max open files\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "latin1"));
    const n = Number(line?.[1]);
    return Number.isSafeInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}
