// The export worker's program: every 10 ms it takes what the main thread put in the span ring,
// encodes it as OTLP protobuf and hands it to the batch exporter; after 100 ms with nothing in
// the ring it sleeps until the main thread writes again (an idle proxy's worker does not wake).
// Started, watched and restarted by span-export-thread.ts; it answers only "flush" messages.
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

/** How often the ring is emptied: at 20,000 requests/s about 100 KB pile up between two turns. */
const DRAIN_MS = 10;
/** Empty turns in a row after which the worker sleeps until the ring is written (100 ms). */
const IDLE_TURNS = 10;

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
function drain(): number {
  return reader.drain((r) => encoder.writeRequestSpans(exporter, r.place, r.rec, r.tries, r.tryIds, data.origin));
}

// One timer, re-armed each turn. Under load the ring is never empty for long and the worker
// turns as a plain interval would; it waits (Atomics.waitAsync) only when idle, and the port's
// message listener keeps this thread alive meanwhile.
let idleTurns = 0;
const timer = setTimeout(turn, DRAIN_MS);
function turn(): void {
  idleTurns = drain() === 0 ? idleTurns + 1 : 0;
  if (idleTurns < IDLE_TURNS) {
    timer.refresh();
    return;
  }
  idleTurns = 0;
  const written = reader.whenWritten();
  if (written) void written.then(() => timer.refresh());
  else timer.refresh();
}
port.on("message", (m: ToExportWorker) => {
  if (m.type !== "flush") return;
  drain();
  void exporter.flush(m.timeoutMs).then(() => post({ type: "flushed", id: m.id }));
});
