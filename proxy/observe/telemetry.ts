// OpenTelemetry tracing: the official SDK and OTLP/HTTP exporter (protobuf unless told
// otherwise), configured by the standard OTEL_* variables and, over them, the config
// file. Off unless an OTLP endpoint is given; off, no span is even created. Each running
// proxy has its own Tracing; W3C trace context is read and written without the global
// propagator, so user code's own OpenTelemetry setup is left alone. The SDK is loaded only
// when tracing is on: off, sluice neither pays its start-up time nor its memory.
import { type Context, defaultTextMapSetter, ROOT_CONTEXT, type Tracer } from "@opentelemetry/api";
import type { W3CTraceContextPropagator } from "@opentelemetry/core";
import type { BasicTracerProvider, ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace-base";
import { log, warnRateLimited } from "../base/log.js";
import { VERSION } from "../base/version.js";
import type { TelemetryFile } from "../config/types.js";
import type { RequestRecord, TryRecord } from "../request/record.js";
import { batchSettings } from "./otlp-export.js";
import { RequestTrace } from "./request-trace.js";

/**
 * Counts what reached the collector and what was lost. At most two exports are in
 * flight: while a collector is down or slow (the exporter retries with backoff), further
 * batches are dropped at once and counted, so memory stays bounded and nothing waits.
 */
function counting(inner: SpanExporter, counters: { exported: number; dropped: number }): SpanExporter {
  let inFlight = 0;
  return {
    export(spans: ReadableSpan[], done) {
      if (inFlight >= 2) {
        counters.dropped += spans.length;
        done({ code: 1 });
        return;
      }
      inFlight++;
      inner.export(spans, (result) => {
        inFlight--;
        if (result.code === 0) counters.exported += spans.length;
        else {
          counters.dropped += spans.length;
          warnRateLimited(
            "span-export",
            { err: result.error?.message, dropped: counters.dropped },
            "span export failed: the collector is unreachable or refusing; spans are dropped",
            60_000,
          );
        }
        done(result);
      });
    },
    shutdown: () => inner.shutdown(),
    forceFlush: () => inner.forceFlush?.() ?? Promise.resolve(),
  };
}

/** Waits at most `ms` for `work`; a collector that is down or slow never holds sluice up. */
async function bounded(work: Promise<void> | undefined, ms: number): Promise<void> {
  if (!work) return;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
    timer.unref();
  });
  await Promise.race([work.catch((err: Error) => log.warn({ err: err.message }, "span export failed")), timeout]);
  clearTimeout(timer);
}

/** The SDK's modules, loaded when a Tracing is first made. */
async function loadSdk() {
  const [core, httpJson, proto, resources, base] = await Promise.all([
    import("@opentelemetry/core"),
    import("@opentelemetry/exporter-trace-otlp-http"),
    import("@opentelemetry/exporter-trace-otlp-proto"),
    import("@opentelemetry/resources"),
    import("@opentelemetry/sdk-trace-base"),
  ]);
  return { core, httpJson, proto, resources, base };
}
type Sdk = Awaited<ReturnType<typeof loadSdk>>;

const headerGetter = {
  keys: (carrier: Record<string, string>) => Object.keys(carrier),
  get: (carrier: Record<string, string>, key: string) => carrier[key],
};

/** What a request's observation needs of its trace, whichever recorder makes it. */
export interface RequestTraceHandle {
  readonly traceId: string;
  /** The trace context's fields for the try's request: a new array, the caller's to extend. */
  tryStarted(rec: RequestRecord, t: TryRecord): Array<[string, string]>;
  tryEnded(rec: RequestRecord, t: TryRecord): void;
  finish(rec: RequestRecord): void;
}

/** A running proxy's tracing: the SDK's (Tracing) or the fast recorder (FastTracing). */
export interface TraceSink {
  startRequest(rec: RequestRecord): RequestTraceHandle;
  /** Spans exported and dropped; restarts of the export worker (0 where there is none). */
  stats(): { exported: number; dropped: number; restarts: number };
  flush(timeoutMs?: number): Promise<void>;
  shutdown(timeoutMs?: number): Promise<void>;
}

/** The SDK recorder: its provider, tracer and export counts. */
export class Tracing implements TraceSink {
  private readonly counters = { exported: 0, dropped: 0 };
  readonly tracer: Tracer;
  private provider: BasicTracerProvider | null;
  private readonly propagator: W3CTraceContextPropagator;

  /**
   * Tracing as the config file and the OTEL_* variables say; null when it is off. The fast
   * recorder (fast-tracing.ts) by default; the SDK's for http/json or when asked for.
   */
  static async fromConfig(file: TelemetryFile | undefined, env: NodeJS.ProcessEnv = process.env): Promise<TraceSink | null> {
    const t = file?.tracing ?? {};
    const endpoint = t.endpoint ?? env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? env.OTEL_EXPORTER_OTLP_ENDPOINT;
    const disabled = env.OTEL_SDK_DISABLED === "true" || env.OTEL_TRACES_EXPORTER === "none";
    const enabled = t.enabled ?? (!disabled && endpoint !== undefined);
    if (!enabled) return null;
    const protocol = t.protocol ?? env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? "http/protobuf";
    const recorder = protocol === "http/json" ? "sdk" : (t.recorder ?? (env.SLUICE_TRACING_RECORDER === "sdk" ? "sdk" : "fast"));
    if (recorder === "fast") return new (await import("./fast-tracing.js")).FastTracing(t, env);
    return new Tracing(await loadSdk(), t, endpoint, env);
  }

  startRequest(rec: RequestRecord): RequestTrace {
    return RequestTrace.start(this, rec);
  }

  private constructor(sdk: Sdk, t: NonNullable<TelemetryFile["tracing"]>, endpoint: string | undefined, env: NodeJS.ProcessEnv) {
    const { BasicTracerProvider, BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler } = sdk.base;
    const { defaultResource, detectResources, envDetector, resourceFromAttributes } = sdk.resources;
    const HttpJsonExporter = sdk.httpJson.OTLPTraceExporter;
    const ProtobufExporter = sdk.proto.OTLPTraceExporter;
    this.propagator = new sdk.core.W3CTraceContextPropagator();
    const protocol = t.protocol ?? env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? "http/protobuf";
    // A config-file endpoint is a base URL, like OTEL_EXPORTER_OTLP_ENDPOINT.
    const url = t.endpoint ? `${t.endpoint.replace(/\/$/, "")}/v1/traces` : undefined;
    const exporter =
      protocol === "http/json" ? new HttpJsonExporter(url ? { url } : {}) : new ProtobufExporter(url ? { url } : {});
    const detected = detectResources({ detectors: [envDetector] });
    // The SDK's defaults (telemetry.sdk.*), then ours, then OTEL_RESOURCE_ATTRIBUTES.
    const resource = defaultResource()
      .merge(
        resourceFromAttributes({
          "service.name": t.service_name ?? env.OTEL_SERVICE_NAME ?? "sluice",
          "service.version": VERSION,
        }),
      )
      .merge(detected);
    const ratio = t.sampler_ratio;
    const batch = batchSettings(env);
    this.provider = new BasicTracerProvider({
      resource: t.service_name ? resource.merge(resourceFromAttributes({ "service.name": t.service_name })) : resource,
      ...(ratio !== undefined ? { sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) }) } : {}),
      // Bounded queue: when the collector can't keep up, spans are dropped, not buffered.
      spanProcessors: [
        new BatchSpanProcessor(counting(exporter, this.counters), {
          maxQueueSize: 4096,
          maxExportBatchSize: Math.min(batch.spans, 4096),
          scheduledDelayMillis: batch.delayMs,
        }),
      ],
    });
    this.tracer = this.provider.getTracer("sluice");
    log.info({ protocol, endpoint: url ?? endpoint }, "tracing on");
  }

  stats() {
    return { ...this.counters, restarts: 0 };
  }

  async flush(timeoutMs = 5000): Promise<void> {
    await bounded(this.provider?.forceFlush(), timeoutMs);
  }

  /** Sends what is queued (bounded in time) and stops; later spans go nowhere. */
  async shutdown(timeoutMs = 2000): Promise<void> {
    const p = this.provider;
    this.provider = null;
    await bounded(p?.shutdown(), timeoutMs);
  }

  /** The trace context a request carries (W3C traceparent/tracestate). */
  extract(headers: ReadonlyArray<readonly [string, string]>): Context {
    const carrier: Record<string, string> = {};
    for (const [n, v] of headers) {
      const l = n.toLowerCase();
      if (l === "traceparent" || l === "tracestate") carrier[l] = v;
    }
    return this.propagator.extract(ROOT_CONTEXT, carrier, headerGetter);
  }

  /** traceparent/tracestate for `ctx`, to send upstream. */
  inject(ctx: Context): Array<[string, string]> {
    const carrier: Record<string, string> = {};
    this.propagator.inject(ctx, carrier, defaultTextMapSetter);
    return Object.entries(carrier);
  }
}
