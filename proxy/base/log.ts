// One structured logger for the whole process: JSON lines, level from SLUICE_LOG_LEVEL;
// human-readable when stdout is a terminal (SLUICE_LOG_FORMAT=json|pretty overrides).
import { pino } from "pino";
import pretty from "pino-pretty";

const format = process.env.SLUICE_LOG_FORMAT || (process.stdout.isTTY ? "pretty" : "json");

export const log = pino(
  { name: "sluice", level: process.env.SLUICE_LOG_LEVEL ?? "info" },
  // Synchronous: no worker thread, and nothing lost when the process exits right after.
  // One line per record in pretty mode too: an access-log line stays one line.
  format === "pretty" ? pretty({ sync: true, singleLine: true, colorize: process.stdout.isTTY === true }) : undefined,
);

const lastWarned = new Map<string, { at: number; suppressed: number }>();

/**
 * A warning that may repeat at any rate (resource exhaustion under load): logged at most once
 * per `everyMs` for its `key`, with how many were suppressed since the last one.
 */
export function warnRateLimited(key: string, fields: Record<string, unknown>, msg: string, everyMs = 10_000): void {
  const now = Date.now();
  const last = lastWarned.get(key);
  if (last && now - last.at < everyMs) {
    last.suppressed++;
    return;
  }
  log.warn({ ...fields, ...(last?.suppressed ? { suppressed: last.suppressed } : {}) }, msg);
  lastWarned.set(key, { at: now, suppressed: 0 });
}
