// Spans for proxied requests: one server span per request (HTTP semantic conventions)
// and one client span per upstream try, saying which engine moved the body and how
// many bytes each way. Nothing here runs when tracing is off.

import type { Socket } from "node:net";
import { type Context, type Span, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import type { Header, RequestHead } from "../http1/head.js";
import type { Route } from "../routing/route-table.js";
import type { BodyStats } from "../session/body-relay.js";
import type { ExchangeObserver } from "../session/exchange.js";
import type { Endpoint } from "../upstream/cluster.js";
import { activeTracer, extractContext, injectHeaders } from "./telemetry.js";

/** splice when any body byte went through a pipe, else copy. */
export function engineOf(a: BodyStats, b: BodyStats): "splice" | "copy" {
  return a.spliced + b.spliced > 0 ? "splice" : "copy";
}

/** For spans the sampler dropped: the context still propagates, nothing is recorded. */
const UNRECORDED: ExchangeObserver = {
  connected: () => undefined,
  staleConnection: () => undefined,
  responseHead: () => undefined,
  responseBodyStart: () => undefined,
  finished: () => undefined,
};

export class AttemptTrace {
  readonly headers: Header[];
  readonly observer: ExchangeObserver;

  /** `span` null: the request is not sampled; the server span's context is passed on as is. */
  constructor(
    private readonly span: Span | null,
    ctx: Context,
  ) {
    this.headers = injectHeaders(span ? trace.setSpan(ctx, span) : ctx);
    if (!span?.isRecording()) {
      this.observer = UNRECORDED;
      return;
    }
    this.observer = {
      connected: (reused) => span.addEvent("upstream connected", { "sluice.connection.reused": reused }),
      staleConnection: () => span.addEvent("upstream closed the reused connection; sending again"),
      responseHead: (status) => {
        span.setAttribute("http.response.status_code", status);
        span.addEvent("response head received");
      },
      responseBodyStart: () => span.addEvent("first body byte"),
      finished: (req, res, tunnel) => {
        span.addEvent("last body byte");
        span.setAttributes({
          "sluice.engine": engineOf(req, res),
          "sluice.request.bytes_spliced": req.spliced,
          "sluice.request.bytes_copied": req.copied,
          "sluice.response.bytes_spliced": res.spliced,
          "sluice.response.bytes_copied": res.copied,
          "sluice.tunnel": tunnel,
        });
        const pipe = res.pipeSize ?? req.pipeSize;
        if (pipe !== null) span.setAttribute("sluice.pipe_size", pipe);
      },
    };
  }

  /** The buffered engine moves every byte through userspace; it says so itself. */
  setEngine(engine: "buffered"): void {
    this.span?.setAttribute("sluice.engine", engine);
  }

  fail(message: string): void {
    this.span?.recordException({ name: "UpstreamError", message });
    this.span?.setStatus({ code: SpanStatusCode.ERROR, message });
  }

  end(): void {
    this.span?.end();
  }
}

export class RequestTrace {
  private readonly ctx: Context;

  private constructor(
    private readonly span: Span,
    parent: Context,
  ) {
    this.ctx = trace.setSpan(parent, span);
  }

  /** Starts the server span, continuing the client's W3C trace context; null when tracing is off. */
  static start(req: RequestHead, route: Route | null, client: Socket, engine: "splice" | "buffered"): RequestTrace | null {
    const tracer = activeTracer();
    if (!tracer) return null;
    const parent = extractContext(req.headers);
    const span = tracer.startSpan(route ? `${req.method} ${route.name}` : req.method, { kind: SpanKind.SERVER }, parent);
    // Attributes only for spans the sampler keeps: an unsampled request costs little more
    // than carrying its trace context on.
    if (span.isRecording()) {
      const [host, port] = (req.host ?? "").split(/:(?=\d+$)/);
      span.setAttributes({
        "http.request.method": req.method,
        "url.path": req.path.split("?")[0],
        "network.protocol.version": req.version,
        "client.address": client.remoteAddress ?? "",
        "client.port": client.remotePort ?? 0,
        "server.address": host || (client.localAddress ?? ""),
        "server.port": Number(port ?? client.localPort ?? 0),
        "sluice.listener.engine": engine,
        ...(route ? { "http.route": route.name } : {}),
      });
    }
    return new RequestTrace(span, parent);
  }

  attempt(endpoint: Endpoint, attempt: number, method: string): AttemptTrace {
    const tracer = activeTracer();
    if (!tracer) throw new Error("tracing is off");
    // Children of an unsampled request would not be sampled either: no span, same context.
    if (!this.span.isRecording()) return new AttemptTrace(null, this.ctx);
    const span = tracer.startSpan(method, { kind: SpanKind.CLIENT }, this.ctx);
    if (span.isRecording())
      span.setAttributes({
        "http.request.method": method,
        "server.address": endpoint.address.host,
        "server.port": endpoint.address.port,
        "sluice.retry_count": attempt,
      });
    return new AttemptTrace(span, this.ctx);
  }

  /** Copies the engine and byte counts of the try that answered onto the server span. */
  adopt(attributes: Record<string, string | number | boolean>): void {
    this.span.setAttributes(attributes);
  }

  finish(status: number | null, error: string | null): void {
    if (status !== null) this.span.setAttribute("http.response.status_code", status);
    if (error !== null || (status !== null && status >= 500)) {
      if (error) this.span.recordException({ name: "ProxyError", message: error });
      this.span.setStatus({ code: SpanStatusCode.ERROR, ...(error ? { message: error } : {}) });
    }
    this.span.end();
  }
}
