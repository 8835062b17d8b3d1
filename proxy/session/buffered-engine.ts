// The buffered engine: the same listener and routes served the ordinary Node way, with
// http-proxy-3 over node:http. It is the baseline sluice is measured against.
import http from "node:http";
import type { Socket } from "node:net";
import { createProxyServer } from "http-proxy-3";
import type { HostPort } from "../base/address.js";
import { log } from "../base/log.js";
import { framingNamedInConnection, type Header, type RequestHead } from "../http1/head.js";
import { normalizePath } from "../http1/normalize-path.js";
import { requestDone } from "../observe/access-log.js";
import { recordBytes } from "../observe/metrics.js";
import { type AttemptTrace, RequestTrace } from "../observe/request-trace.js";
import { activeTracer } from "../observe/telemetry.js";
import { type Route, rewritePath } from "../routing/route-table.js";
import type { Endpoint } from "../upstream/cluster.js";
import type { RunningProxy, StateSource } from "./http-listener.js";
import { httpServerHooks, startListening } from "./listening.js";

function plainError(res: http.ServerResponse, status: number, text: string): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", connection: "close" });
  res.end(`${status} ${text}\n`);
}

export interface BufferedEngine {
  /** A node:http server that is not listening: connections are handed to it. */
  server: http.Server;
  close(): void;
  /** Closes idle connections until none is left (in-flight exchanges finish). */
  drain(): Promise<void>;
}

/** The buffered engine without a socket of its own. */
export function createBufferedEngine(source: StateSource): BufferedEngine {
  const initial = source().opts;
  const agent = new http.Agent({
    keepAlive: true,
    maxSockets: initial.pool.maxConnections,
    maxFreeSockets: initial.pool.maxIdle,
    timeout: initial.pool.idleTimeoutMs,
  });
  const proxy = createProxyServer({ agent, ws: true });
  proxy.on("error", (err: Error, _req: unknown, res: unknown) => {
    log.debug({ err: err.message }, "buffered engine: upstream error");
    if (res && typeof (res as http.ServerResponse).writeHead === "function") {
      const r = res as http.ServerResponse;
      if (!r.headersSent) plainError(r, 502, `Bad Gateway: ${err.message}`);
      else r.destroy();
    } else (res as Socket | undefined)?.destroy();
  });

  const routeNames = new WeakMap<http.IncomingMessage, string>();
  const attempts = new WeakMap<http.IncomingMessage, AttemptTrace>();

  /** The same span shape as the splice engine: a server span and one client span. */
  const traceBuffered = (req: http.IncomingMessage, res: http.ServerResponse, route: Route, endpoint: Endpoint) => {
    if (!activeTracer()) return;
    const headers: Header[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2)
      headers.push([req.rawHeaders[i] as string, req.rawHeaders[i + 1] as string]);
    const view = {
      method: req.method ?? "GET",
      path: req.url ?? "/",
      version: req.httpVersion === "1.0" ? "1.0" : "1.1",
      host: req.headers.host ?? null,
      headers,
    } as RequestHead;
    const rt = RequestTrace.start(view, route, req.socket, "buffered");
    if (!rt) return;
    const at = rt.attempt(endpoint, 0, view.method);
    for (const [n, v] of at.headers) req.headers[n] = v;
    attempts.set(req, at);
    res.once("close", () => {
      const status = res.headersSent ? res.statusCode : null;
      if (!res.writableFinished) at.fail("response not completed");
      at.end();
      rt.finish(status, res.writableFinished ? null : "response not completed");
    });
  };
  // Response bytes are counted as they pass; request bodies are piped untouched.
  // Listeners cost the baseline time on every request: only what is on is attached.
  const tracing = activeTracer() !== null;
  if (tracing) {
    // http-proxy-3 emits proxyReq once the upstream request has its socket.
    proxy.on("proxyReq", (proxyReq: http.ClientRequest, req: http.IncomingMessage) => {
      attempts.get(req)?.observer.connected(proxyReq.reusedSocket);
    });
  }
  proxy.on("proxyRes", (proxyRes: http.IncomingMessage, req: http.IncomingMessage, res: http.ServerResponse) => {
    const smuggling = framingNamedInConnection(proxyRes.headers.connection, "response");
    if (smuggling) {
      // Answered before http-proxy-3 copies the head: it passes nothing on once headers are sent.
      plainError(res, smuggling.status, `Bad Gateway: ${smuggling.message}`);
      proxyRes.destroy();
      return;
    }
    const at = attempts.get(req);
    at?.observer.responseHead(proxyRes.statusCode ?? 0);
    const length = Number(proxyRes.headers["content-length"] ?? Number.NaN);
    if (!at && Number.isSafeInteger(length)) {
      // The length is known: no need to watch every chunk go by.
      proxyRes.once("end", () => recordBytes("buffered", "response", 0, length));
      return;
    }
    let bytes = 0;
    proxyRes.on("data", (chunk: Buffer) => {
      if (bytes === 0) at?.observer.responseBodyStart();
      bytes += chunk.length;
    });
    proxyRes.once("close", () => recordBytes("buffered", "response", 0, bytes));
    proxyRes.once("end", () => {
      if (!at) return;
      at.observer.finished(
        { bytes: 0, spliced: 0, copied: 0, pipeSize: null },
        { bytes, spliced: 0, copied: bytes, pipeSize: null },
        false,
      );
      at.setEngine("buffered");
    });
  });

  /** Routes the request; returns where to send it, or null when it was answered here. */
  const route = (req: http.IncomingMessage, res: http.ServerResponse | null) => {
    const state = source();
    // node:http keeps the framing fields a Connection header names; refuse what the splice engine refuses.
    const smuggling = framingNamedInConnection(req.headers.connection, "request");
    if (smuggling) {
      if (res) plainError(res, smuggling.status, `Bad Request: ${smuggling.message}`);
      return null;
    }
    const headers: Array<[string, string]> = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2)
      headers.push([req.rawHeaders[i] as string, req.rawHeaders[i + 1] as string]);
    let path: string;
    try {
      path = (req.url ?? "/").startsWith("/") ? normalizePath(req.url ?? "/") : (req.url ?? "/");
    } catch {
      if (res) plainError(res, 400, "Bad Request: path climbs above the root");
      return null;
    }
    const r = state.routes.match({ method: req.method ?? "GET", path, host: req.headers.host ?? null, headers });
    routeNames.set(req, r?.name ?? "none");
    if (!r) {
      if (res) plainError(res, 404, "Not Found: no route");
      return null;
    }
    const a = r.action;
    if (a.kind === "respond") {
      res?.writeHead(a.status, { "content-type": a.contentType }).end(a.body);
      return null;
    }
    if (a.kind === "redirect") {
      res?.writeHead(a.status, { location: a.location }).end();
      return null;
    }
    const cluster = state.clusters.get(a.cluster);
    if (!cluster) {
      if (res) plainError(res, 503, "Service Unavailable");
      return null;
    }
    const endpoint = cluster.pick();
    req.url = rewritePath(r, path);
    for (const n of a.requestHeadersRemove) delete req.headers[n];
    for (const [n, v] of a.requestHeadersAdd) req.headers[n.toLowerCase()] = v;
    if (a.hostRewrite) req.headers.host = a.hostRewrite;
    if (res && (a.responseHeadersAdd.length || a.responseHeadersRemove.size)) {
      const writeHead = res.writeHead.bind(res);
      res.writeHead = ((...args: Parameters<typeof res.writeHead>) => {
        for (const n of a.responseHeadersRemove) res.removeHeader(n);
        for (const [n, v] of a.responseHeadersAdd) res.setHeader(n, v);
        return writeHead(...args);
      }) as typeof res.writeHead;
    }
    const opts = state.opts;
    return {
      endpoint,
      routeRef: r,
      target: { host: endpoint.address.host, port: endpoint.address.port },
      xfwd: opts.forwarding.xForwarded,
      proxyTimeout: a.firstByteMs ?? opts.timeouts.firstByteMs,
    };
  };

  const server = http.createServer(
    {
      maxHeaderSize: initial.limits.maxHeadBytes,
      requestTimeout: initial.timeouts.headMs + initial.timeouts.bodyIdleMs,
      headersTimeout: initial.timeouts.headMs,
      keepAliveTimeout: initial.timeouts.keepAliveMs,
    },
    (req, res) => {
      const started = performance.now();
      res.once("close", () => {
        const status = res.headersSent ? res.statusCode : null;
        const length = (v: unknown) => (v === undefined ? null : Number(v));
        requestDone({
          engine: "buffered",
          route: routeNames.get(req) ?? "none",
          status,
          seconds: (performance.now() - started) / 1000,
          method: req.method ?? "",
          path: req.url ?? "",
          client: req.socket.remoteAddress ?? "",
          // This engine does not count body bytes; the declared lengths are what it knows.
          bytesIn: length(req.headers["content-length"]) ?? 0,
          bytesOut: length(res.getHeader("content-length")),
        });
      });
      const via = source().opts.forwarding.via;
      if (via) res.setHeader("via", via);
      const routed = route(req, res);
      if (!routed) return;
      const { endpoint, routeRef, ...target } = routed;
      traceBuffered(req, res, routeRef, endpoint);
      proxy.web(req, res, target);
    },
  );
  server.on("upgrade", (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
    const routed = route(req, null);
    if (!routed) return void socket.destroy();
    const { endpoint: _e, routeRef: _r, ...target } = routed;
    proxy.ws(req, socket, head, target);
  });
  server.maxHeadersCount = initial.limits.maxHeaders;
  server.maxConnections = initial.limits.maxConnections;
  const close = () => {
    server.closeAllConnections();
    proxy.close();
    agent.destroy();
  };
  const hooks = httpServerHooks(server, close);
  return { server, close, drain: hooks.drain };
}

export async function startBufferedServer(address: HostPort, source: StateSource): Promise<RunningProxy> {
  const engine = createBufferedEngine(source);
  const { server } = engine;
  return startListening(server, address, { closeAll: engine.close, drain: engine.drain });
}
