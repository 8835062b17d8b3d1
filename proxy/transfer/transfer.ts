// Hands a body from one net.Socket to another: the bytes Node already read go first,
// then the kernel moves the rest with splice(), and both sockets return to Node usable.
// Falls back to a streaming copy, with the same contract, when splice is not possible.
import type { Socket } from "node:net";
import { warnRateLimited } from "../base/log.js";
import { type CopyHandle, type CopyOutcome, copyPump } from "./copy-pump.js";
import { writeHead } from "./head-write.js";
import { unwatchIdle, type Watched, watchIdle } from "./idle-watch.js";
import {
  type DirectionResult,
  directionResult,
  type NativeReport,
  type SpliceAddon,
  spliceAddon,
  spliceUnavailableReason,
} from "./native.js";
import { inLentMemory, readSwitchFor } from "./read-buffers.js";
import {
  flushWrites,
  type HeldSocket,
  holdForSplice,
  holdFully,
  holdSocket,
  isTls,
  releaseSocket,
  restartReading,
  streamFd,
} from "./socket-handoff.js";

/** How a transfer's bytes move: through a pipe with splice(), or through userspace. */
export type Pump = "splice" | "copy";

export interface TransferOptions {
  /** Exact number of bytes to move; omitted: until the source's EOF. */
  length?: number;
  /** Bytes of this body that the caller already took from the source. */
  prefix?: Buffer[];
  /** Latin-1 text to write to the destination before the body (a response head), with its first bytes. */
  lead?: string;
  /** Cancels the transfer; the error code is the reason's `code`, else ECANCELED. */
  signal?: AbortSignal;
  /** Fails with ETIMEDOUT when no byte was delivered for this long. */
  idleTimeoutMs?: number;
  /** "copy" forces the streaming path (the buffered baseline, tests). */
  pump?: "auto" | "copy";
  /** Half-close the destination once the source's EOF was passed on (until-EOF only). */
  shutdownDestination?: boolean;
  /** Called once `lead` and `prefix` have been written on (nothing refers to the prefix's bytes after it). */
  written?: () => void;
}

export interface TransferResult {
  pump: Pump;
  /** Bytes delivered to the destination, prefix included. */
  bytes: number;
  splicedBytes: number;
  copiedBytes: number;
  eof: boolean;
  pipeSize: number | null;
  /** Why the copy path moved the body when splice was asked for. */
  fallbackReason: string | null;
}

export class TransferError extends Error {
  constructor(
    readonly code: string,
    readonly side: "source" | "destination" | null,
    /** Bytes delivered before the failure, per direction for tunnels. */
    readonly bytes: number[],
    readonly pump: Pump,
  ) {
    super(`transfer failed: ${code}${side ? ` on the ${side}` : ""} after ${bytes.join("/")} bytes`);
    this.name = "TransferError";
  }
}

/** A running pump of either kind, with cancellation and progress. */
interface Running {
  pump: Pump;
  done: Promise<DirectionResult[]>;
  cancel(code: string): void;
  progress(): number;
  pipeSize(): number | null;
  unread(): Buffer[];
}

function splitAt(chunks: Buffer[], limit: number): { head: Buffer[]; rest: Buffer[]; headBytes: number } {
  const head: Buffer[] = [];
  const rest: Buffer[] = [];
  let n = 0;
  for (const c of chunks) {
    const room = limit - n;
    if (room <= 0) rest.push(c);
    else if (c.length <= room) {
      head.push(c);
      n += c.length;
    } else {
      head.push(c.subarray(0, room));
      rest.push(c.subarray(room));
      n += room;
    }
  }
  return { head, rest, headBytes: n };
}

const endpoints = new WeakMap<Socket, number>();

/**
 * The socket's splice endpoint, made on its first spliced body and kept until it closes: a
 * keep-alive connection pays the duplicate descriptor and poll handle once, not per body.
 * Throws (EMFILE) so that the caller can copy instead.
 */
function endpointOf(addon: SpliceAddon, end: SpliceEnd): number {
  if (end.endpoint !== undefined) return end.endpoint;
  const id = addon.endpoint(end.fd);
  endpoints.set(end.socket, id);
  // The duplicate holds the connection open: it goes as soon as Node has closed its own.
  end.socket.once("close", () => {
    endpoints.delete(end.socket);
    addon.release(id);
  });
  return id;
}

/** A socket that can be spliced: its endpoint, or the descriptor to make one from. */
interface SpliceEnd {
  socket: Socket;
  endpoint: number | undefined;
  /** Read only when there is no endpoint yet (each read of a handle's fd is a call into C++). */
  fd: number;
}

/** `socket` as a splice end, or null when it has neither an endpoint nor a descriptor. */
function spliceEnd(socket: Socket): SpliceEnd | null {
  const endpoint = endpoints.get(socket);
  if (endpoint !== undefined) return { socket, endpoint, fd: -1 };
  const fd = streamFd(socket);
  return fd === -1 ? null : { socket, endpoint, fd };
}

function runSplice(src: SpliceEnd, dst: SpliceEnd, length: number | null, shutdownDst: boolean): Running {
  const addon = spliceAddon();
  if (!addon) throw new Error("splice addon not loaded");
  const from = endpointOf(addon, src);
  const to = endpointOf(addon, dst);
  let cancelCode: string | null = null;
  let pipeSize: number | null = null;
  let resolveDone!: (dirs: DirectionResult[]) => void;
  const done = new Promise<DirectionResult[]>((resolve) => {
    resolveDone = resolve;
  });
  // Not bound to an AsyncResource (that cost 10 µs a transfer): the callback only settles a
  // promise, and whoever awaits it resumes in the async context it awaited in.
  const cb: NativeReport = (pipe, directions, b0, r0, f0, e0, b1, r1, f1, e1) => {
    pipeSize = pipe;
    const dirs = [directionResult(b0, r0, f0, e0)];
    if (directions > 1) dirs.push(directionResult(b1 as number, r1 as number, f1 as number, e1 as number));
    // A cancel names its own cause.
    if (cancelCode !== null) for (const d of dirs) if (d.error === "ECANCELED") d.error = cancelCode;
    resolveDone(dirs);
  };
  // Throws synchronously (EMFILE, pool cap) so that the caller can fall back to copying.
  const id = length === null ? addon.tunnel(from, to, cb) : addon.start(from, to, length, shutdownDst, cb);
  return {
    pump: "splice",
    done,
    cancel(code) {
      if (cancelCode === null) cancelCode = code;
      addon.cancel(id);
    },
    progress: () => addon.progress(id),
    pipeSize: () => pipeSize,
    unread: () => [],
  };
}

function copying(src: Socket, dst: Socket, length: number, shutdownDst: boolean): CopyHandle {
  const h = copyPump(src, dst, length, shutdownDst);
  restartReading(src);
  return h;
}

function fromCopy(handles: CopyHandle[]): Running {
  let unread: Buffer[] = [];
  const done = Promise.all(
    handles.map((h, i) =>
      h.done.then((o: CopyOutcome) => {
        if (o.error) for (const [j, other] of handles.entries()) if (j !== i) other.cancel("ECANCELED");
        if (i === 0) unread = o.unread;
        return { bytes: o.bytes, read: o.bytes, eof: o.eof, error: o.error, side: o.side };
      }),
    ),
  );
  return {
    pump: "copy",
    done,
    cancel: (code) => {
      for (const h of handles) h.cancel(code);
    },
    progress: () => handles.reduce((s, h) => s + h.progress(), 0),
    pipeSize: () => null,
    unread: () => unread,
  };
}

/** What supervise set up for a running pump, to undo with unsupervise. */
interface Supervision {
  idle: Watched | null;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | null;
}

/** Applies the abort signal and the idle timeout to a running pump. */
function supervise(run: Running, opts: { signal?: AbortSignal; idleTimeoutMs?: number }): Supervision {
  const { signal, idleTimeoutMs } = opts;
  let onAbort: (() => void) | null = null;
  if (signal !== undefined) {
    onAbort = () => {
      const code = (signal.reason as { code?: unknown } | undefined)?.code;
      run.cancel(typeof code === "string" ? code : "ECANCELED");
    };
    if (signal.aborted) onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
  }
  const idle = idleTimeoutMs && idleTimeoutMs > 0 ? watchIdle(run, idleTimeoutMs) : null;
  return { idle, signal, onAbort };
}

function unsupervise(s: Supervision): void {
  if (s.onAbort !== null) s.signal?.removeEventListener("abort", s.onAbort);
  if (s.idle !== null) unwatchIdle(s.idle);
}

/** Chooses the pump: splice when the addon is loaded and both sockets have fds. */
function spliceEnds(
  a: Socket,
  b: Socket,
  pump: TransferOptions["pump"],
): { ends: [SpliceEnd, SpliceEnd] | null; reason: string | null } {
  if (pump === "copy") return { ends: null, reason: null };
  // Bytes on a TLS leg are encrypted or decrypted in userspace: there is nothing to splice.
  if (isTls(a) || isTls(b)) return { ends: null, reason: "tls" };
  if (!spliceAddon()) return { ends: null, reason: spliceUnavailableReason() };
  const ea = spliceEnd(a);
  const eb = spliceEnd(b);
  if (ea === null || eb === null) return { ends: null, reason: "socket has no file descriptor" };
  return { ends: [ea, eb], reason: null };
}

/**
 * Splices that could not start since the process began, by errno (EMFILE, ENFILE, EAGAIN: the
 * pool's cap; "other"): read by the metrics when scraped, like the pipe pool's own counts.
 */
export const spliceFallbackCounts = new Map<string, number>();

/** Counts and describes a splice that could not start; the transfer is then copied. */
function setupFailed(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  const reason = /^E[A-Z]+$/.test(code) ? code : "other";
  spliceFallbackCounts.set(reason, (spliceFallbackCounts.get(reason) ?? 0) + 1);
  warnRateLimited(`splice:${reason}`, { reason: code }, "no pipe or descriptor for a splice: transfers are copied");
  return `splice setup failed: ${code}`;
}

function startPump(
  held: HeldSocket,
  dst: Socket,
  remaining: number | null,
  opts: TransferOptions,
  choice: { ends: [SpliceEnd, SpliceEnd] | null; reason: string | null },
): { run: Running; fallbackReason: string | null } {
  const src = held.socket;
  if (choice.ends) {
    try {
      return {
        run: runSplice(choice.ends[0], choice.ends[1], remaining ?? -1, opts.shutdownDestination ?? false),
        fallbackReason: null,
      };
    } catch (err) {
      // No pipe or fd to be had (EMFILE, ENFILE, pool cap): this transfer is copied instead.
      choice.reason = setupFailed(err);
    }
  }
  // The copy pump reads the source through the stream: its listeners must be set aside now.
  holdFully(held);
  return {
    run: fromCopy([copying(src, dst, remaining ?? -1, opts.shutdownDestination ?? false)]),
    fallbackReason: choice.reason,
  };
}

/** Writes `lead` and `chunks` to `dst`; true when all of it is in the kernel now. */
function sendFirst(dst: Socket, lead: string, chunks: Buffer[]): boolean {
  const body = chunks.length === 0 ? null : chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
  if (lead.length === 0 && (body === null || body.length === 0)) return dst.writableLength === 0 && !dst.connecting;
  return writeHead(dst, lead, body);
}

/**
 * Moves one body from `src` to `dst`. On success both sockets are Node's again, any bytes of
 * `src`'s next message in front of its buffer. Its stream is paused then, and whenever the
 * body was copied; a spliced socket read through `onread` keeps its stream's state (holdForSplice). On failure the
 * promise rejects with a TransferError and the caller should destroy both sockets.
 * The caller must not write to `dst` nor read `src` until the promise settles.
 */
export async function transfer(src: Socket, dst: Socket, opts: TransferOptions = {}): Promise<TransferResult> {
  if (src.destroyed || dst.destroyed)
    throw new TransferError("ERR_SOCKET_CLOSED", src.destroyed ? "source" : "destination", [0], "copy");
  const exact = opts.length !== undefined;
  if (exact && (!Number.isSafeInteger(opts.length) || (opts.length as number) < 0))
    throw new RangeError("length must be a non-negative integer");
  const choice = spliceEnds(src, dst, opts.pump);
  // A socket read through `onread` with nothing buffered is held for a splice by its handle alone.
  const held: HeldSocket =
    choice.ends !== null && src.readableLength === 0 && readSwitchFor(src) !== undefined ? holdForSplice(src) : holdSocket(src);
  const already = [...(opts.prefix ?? []), ...held.buffered];
  const split = exact
    ? splitAt(already, opts.length as number)
    : { head: already, rest: [], headBytes: already.reduce((s, c) => s + c.length, 0) };
  const { head, headBytes } = split;
  // Bytes of the source's next message go back to it: kept past `written`, so never a view of lent memory.
  const rest = split.rest.map((c) => (inLentMemory(c) ? Buffer.from(c) : c));
  try {
    // The lead and the bytes already read go first, straight to the kernel when the destination
    // is idle (no promise then); else through Node's queue, waited for before the pump starts.
    if (!sendFirst(dst, opts.lead ?? "", head)) await flushWrites(dst, []);
    opts.written?.();
  } catch (err) {
    releaseSocket(held, rest, false);
    throw new TransferError((err as NodeJS.ErrnoException).code ?? "EPIPE", "destination", [0], "copy");
  }
  const remaining = exact ? (opts.length as number) - headBytes : null;
  if (remaining === 0) {
    releaseSocket(held, rest, true);
    return {
      pump: "copy",
      bytes: headBytes,
      splicedBytes: 0,
      copiedBytes: headBytes,
      eof: false,
      pipeSize: null,
      fallbackReason: null,
    };
  }
  const { run, fallbackReason } = startPump(held, dst, remaining, opts, choice);
  const supervision = supervise(run, opts);
  const [dir] = await run.done;
  unsupervise(supervision);
  if (!dir) throw new Error("pump reported no direction");
  if (dir.error) {
    releaseSocket(held, [], false);
    throw new TransferError(dir.error, dir.side, [headBytes + dir.bytes], run.pump);
  }
  releaseSocket(held, run.unread(), true);
  const spliced = run.pump === "splice" ? dir.bytes : 0;
  return {
    pump: run.pump,
    bytes: headBytes + dir.bytes,
    splicedBytes: spliced,
    copiedBytes: headBytes + dir.bytes - spliced,
    eof: dir.eof,
    pipeSize: run.pipeSize(),
    fallbackReason,
  };
}

export interface TunnelOptions {
  /** Bytes already taken from `a` (to go to `b`) and from `b` (to go to `a`). */
  prefixAtoB?: Buffer[];
  prefixBtoA?: Buffer[];
  signal?: AbortSignal;
  idleTimeoutMs?: number;
  pump?: "auto" | "copy";
}

export interface TunnelResult {
  pump: Pump;
  aToB: number;
  bToA: number;
  splicedBytes: number;
  copiedBytes: number;
  fallbackReason: string | null;
}

/**
 * Full duplex until both directions reached EOF, each EOF passed on as a half-close.
 * The tunnel owns both sockets and destroys them when it ends. Sockets created with
 * allowHalfOpen: true keep the copy path's half-close semantics equal to splice's.
 */
export async function tunnel(a: Socket, b: Socket, opts: TunnelOptions = {}): Promise<TunnelResult> {
  const heldA = holdSocket(a);
  const heldB = holdSocket(b);
  const preAB = [...(opts.prefixAtoB ?? []), ...heldA.buffered];
  const preBA = [...(opts.prefixBtoA ?? []), ...heldB.buffered];
  const size = (cs: Buffer[]) => cs.reduce((s, c) => s + c.length, 0);
  const destroyBoth = () => {
    a.destroy();
    b.destroy();
  };
  try {
    await Promise.all([flushWrites(b, preAB), flushWrites(a, preBA)]);
  } catch (err) {
    destroyBoth();
    throw new TransferError((err as NodeJS.ErrnoException).code ?? "EPIPE", "destination", [0, 0], "copy");
  }
  const choice = spliceEnds(a, b, opts.pump);
  let run: Running | null = null;
  let fallbackReason = choice.reason;
  if (choice.ends) {
    try {
      run = runSplice(choice.ends[0], choice.ends[1], null, true);
    } catch (err) {
      fallbackReason = setupFailed(err);
    }
  }
  if (!run) run = fromCopy([copying(a, b, -1, true), copying(b, a, -1, true)]);
  const supervision = supervise(run, opts);
  const dirs = await run.done;
  unsupervise(supervision);
  destroyBoth();
  const ab = preAB.length ? size(preAB) : 0;
  const ba = preBA.length ? size(preBA) : 0;
  const [d0, d1] = dirs;
  if (!d0 || !d1) throw new Error("tunnel reported fewer than two directions");
  const failed = [d0, d1].find((d) => d.error && d.error !== "ECANCELED") ?? [d0, d1].find((d) => d.error);
  if (failed?.error) throw new TransferError(failed.error, failed.side, [ab + d0.bytes, ba + d1.bytes], run.pump);
  const spliced = run.pump === "splice" ? d0.bytes + d1.bytes : 0;
  const total = ab + ba + d0.bytes + d1.bytes;
  return {
    pump: run.pump,
    aToB: ab + d0.bytes,
    bToA: ba + d1.bytes,
    splicedBytes: spliced,
    copiedBytes: total - spliced,
    fallbackReason,
  };
}
