// The buffered engine: the same listener and routes served the ordinary Node way, with
// http-proxy-3 over node:http. It is the baseline sluice is measured against, so everything
// but the body path is shared with the splice engine: the same decision, the same retry loop
// (endpoint choice, active counts, outlier feedback), the same record and observers.
// What must differ is written down in docs/failure-semantics.md ("The two engines").

import http from "node:http";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import tls, { type TLSSocket } from "node:tls";
import { createProxyServer, type ProxyServer } from "http-proxy-3";
import type { HostPort } from "../base/address.js";
import { log, warnRateLimited } from "../base/log.js";
import { errorResponse, HttpError } from "../http1/errors.js";
import { type ForwardingOptions, HOP_BY_HOP_NAMES } from "../http1/forward-headers.js";
import { ABSOLUTE_FORM, HOST_VALUE } from "../http1/grammar.js";
import { framingNamedInConnection, type Header, listTokens, strictRequestRefusal, strictResponseRefusal } from "../http1/head.js";
import { normalizePath } from "../http1/normalize-path.js";
import { observeFailedHead, RequestObservation } from "../observe/observation.js";
import { COMPLETED, clientCodeForStatus, outcome, type Phase, RequestFailure } from "../request/outcome.js";
import {
  addConnect,
  addressesOf,
  type ClientTls,
  listedFields,
  noBytes,
  RequestRecord,
  type TryRecord,
} from "../request/record.js";
import { decide, type ForwardPlan } from "../routing/decision.js";
import { isTlsError } from "../tls/origination.js";
import { connectionTls } from "../tls/termination.js";
import { isTls, resetConnection } from "../transfer/socket-handoff.js";
import type { Cluster } from "../upstream/cluster.js";
import { forward } from "./forward.js";
import type { ListenerContext } from "./listener-state.js";
import { httpServerHooks } from "./listening.js";

/** An answer made here (`status` and why, as the splice engine writes it): no Via or route edits, no Date. */
function plainError(res: http.ServerResponse, status: number, text: string): void {
  if (res instanceof BufferedResponse) {
    res.forwarded = null;
    res.via = null;
  }
  res.sendDate = false;
  const body = `${status} ${http.STATUS_CODES[status] ?? "Error"}: ${text}\n`;
  res.writeHead(status, {
    "content-type": "text/plain; charset=utf-8",
    "content-length": Buffer.byteLength(body),
    ...(status === 503 ? { "retry-after": "1" } : {}),
    connection: "close",
  });
  res.end(body);
}

/** A response that failed after its head went out: the client's connection is reset, as the splice engine does (a truncated body must never look complete). */
function cutResponse(res: http.ServerResponse): void {
  if (res.socket) resetConnection(res.socket);
  res.destroy();
}

/** node:http's answer to a head it could not take, as it would give it without a clientError listener. */
function headErrorStatus(code: string | undefined): number {
  if (code === "HPE_HEADER_OVERFLOW") return 431;
  if (code === "ERR_HTTP_REQUEST_TIMEOUT") return 408;
  return 400;
}

/**
 * A head node:http could not take (malformed, too large, past the head timeout) or a client
 * that closed its side before its head was complete: answered as node:http answers it, and
 * ended with a record, as the splice engine ends such a request: counted and logged, never
 * traced. A socket error (a reset) is not recorded: node:http reports one the same way whether
 * a head was under way or the connection idle between requests.
 */
function headFailed(ctx: ListenerContext, err: NodeJS.ErrnoException, socket: Socket): void {
  const code = err.code ?? "";
  if (!code.startsWith("HPE_") && code !== "ERR_HTTP_REQUEST_TIMEOUT") return void socket.destroy();
  // The addresses before the socket goes: its getters ask the handle, gone once it is destroyed.
  const client = addressesOf(socket);
  // The connection ended inside a head (llhttp's error at the end of the stream).
  const gone = code === "HPE_INVALID_EOF_STATE";
  // A response already under way on this connection (a bad pipelined head behind it) is not
  // followed by an answer that would corrupt it (node:http's rule: a Node internal, `_httpMessage`).
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  const status = gone ? null : headErrorStatus(code);
  if (status !== null && socket.writable && !inFlight?.headersSent)
    socket.write(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\n\r\n`);
  socket.destroy();
  observeFailedHead(ctx.sinks, "buffered", client, status, code);
}

/**
 * What node:http took and the splice engine refuses (its strict parser and limits), for a
 * request or an Upgrade; null when nothing is. The bounds first, then the head's grammar.
 */
function headRefusal(req: http.IncomingMessage, limits: { maxHeaders: number; maxUriBytes: number }): HttpError | null {
  // node:http keeps the first maxHeadersCount fields and drops the rest without a word: it
  // keeps one more than the limit, and a head with that many is refused.
  if (req.rawHeaders.length > 2 * limits.maxHeaders) return new HttpError(431, "too many header fields");
  const target = req.url ?? "/";
  // node:http bounds the whole head only; the splice engine bounds the target too.
  if (target.length > limits.maxUriBytes) return new HttpError(414, "request target too long");
  // Two Hosts, HTTP/1.0 with Transfer-Encoding, stray target characters, ...; then the framing
  // fields a Connection header names, which node:http keeps.
  return (
    strictRequestRefusal(req.httpVersion, req.method ?? "GET", target, req.rawHeaders) ??
    framingNamedInConnection(req.headers.connection, "request")
  );
}

/**
 * The client's response: a forwarded one has the upstream's hop-by-hop fields taken off and
 * the route's edits made as its head is written. A subclass (node:http's `ServerResponse`
 * option), not a wrapper per request: a closure set on each response kept every request's
 * objects alive through the next young-generation collections (1.2 KB promoted per request
 * against 0.2 KB without it, `--trace-gc-nvp`).
 */
class BufferedResponse<R extends http.IncomingMessage = http.IncomingMessage> extends http.ServerResponse<R> {
  /** The forward decision whose response edits apply; null for answers made here. */
  forwarded: ForwardPlan | null = null;
  /** Appended to the upstream's Via of a forwarded response. */
  via: string | null = null;

  override writeHead(...args: unknown[]): this {
    const d = this.forwarded;
    if (d !== null) {
      // http-proxy-3 copied the upstream's fields here, hop-by-hop ones too (they stay on its
      // response: node:http's agent reads the upstream's Keep-Alive timeout there), with the
      // upstream's Connection field or else the request's, which is the upstream's (below).
      const connection = this.getHeader("connection");
      if (connection !== undefined) {
        for (const n of listTokens([String(connection)])) if (n !== "transfer-encoding") this.removeHeader(n);
        for (const n of HOP_BY_HOP_NAMES) if (n !== "transfer-encoding" && this.hasHeader(n)) this.removeHeader(n);
        // What node:http decided for the client's connection.
        this.setHeader("connection", this.shouldKeepAlive ? "keep-alive" : "close");
      }
      if (this.via !== null) {
        const upstream = this.getHeader("via");
        this.setHeader("via", upstream === undefined ? this.via : `${String(upstream)}, ${this.via}`);
      }
      for (const n of d.responseHeadersRemove) this.removeHeader(n);
      for (const [n, v] of d.responseHeadersAdd) this.setHeader(n, v);
    }
    return (super.writeHead as (...a: unknown[]) => this)(...args);
  }
}

/**
 * The client's request, with the try that carries it, where http-proxy-3's events find it.
 * A field, not a WeakMap keyed by the request: the young-generation collector kept a
 * WeakMap's values (each try, and through it the upstream request) alive, 7.4 KB promoted
 * per request against 0.04 KB this way (`--trace-gc-nvp`).
 */
class BufferedRequest extends http.IncomingMessage {
  current: TryState | null = null;
}

/** The try of a request that came through this engine's server (null for any other). */
const tryOf = (req: http.IncomingMessage): TryState | null => (req instanceof BufferedRequest ? req.current : null);

export interface BufferedEngine {
  /** A node:http server that is not listening: connections are handed to it. */
  server: http.Server;
  close(): void;
  /** Closes idle connections until none is left (in-flight exchanges finish). */
  drain(): Promise<void>;
}

/** The current try of a request, as http-proxy-3's events find it. */
interface TryState {
  t: TryRecord;
  plan: ForwardPlan;
  timedOut: boolean;
  connected: boolean;
  /** The upstream broke the response after its head (the client's connection is cut). */
  cut: boolean;
  /** The response head was refused here (502 sent). */
  refused: RequestFailure | null;
  /** The request to the upstream, once http-proxy-3 has made it. */
  proxyReq: http.ClientRequest | null;
  /** The request body went over max_body_bytes: the try ends with 413. */
  tooLarge: boolean;
}

/** A request body over max_body_bytes, as the splice engine says it. */
const bodyTooLarge = (status: number | null, bodySent: boolean) =>
  new RequestFailure(outcome("client_limit", "request_body", "request body too large"), status, bodySent);

/**
 * node:http and http-proxy-3 pass every field on; the splice engine drops the hop-by-hop
 * ones (RFC 9110 §7.6.1), and so must the baseline. `keep` stays: Transfer-Encoding, by
 * which node:http frames each hop, or an upgrade's Upgrade.
 */
function dropHopByHop(headers: http.IncomingHttpHeaders, keep = "transfer-encoding"): void {
  const connection = headers.connection;
  // Only fields that are there: deleting a property V8's object does not have still costs.
  for (const n of HOP_BY_HOP_NAMES) if (n !== keep && headers[n] !== undefined) delete headers[n];
  if (connection !== undefined)
    for (const n of listTokens([connection])) if (n !== keep && headers[n] !== undefined) delete headers[n];
}

/**
 * The forwarding fields as the splice engine writes them (http1/forward-headers.ts), not
 * http-proxy-3's (`xfwd`), which appends to a client's X-Forwarded-Proto and keeps its
 * X-Forwarded-Host: X-Forwarded-For appended to, -Proto and -Host replaced, Via appended to.
 * node:http has joined a repeated field's values with ", ", as the splice engine does.
 */
function addForwardingFields(
  h: http.IncomingHttpHeaders,
  client: { address: string; scheme: "http" | "https"; host: string | null },
  f: ForwardingOptions,
): void {
  if (f.xForwarded) {
    const xff = h["x-forwarded-for"];
    h["x-forwarded-for"] = xff === undefined ? client.address : `${xff}, ${client.address}`;
    h["x-forwarded-proto"] = client.scheme;
    if (client.host !== null) h["x-forwarded-host"] = client.host;
  }
  if (f.via !== null) {
    const via = h.via;
    h.via = via === undefined ? f.via : `${via}, ${f.via}`;
  }
}

/** A request without a body (no Content-Length, no Transfer-Encoding). */
const hasNoBody = (req: http.IncomingMessage) =>
  req.headers["content-length"] === undefined && req.headers["transfer-encoding"] === undefined;

/** How a try of http-proxy-3 failed, from its error and what was seen before it. */
function tryFailure(err: NodeJS.ErrnoException, s: TryState, headSent: boolean, bodySent: boolean): RequestFailure {
  if (s.tooLarge) return bodyTooLarge(headSent ? null : 413, bodySent);
  const phase: Phase = !s.connected ? "connect" : s.t.responseHeadAt === null ? "response_head" : "response_body";
  const status = headSent ? null : s.timedOut ? 504 : 502;
  if (s.timedOut)
    return new RequestFailure(outcome("upstream_timeout", phase, "upstream did not answer in time"), status, bodySent);
  // Verification or handshake: the upstream's TLS, whenever in the connection it shows.
  if (isTlsError(err))
    return new RequestFailure(
      outcome("upstream_tls", phase, `upstream TLS failed: ${err.code ?? "?"} ${err.message}`),
      status,
      bodySent,
    );
  if (phase === "connect" && ["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"].includes(err.code ?? "")) {
    warnRateLimited("no_resources", { err: err.code }, "out of file descriptors or memory: requests are refused with 503");
    return new RequestFailure(
      outcome("overloaded", phase, `upstream connect failed: ${err.code}`),
      headSent ? null : 503,
      bodySent,
    );
  }
  if (phase === "connect")
    return new RequestFailure(
      outcome("upstream_refused", phase, `upstream connect failed: ${err.code ?? err.message}`),
      status,
      bodySent,
    );
  const code = err.code === "ECONNRESET" && err.message === "socket hang up" ? "upstream_closed" : "upstream_reset";
  const detail =
    phase === "response_head"
      ? `upstream failed before the response head (${err.code ?? err.message})`
      : (err.code ?? err.message);
  return new RequestFailure(outcome(code, phase, detail), status, bodySent);
}

/** A TLS client connection's handshake facts (read once per connection by tls/termination). */
const clientTlsOf = (socket: Socket): ClientTls | null => (isTls(socket) ? connectionTls(socket as TLSSocket) : null);

/**
 * Agents for clusters with TLS: connections made by the cluster's own TLS options (the same
 * SNI, verification and client certificate as the splice engine's), pooled per endpoint.
 */
function tlsAgent(cluster: Cluster, base: http.AgentOptions): http.Agent {
  const connect = cluster.opts.tlsConnect as (e: HostPort) => tls.ConnectionOptions;
  const agent = new http.Agent(base);
  (agent as unknown as { createConnection: (o: { host?: string; port?: number }) => Socket }).createConnection = (o) =>
    tls.connect(connect({ host: o.host ?? "", port: o.port ?? 0 }));
  return agent;
}

/** The buffered engine without a socket of its own. */
export function createBufferedEngine(ctx: ListenerContext): BufferedEngine {
  const initial = ctx.source().opts;
  const agentOptions: http.AgentOptions = {
    keepAlive: true,
    maxSockets: initial.pool.maxConnections,
    maxFreeSockets: initial.pool.maxIdle,
    timeout: initial.pool.idleTimeoutMs,
  };
  const agent = new http.Agent(agentOptions);
  const tlsAgents = new Map<Cluster, http.Agent>();
  const agentFor = (cluster: Cluster | null): http.Agent => {
    if (!cluster?.tls) return agent;
    let a = tlsAgents.get(cluster);
    if (!a) {
      a = tlsAgent(cluster, agentOptions);
      tlsAgents.set(cluster, a);
    }
    return a;
  };
  // Each call has its own error callback; this only keeps a stray error from being thrown.
  const onStrayError = (err: Error) => log.debug({ err: err.message }, "buffered engine: upstream error");
  // WebSocket upgrades (few: one per tunnel) go through one proxy with their options per call.
  const wsProxy = createProxyServer({ agent, ws: true });
  wsProxy.on("error", onStrayError);

  /**
   * Requests go through a proxy made for their options (agent, target, timeout),
   * called with none of their own. http-proxy-3 merges per-call options into its own with
   * `{ ...own, ...call }`, and V8 gives that object a new hidden class every time: every option
   * it then reads misses its inline cache (27 misses, about 40k instructions per request).
   * Proxies hold nothing but their options and listeners; the map is emptied if it grows past
   * PROXIES_KEPT (endpoints that come and go with DNS).
   */
  const PROXIES_KEPT = 1024;
  const proxies = new Map<http.Agent, Map<string, ProxyServer>>();
  const proxyFor = (agentUsed: http.Agent, target: HostPort, proxyTimeout: number): ProxyServer => {
    let byOptions = proxies.get(agentUsed);
    if (!byOptions) {
      byOptions = new Map();
      proxies.set(agentUsed, byOptions);
    }
    const key = `${target.host}|${target.port}|${proxyTimeout}`;
    let p = byOptions.get(key);
    if (!p) {
      if (byOptions.size >= PROXIES_KEPT) byOptions.clear();
      p = createProxyServer({ target: { host: target.host, port: target.port }, agent: agentUsed, proxyTimeout });
      p.on("error", onStrayError);
      p.on("proxyReq", onProxyReq);
      p.on("proxyRes", onProxyRes);
      byOptions.set(key, p);
    }
    return p;
  };

  const onProxyReq = (proxyReq: http.ClientRequest, req: http.IncomingMessage, res: http.ServerResponse) => {
    const s = tryOf(req);
    if (!s) return;
    s.proxyReq = proxyReq;
    if (s.tooLarge) return void proxyReq.destroy(new Error("request body too large"));
    // A 101 to a request that asked for no upgrade: node:http hands the connection to an
    // 'upgrade' listener, and without one nothing answers the client. 502, as from the splice engine.
    proxyReq.once("upgrade", (_up: http.IncomingMessage, socket: Socket) => {
      socket.destroy();
      const message = "upstream switched protocols unasked";
      s.refused = new RequestFailure(outcome("upstream_protocol", "response_head", message), 502);
      plainError(res, 502, message);
    });
    proxyReq.once("timeout", () => {
      s.timedOut = true;
    });
    const connected = () => {
      s.connected = true;
      addConnect(s.t, performance.now(), proxyReq.reusedSocket);
    };
    // Over TLS a connection is made once its handshake and verification are done.
    const sock = proxyReq.socket;
    const secure = sock !== null && isTls(sock);
    const ready = secure ? (sock as unknown as { _secureEstablished?: boolean })._secureEstablished === true : !sock?.connecting;
    if (sock && ready) connected();
    else sock?.once(secure ? "secureConnect" : "connect", connected);
  };
  const onProxyRes = (proxyRes: http.IncomingMessage, req: http.IncomingMessage, res: http.ServerResponse) => {
    const s = tryOf(req);
    const smuggling =
      framingNamedInConnection(proxyRes.headers.connection, "response") ??
      strictResponseRefusal(
        proxyRes.httpVersion,
        proxyRes.rawHeaders,
        req.method ?? "GET",
        proxyRes.statusCode ?? 0,
        proxyRes.statusMessage ?? "",
      );
    if (smuggling) {
      // Answered before http-proxy-3 copies the head: it passes nothing on once headers are sent.
      if (s) s.refused = new RequestFailure(outcome("upstream_protocol", "response_head", smuggling.message), 502);
      plainError(res, smuggling.status, smuggling.message);
      proxyRes.destroy();
      return;
    }
    if (!s) return;
    const t = s.t;
    // A response cut by the upstream (or by its body stall) cuts the client's too: a truncated
    // body must never look complete.
    proxyRes.once("close", () => {
      if (proxyRes.complete) return;
      s.cut = true;
      cutResponse(res);
    });
    t.responseHeadAt = performance.now();
    t.status = proxyRes.statusCode ?? null;
    // Counted below as the body passes (a try starts with the shared, frozen NO_BYTES).
    t.response = noBytes();
    // From the head on, the upstream's silence is a body stall, not a slow first byte.
    proxyRes.socket.setTimeout(s.plan.bodyIdleMs);
    const length = Number(proxyRes.headers["content-length"] ?? Number.NaN);
    if (Number.isSafeInteger(length) && ctx.sinks.tracing === null) {
      // The length is known and no span wants the first byte's time: no need to watch every
      // chunk go by (listeners cost the baseline time on every request). A response cut
      // short counts what its socket delivered.
      const read0 = proxyRes.socket.bytesRead;
      proxyRes.once("close", () => {
        const n = proxyRes.complete ? length : Math.max(0, Math.min(length, proxyRes.socket.bytesRead - read0));
        t.response.bytes = n;
        t.response.copied = n;
      });
      return;
    }
    proxyRes.on("data", (chunk: Buffer) => {
      if (t.firstBodyByteAt === null) t.firstBodyByteAt = performance.now();
      t.response.bytes += chunk.length;
      t.response.copied += chunk.length;
    });
  };

  /** One try through http-proxy-3; resolves when the response was passed on in full. */
  const bufferedTry = (
    req: BufferedRequest,
    res: http.ServerResponse,
    rec: RequestRecord,
    plan: ForwardPlan,
    t: TryRecord,
    traceHeaders: Header[] | null,
    original: http.IncomingHttpHeaders | null,
  ) =>
    new Promise<void>((resolve, reject) => {
      // Each try starts from the request as routed, without the try before's trace fields.
      if (t.index > 0 && original) req.headers = { ...original };
      for (const [n, v] of traceHeaders ?? []) req.headers[n] = v;
      const s: TryState = {
        t,
        plan,
        timedOut: false,
        connected: false,
        cut: false,
        refused: null,
        proxyReq: null,
        tooLarge: false,
      };
      req.current = s;
      t.request = rec.request;
      const hasBody = !hasNoBody(req);
      // An announced body over the limit is refused before any connection, as in the splice engine.
      const max = ctx.source().opts.limits.maxBodyBytes;
      if (max > 0 && Number(req.headers["content-length"] ?? 0) > max) return reject(bodyTooLarge(413, false));
      let settled = false;
      const settle = (err: RequestFailure | null) => {
        if (settled) return;
        settled = true;
        if (res.headersSent) rec.status = res.statusCode;
        if (err) reject(err);
        else resolve();
      };
      res.once("close", () => {
        if (s.refused) return settle(s.refused);
        if (res.writableFinished) return settle(null);
        // The response was cut by the upstream, or the client left.
        if (s.cut || s.timedOut)
          return settle(tryFailure(Object.assign(new Error("aborted"), { code: "ECONNRESET" }), s, true, hasBody));
        const phase = s.t.responseHeadAt === null ? "response_head" : "response_body";
        settle(new RequestFailure(outcome("client_closed", phase, "client went away"), null, hasBody));
      });
      proxyFor(agentFor(plan.cluster), t.endpoint.address, plan.firstByteMs).web(req, res, (err: Error) => {
        const f = tryFailure(err as NodeJS.ErrnoException, s, res.headersSent, hasBody);
        if (res.headersSent) cutResponse(res);
        settle(f);
      });
    });

  /** Answers a request that failed: an error response if nothing went out yet, else the connection is cut. */
  const answerFailure = (res: http.ServerResponse, rec: RequestRecord, f: RequestFailure) => {
    if (res.headersSent) return cutResponse(res);
    if (f.status === null) return void res.destroy();
    rec.status = f.status;
    plainError(res, f.status, f.outcome.detail ?? f.outcome.code);
  };

  const serveRequest = async (req: BufferedRequest, res: BufferedResponse) => {
    const state = ctx.source();
    const headers: Header[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2)
      headers.push([req.rawHeaders[i] as string, req.rawHeaders[i + 1] as string]);
    const target = req.url ?? "/";
    let path = target;
    let host = req.headers.host ?? null;
    let refusal: [number, string] | null = null;
    try {
      if (target.startsWith("/")) path = normalizePath(target);
      else if (target !== "*" && req.method !== "CONNECT") {
        // Absolute-form (RFC 9112 §3.2.2): the target's authority is the request's host, routed
        // on and sent upstream as Host in place of the client's, as by the splice engine.
        const m = ABSOLUTE_FORM.exec(target);
        if (!m || !HOST_VALUE.test(m[2] as string)) throw new Error("invalid request target");
        host = m[2] as string;
        req.headers.host = host;
        path = normalizePath(m[3] || "/");
      }
    } catch (err) {
      refusal = [400, (err as Error).message];
    }
    const refused = headRefusal(req, state.opts.limits);
    if (refused) refusal = [refused.status, refused.message];
    const rec = new RequestRecord({
      engine: "buffered",
      method: req.method ?? "GET",
      path,
      version: req.httpVersion === "1.0" ? "1.0" : "1.1",
      host,
      fields: listedFields(headers),
      client: req.socket,
      requestIds: state.opts.forwarding.requestId,
      tls: clientTlsOf(req.socket),
    });
    if (refusal) {
      rec.outcome = outcome(clientCodeForStatus(refusal[0]), "head", refusal[1]);
      rec.status = refusal[0];
      plainError(res, refusal[0], refusal[1]);
      new RequestObservation(ctx.sinks, rec, false).finish();
      return;
    }
    const observation = new RequestObservation(ctx.sinks, rec);
    const decision = decide(
      { method: rec.method, path, host: rec.host, headers, clientSubject: rec.tls?.clientSubject ?? null },
      state,
    );
    rec.route = decision.route;
    if (decision.kind === "answer") {
      rec.status = decision.status;
      rec.outcome = outcome(decision.outcome, "route");
      const body = req.method === "HEAD" ? "" : decision.body;
      rec.response = { bytes: Buffer.byteLength(body), spliced: 0, copied: Buffer.byteLength(body), pipeSize: null };
      // The route's fields only, as from the splice engine (node:http would add a Date).
      res.sendDate = false;
      res.writeHead(decision.status, {
        ...Object.fromEntries(decision.headers),
        "content-length": Buffer.byteLength(decision.body),
      });
      res.end(body);
      res.once("close", () => observation.finish());
      return;
    }
    rec.cluster = decision.clusterName;
    req.url = decision.path;
    // Before the route's edits, which apply on top of them (as in the splice engine).
    addForwardingFields(req.headers, { address: rec.clientAddress, scheme: rec.scheme, host: rec.host }, state.opts.forwarding);
    res.via = state.opts.forwarding.via;
    for (const n of decision.requestHeadersRemove) delete req.headers[n];
    for (const [n, v] of decision.requestHeadersAdd) req.headers[n.toLowerCase()] = v;
    if (decision.hostRewrite) req.headers.host = decision.hostRewrite;
    if (rec.requestIdGenerated) req.headers["x-request-id"] = rec.requestId as string;
    res.forwarded = decision;
    // Request body bytes, counted as they pass; the client idling mid-body for body_idle ends the request.
    if (!hasNoBody(req)) {
      const max = state.opts.limits.maxBodyBytes;
      // Counted as it passes (a record starts with the shared, frozen NO_BYTES).
      rec.request = noBytes();
      req.on("data", (chunk: Buffer) => {
        rec.request.bytes += chunk.length;
        rec.request.copied += chunk.length;
        // A body found over the limit as it streams (chunked): the try ends with 413.
        if (max > 0 && rec.request.bytes > max) {
          const s = tryOf(req);
          if (s && !s.tooLarge) {
            s.tooLarge = true;
            req.unpipe();
            s.proxyReq?.destroy(new Error("request body too large"));
          }
        }
      });
      req.socket.setTimeout(decision.bodyIdleMs);
      req.once("end", () => req.socket.setTimeout(0));
    }
    dropHopByHop(req.headers);
    // The upstream connection is the pool's, whatever the client asked of its own.
    req.headers.connection = "keep-alive";
    // Only a route that may retry needs the headers as routed kept aside for the next try.
    const original = decision.retry.attempts > 0 ? { ...req.headers } : null;
    try {
      await forward(rec, decision, observation, (t, traceHeaders) =>
        bufferedTry(req, res, rec, decision, t, traceHeaders, original),
      );
      rec.outcome = rec.lastTry?.outcome ?? COMPLETED.response_body;
    } catch (err) {
      const f = err instanceof RequestFailure ? err : new RequestFailure(outcome("proxy_internal", "route", String(err)), null);
      rec.outcome = f.outcome;
      answerFailure(res, rec, f);
    }
    observation.finish();
  };

  const server = http.createServer<typeof BufferedRequest, typeof BufferedResponse>(
    {
      IncomingMessage: BufferedRequest,
      ServerResponse: BufferedResponse,
      maxHeaderSize: initial.limits.maxHeadBytes,
      // The head's deadline, like the splice engine's; no deadline for the whole request (a
      // long upload is bounded by the body idle timeout, as in the splice engine).
      headersTimeout: initial.timeouts.headMs,
      requestTimeout: 0,
      // How often node:http looks for heads past their deadline.
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(initial.timeouts.headMs / 4))),
      keepAliveTimeout: initial.timeouts.keepAliveMs,
    },
    (req, res) => {
      // A reload's timeouts and header count apply from the next wait and head on.
      const { timeouts: t, limits } = ctx.source().opts;
      server.headersTimeout = t.headMs;
      server.keepAliveTimeout = t.keepAliveMs;
      server.maxHeadersCount = limits.maxHeaders + 1;
      serveRequest(req, res).catch((err: unknown) => {
        log.error({ err }, "buffered request failed");
        res.destroy();
      });
    },
  );
  // node:http tracks its connections (the head deadline, closeIdleConnections for a drain,
  // closeAllConnections) only from its 'listening' event. This server never listens: the
  // listener hands it connections. Without this a client that drips its head holds the
  // connection for ever, and a drain waits on idle keep-alive connections.
  server.emit("listening");
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => headFailed(ctx, err, socket));
  server.on("upgrade", (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
    // The same refusals as for other requests, answered as the splice engine answers: never tunnelled.
    const refused = headRefusal(req, ctx.source().opts.limits);
    if (refused) return void socket.end(errorResponse(refused.status, refused.message));
    const state = ctx.source();
    const path = (() => {
      try {
        return normalizePath(req.url ?? "/");
      } catch {
        return null;
      }
    })();
    const headers: Header[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2)
      headers.push([req.rawHeaders[i] as string, req.rawHeaders[i + 1] as string]);
    const decision =
      path === null ? null : decide({ method: req.method ?? "GET", path, host: req.headers.host ?? null, headers }, state);
    if (decision?.kind !== "forward") return void socket.destroy();
    const endpoint = decision.cluster?.pick();
    if (!endpoint) return void socket.destroy();
    req.url = decision.path;
    // The upgrade's own fields pass (the upstream must see them); other hop-by-hop ones do not.
    dropHopByHop(req.headers, "upgrade");
    req.headers.connection = "upgrade";
    addForwardingFields(
      req.headers,
      { address: socket.remoteAddress ?? "", scheme: isTls(socket) ? "https" : "http", host: req.headers.host ?? null },
      state.opts.forwarding,
    );
    endpoint.active++;
    socket.once("close", () => endpoint.active--);
    wsProxy.ws(req, socket, head, {
      target: { host: endpoint.address.host, port: endpoint.address.port },
      agent: agentFor(decision.cluster),
    });
  });
  server.maxHeadersCount = initial.limits.maxHeaders + 1;
  const close = () => {
    server.closeAllConnections();
    // Stops node:http's connection checks (the server is not listening: nothing else happens).
    server.close();
    wsProxy.close();
    for (const byOptions of proxies.values()) for (const p of byOptions.values()) p.close();
    agent.destroy();
    for (const a of tlsAgents.values()) a.destroy();
  };
  const hooks = httpServerHooks(server, close);
  return { server, close, drain: hooks.drain };
}
