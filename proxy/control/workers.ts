// Worker processes (node:cluster): the primary forks N workers that share the listeners,
// restarts one that dies, forwards SIGTERM for a drain, tells them to reload, and sums
// their metrics for its admin port. Each worker runs an ordinary Runtime without admin.
import cluster, { type Worker } from "node:cluster";
import { availableParallelism } from "node:os";
import { AggregatorRegistry, type Registry } from "prom-client";
import { log } from "../base/log.js";
import type { ConfigFile } from "../config/types.js";
import type { ReloadStatus } from "./runtime.js";

type ToWorker = { sluice: "reload" };
type FromWorker = { sluice: "ready" } | { sluice: "reloaded"; status: ReloadStatus };

export function workerCount(v: "auto" | number | undefined): number {
  if (v === "auto") return availableParallelism();
  return v ?? 1;
}

export const isWorker = cluster.isWorker;

/** In a worker: report readiness and answer the primary's reload requests. */
export function serveAsWorker(reload: () => Promise<ReloadStatus>, registry: Registry): void {
  // The primary gathers metrics from this registry over IPC; constructing an
  // AggregatorRegistry is what makes prom-client answer its requests here.
  AggregatorRegistry.setRegistries([registry]);
  new AggregatorRegistry();
  process.on("message", (m: ToWorker) => {
    if (m?.sluice !== "reload") return;
    void reload().then((status) => process.send?.({ sluice: "reloaded", status } satisfies FromWorker));
  });
  process.send?.({ sluice: "ready" } satisfies FromWorker);
}

export interface Supervisor {
  ready(): boolean;
  /** Asks every worker to reload; throws with their errors when one refuses. */
  reload(cfg: ConfigFile): Promise<void>;
  metrics(): Promise<{ contentType: string; text: string }>;
  /** SIGTERM to every worker; resolves when all have exited (SIGKILL after `timeoutMs`). */
  stop(timeoutMs: number): Promise<void>;
}

/** Forks `n` workers running this same command line, and keeps `n` of them running. */
export function superviseWorkers(n: number): Supervisor {
  const ready = new Set<number>();
  const aggregator = new AggregatorRegistry();
  let stopping = false;
  let crashes: number[] = [];

  const fork = (): Worker => {
    const w = cluster.fork();
    w.on("message", (m: FromWorker) => {
      if (m?.sluice === "ready") {
        ready.add(w.id);
        log.info({ worker: w.id, pid: w.process.pid }, "worker ready");
      }
    });
    return w;
  };

  cluster.on("exit", (w, code, signal) => {
    ready.delete(w.id);
    if (stopping) return;
    // A worker that keeps crashing is restarted more and more slowly (at most every 10 s).
    const now = Date.now();
    crashes = [...crashes.filter((t) => now - t < 60_000), now];
    const delay = Math.min(10_000, 100 * 2 ** (crashes.length - 1));
    log.error({ worker: w.id, pid: w.process.pid, code, signal, restartInMs: delay }, "worker exited, restarting it");
    setTimeout(() => {
      if (!stopping) fork();
    }, delay).unref();
  });

  for (let i = 0; i < n; i++) fork();

  const live = () => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);

  return {
    ready: () => !stopping && ready.size === n,
    reload: async () => {
      const answers = await Promise.all(
        live().map(
          (w) =>
            new Promise<ReloadStatus>((resolve) => {
              // A worker still starting reads the newest file anyway; one that never answers is an error.
              const timer = setTimeout(() => {
                w.off("message", onMessage);
                resolve({ at: new Date(), ok: false, errors: [`worker ${w.id} did not answer the reload`] });
              }, 15_000);
              const onMessage = (m: FromWorker) => {
                if (m?.sluice !== "reloaded") return;
                clearTimeout(timer);
                w.off("message", onMessage);
                resolve(m.status);
              };
              w.on("message", onMessage);
              w.send({ sluice: "reload" } satisfies ToWorker);
            }),
        ),
      );
      const errors = answers.flatMap((a) => a.errors);
      if (answers.some((a) => !a.ok)) throw new Error(errors.join("; "));
    },
    metrics: async () => ({ contentType: aggregator.contentType, text: await aggregator.clusterMetrics() }),
    stop: async (timeoutMs) => {
      stopping = true;
      const workers = live();
      const exited = workers.map(
        (w) => new Promise<void>((resolve) => (w.isDead() ? resolve() : w.once("exit", () => resolve()))),
      );
      for (const w of workers) w.process.kill("SIGTERM");
      const timer = setTimeout(() => {
        for (const w of live()) w.process.kill("SIGKILL");
      }, timeoutMs);
      await Promise.all(exited);
      clearTimeout(timer);
    },
  };
}
