// Graceful shutdown: on SIGTERM/SIGINT stop accepting, let what is in flight finish up to
// a drain timeout, close the rest, flush spans, exit 0. A second signal exits at once.
import type { Listening } from "./listening.js";
import { log } from "./log.js";
import { shutdownTracing } from "./telemetry.js";

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

/** Runs `drain` once on the first SIGTERM or SIGINT, then exits 0. */
export function exitOnSignals(drain: () => Promise<unknown>): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal: exiting without waiting");
      process.exit(1);
    }
    stopping = true;
    const started = Date.now();
    log.info({ signal }, "draining");
    drain()
      .then((r) => log.info({ ...(r as object), ms: Date.now() - started }, "drained"))
      .catch((err: unknown) => log.error({ err }, "drain failed"))
      // Spans still queued go out before the process does.
      .then(() => shutdownTracing())
      .finally(() => process.exit(0));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}
