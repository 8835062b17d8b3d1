// Raw TCP mode: every accepted connection becomes a full-duplex spliced tunnel to the upstream.
import net from "node:net";
import { formatHostPort, type HostPort } from "./address.js";
import { log } from "./log.js";
import { TransferError, tunnel } from "./transfer.js";

export interface TcpForwarderOptions {
  listen: HostPort;
  /** Where each new connection goes; asked once per connection. */
  upstream: HostPort | (() => HostPort);
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  engine?: "auto" | "copy";
}

export interface RunningForwarder {
  address: HostPort;
  /** Stops accepting and ends every tunnel. */
  close(): Promise<void>;
  /** Stops accepting; open tunnels run to their end. */
  stopAccepting(): Promise<void>;
}

export async function startTcpForwarder(opts: TcpForwarderOptions): Promise<RunningForwarder> {
  const clients = new Set<net.Socket>();
  // Paused on accept: no client byte enters Node before the tunnel holds the socket.
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) => {
    clients.add(client);
    client.on("close", () => clients.delete(client));
    client.on("error", () => undefined);
    const target = typeof opts.upstream === "function" ? opts.upstream() : opts.upstream;
    const upstream = net.connect({ ...target, allowHalfOpen: true });
    upstream.on("error", (err) => {
      log.warn({ upstream: formatHostPort(target), err: err.message }, "upstream connect failed");
      client.destroy();
    });
    upstream.setTimeout(opts.connectTimeoutMs, () => upstream.destroy(new Error("connect timeout")));
    upstream.once("connect", () => {
      upstream.setTimeout(0);
      upstream.removeAllListeners("error");
      upstream.on("error", () => undefined);
      tunnel(client, upstream, { idleTimeoutMs: opts.idleTimeoutMs, engine: opts.engine })
        .then((r) => log.debug(r, "tunnel closed"))
        .catch((err: unknown) => {
          if (err instanceof TransferError) log.debug({ code: err.code, bytes: err.bytes }, "tunnel failed");
          else log.error({ err }, "tunnel error");
        });
    });
  });
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
        for (const c of clients) c.destroy();
      }),
    // The listening socket closes now; server.close()'s callback would wait for every connection.
    stopAccepting: async () => void server.close(),
  };
}
