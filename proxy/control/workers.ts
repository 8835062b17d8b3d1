// Worker processes (node:cluster): the primary forks N workers that share the listeners,
// restarts one that dies, forwards SIGTERM for a drain, and sums their metrics for its admin
// port. Workers never read the config file: the primary sends each one the config it loaded
// (when the worker starts and on every reload), so what /config shows is what runs.
import cluster, { type Worker } from "node:cluster";
import { AggregatorRegistry, type Registry } from "prom-client";
import { usableCpus } from "../base/cpu-limit.js";
import { log } from "../base/log.js";
import type { ConfigFile } from "../config/types.js";
import type { ReloadStatus } from "./runtime.js";

type ToWorker = { sluice: "apply"; config: ConfigFile; hash: string };
type FromWorker = { sluice: "hello" } | { sluice: "applied"; hash: string; status: ReloadStatus };

/** `auto`: one per CPU the process may use (its container's CPU limit included). */
export function workerCount(v: "auto" | number | undefined): number {
  if (v === "auto") return usableCpus();
  return v ?? 1;
}

export const isWorker = cluster.isWorker;

/**
 * In a worker: runs each config the primary sends (`apply` throws or reports a refusal) and
 * says how it went. (Workers ignore SIGHUP from their first moment: base/worker-hangup.ts.)
 */
export function serveAsWorker(apply: (cfg: ConfigFile) => Promise<ReloadStatus>, registry: Registry): void {
  // The primary gathers metrics from this registry over IPC; constructing an
  // AggregatorRegistry is what makes prom-client answer its requests here.
  AggregatorRegistry.setRegistries([registry]);
  new AggregatorRegistry();
  // One config at a time, in the order sent.
  let queue: Promise<unknown> = Promise.resolve();
  process.on("message", (m: ToWorker) => {
    if (m?.sluice !== "apply") return;
    queue = queue.then(async () => {
      const status = await apply(m.config).catch(
        (err: Error): ReloadStatus => ({ at: new Date(), ok: false, errors: [err.message] }),
      );
      process.send?.({ sluice: "applied", hash: m.hash, status } satisfies FromWorker);
    });
  });
  process.send?.({ sluice: "hello" } satisfies FromWorker);
}

export interface Supervisor {
  /** True while every worker runs the current config. */
  ready(): boolean;
  /** Sends `cfg` to every worker; throws with their errors when one refuses it. */
  apply(cfg: ConfigFile, hash: string): Promise<void>;
  metrics(): Promise<{ contentType: string; text: string }>;
  /** SIGTERM to every worker; resolves when all have exited (SIGKILL after `timeoutMs`). */
  stop(timeoutMs: number): Promise<void>;
}

/** Forks `n` workers running this same command line, and keeps `n` of them running `current()`. */
export function superviseWorkers(n: number, current: () => { config: ConfigFile; hash: string }): Supervisor {
  /** The hash each worker runs. */
  const running = new Map<number, string>();
  const aggregator = new AggregatorRegistry();
  let stopping = false;
  let crashes: number[] = [];

  const send = (w: Worker, config: ConfigFile, hash: string) =>
    new Promise<ReloadStatus>((resolve) => {
      const timer = setTimeout(() => {
        w.off("message", onMessage);
        resolve({ at: new Date(), ok: false, errors: [`worker ${w.id} did not answer`] });
      }, 15_000);
      const onMessage = (m: FromWorker) => {
        if (m?.sluice !== "applied" || m.hash !== hash) return;
        clearTimeout(timer);
        w.off("message", onMessage);
        if (m.status.ok) running.set(w.id, hash);
        resolve(m.status);
      };
      w.on("message", onMessage);
      w.send({ sluice: "apply", config, hash } satisfies ToWorker);
    });

  const fork = (): Worker => {
    const w = cluster.fork();
    w.on("message", (m: FromWorker) => {
      if (m?.sluice !== "hello") return;
      const { config, hash } = current();
      void send(w, config, hash).then((status) => {
        if (status.ok) log.info({ worker: w.id, pid: w.process.pid }, "worker ready");
        else log.error({ worker: w.id, errors: status.errors }, "worker refused the configuration");
      });
    });
    return w;
  };

  cluster.on("exit", (w, code, signal) => {
    running.delete(w.id);
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
    ready: () => {
      if (stopping || running.size !== n) return false;
      const { hash } = current();
      return [...running.values()].every((h) => h === hash);
    },
    apply: async (config, hash) => {
      const answers = await Promise.all(live().map((w) => send(w, config, hash)));
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
