// The HTTP listener: accepts client connections and runs each one's request loop —
// parse, route, then forward or answer — or hands the listener to the buffered engine.
import { STATUS_CODES } from "node:http";
import net from "node:net";
import type { HostPort } from "../base/address.js";
import { log } from "../base/log.js";
import type { HttpProxyOptions } from "../config/http-options.js";
import { HttpError } from "../http1/errors.js";
import { parseRequestHead, type RequestHead } from "../http1/head.js";
import { isIdempotent } from "../http1/methods.js";
import { PeerClosed, ReadTimeout, SocketReader } from "../http1/socket-reader.js";
import { requestDone } from "../observe/access-log.js";
import {
  activeConnections,
  connectionsRefused,
  type EngineLabel,
  recordBytes,
  upstreamFailures,
  upstreamRetries,
} from "../observe/metrics.js";
import { engineOf, RequestTrace } from "../observe/request-trace.js";
import { type Route, RouteTable, rewritePath } from "../routing/route-table.js";
import { Cluster, type Endpoint } from "../upstream/cluster.js";
import { type BufferedEngine, createBufferedEngine, startBufferedServer } from "./buffered-engine.js";
import {
  AbortAfterHead,
  type ClientContext,
  ClientGone,
  closeGracefully,
  type ForwardPlan,
  proxyExchange,
  UpstreamFailure,
} from "./exchange.js";
import { ConnectionSet, type Listening, startListening } from "./listening.js";
import { sendErrorAndClose } from "./respond.js";

export type RunningProxy = Listening;

/** What a listener serves right now; a reload swaps it, requests in flight keep theirs. */
export interface HttpListenerState {
  opts: HttpProxyOptions;
  routes: RouteTable;
  clusters: Map<string, Cluster>;
}

export type StateSource = () => HttpListenerState;

/** A locally generated response; the connection stays open when the request allows it. */
function respondLocally(
  client: net.Socket,
  req: RequestHead,
  closing: boolean,
  status: number,
  reason: string,
  headers: Array<[string, string]>,
  body: string,
): boolean {
  const keep = req.keepAlive && req.framing.kind === "none" && !closing;
  const bytes = Buffer.from(req.method === "HEAD" ? "" : body);
  let head = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (const [n, v] of headers) head += `${n}: ${v}\r\n`;
  head += `content-length: ${Buffer.byteLength(body)}\r\n${keep ? "" : "connection: close\r\n"}\r\n`;
  client.write(Buffer.concat([Buffer.from(head, "latin1"), bytes]));
  return keep;
}

function planFor(
  route: Route,
  req: RequestHead,
  state: HttpListenerState,
  cluster: Cluster,
  endpoint: Endpoint,
  lastTry: boolean,
): ForwardPlan {
  const a = route.action;
  if (a.kind !== "forward") throw new Error("not a forwarding route");
  const statusRetryOk = !lastTry && isIdempotent(req.method) && req.framing.kind === "none";
  return {
    pool: endpoint.pool,
    retryOnStatus: statusRetryOk ? a.retryOnStatus : new Set(),
    onResponseHead: (status) => cluster.report(endpoint, status >= 500 ? "5xx" : "success"),
    path: rewritePath(route, req.path),
    hostRewrite: a.hostRewrite,
    requestHeadersAdd: a.requestHeadersAdd,
    requestHeadersRemove: a.requestHeadersRemove,
    responseHeadersAdd: a.responseHeadersAdd,
    responseHeadersRemove: a.responseHeadersRemove,
    firstByteMs: a.firstByteMs ?? state.opts.timeouts.firstByteMs,
    bodyIdleMs: a.bodyIdleMs ?? state.opts.timeouts.bodyIdleMs,
  };
}

type LocalAnswer = [status: number, reason: string, headers: Array<[string, string]>, body: string];

/** The response for a route that answers itself, or 404 when nothing matched. */
function localAnswer(route: Route | null): LocalAnswer {
  const a = route?.action;
  if (a?.kind === "respond") return [a.status, STATUS_CODES[a.status] ?? "Status", [["content-type", a.contentType]], a.body];
  if (a?.kind === "redirect") return [a.status, STATUS_CODES[a.status] ?? "Redirect", [["location", a.location]], ""];
  return [404, "Not Found", [["content-type", "text/plain; charset=utf-8"]], "404 Not Found: no route\n"];
}

// A route's header removals plus the client's trace fields (sluice sends its own): built once per route.
const traceRemovals = new WeakMap<ReadonlySet<string>, ReadonlySet<string>>();
function withoutTraceFields(remove: ReadonlySet<string>): ReadonlySet<string> {
  let merged = traceRemovals.get(remove);
  if (!merged) {
    merged = new Set([...remove, "traceparent", "tracestate"]);
    traceRemovals.set(remove, merged);
  }
  return merged;
}

/** Sends one request to its route's cluster, retrying where that is safe; answers errors itself. */
async function forwardRequest(
  client: net.Socket,
  reader: SocketReader,
  req: RequestHead,
  route: Route,
  state: HttpListenerState,
  rt: RequestTrace | null,
  started: number,
  conns: ConnectionSet,
): Promise<"keep-alive" | "close" | "done"> {
  const a = route.action;
  if (a.kind !== "forward") throw new Error("not a forwarding route");
  let bytesIn = 0;
  let bytesOut = 0;
  const done = (engine: EngineLabel, status: number | null) =>
    requestDone({
      engine,
      route: route.name,
      status,
      seconds: (performance.now() - started) / 1000,
      method: req.method,
      path: req.path,
      client: client.remoteAddress ?? "",
      bytesIn,
      bytesOut,
    });
  const cluster = state.clusters.get(a.cluster);
  if (!cluster) {
    sendErrorAndClose(client, 503, `no cluster ${a.cluster}`);
    rt?.finish(503, "no cluster");
    done("local", 503);
    return "done";
  }
  const ctx: ClientContext = {
    client,
    reader,
    clientAddress: client.remoteAddress ?? "",
    opts: state.opts,
    engine: "auto",
    closing: () => conns.draining,
  };
  const tried = new Set<Endpoint>();
  let outcome: Awaited<ReturnType<typeof proxyExchange>> | null = null;
  let failure: unknown = null;
  let status: number | null = null;
  let engine: EngineLabel = "copy";
  for (let attempt = 0; outcome === null; attempt++) {
    const endpoint = cluster.pick(tried);
    tried.add(endpoint);
    const lastTry = attempt >= a.retryAttempts || cluster.retriesInFlight >= cluster.opts.maxRetries;
    const plan = planFor(route, req, state, cluster, endpoint, lastTry);
    const at = rt?.attempt(endpoint, attempt, req.method) ?? null;
    if (at) {
      plan.requestHeadersRemove = withoutTraceFields(plan.requestHeadersRemove);
      plan.requestHeadersAdd = [...plan.requestHeadersAdd, ...at.headers];
    }
    plan.observer = {
      connected: (reused) => at?.observer.connected(reused),
      staleConnection: () => {
        upstreamFailures.inc({ cluster: a.cluster, kind: "stale" });
        at?.observer.staleConnection();
      },
      responseHead: (s) => at?.observer.responseHead(s),
      responseBodyStart: () => at?.observer.responseBodyStart(),
      finished: (rq, rs, tunnel) => {
        engine = engineOf(rq, rs);
        bytesIn = rq.bytes;
        bytesOut = rs.bytes;
        recordBytes(engine, "request", rq.spliced, rq.copied);
        recordBytes(engine, "response", rs.spliced, rs.copied);
        at?.observer.finished(rq, rs, tunnel);
      },
    };
    const reportStatus = plan.onResponseHead;
    plan.onResponseHead = (s) => {
      status = s;
      reportStatus?.(s);
    };
    endpoint.active++;
    if (attempt > 0) cluster.retriesInFlight++;
    try {
      outcome = await proxyExchange(ctx, req, plan);
    } catch (err) {
      at?.fail(err instanceof Error ? err.message : String(err));
      if (!(err instanceof UpstreamFailure)) {
        failure = err;
        break;
      }
      upstreamFailures.inc({ cluster: a.cluster, kind: err.kind.replace("-", "_") });
      if (err.kind !== "status") cluster.report(endpoint, err.kind);
      // Safe to try again: nothing was sent, or an idempotent request without a body.
      const safe = err.kind === "connect-failure" || err.kind === "status" || (isIdempotent(req.method) && !err.bodyStarted);
      if (lastTry || !safe || !(err.kind === "status" || a.retryOn.has(err.kind))) {
        failure = err.error;
        break;
      }
      log.debug({ endpoint: endpoint.label, kind: err.kind, attempt }, "retrying on another endpoint");
      upstreamRetries.inc({ cluster: a.cluster });
    } finally {
      at?.end();
      endpoint.active--;
      if (attempt > 0) cluster.retriesInFlight--;
    }
  }
  if (outcome !== null) {
    rt?.finish(status, null);
    done(engine, status);
    return outcome === "consumed" ? "done" : outcome;
  }
  const err = failure;
  done(engine, err instanceof HttpError ? err.status : null);
  if (err instanceof HttpError) {
    sendErrorAndClose(client, err.status, err.message);
    rt?.finish(err.status, err.message);
  } else if (err instanceof AbortAfterHead) {
    log.debug({ reason: err.reason }, "response aborted");
    // A reset, not a FIN: a truncated body must never look complete.
    client.resetAndDestroy();
    rt?.finish(status, err.reason);
  } else if (err instanceof ClientGone) {
    client.destroy();
    rt?.finish(null, "client went away");
  } else {
    log.error({ err }, "exchange failed");
    client.destroy();
    rt?.finish(null, String(err));
  }
  return "done";
}

async function serveClient(
  client: net.Socket,
  source: StateSource,
  buffered: () => BufferedEngine,
  conns: ConnectionSet,
): Promise<void> {
  client.setNoDelay(true);
  client.on("error", () => undefined);
  const reader = new SocketReader(client);
  let first = true;
  for (;;) {
    // Each request sees the configuration current when its head arrived.
    let state = source();
    const { opts } = state;
    let req: RequestHead;
    let head: Buffer;
    try {
      // An idle keep-alive connection may wait longer than a request may take to arrive.
      // While it waits it is idle: a drain closes it.
      if (!first) conns.setIdle(client, true);
      await reader.waitForData(first ? opts.timeouts.headMs : opts.timeouts.keepAliveMs);
      conns.setIdle(client, false);
      head = await reader.readHead(opts.limits.maxHeadBytes, opts.limits.maxUriBytes + 64, opts.timeouts.headMs);
      state = source();
      req = parseRequestHead(head, opts.limits);
    } catch (err) {
      if (err instanceof HttpError) sendErrorAndClose(client, err.status, err.message);
      else if (err instanceof ReadTimeout && reader.bufferedBytes > 0)
        sendErrorAndClose(client, 408, "request head not received in time");
      else if (err instanceof PeerClosed && !err.clean) client.destroy();
      else client.end();
      return;
    }
    first = false;

    const route = state.routes.match({ method: req.method, path: req.path, host: req.host, headers: req.headers });
    let keep: boolean;
    if (route !== null && route.action.kind === "forward" && route.action.engine === "buffered") {
      // From here on this connection is the buffered engine's: it gets the head again,
      // and whatever else was read, in front of the socket's stream.
      client.unshift(Buffer.concat([head, ...reader.detach()]));
      buffered().server.emit("connection", client);
      client.resume();
      return;
    }
    const started = performance.now();
    const rt = RequestTrace.start(req, route, client, "splice");
    if (route === null || route.action.kind !== "forward") {
      const local = localAnswer(route);
      keep = respondLocally(client, req, conns.draining, ...local);
      rt?.finish(local[0], null);
      requestDone({
        engine: "local",
        route: route?.name ?? "none",
        status: local[0],
        seconds: (performance.now() - started) / 1000,
        method: req.method,
        path: req.path,
        client: client.remoteAddress ?? "",
        bytesIn: 0,
        bytesOut: req.method === "HEAD" ? 0 : Buffer.byteLength(local[3]),
      });
    } else {
      const result = await forwardRequest(client, reader, req, route, state, rt, started, conns);
      if (result === "done") return;
      keep = result === "keep-alive";
    }
    if (!keep) {
      closeGracefully(client);
      return;
    }
  }
}

const REFUSED_BODY = "503 Service Unavailable: too many connections\n";
const REFUSED =
  "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n" +
  `content-length: ${REFUSED_BODY.length}\r\nconnection: close\r\n\r\n${REFUSED_BODY}`;

/** Starts an HTTP listener whose routes and options come from `source` at each request. */
export async function startHttpListener(
  address: HostPort,
  engine: "splice" | "buffered",
  source: StateSource,
): Promise<RunningProxy> {
  if (engine === "buffered") return startBufferedServer(address, source);
  const clients = new ConnectionSet();
  // Routes that ask for the buffered engine get their connections handed to this one.
  let bufferedEngine: BufferedEngine | null = null;
  const buffered = () => {
    bufferedEngine ??= createBufferedEngine(source);
    return bufferedEngine;
  };
  // Paused on accept: nothing is read before the connection's reader asks for it.
  const label = `${address.host}:${address.port}`;
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) => {
    // Over the limit: a clear 503 rather than Node's silent drop (net.Server.maxConnections),
    // so a client or load balancer knows to go elsewhere. The limit follows reloads.
    if (clients.all.size >= source().opts.limits.maxConnections) {
      connectionsRefused.inc({ listener: label, reason: "max_connections" });
      client.on("error", () => undefined);
      client.write(REFUSED);
      closeGracefully(client);
      return;
    }
    clients.add(client);
    activeConnections.inc({ listener: label });
    client.once("close", () => activeConnections.dec({ listener: label }));
    // Comparison mode: this connection, all its requests, goes the ordinary Node way.
    const ratio = source().opts.bufferedRatio;
    if (ratio > 0 && Math.random() < ratio) {
      buffered().server.emit("connection", client);
      client.resume();
      return;
    }
    serveClient(client, source, buffered, clients).catch((err: unknown) => {
      log.error({ err }, "connection failed");
      client.destroy();
    });
  });
  return startListening(server, address, {
    closeAll: () => {
      clients.destroyAll();
      bufferedEngine?.close();
    },
    // Connections handed to the buffered engine are counted here and closed by it when idle.
    drain: () => Promise.all([clients.drain(), bufferedEngine?.drain()]).then(() => undefined),
  });
}

/** The no-file sidecar form: every request to one upstream. */
export async function startHttpProxy(opts: HttpProxyOptions): Promise<RunningProxy> {
  const cluster = Cluster.single(opts.upstream, opts.pool);
  const state: HttpListenerState = {
    opts,
    routes: new RouteTable([{ name: "all", match: {}, forward: { cluster: "upstream" } }]),
    clusters: new Map([["upstream", cluster]]),
  };
  const running = await startHttpListener(opts.listen, opts.engine, () => state);
  return {
    address: running.address,
    close: async () => {
      await running.close();
      cluster.close();
    },
    stopAccepting: running.stopAccepting,
    drain: running.drain,
  };
}
