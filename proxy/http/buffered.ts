// The buffered engine: the same listener served the ordinary Node way, with
// http-proxy-3 over node:http. It is the baseline sluice is measured against.
import http from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { createProxyServer } from "http-proxy-3";
import { log } from "../log.js";
import type { HttpProxyOptions } from "./options.js";
import type { RunningProxy } from "./server.js";

export async function startBufferedServer(opts: HttpProxyOptions): Promise<RunningProxy> {
  const agent = new http.Agent({
    keepAlive: true,
    maxSockets: opts.pool.maxConnections,
    maxFreeSockets: opts.pool.maxIdle,
    timeout: opts.pool.idleTimeoutMs,
  });
  const proxy = createProxyServer({
    target: { host: opts.upstream.host, port: opts.upstream.port },
    agent,
    xfwd: opts.forwarding.xForwarded,
    ws: true,
    proxyTimeout: opts.timeouts.firstByteMs,
    ...(opts.forwarding.hostRewrite ? { headers: { host: opts.forwarding.hostRewrite } } : {}),
  });
  proxy.on("error", (err: Error, _req: unknown, res: unknown) => {
    log.debug({ err: err.message }, "buffered engine: upstream error");
    if (res && typeof (res as http.ServerResponse).writeHead === "function") {
      const r = res as http.ServerResponse;
      if (!r.headersSent) {
        r.writeHead(502, { "content-type": "text/plain; charset=utf-8", connection: "close" });
        r.end(`502 Bad Gateway: ${err.message}\n`);
      } else r.destroy();
    } else (res as Socket | undefined)?.destroy();
  });
  const server = http.createServer(
    {
      maxHeaderSize: opts.limits.maxHeadBytes,
      requestTimeout: opts.timeouts.headMs + opts.timeouts.bodyIdleMs,
      headersTimeout: opts.timeouts.headMs,
      keepAliveTimeout: opts.timeouts.keepAliveMs,
    },
    (req, res) => {
      if (opts.forwarding.via) res.setHeader("via", opts.forwarding.via);
      proxy.web(req, res);
    },
  );
  server.on("upgrade", (req, socket, head) => proxy.ws(req, socket as Socket, head));
  server.maxHeadersCount = opts.limits.maxHeaders;
  server.maxConnections = opts.limits.maxConnections;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.listen.port, opts.listen.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  return {
    address: { host: addr.address, port: addr.port },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        proxy.close();
        agent.destroy();
      }),
  };
}
