// Connection admission for the whole process (HAProxy's global maxconn): by default derived
// from the descriptor limit (`ulimit -n`), as HAProxy derives maxconn; or a fixed number of
// connections (`max_connections` at the top of the config). A connection over the limit waits,
// paused, for a moment; then it is refused with a clear 503, never left to fail halfway for
// want of a descriptor. EMFILE handling stays as the last line behind it.

import type net from "node:net";
import { performance } from "node:perf_hooks";
import { openFileLimit } from "../base/fd-limit.js";
import { warnRateLimited } from "../base/log.js";

/**
 * Descriptors one client connection may hold at once: itself, its upstream connection, a pipe
 * (two), and the splice pump's own duplicates of the two sockets (two).
 */
export const FDS_PER_HTTP_CONNECTION = 6;
/** A TCP tunnel: two sockets, a pipe and two duplicates in each direction. */
export const FDS_PER_TUNNEL = 10;
/** Kept for what is not a client connection: stdio, listeners, admin, watchers, idle upstream connections, Node's own. */
export const RESERVED_FDS = 64;
/** How long a connection over the budget waits for room before it is refused. */
export const QUEUE_TIMEOUT_MS = 2000;
/** The limit is re-read at most this often (prlimit can change it under a running process). */
const LIMIT_REFRESH_MS = 1000;

export type Refusal = "fd_limit" | "process_limit";
export type ConnectionKind = "http" | "tunnel";
/** `auto`: a budget of descriptors from the limit; a number: that many connections of any kind. */
export type AdmissionLimit = "auto" | number;

interface Waiting {
  socket: net.Socket;
  kind: ConnectionKind;
  start: () => void;
  refuse: () => void;
  timer: NodeJS.Timeout;
}

export class Admission {
  /** Units held: descriptors (auto) or connections (a fixed number); see costOf. */
  private used = 0;
  private mode: AdmissionLimit = "auto";
  /** Every counted socket: its kind, and whether it is being served or waits (or was refused, and lingers). */
  private readonly held = new Map<net.Socket, { kind: ConnectionKind; admitted: boolean }>();
  private readonly waiting: Waiting[] = [];
  private limit: { value: number | null; at: number } = { value: null, at: Number.NEGATIVE_INFINITY };

  constructor(
    private readonly readLimit: () => number | null = openFileLimit,
    private readonly queueTimeoutMs = QUEUE_TIMEOUT_MS,
  ) {}

  /** Follows the config (reloads included); connections already in keep their place, counted anew. */
  setLimit(limit: AdmissionLimit): void {
    if (limit !== this.mode) {
      this.mode = limit;
      // The unit changed (descriptors or connections): count what is held again in the new one.
      this.used = 0;
      for (const h of this.held.values()) this.used += this.units(h);
    }
    this.admitWaiting();
  }

  /** Units client connections may hold: descriptors, or connections; Infinity where the limit is unknown. */
  budget(): number {
    if (this.mode !== "auto") return this.mode;
    const now = performance.now();
    if (now - this.limit.at >= LIMIT_REFRESH_MS) this.limit = { value: this.readLimit(), at: now };
    return this.limit.value === null ? Number.POSITIVE_INFINITY : Math.max(0, this.limit.value - RESERVED_FDS);
  }

  /** Units held by connections admitted or waiting. */
  inUse(): number {
    return this.used;
  }

  /** Connections waiting for room. */
  queued(): number {
    return this.waiting.length;
  }

  /**
   * Runs `start` now if `cost` descriptors are free; else the socket waits (it must be paused)
   * until a connection closes or the queue timeout, when `refuse` answers it. `refuse` is also
   * called at once when there is no room even to wait. The socket is counted until it closes.
   */
  admit(socket: net.Socket, kind: ConnectionKind, start: () => void, refuse: (reason: Refusal) => void): void {
    const budget = this.budget();
    const reason: Refusal = this.mode === "auto" ? "fd_limit" : "process_limit";
    if (this.waiting.length === 0 && this.used + this.costOf(kind) <= budget) {
      this.hold(socket, kind, true);
      start();
      return;
    }
    warnRateLimited(
      "admission",
      { limit: this.mode, budget, waiting: this.waiting.length },
      this.mode === "auto"
        ? "connections wait or are refused: the file descriptor limit (ulimit -n) is nearly reached"
        : "connections wait or are refused: max_connections is reached",
    );
    // Waiting costs the socket's own descriptor; when even that is not free, refuse at once.
    if (this.used + this.waitCost() > budget) {
      this.hold(socket, kind, false);
      refuse(reason);
      return;
    }
    const w: Waiting = {
      socket,
      kind,
      start,
      refuse: () => refuse(reason),
      timer: setTimeout(() => {
        if (this.dequeue(w)) w.refuse();
      }, this.queueTimeoutMs),
    };
    this.waiting.push(w);
    // Out of the queue before its descriptor is given back (which admits the next one).
    socket.once("close", () => {
      if (this.dequeue(w)) clearTimeout(w.timer);
    });
    this.hold(socket, kind, false);
  }

  /** In descriptors (auto) a connection's worst case; with a fixed number, one. */
  private costOf(kind: ConnectionKind): number {
    if (this.mode !== "auto") return 1;
    return kind === "http" ? FDS_PER_HTTP_CONNECTION : FDS_PER_TUNNEL;
  }

  /** A waiting connection holds its own descriptor; it is not yet one of max_connections. */
  private waitCost(): number {
    return this.mode === "auto" ? 1 : 0;
  }

  /** What a counted socket holds, in the current unit. */
  private units(h: { kind: ConnectionKind; admitted: boolean }): number {
    return h.admitted ? this.costOf(h.kind) : this.waitCost();
  }

  /** Counts `socket` until it closes, then lets waiting connections in. */
  private hold(socket: net.Socket, kind: ConnectionKind, admitted: boolean): void {
    const h = { kind, admitted };
    this.held.set(socket, h);
    this.used += this.units(h);
    socket.once("close", () => {
      this.used -= this.units(h);
      this.held.delete(socket);
      this.admitWaiting();
    });
  }

  private admitWaiting(): void {
    const budget = this.budget();
    while (this.waiting.length > 0) {
      const w = this.waiting[0] as Waiting;
      const h = this.held.get(w.socket);
      if (!h) {
        this.waiting.shift();
        continue;
      }
      // The waiting socket already holds what waiting costs.
      const more = this.costOf(w.kind) - this.waitCost();
      if (this.used + more > budget) return;
      this.waiting.shift();
      clearTimeout(w.timer);
      h.admitted = true;
      this.used += more;
      w.start();
    }
  }

  private dequeue(w: Waiting): boolean {
    const i = this.waiting.indexOf(w);
    if (i < 0) return false;
    this.waiting.splice(i, 1);
    return true;
  }
}
