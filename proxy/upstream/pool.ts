// Keep-alive connections to one upstream endpoint: bounded in number, idle ones closed
// after a while, and a connection comes back only after a message that ended cleanly.
import type net from "node:net";
import type { HostPort } from "../base/address.js";
import { RearmableTimer } from "../base/rearmable-timer.js";

/** What the pool needs of a connection's reader: idle watching and whether it holds unread bytes. */
export interface ConnectionReader {
  readonly bufferedBytes: number;
  /** The peer ended or the socket failed. */
  readonly finished: boolean;
  /** Calls `onEvent` once on any byte, EOF or error while the connection idles; null stops watching. */
  watchIdle(onEvent: (() => void) | null): void;
}

/** How the pool's owner wants connections made and read (the session supplies it). */
export interface Connector {
  /** Starts a connection to `endpoint` (plain TCP, or TLS on top of it). */
  connect(endpoint: HostPort): net.Socket;
  /** The event that says the connection is ready for a request: "connect", or "secureConnect" for TLS. */
  readonly readyEvent: "connect" | "secureConnect";
  /** Whether a connect error is a TLS failure (verification, handshake) rather than a TCP one. */
  isTlsFailure?(err: NodeJS.ErrnoException): boolean;
  reader(socket: net.Socket): ConnectionReader;
}

/** Why no connection could be had. */
export class PoolError extends Error {
  constructor(
    readonly kind: "queue_timeout" | "connect_timeout" | "connect_failed" | "no_resources" | "tls_failed",
    detail: string,
  ) {
    super(detail);
    this.name = "PoolError";
  }
}

export interface PoolOptions {
  maxConnections: number;
  maxIdle: number;
  idleTimeoutMs: number;
  connectTimeoutMs: number;
  /** How long a request waits for a free connection when all are busy. */
  queueTimeoutMs: number;
}

export interface UpstreamConnection {
  socket: net.Socket;
  reader: ConnectionReader;
  /** Served a request before: it may have been closed by the upstream meanwhile. */
  reused: boolean;
  /** Its idle timer: armed on each release for how long it may idle this time, disarmed when taken. */
  idleTimer: RearmableTimer;
}

/**
 * How much sooner than the upstream's announced keep-alive timeout sluice closes an idle
 * connection itself, so that a request never goes out on a connection the upstream is closing.
 */
const KEEP_ALIVE_MARGIN_MS = 1000;

export class UpstreamPool {
  private idle: UpstreamConnection[] = [];
  private open = 0;
  private waiters: Array<(c: UpstreamConnection | null) => void> = [];
  private closed = false;

  constructor(
    readonly endpoint: HostPort,
    private readonly opts: PoolOptions,
    private readonly connector: Connector,
  ) {}

  stats() {
    return { open: this.open, idle: this.idle.length, waiting: this.waiters.length };
  }

  /**
   * An idle connection (the most recently used) or a new one. `fresh`: a new one while the
   * limit allows, for a request whose pooled connection turned out closed (the others have
   * been idle at least as long).
   */
  async acquire(fresh = false): Promise<UpstreamConnection> {
    if (fresh && this.open < this.opts.maxConnections) return this.connect();
    const idle = this.takeIdle();
    if (idle) return idle;
    if (this.open < this.opts.maxConnections) return this.connect();
    const conn = await new Promise<UpstreamConnection | null>((resolve) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(null);
      }, this.opts.queueTimeoutMs);
      const waiter = (c: UpstreamConnection | null) => {
        clearTimeout(timer);
        resolve(c);
      };
      this.waiters.push(waiter);
    });
    if (!conn) throw new PoolError("queue_timeout", "no upstream connection available");
    return conn;
  }

  /** The most recently used idle connection, taken without waiting (no promise); null when none is idle. */
  takeIdle(): UpstreamConnection | null {
    const idle = this.idle.pop();
    if (!idle) return null;
    idle.idleTimer.disarm();
    idle.reader.watchIdle(null);
    idle.reused = true;
    return idle;
  }

  private connect(): Promise<UpstreamConnection> {
    this.open++;
    return new Promise((resolve, reject) => {
      const socket = this.connector.connect(this.endpoint);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new PoolError("connect_timeout", "upstream connect timed out"));
      }, this.opts.connectTimeoutMs);
      const conn: UpstreamConnection = {
        socket,
        reader: this.connector.reader(socket),
        reused: false,
        idleTimer: new RearmableTimer(() => this.drop(conn)),
      };
      socket.once("close", () => {
        conn.idleTimer.dispose();
        this.forget(conn);
        this.open--;
        this.handOver();
      });
      socket.once("error", (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        // Out of descriptors or memory here is this process's shortage, not the upstream's failure.
        const local = err.code === "EMFILE" || err.code === "ENFILE" || err.code === "ENOBUFS" || err.code === "ENOMEM";
        if (this.connector.isTlsFailure?.(err))
          reject(new PoolError("tls_failed", `upstream TLS failed: ${err.code ?? "?"} ${err.message}`));
        else
          reject(new PoolError(local ? "no_resources" : "connect_failed", `upstream connect failed: ${err.code ?? err.message}`));
      });
      socket.once(this.connector.readyEvent, () => {
        clearTimeout(timer);
        socket.pause();
        resolve(conn);
      });
    });
  }

  /** A closed connection frees a slot: a waiting request gets a new one. */
  private handOver(): void {
    const waiter = this.waiters.shift();
    if (!waiter) return;
    if (this.closed) {
      waiter(null);
      return;
    }
    this.connect().then(waiter, () => waiter(null));
  }

  /**
   * `reusable` only when both messages on it ended cleanly and nobody asked to close.
   * `upstreamIdleMs`: how long the upstream said it keeps an idle connection (its
   * `Keep-Alive: timeout=`); sluice closes it a margin before that.
   */
  release(conn: UpstreamConnection, reusable: boolean, upstreamIdleMs: number | null = null): void {
    const { socket, reader } = conn;
    const limit =
      upstreamIdleMs === null
        ? this.opts.idleTimeoutMs
        : Math.min(this.opts.idleTimeoutMs, upstreamIdleMs - KEEP_ALIVE_MARGIN_MS);
    if (!reusable || limit <= 0 || this.closed || socket.destroyed || reader.bufferedBytes > 0 || reader.finished) {
      socket.destroy();
      return;
    }
    const waiter = this.waiters.shift();
    if (waiter) {
      conn.reused = true;
      waiter(conn);
      return;
    }
    if (this.idle.length >= this.opts.maxIdle) {
      socket.destroy();
      return;
    }
    // Each idle period gets the whole limit (a shorter one than the last takes effect at once).
    conn.idleTimer.arm(limit);
    // An idle upstream must say nothing: a byte or an EOF means it is gone or broken.
    reader.watchIdle(() => this.drop(conn));
    this.idle.push(conn);
  }

  private drop(conn: UpstreamConnection): void {
    this.forget(conn);
    conn.socket.destroy();
  }

  private forget(conn: UpstreamConnection): void {
    conn.idleTimer.disarm();
    const i = this.idle.indexOf(conn);
    if (i !== -1) this.idle.splice(i, 1);
  }

  close(): void {
    this.closed = true;
    for (const c of this.idle) {
      c.idleTimer.dispose();
      c.socket.destroy();
    }
    this.idle = [];
    for (const w of this.waiters.splice(0)) w(null);
  }
}
