// The export worker's program: it takes what the main thread put in the span ring, encodes it as
// OTLP protobuf and hands it to the batch exporter, then sleeps until the main thread has
// written a 32nd of the ring or 100 ms have passed; after a turn that found nothing it sleeps
// until the main thread writes again (an idle proxy's worker does not wake). It wakes for
// work, not on a clock: a turn costs about the same whether it finds two requests or two
// hundred. Started, watched and restarted by span-export-thread.ts; it answers only "flush"
// messages.
import { parentPort, workerData } from "node:worker_threads";
import { type ExportTarget, OtlpBatchExporter } from "./otlp-export.js";
import { SpanEncoder } from "./span-encoding.js";
import { type FinishedRequest, SpanRingReader } from "./span-ring.js";

export interface ExportWorkerData {
  ring: SharedArrayBuffer;
  target: ExportTarget;
  /** The main thread's performance.timeOrigin: the records' times count from it. */
  origin: number;
  /** The ring writer's epoch at this worker's start: entries of earlier ones are dropped. */
  epoch: number;
}

/** Messages between the threads: the main thread asks for a flush; the worker says it is done, or why an export failed. */
export type ToExportWorker = { type: "flush"; id: number; timeoutMs: number };
export type FromExportWorker = { type: "flushed"; id: number } | { type: "failed"; reason: string };

/**
 * The longest a span waits in the ring when few are written (they then wait for a batch, by
 * default up to 500 ms, in the exporter). Under load the ring's fill wakes the worker sooner.
 */
const NAP_MS = 100;

const data = workerData as ExportWorkerData;
const port = parentPort;
if (!port) throw new Error("span-export-worker.js runs as a worker thread");
const post = (m: FromExportWorker) => port.postMessage(m);

const reader = new SpanRingReader(data.ring, data.epoch);
const exporter = new OtlpBatchExporter(data.target, {
  exported: (n) => reader.countExported(n),
  dropped: (n) => reader.countDropped(n),
  failed: (reason) => post({ type: "failed", reason }),
});

const encoder = new SpanEncoder();
const write = (r: FinishedRequest) => encoder.writeRequestSpans(exporter, r.place, r.rec, r.tries, r.tryIds, data.origin);
/** Takes what the exporter has room for (the rest stays in the ring); all of it for a flush. */
function drain(all = false): number {
  return reader.drain(write, all ? Number.POSITIVE_INFINITY : exporter.room());
}

// A turn, then a sleep (Atomics.waitAsync: no timer wakes an idle worker); the port's message
// listener keeps this thread alive meanwhile. Turns that find enough at once follow through
// setImmediate, so that the exports' own events run between them.
function turn(): void {
  let taken = drain();
  if (reader.stoppedShort) {
    // The exporter had no room for all: on when an export in flight settles.
    const settled = exporter.settled();
    if (settled) {
      void settled.then(turn);
      return;
    }
    // None in flight: a request with more spans than the batches hold (tiny OTEL_BSP_MAX_EXPORT_BATCH_SIZE),
    // taken anyway; the exporter sends what it can and drops and counts the rest.
    taken += drain(true);
  }
  const slept = reader.sleep(taken === 0, NAP_MS);
  if (slept) void slept.then(turn);
  else setImmediate(turn);
}
turn();
port.on("message", (m: ToExportWorker) => {
  if (m.type !== "flush") return;
  drain(true);
  void exporter.flush(m.timeoutMs).then(() => post({ type: "flushed", id: m.id }));
});
