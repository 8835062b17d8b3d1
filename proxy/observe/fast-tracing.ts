// Tracing without SDK span objects on the request path (the default): a request keeps only its
// ids and its sampling decision; when a try or the request ends, its fields are handed to the
// export worker through shared memory (span-export-thread.ts), which encodes them as OTLP
// protobuf (span-encoding.ts) and posts them in batches (otlp-export.ts); or, with
// export_thread: main, they are encoded and posted on the main thread. The spans are the same
// as the SDK path's (request-trace.ts): names, kinds, parents, times, attributes, events and
// status, which test/otlp.test.ts checks by decoding both with the official otlp-transformer.
// Memory is bounded: when the collector is slow or down, or the worker is behind, spans are
// dropped and counted, never queued without bound and never waited on.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import type { Worker } from "node:worker_threads";
import { log, warnRateLimited } from "../base/log.js";
import { VERSION } from "../base/version.js";
import type { TelemetryFile } from "../config/types.js";
import type { RequestRecord, TryRecord } from "../request/record.js";
import { batchSettings, type ExportTarget, OtlpBatchExporter } from "./otlp-export.js";
import { resourceMessage, scopeMessage } from "./otlp-protobuf.js";
import { idBytes, placeBytes, SpanEncoder, type SpanPlace, type SpanRequest, type SpanTry } from "./span-encoding.js";
import { SpanExportThread } from "./span-export-thread.js";
import type { RequestWords } from "./span-ring.js";
import {
  extractContext,
  formatTraceparent,
  idXor,
  newSpanId,
  nextRoot,
  type ParentContext,
  rootSpanId,
  rootTraceId,
  rootTraceparent,
  rootWords,
  rootXor,
  type Sampler,
  samplerFrom,
} from "./trace-context.js";

type Attr = readonly [string, string | number | boolean];

/** An unsampled trace's words: none are written anywhere. */
const NO_WORDS: RequestWords = [];

/** OTEL_RESOURCE_ATTRIBUTES: `k=v,k2=v2`, values percent-decoded (the SDK's env detector). */
function envResource(env: NodeJS.ProcessEnv): Attr[] {
  const out: Attr[] = [];
  for (const part of (env.OTEL_RESOURCE_ATTRIBUTES ?? "").split(",")) {
    const eq = part.indexOf("=");
    if (eq <= 0) continue;
    try {
      out.push([part.slice(0, eq).trim(), decodeURIComponent(part.slice(eq + 1).trim())]);
    } catch {
      // A malformed value is left out, as the SDK leaves it out.
    }
  }
  return out;
}

/** OTEL_EXPORTER_OTLP_(TRACES_)HEADERS: `k=v,k2=v2`, percent-decoded. */
function envHeaders(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const src of [env.OTEL_EXPORTER_OTLP_HEADERS, env.OTEL_EXPORTER_OTLP_TRACES_HEADERS])
    for (const part of (src ?? "").split(",")) {
      const eq = part.indexOf("=");
      if (eq <= 0) continue;
      try {
        out[part.slice(0, eq).trim()] = decodeURIComponent(part.slice(eq + 1).trim());
      } catch {
        // left out
      }
    }
  return out;
}

/**
 * OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE, _CLIENT_CERTIFICATE and _CLIENT_KEY: PEM files, read
 * at the start (a file that cannot be read stops it, named).
 */
export function exportTls(env: NodeJS.ProcessEnv): ExportTarget["tls"] {
  const pem = (name: string) => {
    const variable = [`OTEL_EXPORTER_OTLP_TRACES_${name}`, `OTEL_EXPORTER_OTLP_${name}`].find((v) => env[v]);
    if (variable === undefined) return undefined;
    const path = env[variable] as string;
    try {
      return readFileSync(path, "utf8");
    } catch (err) {
      throw new Error(`${variable}: cannot read ${path}: ${(err as Error).message}`);
    }
  };
  const out = { ca: pem("CERTIFICATE"), cert: pem("CLIENT_CERTIFICATE"), key: pem("CLIENT_KEY") };
  return out.ca || out.cert || out.key ? out : undefined;
}

/** OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION: gzip or none; anything else is none, said at the start (as the SDK does). */
export function exportCompression(env: NodeJS.ProcessEnv): "gzip" | "none" {
  const v = (env.OTEL_EXPORTER_OTLP_TRACES_COMPRESSION || env.OTEL_EXPORTER_OTLP_COMPRESSION || "none").trim().toLowerCase();
  if (v === "gzip" || v === "none") return v;
  log.warn({ compression: v }, "OTEL_EXPORTER_OTLP_COMPRESSION is neither gzip nor none: spans are sent uncompressed");
  return "none";
}

/** The OTLP/HTTP traces URL: the traces endpoint as given, or the base endpoint + /v1/traces. */
export function tracesUrl(file: TelemetryFile["tracing"], env: NodeJS.ProcessEnv): string {
  if (file?.endpoint) return `${file.endpoint.replace(/\/$/, "")}/v1/traces`;
  if (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) return env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  return `${(env.OTEL_EXPORTER_OTLP_ENDPOINT ?? "http://localhost:4318").replace(/\/$/, "")}/v1/traces`;
}

/** Where finished spans go: the export worker (the default), or encoding and export on the main thread. */
interface SpanOut {
  /**
   * A sampled request ended: its server span at `place`, and a span for tries[i] with id
   * tryIds[i] for each id. `words`: the same ids as RequestWords says.
   */
  requestEnded(
    place: SpanPlace<string>,
    rec: SpanRequest,
    tries: readonly SpanTry[],
    tryIds: readonly string[],
    words: RequestWords,
  ): void;
  stats(): { exported: number; dropped: number; restarts: number };
  flush(timeoutMs?: number): Promise<void>;
  shutdown(timeoutMs?: number): Promise<void>;
}

/** Spans encoded on the main thread as requests end, and exported from it. */
class MainThreadExport implements SpanOut {
  private readonly counters = { exported: 0, dropped: 0, restarts: 0 };
  private readonly exporter: OtlpBatchExporter;
  private readonly encoder = new SpanEncoder();

  constructor(target: ExportTarget, failed: (reason: string) => void) {
    this.exporter = new OtlpBatchExporter(target, {
      exported: (n) => {
        this.counters.exported += n;
      },
      dropped: (n) => {
        this.counters.dropped += n;
      },
      failed,
    });
  }

  requestEnded(place: SpanPlace<string>, rec: SpanRequest, tries: readonly SpanTry[], tryIds: readonly string[]): void {
    // The hex ids: this path decodes them once, as it encodes (the words are for the span ring).
    this.encoder.writeRequestSpans(this.exporter, placeBytes(place), rec, tries, tryIds.map(idBytes), performance.timeOrigin);
  }

  stats() {
    return { ...this.counters };
  }

  flush(timeoutMs?: number): Promise<void> {
    return this.exporter.flush(timeoutMs);
  }

  shutdown(timeoutMs?: number): Promise<void> {
    return this.exporter.shutdown(timeoutMs);
  }
}

/** Which thread encodes and exports: the config file's `export_thread`, else SLUICE_TRACING_EXPORT_THREAD, else the worker. */
function exportThreadOf(file: TelemetryFile["tracing"], env: NodeJS.ProcessEnv): "worker" | "main" {
  return file?.export_thread ?? (env.SLUICE_TRACING_EXPORT_THREAD === "main" ? "main" : "worker");
}

export class FastTracing {
  private readonly sampler: Sampler;
  private readonly out: SpanOut;
  readonly exportThread: "worker" | "main";

  constructor(file: TelemetryFile["tracing"], env: NodeJS.ProcessEnv = process.env) {
    // Parsed here, so that a bad endpoint stops the start instead of the export worker.
    const url = new URL(tracesUrl(file, env)).href;
    this.sampler = samplerFrom(file?.sampler_ratio, env);
    const timeout = Number(env.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT ?? env.OTEL_EXPORTER_OTLP_TIMEOUT);
    // The SDK path's resource, attribute for attribute: telemetry.sdk.* say what recorded the spans.
    const attrs = new Map<string, string | number | boolean>([
      ["service.name", env.OTEL_SERVICE_NAME ?? "sluice"],
      ["telemetry.sdk.language", "nodejs"],
      ["telemetry.sdk.name", "sluice"],
      ["telemetry.sdk.version", VERSION],
      ["service.version", VERSION],
    ]);
    for (const [k, v] of envResource(env)) attrs.set(k, v);
    if (env.OTEL_SERVICE_NAME) attrs.set("service.name", env.OTEL_SERVICE_NAME);
    if (file?.service_name) attrs.set("service.name", file.service_name);
    const target: ExportTarget = {
      url,
      headers: { ...envHeaders(env), "content-type": "application/x-protobuf" },
      timeoutMs: Number.isFinite(timeout) && timeout > 0 ? timeout : 10_000,
      resource: resourceMessage([...attrs]),
      scope: scopeMessage("sluice"),
      batch: batchSettings(env),
      compression: exportCompression(env),
      tls: exportTls(env),
    };
    const failed = (reason: string) => this.warn(reason);
    this.exportThread = exportThreadOf(file, env);
    this.out = this.exportThread === "worker" ? new SpanExportThread(target, failed) : new MainThreadExport(target, failed);
    log.info(
      { protocol: "http/protobuf", endpoint: url, sampler: this.sampler.describe, exportThread: this.exportThread },
      "tracing on",
    );
  }

  /** The export worker now running; null with export_thread: main, or between a death and the next start. */
  get exportWorker(): Worker | null {
    return this.out instanceof SpanExportThread ? this.out.thread : null;
  }

  /** Spans exported and dropped, and how many times the export worker was restarted. */
  stats() {
    return this.out.stats();
  }

  startRequest(rec: RequestRecord): FastRequestTrace {
    const parent = extractContext(rec.fields);
    if (parent === null) {
      // A new trace: its ids and its unsampled traceparent come made (see nextRoot).
      const r = nextRoot();
      if (!this.sampler.sample(null, rootXor(r))) return FastRequestTrace.unsampled(this.out, null, rootTraceparent(r));
      return FastRequestTrace.sampled(this.out, null, rootTraceId(r), rootSpanId(r), rootWords(r));
    }
    if (!this.sampler.sample(parent, idXor(parent.words)))
      return FastRequestTrace.unsampled(this.out, parent, formatTraceparent(parent.traceId, newSpanId(), false));
    const w = parent.words;
    const words: RequestWords = [w[0] as number, w[1] as number, w[2] as number, w[3] as number];
    const spanId = newSpanId(words);
    return FastRequestTrace.sampled(this.out, parent, parent.traceId, spanId, words);
  }

  private warn(reason: string): void {
    warnRateLimited(
      "span-export",
      { err: reason, dropped: this.stats().dropped },
      "span export failed: the collector is unreachable or refusing; spans are dropped",
      60_000,
    );
  }

  /** Sends what is pending and waits for the exports in flight, at most about `timeoutMs`. */
  flush(timeoutMs = 5000): Promise<void> {
    return this.out.flush(timeoutMs);
  }

  shutdown(timeoutMs = 2000): Promise<void> {
    return this.out.shutdown(timeoutMs);
  }
}

/** One request's trace: ids, the decision, and its spans handed over when the request ends. */
export class FastRequestTrace {
  /**
   * A sampled request's trace. `words`: its trace id's and its server span's id's (RequestWords),
   * to which the parent's and the tries' ids are added.
   */
  static sampled(
    out: SpanOut,
    parent: ParentContext | null,
    traceId: string,
    spanId: string,
    words: RequestWords,
  ): FastRequestTrace {
    // The words go to the span ring only.
    const place = {
      traceId,
      spanId,
      parentId: parent?.spanId ?? null,
      remoteParent: parent !== null,
      traceState: parent?.traceState ?? null,
    };
    if (parent) words.push(parent.words[4] as number, parent.words[5] as number);
    else words.push(0, 0);
    return new FastRequestTrace(out, parent, { place, tryIds: [] }, words, null);
  }

  /** An unsampled request's trace: it keeps only the traceparent it passes on. */
  static unsampled(out: SpanOut, parent: ParentContext | null, traceparent: string): FastRequestTrace {
    return new FastRequestTrace(out, parent, null, NO_WORDS, traceparent);
  }

  /**
   * `spans`: what a sampled request records: the server span's place in the trace, and the
   * span id of each try (rec.tries[i]'s is tryIds[i]); null when unsampled. `unsampledParent`:
   * when unsampled, the traceparent every try sends on (its children are not sampled either:
   * one context).
   */
  private constructor(
    private readonly out: SpanOut,
    private readonly parent: ParentContext | null,
    private readonly spans: { place: SpanPlace<string>; tryIds: string[] } | null,
    private readonly words: RequestWords,
    private readonly unsampledParent: string | null,
  ) {}

  get traceId(): string {
    // An unsampled one's is in its traceparent: cut out only when asked for (the access log).
    return this.spans !== null ? this.spans.place.traceId : (this.unsampledParent as string).slice(3, 35);
  }

  /** The trace context's fields for a try: its traceparent, and the client's tracestate passed on. */
  private fieldsFor(traceparent: string): Array<[string, string]> {
    const out: Array<[string, string]> = [["traceparent", traceparent]];
    if (this.parent?.traceState) out.push(["tracestate", this.parent.traceState]);
    return out;
  }

  tryStarted(_rec: RequestRecord, t: TryRecord): Array<[string, string]> {
    if (this.spans === null) return this.fieldsFor(this.unsampledParent as string);
    // Tries start one after another: try i's words are 8 + 2i and 9 + 2i.
    const id = newSpanId(this.words);
    this.spans.tryIds[t.index] = id;
    return this.fieldsFor(formatTraceparent(this.traceId, id, true));
  }

  /** The try's span is written with the request's, when it ends (one hand-over per request). */
  tryEnded(_rec: RequestRecord, _t: TryRecord): void {}

  finish(rec: RequestRecord): void {
    if (this.spans !== null) this.out.requestEnded(this.spans.place, rec, rec.tries, this.spans.tryIds, this.words);
  }
}
