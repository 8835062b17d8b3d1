// Tracing without SDK span objects on the request path (the default): a request keeps only its
// ids and its sampling decision; when a try or the request ends, its span is written as OTLP
// protobuf straight from the record into the current batch, and batches are posted to the
// collector off the request path. The spans are the same as the SDK path's (request-trace.ts):
// names, kinds, parents, times, attributes, events and status, which test/otlp.test.ts checks
// by decoding both with the official otlp-transformer. Memory is bounded: when the collector
// is slow or down, batches beyond two in flight and spans beyond the pending bound are dropped
// and counted, never queued without bound and never waited on.
import http from "node:http";
import https from "node:https";
import { log, warnRateLimited } from "../base/log.js";
import { VERSION } from "../base/version.js";
import type { TelemetryFile } from "../config/types.js";
import { OUTCOMES } from "../request/outcome.js";
import { bodyPathOf, type RequestRecord, type TryRecord } from "../request/record.js";
import {
  attrKey,
  EVENT,
  exportRequest,
  FLAG_HAS_IS_REMOTE,
  FLAG_IS_REMOTE,
  fewKey,
  KIND,
  ProtoWriter,
  resourceMessage,
  SPAN,
  STATUS,
  STATUS_ERROR,
  scopeMessage,
} from "./otlp-protobuf.js";
import {
  extractContext,
  formatTraceparent,
  newSpanId,
  newTraceId,
  type ParentContext,
  type Sampler,
  samplerFrom,
} from "./trace-context.js";

const wall = (t: number) => performance.timeOrigin + t;

// Attribute keys, encoded once.
const K_EXCEPTION_TYPE = attrKey("exception.type");
const K_EXCEPTION_MESSAGE = attrKey("exception.message");
const F_HTTP_REQUEST_METHOD = fewKey(SPAN.attributes, "http.request.method");
const F_SERVER_ADDRESS = fewKey(SPAN.attributes, "server.address");
const K_SERVER_PORT = attrKey("server.port");
const K_SLUICE_RETRY_COUNT = attrKey("sluice.retry_count");
const F_URL_SCHEME = fewKey(SPAN.attributes, "url.scheme");
const K_HTTP_RESPONSE_STATUS_CODE = attrKey("http.response.status_code");
const F_SLUICE_ENGINE = fewKey(SPAN.attributes, "sluice.engine");
const K_SLUICE_REQUEST_BYTES_SPLICED = attrKey("sluice.request.bytes_spliced");
const K_SLUICE_REQUEST_BYTES_COPIED = attrKey("sluice.request.bytes_copied");
const K_SLUICE_RESPONSE_BYTES_SPLICED = attrKey("sluice.response.bytes_spliced");
const K_SLUICE_RESPONSE_BYTES_COPIED = attrKey("sluice.response.bytes_copied");
const K_SLUICE_TUNNEL = attrKey("sluice.tunnel");
const F_SLUICE_BODY_COPY_REASON = fewKey(SPAN.attributes, "sluice.body.copy_reason");
const K_SLUICE_PIPE_SIZE = attrKey("sluice.pipe_size");
const F_SLUICE_OUTCOME = fewKey(SPAN.attributes, "sluice.outcome");
const F_SLUICE_OUTCOME_PHASE = fewKey(SPAN.attributes, "sluice.outcome.phase");
const K_URL_PATH = attrKey("url.path");
const K_USER_AGENT_ORIGINAL = attrKey("user_agent.original");
const F_NETWORK_PROTOCOL_VERSION = fewKey(SPAN.attributes, "network.protocol.version");
const F_CLIENT_ADDRESS = fewKey(SPAN.attributes, "client.address");
const K_CLIENT_PORT = attrKey("client.port");
const F_SLUICE_LISTENER_ENGINE = fewKey(SPAN.attributes, "sluice.listener.engine");
const F_TLS_PROTOCOL_NAME = fewKey(SPAN.attributes, "tls.protocol.name");
const F_TLS_PROTOCOL_VERSION = fewKey(SPAN.attributes, "tls.protocol.version");
const F_TLS_CIPHER = fewKey(SPAN.attributes, "tls.cipher");
const K_TLS_CLIENT_SERVER_NAME = attrKey("tls.client.server_name");
const K_TLS_CLIENT_SUBJECT = attrKey("tls.client.subject");
const F_SLUICE_ROUTE = fewKey(SPAN.attributes, "sluice.route");
const K_SLUICE_CONNECTION_REUSED = attrKey("sluice.connection.reused");

/** Spans per batch, and how long the first span of a batch waits for others. */
const BATCH_SPANS = 512;
const BATCH_DELAY_MS = 500;
/** Encoded spans waiting for a batch to be sent: beyond this they are dropped (about 4000 spans). */
const MAX_PENDING_BYTES = 4 << 20;
const MAX_IN_FLIGHT = 2;

type Attr = readonly [string, string | number | boolean];

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

/** The OTLP/HTTP traces URL: the traces endpoint as given, or the base endpoint + /v1/traces. */
export function tracesUrl(file: TelemetryFile["tracing"], env: NodeJS.ProcessEnv): string {
  if (file?.endpoint) return `${file.endpoint.replace(/\/$/, "")}/v1/traces`;
  if (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) return env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  return `${(env.OTEL_EXPORTER_OTLP_ENDPOINT ?? "http://localhost:4318").replace(/\/$/, "")}/v1/traces`;
}

export class FastTracing {
  private readonly counters = { exported: 0, dropped: 0 };
  private readonly sampler: Sampler;
  private readonly resource: Buffer;
  private readonly scope = scopeMessage("sluice");
  private pending = new ProtoWriter(256 * 1024);
  private pendingSpans = 0;
  private timer: NodeJS.Timeout | null = null;
  private inFlight = new Set<Promise<void>>();
  private closed = false;
  private readonly url: URL;
  private readonly headers: Record<string, string>;
  private readonly timeoutMs: number;
  /** Exports reuse their connections (at most the two in flight). */
  private readonly agent: http.Agent;

  constructor(file: TelemetryFile["tracing"], env: NodeJS.ProcessEnv = process.env) {
    this.url = new URL(tracesUrl(file, env));
    const Agent = this.url.protocol === "https:" ? https.Agent : http.Agent;
    this.agent = new Agent({ keepAlive: true, maxSockets: MAX_IN_FLIGHT });
    this.sampler = samplerFrom(file?.sampler_ratio, env);
    this.headers = { ...envHeaders(env), "content-type": "application/x-protobuf" };
    const timeout = Number(env.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT ?? env.OTEL_EXPORTER_OTLP_TIMEOUT);
    this.timeoutMs = Number.isFinite(timeout) && timeout > 0 ? timeout : 10_000;
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
    this.resource = resourceMessage([...attrs]);
    log.info({ protocol: "http/protobuf", endpoint: this.url.href, sampler: this.sampler.describe }, "tracing on");
  }

  stats() {
    return { ...this.counters };
  }

  startRequest(rec: RequestRecord): FastRequestTrace {
    const parent = extractContext(rec.headers);
    const traceId = parent?.traceId ?? newTraceId();
    return new FastRequestTrace(this, parent, traceId, this.sampler.sample(parent, traceId));
  }

  /** The writer a span is encoded into, or null when the pending bound is reached (the span is dropped). */
  writerForSpan(): ProtoWriter | null {
    if (this.closed || this.pending.pos >= MAX_PENDING_BYTES) {
      this.counters.dropped++;
      return null;
    }
    return this.pending;
  }

  /** A span was written: send the batch when it is full, or soon. */
  spanWritten(): void {
    this.pendingSpans++;
    if (this.pendingSpans >= BATCH_SPANS) this.send();
    else if (this.timer === null) {
      this.timer = setTimeout(() => this.send(), BATCH_DELAY_MS);
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
      this.counters.dropped += n;
      this.pending.reset();
      this.pendingSpans = 0;
      return;
    }
    const body = exportRequest(this.resource, this.scope, this.pending.view());
    this.pending.reset();
    this.pendingSpans = 0;
    if (this.inFlight.size >= MAX_IN_FLIGHT) {
      this.counters.dropped += n;
      this.warn(`more than ${MAX_IN_FLIGHT} exports in flight`);
      return;
    }
    const p = this.post(body).then(
      () => {
        this.counters.exported += n;
      },
      (err: Error) => {
        this.counters.dropped += n;
        this.warn(err.message);
      },
    );
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }

  private warn(reason: string): void {
    warnRateLimited(
      "span-export",
      { err: reason, dropped: this.counters.dropped },
      "span export failed: the collector is unreachable or refusing; spans are dropped",
      60_000,
    );
  }

  private post(body: Buffer): Promise<void> {
    const lib = this.url.protocol === "https:" ? https : http;
    return new Promise((resolve, reject) => {
      const req = lib.request(
        this.url,
        {
          method: "POST",
          headers: { ...this.headers, "content-length": body.length },
          timeout: this.timeoutMs,
          agent: this.agent,
        },
        (res) => {
          res.resume();
          res.once("end", () => {
            const s = res.statusCode ?? 0;
            if (s >= 200 && s < 300) resolve();
            else reject(new Error(`collector answered ${s}`));
          });
          res.once("error", reject);
        },
      );
      req.once("timeout", () => req.destroy(new Error("collector did not answer in time")));
      req.once("error", reject);
      req.end(body);
    });
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

  async shutdown(timeoutMs = 2000): Promise<void> {
    await this.flush(timeoutMs);
    this.closed = true;
    this.agent.destroy();
  }
}

/** Status and exception event of a failed span, as the SDK path records them. */
function writeError(w: ProtoWriter, type: string, message: string | undefined, at: number): void {
  if (message !== undefined) {
    const ev = w.begin(SPAN.events);
    w.time(EVENT.time, wall(at));
    w.string(EVENT.name, "exception");
    w.kvStr(EVENT.attributes, K_EXCEPTION_TYPE, type);
    w.kvStr(EVENT.attributes, K_EXCEPTION_MESSAGE, message);
    w.end(ev);
  }
  const st = w.begin(SPAN.status);
  if (message !== undefined) w.string(STATUS.message, message);
  w.uint(STATUS.code, STATUS_ERROR);
  w.end(st);
}

function writeEvent(w: ProtoWriter, name: string, at: number, reused?: boolean): void {
  const ev = w.begin(SPAN.events);
  w.time(EVENT.time, wall(at));
  w.string(EVENT.name, name);
  if (reused !== undefined) w.kvBool(EVENT.attributes, K_SLUICE_CONNECTION_REUSED, reused);
  w.end(ev);
}

const outcomeMessage = (o: NonNullable<TryRecord["outcome"]>) => (o.detail ? `${o.code}: ${o.detail}` : o.code);

/** One request's trace: ids, the decision, and the spans written when they end. */
export class FastRequestTrace {
  private readonly spanId = newSpanId();
  private readonly trySpans = new Map<TryRecord, string>();

  constructor(
    private readonly tracing: FastTracing,
    private readonly parent: ParentContext | null,
    readonly traceId: string,
    private readonly sampled: boolean,
  ) {}

  private headersFor(spanId: string): Array<[string, string]> {
    const out: Array<[string, string]> = [["traceparent", formatTraceparent(this.traceId, spanId, this.sampled)]];
    if (this.parent?.traceState) out.push(["tracestate", this.parent.traceState]);
    return out;
  }

  tryStarted(_rec: RequestRecord, t: TryRecord): Array<[string, string]> {
    // Children of an unsampled request are not sampled either: no span, the same context.
    if (!this.sampled) return this.headersFor(this.spanId);
    const id = newSpanId();
    this.trySpans.set(t, id);
    return this.headersFor(id);
  }

  private begin(w: ProtoWriter, spanId: string, parentId: string | null, remoteParent: boolean): number {
    const s = w.begin(2);
    w.hexBytes(SPAN.traceId, this.traceId);
    w.hexBytes(SPAN.spanId, spanId);
    if (this.parent?.traceState) w.string(SPAN.traceState, this.parent.traceState);
    if (parentId) w.hexBytes(SPAN.parentSpanId, parentId);
    w.fixed32(SPAN.flags, 1 | FLAG_HAS_IS_REMOTE | (remoteParent ? FLAG_IS_REMOTE : 0));
    return s;
  }

  tryEnded(rec: RequestRecord, t: TryRecord): void {
    const id = this.trySpans.get(t);
    if (id === undefined) return;
    this.trySpans.delete(t);
    const w = this.tracing.writerForSpan();
    if (!w) return;
    const s = this.begin(w, id, this.spanId, false);
    w.string(SPAN.name, rec.method);
    w.uint(SPAN.kind, KIND.client);
    w.time(SPAN.start, wall(t.start));
    w.time(SPAN.end, wall(t.end));
    w.kvFew(F_HTTP_REQUEST_METHOD, rec.method);
    w.kvFew(F_SERVER_ADDRESS, t.endpoint.address.host);
    w.kvUint(SPAN.attributes, K_SERVER_PORT, t.endpoint.address.port);
    w.kvUint(SPAN.attributes, K_SLUICE_RETRY_COUNT, t.index);
    w.kvFew(F_URL_SCHEME, t.upstreamTls ? "https" : "http");
    if (t.responseHeadAt !== null && t.status !== null) w.kvUint(SPAN.attributes, K_HTTP_RESPONSE_STATUS_CODE, t.status);
    const o = t.outcome;
    if (o?.code === "completed") {
      w.kvFew(F_SLUICE_ENGINE, bodyPathOf(rec.engine, t.request, t.response));
      w.kvUint(SPAN.attributes, K_SLUICE_REQUEST_BYTES_SPLICED, t.request.spliced);
      w.kvUint(SPAN.attributes, K_SLUICE_REQUEST_BYTES_COPIED, t.request.copied);
      w.kvUint(SPAN.attributes, K_SLUICE_RESPONSE_BYTES_SPLICED, t.response.spliced);
      w.kvUint(SPAN.attributes, K_SLUICE_RESPONSE_BYTES_COPIED, t.response.copied);
      w.kvBool(SPAN.attributes, K_SLUICE_TUNNEL, t.tunnel);
      if (rec.engine === "splice" && (rec.tls || t.upstreamTls) && t.request.copied + t.response.copied > 0)
        w.kvFew(F_SLUICE_BODY_COPY_REASON, rec.tls ? "tls_client" : "tls_upstream");
      const pipe = t.response.pipeSize ?? t.request.pipeSize;
      if (pipe !== null) w.kvUint(SPAN.attributes, K_SLUICE_PIPE_SIZE, pipe);
    } else if (o) {
      w.kvFew(F_SLUICE_OUTCOME, o.code);
      w.kvFew(F_SLUICE_OUTCOME_PHASE, o.phase);
    }
    t.connects.forEach((c, i) => {
      writeEvent(w, "upstream connected", c.at, c.reused);
      const stale = t.staleAt[i];
      if (stale !== undefined) writeEvent(w, "upstream closed the reused connection; sending again", stale);
    });
    if (t.responseHeadAt !== null) writeEvent(w, "response head received", t.responseHeadAt);
    if (t.firstBodyByteAt !== null) writeEvent(w, "first body byte", t.firstBodyByteAt);
    if (o?.code === "completed") writeEvent(w, "last body byte", t.end);
    else if (o) writeError(w, "UpstreamError", outcomeMessage(o), t.end);
    w.end(s);
    this.tracing.spanWritten();
  }

  finish(rec: RequestRecord): void {
    // Tries still open (a request that ended inside one) end with it.
    for (const t of [...this.trySpans.keys()]) this.tryEnded(rec, t);
    if (!this.sampled) return;
    const w = this.tracing.writerForSpan();
    if (!w) return;
    const s = this.begin(w, this.spanId, this.parent?.spanId ?? null, this.parent !== null);
    w.string(SPAN.name, rec.route !== null ? `${rec.method} ${rec.route}` : rec.method);
    w.uint(SPAN.kind, KIND.server);
    w.time(SPAN.start, wall(rec.start));
    w.time(SPAN.end, wall(rec.end));
    const [host, port] = (rec.host ?? "").split(/:(?=\d+$)/);
    const a = SPAN.attributes;
    w.kvFew(F_HTTP_REQUEST_METHOD, rec.method);
    w.kvFew(F_URL_SCHEME, rec.tls ? "https" : "http");
    w.kvStr(a, K_URL_PATH, rec.path.split("?")[0] as string);
    const ua = rec.userAgent;
    if (ua !== null) w.kvStr(a, K_USER_AGENT_ORIGINAL, ua);
    w.kvFew(F_NETWORK_PROTOCOL_VERSION, rec.version);
    w.kvFew(F_CLIENT_ADDRESS, rec.clientAddress);
    w.kvUint(a, K_CLIENT_PORT, rec.clientPort);
    w.kvFew(F_SERVER_ADDRESS, host || rec.localAddress);
    w.kvUint(a, K_SERVER_PORT, Number(port ?? rec.localPort));
    w.kvFew(F_SLUICE_LISTENER_ENGINE, rec.engine);
    const tls = rec.tls;
    if (tls) {
      w.kvFew(F_TLS_PROTOCOL_NAME, "tls");
      if (tls.protocol) w.kvFew(F_TLS_PROTOCOL_VERSION, tls.protocol.replace(/^TLSv/, ""));
      if (tls.cipher) w.kvFew(F_TLS_CIPHER, tls.cipher);
      if (tls.serverName) w.kvStr(a, K_TLS_CLIENT_SERVER_NAME, tls.serverName);
      if (tls.clientSubject) w.kvStr(a, K_TLS_CLIENT_SUBJECT, tls.clientSubject);
    }
    if (rec.route !== null) w.kvFew(F_SLUICE_ROUTE, rec.route);
    if (rec.status !== null) w.kvUint(a, K_HTTP_RESPONSE_STATUS_CODE, rec.status);
    const o = rec.outcome;
    if (o) {
      w.kvFew(F_SLUICE_OUTCOME, o.code);
      w.kvFew(F_SLUICE_OUTCOME_PHASE, o.phase);
    }
    const failed = o !== null && OUTCOMES[o.code].party !== null && o.code !== "local" && o.code !== "no_route";
    if (failed || (rec.status !== null && rec.status >= 500))
      writeError(w, "ProxyError", failed && o ? outcomeMessage(o) : undefined, rec.end);
    w.end(s);
    this.tracing.spanWritten();
  }
}
