// The buffered engine: the same listener and routes served the ordinary Node way, with
// http-proxy-3 over node:http. It is the baseline sluice is measured against.
import http from "node:http";
import type { Socket } from "node:net";
import { createProxyServer } from "http-proxy-3";
import type { HostPort } from "../address.js";
import { startListening } from "../listening.js";
import { log } from "../log.js";
import { rewritePath } from "../routing.js";
import type { RunningProxy, StateSource } from "./server.js";

function plainError(res: http.ServerResponse, status: number, text: string): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", connection: "close" });
  res.end(`${status} ${text}\n`);
}

export interface BufferedEngine {
  /** A node:http server that is not listening: connections are handed to it. */
  server: http.Server;
  close(): void;
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

  /** Routes the request; returns where to send it, or null when it was answered here. */
  const route = (req: http.IncomingMessage, res: http.ServerResponse | null) => {
    const state = source();
    const headers: Array<[string, string]> = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2)
      headers.push([req.rawHeaders[i] as string, req.rawHeaders[i + 1] as string]);
    const path = req.url ?? "/";
    const r = state.routes.match({ method: req.method ?? "GET", path, host: req.headers.host ?? null, headers });
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
      const via = source().opts.forwarding.via;
      if (via) res.setHeader("via", via);
      const target = route(req, res);
      if (target) proxy.web(req, res, target);
    },
  );
  server.on("upgrade", (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
    const target = route(req, null);
    if (target) proxy.ws(req, socket, head, target);
    else socket.destroy();
  });
  server.maxHeadersCount = initial.limits.maxHeaders;
  server.maxConnections = initial.limits.maxConnections;
  return {
    server,
    close: () => {
      server.closeAllConnections();
      proxy.close();
      agent.destroy();
    },
  };
}

export async function startBufferedServer(address: HostPort, source: StateSource): Promise<RunningProxy> {
  const engine = createBufferedEngine(source);
  const { server } = engine;
  return startListening(server, address, () => engine.close());
}
