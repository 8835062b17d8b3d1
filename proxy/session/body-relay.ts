// Moves one message body between sockets in its framing. A payload run (the body, or one
// chunk's payload) with at least its threshold of bytes still to come goes through the kernel;
// chunk-size lines, trailers and the rest pass through here.
import type { Socket } from "node:net";
import { HttpError } from "../http1/errors.js";
import { CHUNK_LINE, FIELD_VALUE, TOKEN } from "../http1/grammar.js";
import type { BodyFraming } from "../http1/head.js";
import { takeSmallChunks } from "../http1/small-chunks.js";
import type { SocketReader } from "../http1/socket-reader.js";
import { type BodyCount, noBytes } from "../request/record.js";
import { TransferError, transfer } from "../transfer/transfer.js";

export interface BodyOptions {
  /** A Content-Length body with at least this many bytes still to read goes to transfer(). */
  spliceThreshold: number;
  /** The same for one chunk's payload (a transfer per chunk: worth it for larger runs only). */
  spliceChunkThreshold: number;
  idleTimeoutMs: number;
  /** 0: no limit. Over it the body fails with 413. */
  maxBytes: number;
  signal?: AbortSignal;
  /** Send chunk payloads without their framing (to an HTTP/1.0 client). */
  dechunk?: boolean;
  /** Latin-1 text (a response head) to send before the body, with its first bytes: only for a body that `movesByTransfer`. */
  lead?: string;
}

/**
 * Whether relayBody hands this body to transfer() whole (spliced when it can be): a
 * Content-Length body with at least the threshold still to read, or one that runs until close.
 */
export function movesByTransfer(framing: BodyFraming, from: SocketReader, spliceThreshold: number): boolean {
  if (framing.kind === "close") return true;
  return framing.kind === "length" && runByTransfer(framing.length, from, spliceThreshold);
}

/** A run of `n` payload bytes goes through transfer() when at least `threshold` of them are still to read. */
const runByTransfer = (n: number, from: SocketReader, threshold: number): boolean => n - from.bufferedBytes >= threshold;

export type BodyStats = BodyCount;
const noStats = noBytes;

/** Which peer a body failure belongs to, so the exchange knows whom to blame. */
export class BodyError extends Error {
  constructor(
    readonly side: "source" | "destination",
    readonly code: string,
    readonly stats: BodyStats,
  ) {
    super(`body ${side} failed: ${code}`);
    this.name = "BodyError";
  }
}

const MAX_CHUNK_LINE = 4096;
async function expectCrlf(from: SocketReader, opts: BodyOptions, stats: BodyStats): Promise<void> {
  const crlf = await readOrFail(() => from.readExactly(2, opts.idleTimeoutMs), stats);
  if (crlf[0] !== 13 || crlf[1] !== 10) throw new HttpError(400, "chunk data not followed by CRLF");
}

/** RFC 9110 §6.5.1: framing, routing and connection fields never come as trailers. */
const FORBIDDEN_TRAILERS = new Set([
  "content-length",
  "transfer-encoding",
  "host",
  "connection",
  "keep-alive",
  "te",
  "trailer",
  "upgrade",
]);

/** `written`, if given, is called once `data` has been written (not if the write failed). */
async function write(dst: Socket, data: Buffer | string, written: (() => void) | null = null): Promise<void> {
  if (dst.destroyed) throw new BodyError("destination", "EPIPE", noStats());
  if (!dst.write(data, written === null ? undefined : (err) => err || written())) await drained(dst);
}

/**
 * `parts` in order, handed to the kernel together: the socket corked around them writes them
 * with one writev, where joining them first would copy every byte once more. `written` as for write().
 */
async function writeAll(dst: Socket, parts: readonly Buffer[], written: (() => void) | null = null): Promise<void> {
  if (dst.destroyed) throw new BodyError("destination", "EPIPE", noStats());
  dst.cork();
  let flowing = true;
  const last = parts.length - 1;
  for (let i = 0; i < last; i++) flowing = dst.write(parts[i] as Buffer);
  flowing = dst.write(parts[last] as Buffer, written === null ? undefined : (err) => err || written());
  dst.uncork();
  if (!flowing) await drained(dst);
}

function drained(dst: Socket): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onDrain = () => {
      dst.off("close", onClose);
      resolve();
    };
    const onClose = () => {
      dst.off("drain", onDrain);
      reject(new BodyError("destination", "EPIPE", noStats()));
    };
    dst.once("drain", onDrain);
    dst.once("close", onClose);
  });
}

/** `n` payload bytes from `from` to `dst`, spliced when at least `threshold` of them are still to read. */
async function relayRun(
  from: SocketReader,
  dst: Socket,
  n: number,
  threshold: number,
  opts: BodyOptions,
  stats: BodyStats,
): Promise<void> {
  if (runByTransfer(n, from, threshold)) {
    try {
      const r = await transfer(from.socket, dst, {
        length: n,
        prefix: from.takeBuffered(),
        lead: opts.lead,
        idleTimeoutMs: opts.idleTimeoutMs,
        signal: opts.signal,
        // The prefix was the reader's; once written on, a response's first read can be given back.
        written: () => from.releaseLent(),
      });
      stats.bytes += r.bytes;
      stats.spliced += r.splicedBytes;
      stats.copied += r.copiedBytes;
      stats.pipeSize = r.pipeSize ?? stats.pipeSize;
      return;
    } catch (err) {
      if (err instanceof TransferError) {
        stats.bytes += err.bytes[0] ?? 0;
        throw new BodyError(err.side === "destination" ? "destination" : "source", err.code, stats);
      }
      throw err;
    }
  }
  let left = n;
  while (left > 0) {
    const piece = await readOrFail(() => from.readSome(Math.min(left, 256 * 1024), opts.idleTimeoutMs), stats);
    if (piece.length === 0) throw new BodyError("source", "UNEXPECTED_EOF", stats);
    left -= piece.length;
    stats.bytes += piece.length;
    stats.copied += piece.length;
    await write(dst, piece);
  }
}

async function readOrFail<T>(read: () => Promise<T>, stats: BodyStats): Promise<T> {
  try {
    return await read();
  } catch (err) {
    if (err instanceof HttpError) throw err;
    const code = (err as Error).name === "ReadTimeout" ? "ETIMEDOUT" : ((err as { code?: string }).code ?? (err as Error).name);
    throw new BodyError("source", code === "EOF" ? "UNEXPECTED_EOF" : code, stats);
  }
}

function checkLimit(total: number, opts: BodyOptions): void {
  if (opts.maxBytes > 0 && total > opts.maxBytes) throw new HttpError(413, "body too large");
}

/** Small chunks are gathered into one chunk of up to this many bytes before they are sent on. */
const COALESCE_BYTES = 64 * 1024;
/**
 * Work per turn of the event loop before other connections get theirs, in chunks parsed from
 * the buffer (about 40 ns each); a chunk that needs the line-by-line path counts as 64.
 */
const WORK_PER_TURN = 1024;
const LINE_PATH_WORK = 64;
const CRLF = Buffer.from("\r\n");
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * A chunked body: large chunks keep their framing and are spliced; small ones are gathered and
 * sent on as one chunk (their extensions dropped, as nginx and HAProxy do when they re-chunk),
 * so a peer sending 1-byte chunks costs a write per 64 KiB, not three per byte. Work per turn of
 * the event loop is bounded, so such a peer can't hold the loop while others wait.
 */
async function relayChunked(from: SocketReader, dst: Socket, opts: BodyOptions, stats: BodyStats): Promise<void> {
  let payload = 0;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const flush = async () => {
    if (pendingBytes === 0) return;
    const parts = opts.dechunk ? pending : [Buffer.from(`${pendingBytes.toString(16)}\r\n`), ...pending, CRLF];
    pending = [];
    pendingBytes = 0;
    // Reads lent to the reader that it has moved past (read-buffers.ts): the views of them gathered
    // so far are all in this write or in the ones before it, so its completion frees them.
    const giveBack = from.lentBehind();
    await (parts.length === 1 ? write(dst, parts[0] as Buffer, giveBack) : writeAll(dst, parts, giveBack));
  };
  let work = 0;
  for (;;) {
    if (work >= WORK_PER_TURN) {
      await flush();
      await nextTurn();
      work = 0;
    }
    // Complete small chunks already buffered are taken in one pass, no wait per chunk.
    const run = takeSmallChunks(
      from.peek(),
      MAX_CHUNK_LINE,
      opts.spliceChunkThreshold,
      COALESCE_BYTES - pendingBytes,
      WORK_PER_TURN - work,
      pending,
    );
    if (run.chunks > 0) {
      from.skip(run.consumed);
      stats.bytes += run.payload;
      stats.copied += run.payload;
      pendingBytes += run.payload;
      payload += run.payload;
      checkLimit(payload, opts);
      if (pendingBytes >= COALESCE_BYTES) await flush();
      work += run.chunks;
      continue;
    }
    // Nothing more has arrived: what was gathered goes now, not after the next wait.
    if (from.bufferedBytes === 0) await flush();
    const line = await readOrFail(() => from.readLine(MAX_CHUNK_LINE, opts.idleTimeoutMs), stats);
    work += LINE_PATH_WORK;
    const m = CHUNK_LINE.exec(line);
    if (!m) throw new HttpError(400, "invalid chunk size line");
    const hex = (m[1] as string).replace(/^0+(?=.)/, "");
    if (hex.length > 12) throw new HttpError(400, "chunk size too large");
    const size = Number.parseInt(hex, 16);
    payload += size;
    checkLimit(payload, opts);
    if (size === 0) {
      await flush();
      if (!opts.dechunk) await write(dst, `${line}\r\n`);
      break;
    }
    if (runByTransfer(size, from, opts.spliceChunkThreshold)) {
      // A large chunk keeps its size line and goes through the kernel.
      await flush();
      if (!opts.dechunk) await write(dst, `${line}\r\n`);
      await relayRun(from, dst, size, opts.spliceChunkThreshold, opts, stats);
      await expectCrlf(from, opts, stats);
      if (!opts.dechunk) await write(dst, CRLF);
      continue;
    }
    for (let left = size; left > 0; ) {
      const piece = await readOrFail(() => from.readSome(Math.min(left, 256 * 1024), opts.idleTimeoutMs), stats);
      if (piece.length === 0) throw new BodyError("source", "UNEXPECTED_EOF", stats);
      left -= piece.length;
      stats.bytes += piece.length;
      stats.copied += piece.length;
      pending.push(piece);
      pendingBytes += piece.length;
    }
    await expectCrlf(from, opts, stats);
    if (pendingBytes >= COALESCE_BYTES) await flush();
  }
  // Trailer section: header fields until an empty line, checked like any other field.
  let trailerBytes = 0;
  for (;;) {
    const line = await readOrFail(() => from.readLine(MAX_CHUNK_LINE, opts.idleTimeoutMs), stats);
    if (line === "") break;
    trailerBytes += line.length;
    const colon = line.indexOf(":");
    const c0 = line.charCodeAt(0);
    if (colon <= 0 || c0 === 32 || c0 === 9 || !TOKEN.test(line.slice(0, colon)))
      throw new HttpError(400, "invalid trailer field");
    if (FORBIDDEN_TRAILERS.has(line.slice(0, colon).toLowerCase()))
      throw new HttpError(400, "framing or routing field in trailers");
    if (!FIELD_VALUE.test(line.slice(colon + 1))) throw new HttpError(400, "control character in a trailer field");
    if (trailerBytes > 16 * 1024) throw new HttpError(431, "trailers too large");
    if (!opts.dechunk) await write(dst, `${line}\r\n`);
  }
  if (!opts.dechunk) await write(dst, "\r\n");
}

/** Relays a body in `framing`; resolves when its last byte was handed to the kernel. */
export async function relayBody(framing: BodyFraming, from: SocketReader, dst: Socket, options: BodyOptions): Promise<BodyStats> {
  const stats: BodyStats = noStats();
  let opts = options;
  // A lead meant for transfer() that this body cannot take goes first on its own (and only once).
  if (opts.lead !== undefined && !movesByTransfer(framing, from, opts.spliceThreshold)) {
    dst.write(opts.lead, "latin1");
    opts = { ...opts, lead: undefined };
  }
  switch (framing.kind) {
    case "none":
      return stats;
    case "length":
      checkLimit(framing.length, opts);
      await relayRun(from, dst, framing.length, opts.spliceThreshold, opts, stats);
      return stats;
    case "chunked":
      await relayChunked(from, dst, opts, stats);
      return stats;
    case "close": {
      // Until the upstream closes: everything buffered, then the kernel moves the rest.
      try {
        const r = await transfer(from.socket, dst, {
          prefix: from.takeBuffered(),
          lead: opts.lead,
          idleTimeoutMs: opts.idleTimeoutMs,
          signal: opts.signal,
        });
        return { bytes: r.bytes, spliced: r.splicedBytes, copied: r.copiedBytes, pipeSize: r.pipeSize };
      } catch (err) {
        if (err instanceof TransferError) {
          throw new BodyError(err.side === "destination" ? "destination" : "source", err.code, {
            ...stats,
            bytes: err.bytes[0] ?? 0,
          });
        }
        throw err;
      }
    }
  }
}
