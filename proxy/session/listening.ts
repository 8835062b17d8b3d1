// Binding a server and stopping it, the same way for every kind of listener: at once
// (close) or gracefully (drain: stop accepting, let each connection finish what it is doing).
import cluster from "node:cluster";
import { lookup } from "node:dns/promises";
import net from "node:net";
import { getSystemErrorMap } from "node:util";
import type { HostPort } from "../base/address.js";
import { log } from "../base/log.js";
import { spliceAddon } from "../transfer/native.js";

export interface Listening {
  address: HostPort;
  /** Stops accepting and closes every connection. */
  close(): Promise<void>;
  /** Stops accepting; open connections finish what they are doing. */
  stopAccepting(): Promise<void>;
  /** Accepts again on the same address after stopAccepting (a reload that had to be rolled back). */
  resumeAccepting(): Promise<void>;
  /**
   * Stops accepting, closes idle connections and asks busy ones to close after their
   * current exchange; resolves when none is left. The caller bounds it with close().
   */
  drain(): Promise<void>;
}

/** How long a connection idle at the start of a drain may take to show a request already sent. */
const DRAIN_IDLE_GRACE_MS = 250;

/** The connections of one listener, and which of them are between requests. */
export class ConnectionSet {
  readonly all = new Set<net.Socket>();
  private readonly idle = new Set<net.Socket>();
  private waiters: Array<() => void> = [];
  draining = false;

  /**
   * `closeIdle` closes a connection that is idle when the drain starts or becomes idle during
   * it; nothing is unanswered on it, so a plain close is what HTTP/1.1 clients expect of keep-alive.
   */
  constructor(private readonly closeIdle: (s: net.Socket) => void = (s) => s.destroy()) {}

  add(s: net.Socket): void {
    this.all.add(s);
    s.once("close", () => {
      this.all.delete(s);
      this.idle.delete(s);
      if (this.all.size === 0) for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Marks a connection as waiting for its next request (true) or busy (false). */
  setIdle(s: net.Socket, idle: boolean): void {
    if (!idle) this.idle.delete(s);
    else {
      this.idle.add(s);
      if (this.draining) this.closeIfStillIdle(s);
    }
  }

  /**
   * A connection idle when the drain starts may already have its next request in the kernel's
   * buffer, not yet read: it gets a moment for that request to arrive (and be answered with
   * `Connection: close`) before it is closed.
   */
  private closeIfStillIdle(s: net.Socket): void {
    setTimeout(() => {
      if (!this.idle.delete(s)) return;
      this.closeIdle(s);
    }, DRAIN_IDLE_GRACE_MS).unref();
  }

  drain(): Promise<void> {
    this.draining = true;
    for (const s of this.idle) this.closeIfStillIdle(s);
    if (this.all.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  destroyAll(): void {
    for (const s of this.all) s.destroy();
  }
}

export interface ListenHooks {
  /** Ends the open connections (close). */
  closeAll(): void;
  /** Starts a graceful drain; resolves when no connection is left. */
  drain(): Promise<void>;
}

/**
 * Descriptors a proxy listener accepts on: its listening socket and duplicates of it. libuv
 * accepts one connection per descriptor per turn of the event loop (libuv#3696), so a burst
 * of new connections into a busy proxy waits one turn per connection on a single descriptor
 * (docs/BENCHMARKS.md, "Where the 200-connection tail comes from"); HAProxy takes up to 64.
 * Eight, not more: each is a descriptor out of the reserve admission keeps (RESERVED_FDS).
 */
export const ACCEPTORS = 8;

/**
 * Servers that accept on duplicates of `server`'s listening socket, each made by `make` (the
 * same connection handler), so that each turn accepts up to ACCEPTORS connections. None
 * without the addon (which dups), nor in a cluster worker that listens through the primary
 * (its server's handle has no descriptor: see listenOn).
 */
function openAcceptors(server: net.Server, make: () => net.Server): net.Server[] {
  const addon = spliceAddon();
  // Node keeps the listening socket's descriptor on its handle (Unix).
  const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (addon === null || typeof fd !== "number" || fd < 0) return [];
  const out: net.Server[] = [];
  for (let i = 1; i < ACCEPTORS; i++) {
    const copy = addon.dup(fd);
    if (copy < 0) break;
    const extra = make();
    extra.on("error", (err) => {
      log.warn({ err: err.message }, "an extra acceptor failed; the listener goes on with the others");
      extra.close();
    });
    listenOnDescriptor(extra, copy);
    out.push(extra);
  }
  return out;
}

/**
 * A server listens on a listening socket's descriptor through a socket object that carries it
 * (listen(handle) takes "anything with an underlying _handle"): in a cluster worker,
 * listen({ fd }) would ask the primary to listen on the primary's descriptor of that number.
 */
function listenOnDescriptor(server: net.Server, fd: number): void {
  server.listen(new net.Socket({ fd, readable: false, writable: false }));
}

/** A failed listen as Node reports one: `listen EADDRINUSE: address already in use 127.0.0.1:8080`. */
function listenError(errno: number, at: HostPort): Error {
  const [code, message] = getSystemErrorMap().get(errno) ?? ["UNKNOWN", "unknown error"];
  return Object.assign(new Error(`listen ${code}: ${message} ${at.host}:${at.port}`), {
    code,
    errno,
    syscall: "listen",
    address: at.host,
    port: at.port,
  });
}

/**
 * Binds `server` to `at`. A cluster worker binds a socket of its own with SO_REUSEPORT when the
 * addon can make one and the port is fixed: the kernel then spreads new connections over the
 * workers' sockets. Through node:cluster instead, the primary accepts every connection and
 * hands it to a worker over IPC, waiting for the worker's answer before the next goes to it:
 * with a new connection per request, two workers served half the requests one process did
 * (docs/BENCHMARKS.md, "Workers listen on sockets of their own").
 */
async function listenOn(server: net.Server, at: HostPort): Promise<void> {
  const addon = cluster.isWorker && at.port !== 0 ? spliceAddon() : null;
  // The addon takes a numeric address: a name is looked up as listen() would (its first address).
  const fd =
    addon === null ? null : addon.listenReusePort(net.isIP(at.host) ? at.host : (await lookup(at.host)).address, at.port, 511);
  if (fd !== null && fd < 0) throw listenError(fd, at);
  await new Promise<void>((resolve, reject) => {
    const failed = (err: Error) => {
      server.off("listening", listening);
      reject(err);
    };
    const listening = () => {
      server.off("error", failed);
      resolve();
    };
    server.once("error", failed);
    server.once("listening", listening);
    if (fd === null) server.listen(at.port, at.host);
    else listenOnDescriptor(server, fd);
  });
}

/**
 * Rejects when `at` is in use, as listening would: a primary checks each listener address it
 * has not served yet (at start, and those a reload adds) with a socket of its own and no
 * SO_REUSEPORT, so a second sluice on the same port stops there (cannot start: EADDRINUSE)
 * instead of its workers joining the first one's sockets and taking a share of its connections.
 */
export async function checkAddressFree(at: HostPort): Promise<void> {
  if (at.port === 0) return;
  // In the primary listenOn binds as a single process does: no SO_REUSEPORT.
  const probe = net.createServer();
  await listenOn(probe, at);
  await new Promise((resolve) => probe.close(resolve));
}

/**
 * Listens on `at`; a bind error rejects. With `acceptor` (a server with the same connection
 * handler), the listening socket is also accepted on through duplicates (see ACCEPTORS).
 */
export async function startListening(
  server: net.Server,
  at: HostPort,
  hooks: ListenHooks,
  acceptor?: () => net.Server,
): Promise<Listening> {
  await listenOn(server, at);
  let extras = acceptor ? openAcceptors(server, acceptor) : [];
  const addr = server.address() as net.AddressInfo;
  // Every descriptor of the socket closes, or it would go on listening (and holding the port).
  const closeExtras = () => {
    for (const e of extras) e.close();
    extras = [];
  };
  // The listening socket closes now; server.close()'s callback would wait for every connection.
  const stopAccepting = async () => {
    closeExtras();
    if (server.listening) server.close();
  };
  const resumeAccepting = async () => {
    if (server.listening) return;
    await listenOn(server, { host: addr.address, port: addr.port });
    if (acceptor) extras = openAcceptors(server, acceptor);
  };
  return {
    address: { host: addr.address, port: addr.port },
    resumeAccepting,
    close: () =>
      new Promise<void>((resolve) => {
        closeExtras();
        if (!server.listening) resolve();
        else server.close(() => resolve());
        hooks.closeAll();
      }),
    stopAccepting,
    drain: async () => {
      await stopAccepting();
      await hooks.drain();
    },
  };
}

/**
 * Drain hooks for a node:http server (admin, demo, buffered engine): its connections are
 * counted as they arrive, idle ones are closed until none is left.
 */
export function httpServerHooks(server: import("node:http").Server, closeAll?: () => void): ListenHooks {
  const conns = new ConnectionSet(() => undefined);
  server.on("connection", (s: net.Socket) => conns.add(s));
  return {
    closeAll: closeAll ?? (() => server.closeAllConnections()),
    drain: () => {
      // Node's server knows which connections are between requests; ask it until all are gone.
      const tick = setInterval(() => server.closeIdleConnections(), 100);
      server.closeIdleConnections();
      return conns.drain().finally(() => clearInterval(tick));
    },
  };
}
