// Raw TCP mode: every accepted connection becomes a full-duplex spliced tunnel to the upstream.
import net from "node:net";
import { formatHostPort, type HostPort } from "../base/address.js";
import { log } from "../base/log.js";
import { TransferError, tunnel } from "../transfer/transfer.js";
import type { Admission, Refusal } from "./admission.js";
import { ConnectionSet, type Listening, startListening } from "./listening.js";

export interface TcpForwarderOptions {
  listen: HostPort;
  /** Where each new connection goes; asked once per connection (null: nowhere yet, the connection is closed). */
  upstream: HostPort | (() => HostPort | null);
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** Tunnels open (a gauge). */
  tunnels: { inc(): void; dec(): void };
  /** The process's connection admission, shared with the other listeners. */
  admission: Admission;
  /** Counts a connection refused for want of descriptors. */
  refused(reason: Refusal): void;
}

export type RunningForwarder = Listening;

export async function startTcpForwarder(opts: TcpForwarderOptions): Promise<RunningForwarder> {
  // A tunnel is never idle: a drain waits for each to end.
  const clients = new ConnectionSet();
  // Paused on accept: no client byte enters Node before the tunnel holds the socket.
  const onConnection = (client: net.Socket) => {
    client.on("error", () => undefined);
    // Over the descriptor budget: the connection waits a moment, then is closed (TCP has no way to say why).
    opts.admission.admit(
      client,
      "tunnel",
      () => open(client),
      (reason) => {
        opts.refused(reason);
        client.destroy();
      },
    );
  };
  const newServer = () => net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, onConnection);
  const open = (client: net.Socket) => {
    clients.add(client);
    const target = typeof opts.upstream === "function" ? opts.upstream() : opts.upstream;
    if (target === null) {
      client.destroy();
      return;
    }
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
      opts.tunnels.inc();
      tunnel(client, upstream, { idleTimeoutMs: opts.idleTimeoutMs })
        .finally(() => opts.tunnels.dec())
        .then((r) => log.debug(r, "tunnel closed"))
        .catch((err: unknown) => {
          if (err instanceof TransferError) log.debug({ code: err.code, bytes: err.bytes }, "tunnel failed");
          else log.error({ err }, "tunnel error");
        });
    });
  };
  return startListening(
    newServer(),
    opts.listen,
    { closeAll: () => clients.destroyAll(), drain: () => clients.drain() },
    newServer,
  );
}
