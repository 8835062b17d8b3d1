// Graceful shutdown: on SIGTERM/SIGINT stop accepting, let what is in flight finish up to
// a drain timeout, close the rest (the drain flushes its spans), exit 0. A second signal exits at once.

import { log } from "../base/log.js";
import type { Listening } from "../session/listening.js";

export const DEFAULT_DRAIN_MS = 25_000;

/** Drains every listener, then closes them all: at the latest after `timeoutMs`. */
export async function drainThenClose(targets: Listening[], timeoutMs: number): Promise<{ timedOut: boolean }> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(true), timeoutMs);
  });
  const drained = Promise.all(targets.map((t) => t.drain())).then(() => false);
  const timedOut = await Promise.race([drained, deadline]);
  clearTimeout(timer);
  await Promise.all(targets.map((t) => t.close()));
  return { timedOut };
}

let drainOnStop: (() => Promise<unknown>) | undefined;
let heldSignal: NodeJS.Signals | undefined;
let stopping = false;
let catching = false;

/**
 * Catches SIGTERM/SIGINT from now on. A signal that arrives while the proxy is still starting
 * (ports may already be open, so a supervisor can send one) is held until `exitOnSignals`
 * says how to drain, instead of killing the process with the default action.
 */
export function holdStopSignals(): void {
  if (catching) return;
  catching = true;
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}

/** Runs `drain` once on the first SIGTERM or SIGINT (or one held since start-up), then exits 0. */
export function exitOnSignals(drain: () => Promise<unknown>): void {
  drainOnStop = drain;
  holdStopSignals();
  if (heldSignal) stop(heldSignal);
}

function onSignal(signal: NodeJS.Signals): void {
  if (stopping || heldSignal) {
    log.warn({ signal }, "second signal: exiting without waiting");
    process.exit(1);
  }
  if (drainOnStop) stop(signal);
  else heldSignal = signal;
}

function stop(signal: NodeJS.Signals): void {
  const drain = drainOnStop;
  if (stopping || !drain) return;
  stopping = true;
  const started = Date.now();
  log.info({ signal }, "draining");
  drain()
    .then((r) => log.info({ ...(r as object), ms: Date.now() - started }, "drained"))
    .catch((err: unknown) => log.error({ err }, "drain failed"))
    .finally(() => process.exit(0));
}
