// Encoded spans gathered into OTLP/HTTP export requests and posted to the collector: batches of
// 512 spans or whatever half a second brought (OTEL_BSP_* change both). Bounded: at most 4 MiB
// of spans wait for a batch and two exports are in flight; beyond either, spans are dropped
// and counted, never queued without bound and never waited on. Runs on the export worker (span-export-worker.ts) or, when
// asked, on the main thread (fast-tracing.ts).
import { promisify } from "node:util";
import zlib from "node:zlib";
import { CONTENT_LENGTH, EXPECT, HOST, isHopByHop, kindOfName } from "../http1/field-kind.js";
import { FIELD_VALUE, TOKEN } from "../http1/grammar.js";
import { CollectorConnection } from "./collector-connection.js";
import { exportPrefix, ProtoWriter } from "./otlp-protobuf.js";

/**
 * Spans per batch, and how long the first span of a batch waits for others: the SDK's
 * OTEL_BSP_MAX_EXPORT_BATCH_SIZE and OTEL_BSP_SCHEDULE_DELAY, 512 and 500 ms by default.
 */
export function batchSettings(env: NodeJS.ProcessEnv): { spans: number; delayMs: number } {
  const positive = (v: string | undefined, fallback: number) => {
    const n = Number(v);
    return v !== undefined && Number.isInteger(n) && n > 0 ? n : fallback;
  };
  return { spans: positive(env.OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512), delayMs: positive(env.OTEL_BSP_SCHEDULE_DELAY, 500) };
}

const gzip = promisify(zlib.gzip);
/**
 * The fastest level: a 262 KB batch of 1 KiB requests' spans became 26.4 KB at level 1 for
 * 0.67 ms of CPU, 24.3 KB at zlib's default (6) for 1.92 ms (about 7.5 µs a request).
 */
const GZIP: zlib.ZlibOptions = { level: zlib.constants.Z_BEST_SPEED };

/** Encoded spans waiting for a batch to be sent: beyond this they are dropped (about 4000 spans). */
const MAX_PENDING_BYTES = 4 << 20;
const MAX_IN_FLIGHT = 2;
/** A batch's first buffer: a full default batch (512 spans of about 500 bytes) fits. */
const PENDING_START = 256 * 1024;

/** Where the spans go, as the OTEL_EXPORTER_OTLP_* variables and the config file said. */
export interface ExportTarget {
  url: string;
  headers: Record<string, string>;
  timeoutMs: number;
  /** The encoded Resource and InstrumentationScope messages every batch carries. */
  resource: Uint8Array;
  scope: Uint8Array;
  batch: { spans: number; delayMs: number };
  /** OTEL_EXPORTER_OTLP_COMPRESSION: gzip, or none (the default). */
  compression: "gzip" | "none";
  /** For an https: URL: the PEM text of the CAs to trust (instead of Node's), and a client certificate and key. */
  tls?: { ca?: string; cert?: string; key?: string };
}

/** How the exporter reports: spans exported, spans dropped, and why an export failed. */
export interface ExportReport {
  exported(n: number): void;
  dropped(n: number): void;
  failed(reason: string): void;
}

export class OtlpBatchExporter {
  private pending = new ProtoWriter(PENDING_START);
  private pendingSpans = 0;
  /**
   * Writers whose batch was sent (or dropped), kept for the next batches: a new 256 KiB buffer
   * for every batch cost the export worker its page faults again each time (docs/BENCHMARKS.md).
   */
  private readonly spare: ProtoWriter[] = [];
  private timer: NodeJS.Timeout | null = null;
  private readonly inFlight = new Set<Promise<void>>();
  private closed = false;
  private readonly url: URL;
  private readonly resource: Buffer;
  private readonly scope: Buffer;
  /** Exports reuse their connections: at most one per export in flight. */
  private readonly connections: CollectorConnection[] = [];
  /** Every export's head up to its Content-Length value. */
  private readonly headStart: string;

  constructor(
    private readonly target: ExportTarget,
    private readonly report: ExportReport,
  ) {
    this.url = new URL(target.url);
    this.resource = Buffer.from(target.resource);
    this.scope = Buffer.from(target.scope);
    this.headStart = exportHeadStart(this.url, target.headers, target.compression);
  }

  /** The writer a span is encoded into, or null when the pending bound is reached (the span is dropped and counted). */
  writerForSpan(): ProtoWriter | null {
    if (this.closed || this.pending.pos >= MAX_PENDING_BYTES) {
      this.report.dropped(1);
      return null;
    }
    return this.pending;
  }

  /**
   * Spans that may be written now without a batch finding both exports' places taken (and being
   * dropped) while the collector is answering: a place for every batch, the one that waits for
   * more spans included (its timer sends it as it is). The export worker takes no more than this
   * from the ring, which holds the rest (and drops, counted, only when it is full).
   */
  room(): number {
    if (this.closed) return Number.POSITIVE_INFINITY;
    return Math.max(0, (MAX_IN_FLIGHT - this.inFlight.size) * this.target.batch.spans - this.pendingSpans);
  }

  /** A promise that settles when an export in flight does; null when none is. */
  settled(): Promise<unknown> | null {
    return this.inFlight.size === 0 ? null : Promise.race(this.inFlight);
  }

  /** A span was written: send the batch when it is full, or soon. */
  spanWritten(): void {
    this.pendingSpans++;
    if (this.pendingSpans >= this.target.batch.spans) this.send();
    else if (this.timer === null) {
      this.timer = setTimeout(() => this.send(), this.target.batch.delayMs);
      this.timer.unref();
    }
  }

  /** Posts what is pending as one export request. */
  private send(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const n = this.pendingSpans;
    if (n === 0) return;
    if (this.closed) {
      // Spans of requests that ended during the shutdown: nowhere to send them now.
      this.pending.reset();
      this.pendingSpans = 0;
      this.report.dropped(n);
      return;
    }
    // The batch's spans go as they are, after the message's start (no copy): the next batch is
    // written into another buffer, and this one is written again only once its export is over.
    const batch = this.pending;
    const spans = batch.view();
    this.pending = this.spare.pop() ?? new ProtoWriter(PENDING_START);
    this.pendingSpans = 0;
    if (this.inFlight.size >= MAX_IN_FLIGHT) {
      this.report.dropped(n);
      this.report.failed(`more than ${MAX_IN_FLIGHT} exports in flight`);
      this.keepSpare(batch);
      return;
    }
    const prefix = exportPrefix(this.resource, this.scope, spans.length);
    let posted: Promise<void>;
    if (this.target.compression === "gzip") {
      // Compressed on libuv's threads from a copy: the batch's buffer is free at once.
      const whole = Buffer.concat([prefix, spans]);
      this.keepSpare(batch);
      posted = gzip(whole, GZIP).then((z) => this.post([z], () => {}));
    } else {
      // The buffer is written again only once it is sent: a collector may answer before it has
      // read all of the body, which is then still being sent from it.
      posted = this.post([prefix, spans], () => this.keepSpare(batch));
    }
    const p = posted.then(
      () => this.report.exported(n),
      (err: Error) => {
        this.report.dropped(n);
        this.report.failed(err.message);
      },
    );
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  /** A writer whose bytes nothing refers to any more, for a later batch (as many as can be in use at once). */
  private keepSpare(w: ProtoWriter): void {
    w.reset();
    if (this.spare.length < MAX_IN_FLIGHT) this.spare.push(w);
  }

  /** Posts one export request; `closed` is called once its body is no longer read (sent, or dropped with its connection). */
  private post(body: readonly Buffer[], closed: () => void): Promise<void> {
    let length = 0;
    for (const b of body) length += b.length;
    let conn = this.connections.find((c) => c.free);
    if (conn === undefined) {
      // Closed ones go; a new one takes their place.
      for (let i = this.connections.length - 1; i >= 0; i--) if (!this.connections[i]?.usable) this.connections.splice(i, 1);
      conn = new CollectorConnection(this.url, this.target.tls);
      this.connections.push(conn);
    }
    return conn.post(`${this.headStart}${length}\r\n\r\n`, body, this.target.timeoutMs, closed);
  }

  /** Sends what is pending and waits for the exports in flight, at most `timeoutMs`. */
  async flush(timeoutMs = 5000): Promise<void> {
    this.send();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
      timer.unref();
    });
    await Promise.race([Promise.allSettled([...this.inFlight]).then(() => undefined), timeout]);
    clearTimeout(timer);
  }

  /** Flushes (bounded in time) and stops: later spans are dropped. */
  async shutdown(timeoutMs = 2000): Promise<void> {
    await this.flush(timeoutMs);
    this.closed = true;
    for (const c of this.connections.splice(0)) c.close();
  }
}

/**
 * Whether a configured field is one the exporter writes itself or one that describes the
 * connection (the proxy's own list of hop-by-hop kinds): Host, the framing, Expect and the
 * Content-Encoding the exporter chose are not the user's to set.
 */
function ownField(name: string): boolean {
  const kind = kindOfName(name);
  return (
    isHopByHop(kind) || kind === HOST || kind === CONTENT_LENGTH || kind === EXPECT || name.toLowerCase() === "content-encoding"
  );
}

/**
 * An export's head through `content-length: `: the request line, Host, Content-Encoding when
 * compressed, and the configured fields.
 * A field whose name or value could not be sent as it is (a CR or LF in it) is left out, as are
 * those that would change the message's framing.
 */
export function exportHeadStart(url: URL, headers: Record<string, string>, compression: "gzip" | "none"): string {
  let head = `POST ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
  if (compression === "gzip") head += "content-encoding: gzip\r\n";
  for (const [name, value] of Object.entries(headers)) {
    if (!TOKEN.test(name) || !FIELD_VALUE.test(value) || ownField(name)) continue;
    head += `${name}: ${value}\r\n`;
  }
  return `${head}content-length: `;
}
