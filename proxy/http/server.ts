// The HTTP listener: accepts client connections and runs each one's request loop,
// or hands the whole listener to the buffered engine (http-proxy-3).
import net from "node:net";
import type { HostPort } from "../address.js";
import { log } from "../log.js";
import { startBufferedServer } from "./buffered.js";
import { HttpError, sendErrorAndClose } from "./errors.js";
import { AbortAfterHead, type ClientContext, ClientGone, closeGracefully, proxyExchange } from "./exchange.js";
import { parseRequestHead } from "./head.js";
import type { HttpProxyOptions } from "./options.js";
import { PeerClosed, ReadTimeout, SocketReader } from "./socket-reader.js";
import { UpstreamPool } from "./upstream-pool.js";

export interface RunningProxy {
  address: HostPort;
  close(): Promise<void>;
}

async function serveClient(client: net.Socket, opts: HttpProxyOptions, pool: UpstreamPool): Promise<void> {
  client.setNoDelay(true);
  client.on("error", () => undefined);
  const reader = new SocketReader(client);
  const ctx: ClientContext = { client, reader, clientAddress: client.remoteAddress ?? "", opts, pool, engine: "auto" };
  let first = true;
  for (;;) {
    let req: ReturnType<typeof parseRequestHead>;
    try {
      // An idle keep-alive connection may wait longer than a request may take to arrive.
      const wait = first ? opts.timeouts.headMs : opts.timeouts.keepAliveMs;
      await reader.waitForData(wait);
      const head = await reader.readHead(opts.limits.maxHeadBytes, opts.limits.maxUriBytes + 64, opts.timeouts.headMs);
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
    let outcome: Awaited<ReturnType<typeof proxyExchange>>;
    try {
      outcome = await proxyExchange(ctx, req);
    } catch (err) {
      if (err instanceof HttpError) sendErrorAndClose(client, err.status, err.message);
      else if (err instanceof AbortAfterHead) {
        log.debug({ reason: err.reason }, "response aborted");
        // A reset, not a FIN: a truncated body must never look complete.
        client.resetAndDestroy();
      } else if (err instanceof ClientGone) client.destroy();
      else {
        log.error({ err }, "exchange failed");
        client.destroy();
      }
      return;
    }
    if (outcome === "consumed") return;
    if (outcome === "close") {
      closeGracefully(client);
      return;
    }
  }
}

export async function startHttpProxy(opts: HttpProxyOptions): Promise<RunningProxy> {
  if (opts.engine === "buffered") return startBufferedServer(opts);
  const pool = new UpstreamPool(opts.upstream, opts.pool);
  const clients = new Set<net.Socket>();
  // Paused on accept: nothing is read before the connection's reader asks for it.
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) => {
    clients.add(client);
    client.once("close", () => clients.delete(client));
    serveClient(client, opts, pool).catch((err: unknown) => {
      log.error({ err }, "connection failed");
      client.destroy();
    });
  });
  server.maxConnections = opts.limits.maxConnections;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.listen.port, opts.listen.host, () => resolve());
  });
  const addr = server.address() as net.AddressInfo;
  return {
    address: { host: addr.address, port: addr.port },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        pool.close();
        for (const c of clients) c.destroy();
      }),
  };
}
