// Spans for proxied requests, built from the request's record: one server span per request
// (HTTP semantic conventions) and one client span per upstream try, saying which engine moved
// the body and how many bytes each way. A try's span starts with the try, so its context can
// go upstream; its events carry the times the record kept. Nothing here runs when tracing is off.
import { performance } from "node:perf_hooks";
import { type Context, type Span, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { OUTCOMES } from "../request/outcome.js";
import { bodyPathOf, type ClientTls, type RequestRecord, type TryRecord } from "../request/record.js";
import type { Tracing } from "./telemetry.js";

/** A performance.now() time as span time (epoch milliseconds). */
const wall = (t: number) => performance.timeOrigin + t;

/** OpenTelemetry's tls.* attributes for the client connection. */
function tlsAttributes(t: ClientTls): Record<string, string> {
  const a: Record<string, string> = { "tls.protocol.name": "tls" };
  if (t.protocol) a["tls.protocol.version"] = t.protocol.replace(/^TLSv/, "");
  if (t.cipher) a["tls.cipher"] = t.cipher;
  if (t.serverName) a["tls.client.server_name"] = t.serverName;
  if (t.clientSubject) a["tls.client.subject"] = t.clientSubject;
  return a;
}

/** The span message for an outcome: what the old error messages said, from the record. */
function outcomeMessage(o: NonNullable<TryRecord["outcome"]>): string {
  return o.detail ? `${o.code}: ${o.detail}` : o.code;
}

export class RequestTrace {
  private readonly ctx: Context;
  private readonly trySpans = new Map<TryRecord, Span>();

  private constructor(
    private readonly tracing: Tracing,
    private readonly span: Span,
    parent: Context,
  ) {
    this.ctx = trace.setSpan(parent, span);
  }

  /** Starts the server span at the request's start, continuing the client's W3C trace context. */
  static start(tracing: Tracing, rec: RequestRecord): RequestTrace {
    const parent = tracing.extract(rec.headers);
    const span = tracing.tracer.startSpan(rec.method, { kind: SpanKind.SERVER, startTime: wall(rec.start) }, parent);
    // Attributes only for spans the sampler keeps: an unsampled request costs little more
    // than carrying its trace context on.
    if (span.isRecording()) {
      const [host, port] = (rec.host ?? "").split(/:(?=\d+$)/);
      const userAgent = rec.userAgent;
      span.setAttributes({
        "http.request.method": rec.method,
        "url.scheme": rec.scheme,
        "url.path": rec.path.split("?")[0],
        ...(userAgent !== null ? { "user_agent.original": userAgent } : {}),
        "network.protocol.version": rec.version,
        "client.address": rec.clientAddress,
        "client.port": rec.clientPort,
        "server.address": host || rec.localAddress,
        "server.port": Number(port ?? rec.localPort),
        "sluice.listener.engine": rec.engine,
      });
      if (rec.tls) span.setAttributes(tlsAttributes(rec.tls));
    }
    return new RequestTrace(tracing, span, parent);
  }

  /** The request's trace id (sampled or not: the context is carried either way). */
  get traceId(): string {
    return this.span.spanContext().traceId;
  }

  /** A try begins: its span, and the trace context to send upstream with it. */
  tryStarted(rec: RequestRecord, t: TryRecord): Array<[string, string]> {
    // Children of an unsampled request would not be sampled either: no span, same context.
    if (!this.span.isRecording()) return this.tracing.inject(this.ctx);
    const span = this.tracing.tracer.startSpan(rec.method, { kind: SpanKind.CLIENT, startTime: wall(t.start) }, this.ctx);
    span.setAttributes({
      "http.request.method": rec.method,
      "server.address": t.endpoint.address.host,
      "server.port": t.endpoint.address.port,
      "sluice.retry_count": t.index,
      "url.scheme": t.upstreamTls ? "https" : "http",
    });
    this.trySpans.set(t, span);
    return this.tracing.inject(trace.setSpan(this.ctx, span));
  }

  /** A try ended: its milestones as events at the times they happened, its bytes, its outcome. */
  tryEnded(rec: RequestRecord, t: TryRecord): void {
    const span = this.trySpans.get(t);
    if (!span) return;
    this.trySpans.delete(t);
    t.connects.forEach((c, i) => {
      span.addEvent("upstream connected", { "sluice.connection.reused": c.reused }, wall(c.at));
      const stale = t.staleAt[i];
      if (stale !== undefined) span.addEvent("upstream closed the reused connection; sending again", undefined, wall(stale));
    });
    if (t.responseHeadAt !== null) {
      if (t.status !== null) span.setAttribute("http.response.status_code", t.status);
      span.addEvent("response head received", undefined, wall(t.responseHeadAt));
    }
    if (t.firstBodyByteAt !== null) span.addEvent("first body byte", undefined, wall(t.firstBodyByteAt));
    const o = t.outcome;
    if (o?.code === "completed") {
      span.addEvent("last body byte", undefined, wall(t.end));
      span.setAttributes({
        "sluice.engine": bodyPathOf(rec.engine, t.request, t.response),
        "sluice.request.bytes_spliced": t.request.spliced,
        "sluice.request.bytes_copied": t.request.copied,
        "sluice.response.bytes_spliced": t.response.spliced,
        "sluice.response.bytes_copied": t.response.copied,
        "sluice.tunnel": t.tunnel,
      });
      // Why a body on the splice engine was copied, when the reason is TLS (docs/tls.md).
      if (rec.engine === "splice" && (rec.tls || t.upstreamTls) && t.request.copied + t.response.copied > 0)
        span.setAttribute("sluice.body.copy_reason", rec.tls ? "tls_client" : "tls_upstream");
      const pipe = t.response.pipeSize ?? t.request.pipeSize;
      if (pipe !== null) span.setAttribute("sluice.pipe_size", pipe);
    } else if (o) {
      span.setAttributes({ "sluice.outcome": o.code, "sluice.outcome.phase": o.phase });
      const message = outcomeMessage(o);
      span.recordException({ name: "UpstreamError", message }, wall(t.end));
      span.setStatus({ code: SpanStatusCode.ERROR, message });
    }
    span.end(wall(t.end));
  }

  /** The request ended: its route, status and outcome; the span ends at the record's end. */
  finish(rec: RequestRecord): void {
    const span = this.span;
    if (span.isRecording()) {
      // The route's name, not a path template: sluice.route (http.route is for templates). The
      // span is named after it, as after a template: few distinct names, each meaningful.
      if (rec.route !== null) {
        span.updateName(`${rec.method} ${rec.route}`);
        span.setAttribute("sluice.route", rec.route);
      }
      if (rec.status !== null) span.setAttribute("http.response.status_code", rec.status);
      const o = rec.outcome;
      if (o) span.setAttributes({ "sluice.outcome": o.code, "sluice.outcome.phase": o.phase });
      const failed = o !== null && OUTCOMES[o.code].party !== null && o.code !== "local" && o.code !== "no_route";
      if (failed || (rec.status !== null && rec.status >= 500)) {
        const message = failed && o ? outcomeMessage(o) : undefined;
        if (message) span.recordException({ name: "ProxyError", message }, wall(rec.end));
        span.setStatus({ code: SpanStatusCode.ERROR, ...(message ? { message } : {}) });
      }
    }
    // Tries still open (a request that ended inside one) end with it.
    for (const t of this.trySpans.keys()) this.tryEnded(rec, t);
    span.end(wall(rec.end));
  }
}
