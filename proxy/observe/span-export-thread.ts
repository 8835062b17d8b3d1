// The main thread's side of span export on a worker thread: a finished span's fields go into the
// shared span ring (span-ring.ts) and nothing else happens on the request path; the worker
// (span-export-worker.ts) encodes and sends them. The worker is watched: when it dies, the spans
// it held are counted as dropped and another is started on the same ring (at once, then backing
// off if it keeps dying young).

import { existsSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { embeddedAsset } from "../base/embedded.js";
import { log } from "../base/log.js";
import type { ExportTarget } from "./otlp-export.js";
import type { SpanPlace, SpanRequest, SpanTry } from "./span-encoding.js";
import type { ExportWorkerData, FromExportWorker, ToExportWorker } from "./span-export-worker.js";
import { createSpanRing, DROPPED, EXPORTED, type RequestWords, SpanRingWriter, TAKEN } from "./span-ring.js";

/** A worker that dies sooner than this after its start died young: the next start waits longer. */
const YOUNG_MS = 5000;
const MAX_BACKOFF_MS = 30_000;
/** The worker's heap: its batches are bounded at a few MiB, so this is far more than it needs. */
const WORKER_HEAP_MB = 64;

/** The worker's program: the binary carries it bundled; otherwise the compiled file beside this one. */
function startWorker(data: ExportWorkerData): Worker {
  const options = { workerData: data, resourceLimits: { maxOldGenerationSizeMb: WORKER_HEAP_MB } };
  const embedded = embeddedAsset("span-export-worker.cjs");
  if (embedded) return new Worker(embedded.toString("utf8"), { ...options, eval: true });
  let file = fileURLToPath(new URL("./span-export-worker.js", import.meta.url));
  // Running from the TypeScript sources (the tests do): the compiled program, which `npm test` builds first.
  if (!existsSync(file)) file = fileURLToPath(new URL("../../dist/proxy/observe/span-export-worker.js", import.meta.url));
  return new Worker(file, options);
}

export class SpanExportThread {
  private readonly ring = createSpanRing();
  private readonly writer = new SpanRingWriter(this.ring);
  private worker: Worker | null = null;
  private startedAt = 0;
  private youngDeaths = 0;
  private restarts = 0;
  private closing = false;
  private nextFlushId = 1;
  private readonly flushes = new Map<number, () => void>();

  constructor(
    private readonly target: ExportTarget,
    private readonly failed: (reason: string) => void,
  ) {
    this.start();
  }

  /** A sampled request ended: its server span at `place` and a span for each try that has an id in `tryIds`; `words`: the ids as words. */
  requestEnded(
    place: SpanPlace<string>,
    rec: SpanRequest,
    tries: readonly SpanTry[],
    tryIds: readonly string[],
    words: RequestWords,
  ): void {
    this.writer.writeRequest(place, rec, tries, tryIds.length, words);
  }

  /** Spans exported and dropped (ring full, batch bound, failed exports, lost with a dead worker), and worker restarts. */
  stats(): { exported: number; dropped: number; restarts: number } {
    const w = this.writer;
    return { exported: w.count(EXPORTED), dropped: w.dropped + w.count(DROPPED), restarts: this.restarts };
  }

  /** The worker thread now running (null between a death and the next start); its supervision is this class's. */
  get thread(): Worker | null {
    return this.worker;
  }

  private start(): void {
    const worker = startWorker({
      ring: this.ring,
      target: this.target,
      origin: performance.timeOrigin,
      epoch: this.writer.epoch,
    });
    // The worker does not keep the process alive: shutdown() flushes it when there is time to.
    worker.unref();
    worker.on("message", (m: FromExportWorker) => {
      if (m.type === "flushed") this.flushes.get(m.id)?.();
      else this.failed(m.reason);
    });
    worker.on("error", (err) => log.warn({ err: err.message }, "the span export worker failed"));
    worker.once("exit", (code) => this.exited(worker, code));
    this.worker = worker;
    this.startedAt = performance.now();
  }

  private exited(worker: Worker, code: number): void {
    if (this.worker !== worker) return;
    this.worker = null;
    // What the worker had taken from the ring and neither exported nor dropped died with it.
    const c = this.writer.counters;
    const lost = Atomics.load(c, TAKEN) - Atomics.load(c, EXPORTED) - Atomics.load(c, DROPPED);
    if (lost > 0n) Atomics.add(c, DROPPED, lost);
    // What is still in the ring is dropped (and counted) by the next worker: entries refer to the
    // ones before them, which the dead worker read.
    this.writer.newEpoch();
    for (const done of this.flushes.values()) done();
    if (this.closing) return;
    this.restarts++;
    this.youngDeaths = performance.now() - this.startedAt < YOUNG_MS ? this.youngDeaths + 1 : 0;
    const delay = this.youngDeaths === 0 ? 0 : Math.min(MAX_BACKOFF_MS, 100 * 2 ** this.youngDeaths);
    log.warn(
      { code, lost: Number(lost), restarts: this.restarts, delayMs: delay },
      "the span export worker stopped; starting another (spans it held are counted as dropped)",
    );
    setTimeout(() => {
      if (!this.closing) this.start();
    }, delay).unref();
  }

  /** Sends what the ring and the worker hold and waits for the exports, at most about `timeoutMs`. */
  async flush(timeoutMs = 5000): Promise<void> {
    const worker = this.worker;
    if (!worker) return;
    const id = this.nextFlushId++;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.flushes.set(id, resolve);
      worker.postMessage({ type: "flush", id, timeoutMs } satisfies ToExportWorker);
      timer = setTimeout(resolve, timeoutMs + 500);
      timer.unref();
    });
    clearTimeout(timer);
    this.flushes.delete(id);
  }

  /** Flushes (bounded in time) and stops the worker. */
  async shutdown(timeoutMs = 2000): Promise<void> {
    await this.flush(timeoutMs);
    this.closing = true;
    await this.worker?.terminate();
  }
}
