// The export worker's program: it sleeps until the main thread puts something in the span ring,
// lets 10 ms of requests gather, takes them, encodes them as OTLP protobuf and hands them to the
// batch exporter, and sleeps again once the ring is empty (an idle proxy's worker never wakes).
// Started, watched and restarted by span-export-thread.ts; it answers only "flush" messages.
import { setTimeout as sleep } from "node:timers/promises";
import { parentPort, workerData } from "node:worker_threads";
import { type ExportTarget, OtlpBatchExporter } from "./otlp-export.js";
import { SpanEncoder } from "./span-encoding.js";
import { SpanRingReader } from "./span-ring.js";

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

/** How long entries gather before the ring is emptied: at 20,000 requests/s about 100 KB. */
const DRAIN_MS = 10;

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
function drain(): void {
  reader.drain((r) => encoder.writeRequestSpans(exporter, r.place, r.rec, r.tries, r.tryIds, data.origin));
}

async function run(): Promise<void> {
  for (;;) {
    drain();
    // The port's message listener keeps this thread alive while it sleeps here.
    const written = reader.whenWritten();
    if (written) await written;
    await sleep(DRAIN_MS);
  }
}
void run();
port.on("message", (m: ToExportWorker) => {
  if (m.type !== "flush") return;
  drain();
  void exporter.flush(m.timeoutMs).then(() => post({ type: "flushed", id: m.id }));
});
