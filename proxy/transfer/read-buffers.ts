// Where a socket's reads land (Node's `onread`), by what its bytes are for: upstream sockets
// from their start, the splice engine's client sockets from their accept (accepted-socket.ts).
//
// Normally a socket reads into one small buffer shared by all, and each read is copied out
// (a fresh Buffer per read of 64 KiB costs more in garbage collection than the copy). A body
// that is copied through userspace (to a TLS client, or when splice could not start) is read
// whole, though, and 16 KiB reads cost a 'data' event, a write and a wake-up of the peer per
// 16 KiB. While a copy runs, the socket reads into large buffers lent from a pool instead; the
// copy hands each back once the destination has written it.
//
// A plain upstream socket whose bytes stream in reads in 64 KiB pieces lent from a second pool
// (so does a plain client connection of the splice engine: a chunked upload; at most
// MAX_ARMED_CLIENTS of those wait with one armed, since clients may stop sending on purpose):
// once a read fills the small buffer, the next lands in a response buffer, which its reader
// keeps without a copy and gives back once what it brought has been written on (the exchange
// after a response's head and first bytes, a transfer after its prefix, a chunked relay after
// each write, SocketReader's releaseLent and lentBehind); a read that does not fill it returns
// the socket to the small one, so a slow stream holds no buffer while it waits (a connection
// whose last read filled keeps the one armed for its next read while it idles: one each). Ahead of
// a splice, the next response's first read then takes 64 KiB of its body instead of 16, which
// moves 100 × 1 MiB at about ×1.4 the requests per second (docs/BENCHMARKS.md, "100 × 1 MiB: a
// response's first read of 64 KiB"); a chunked body's small chunks cross in a quarter of the
// reads, events and wake-ups, with no buffer of their own ("Chunked bodies read in 64 KiB
// pieces"). The choice is made by the buffer generator Node calls after each read: pointing an
// armed read elsewhere (the handle's useUserBuffer) stacks a new listener on the stream each
// time, kept until the socket closes (about 50 bytes a call: a leak on a long-lived upstream
// connection, where it was once called per response).
import type { OnReadOpts, Socket } from "node:net";
import { copyOf, viewOf } from "../base/buffer-calls.js";
import { isTls, restartReading, stopReading } from "./socket-handoff.js";

/** The shared small buffer: every read out of it is copied before the next read can land. */
const SMALL = Buffer.allocUnsafe(16 * 1024);
/**
 * The same memory as a plain Uint8Array, whose subarray is V8's own (a Buffer's is Node's,
 * which reads `.buffer` through a call into C++ and checks its arguments in JavaScript).
 */
const SMALL_BYTES = new Uint8Array(SMALL.buffer, SMALL.byteOffset, SMALL.length);

/** A copy of the first `n` bytes of SMALL, from Node's buffer pool. */
function copyOfSmall(n: number): Buffer {
  return copyOf(SMALL_BYTES.subarray(0, n));
}
/** A lent buffer: 16 TLS records, a few TCP windows of loopback. */
export const LENT_SIZE = 256 * 1024;
/**
 * Lent buffers out at once (64 MiB): many slow copies (paused sources each hold the buffer
 * their next read lands in) must not hold memory without bound. Past it, reads are small again.
 */
const MAX_OUT = 256;
/**
 * Every lent buffer given back is kept: a new one is made only while none is free and fewer
 * than MAX_OUT are out, so free and out together never pass MAX_OUT. A pool that kept fewer
 * than the copies in flight dropped buffers the next reads then made again (TLS clients at 100
 * connections: three 256 KiB buffers made per 1 MiB response, a mark-compact every tenth of a
 * second). Those past MIN_FREE that go unused are given back over time (trimPools).
 */
const MIN_FREE = 16;
let out = 0;

const free: Buffer[] = [];

/** A response's first read: its head and, ahead of a splice, its body's first bytes. */
export const RESPONSE_READ_SIZE = 64 * 1024;
/**
 * Free response buffers kept (16 MiB at most; those past MIN_RESPONSE_FREE that go unused are
 * given back over time: trimPools). The pool only grows while more responses are in flight than
 * it holds, so what it keeps is what the busiest moment needed. A bound below the
 * responses in flight made the pool drop buffers that the next responses then made again: at
 * 100 connections a bound of 64 made one every ten responses, and V8 ran a mark-compact about
 * once a second for their memory (docs/BENCHMARKS.md, "Response buffers kept for 100 connections").
 */
const MAX_RESPONSE_FREE = 256;
const MIN_RESPONSE_FREE = 64;
const responseFree: Buffer[] = [];
/** Response buffers made since the process started (a buffer whose bytes were kept by a path that never gives it back is left to the garbage collector). */
let responseMade = 0;
/** Reads that landed in a response buffer since the process started, and the bytes they brought. */
let responseLent = 0;
let responseLentBytes = 0;
/**
 * Who has each pooled buffer's memory: the pool, a socket's pending read, or the consumer of
 * the 'data' chunk (the chunk itself). Only that chunk gives it back, once: a late or second
 * give-back of an older chunk of the same memory must never free it under someone else.
 */
const holder = new WeakMap<ArrayBuffer, "pool" | "read" | Buffer>();
/** Each pooled buffer's memory as the Buffer first made over all of it: back to the pool as that, not as a new view. */
const whole = new WeakMap<ArrayBuffer, Buffer>();
/** Sockets reading into lent buffers now. */
const lending = new WeakSet<Socket>();

/**
 * The lent buffer each socket's next read lands in, to take back if the socket closes first;
 * null once that read came. Set to null rather than deleted: a key added again after its
 * delete made V8 rebuild the table in its runtime, on every response (about 600 instructions).
 */
const pending = new WeakMap<Socket, Buffer | null>();
const watched = new WeakSet<Socket>();

function borrow(socket: Socket): Buffer | null {
  if (out >= MAX_OUT) return null;
  const b = free.pop() ?? wholeBuffer(LENT_SIZE);
  if (free.length < fewestFree) fewestFree = free.length;
  out++;
  return armed(socket, b);
}

/** `b` as the buffer `socket`'s next read lands in: taken back if the socket closes first. */
function armed(socket: Socket, b: Buffer): Buffer {
  holder.set(b.buffer as ArrayBuffer, "read");
  watchClose(socket);
  pending.set(socket, b);
  return b;
}

function watchClose(socket: Socket): void {
  if (watched.has(socket)) return;
  watched.add(socket);
  socket.once("close", () => returnPending(socket));
}

/** A closed socket reads no more: the buffer its next read would have used comes back. */
function returnPending(socket: Socket): void {
  const b = pending.get(socket);
  pending.delete(socket);
  disarmClient(socket);
  if (!b) return;
  const memory = b.buffer as ArrayBuffer;
  if (holder.get(memory) === "read") toPool(memory);
}

function toPool(memory: ArrayBuffer): void {
  if (memory.byteLength === RESPONSE_READ_SIZE) {
    if (responseFree.length >= MAX_RESPONSE_FREE) holder.delete(memory);
    else {
      holder.set(memory, "pool");
      responseFree.push(whole.get(memory) ?? Buffer.from(memory, 0, RESPONSE_READ_SIZE));
      if (responseFree.length > MIN_RESPONSE_FREE) trimLater();
    }
    return;
  }
  out--;
  holder.set(memory, "pool");
  free.push(whole.get(memory) ?? Buffer.from(memory, 0, LENT_SIZE));
  if (free.length > MIN_FREE) trimLater();
}

/** How often free buffers past the minimum that went unused are given back. */
const TRIM_EVERY_MS = 5000;
/** The fewest free in each pool since the last trim: that many were not needed meanwhile. */
let fewestFree = 0;
let fewestResponseFree = 0;
let trimmer: NodeJS.Timeout | null = null;

function trimLater(): void {
  if (trimmer !== null) return;
  fewestFree = free.length;
  fewestResponseFree = responseFree.length;
  trimmer = setInterval(trimPools, TRIM_EVERY_MS).unref();
}

function dropHalfUnused(pool: Buffer[], unused: number, min: number): void {
  const drop = Math.min(Math.ceil((unused - min) / 2), pool.length - min);
  for (let i = 0; i < drop; i++) holder.delete((pool.pop() as Buffer).buffer as ArrayBuffer);
}

/**
 * Gives back half of the free buffers past each pool's minimum that stayed free since the last
 * trim (a burst's buffers go within a minute of the burst; a steady load keeps what it uses).
 * Runs every TRIM_EVERY_MS while a pool holds more than its minimum; exported for the tests.
 */
export function trimPools(): void {
  dropHalfUnused(free, fewestFree, MIN_FREE);
  dropHalfUnused(responseFree, fewestResponseFree, MIN_RESPONSE_FREE);
  fewestFree = free.length;
  fewestResponseFree = responseFree.length;
  if (trimmer !== null && free.length <= MIN_FREE && responseFree.length <= MIN_RESPONSE_FREE) {
    clearInterval(trimmer);
    trimmer = null;
  }
}

/**
 * Gives back the buffer under a chunk that came from a lent read, once nothing refers to its
 * bytes any more (the write that carried them has completed). Other chunks are ignored.
 */
export function giveBack(chunk: Buffer): void {
  const memory = chunk.buffer as ArrayBuffer;
  if (holder.get(memory) === chunk) toPool(memory);
}

/** Lent buffers out (in a socket's pending read or with a consumer) and free in the pool. */
export function lentBuffers(): { out: number; free: number } {
  return { out, free: free.length };
}

/**
 * Response buffers made so far, free in the pool now, the reads (and their bytes) that landed in
 * one so far, and the client connections whose next read is armed with one now.
 */
export function responseBuffers(): { made: number; free: number; lent: number; lentBytes: number; clientsArmed: number } {
  return { made: responseMade, free: responseFree.length, lent: responseLent, lentBytes: responseLentBytes, clientsArmed };
}

function made(): Buffer {
  responseMade++;
  return wholeBuffer(RESPONSE_READ_SIZE);
}

function wholeBuffer(size: number): Buffer {
  const b = Buffer.allocUnsafeSlow(size);
  whole.set(b.buffer as ArrayBuffer, b);
  return b;
}

/** True when `view` lies in a lent buffer's memory not yet given back: it must be copied to be kept after the giving back. */
export const inLentMemory = (view: Buffer): boolean => typeof holder.get(view.buffer as ArrayBuffer) === "object";

/** True when `chunk` came from a lent read and was not given back: whoever keeps its bytes must copy them. */
export const isLent = (chunk: Buffer): boolean => holder.get(chunk.buffer as ArrayBuffer) === chunk;

/**
 * Lends `socket` large buffers (on), or returns it to the small shared one (off). Only sockets
 * made with `readIntoBuffers` are affected; the change applies from the socket's next read.
 * While lending, every 'data' chunk is lent: its listener must give it back or drop it.
 */
export function lendReads(socket: Socket, on: boolean): void {
  if (on) lending.add(socket);
  else lending.delete(socket);
}

/** Sockets whose reads are lent response buffers while they fill the small one (lendWhileStreaming). */
const lendsWhileStreaming = new WeakSet<Socket>();
/** Of those, the ones whose last read filled it: their next read is lent a response buffer. */
const streaming = new WeakSet<Socket>();

/** Client sockets among them: how many of those have a response buffer armed for their next read is bounded. */
const clientLenders = new WeakSet<Socket>();
const armedClients = new WeakSet<Socket>();
/**
 * Client connections whose next read may land in a response buffer at once (16 MiB). A client
 * connection that idles after a read that filled the small buffer keeps its armed buffer until
 * its next read (Node offers no way to point an armed read elsewhere without a listener stacked
 * per call): clients can be many and idle on purpose, so past this their reads are small again.
 */
const MAX_ARMED_CLIENTS = 256;
let clientsArmed = 0;

function disarmClient(socket: Socket): void {
  if (armedClients.delete(socket)) clientsArmed--;
}

/**
 * Makes `socket` (a plain socket reading through `readIntoBuffers`: an upstream socket, or with
 * `client` a client connection of the splice engine) read into response buffers while its bytes
 * stream in: see the top of this file. Its reader must give back what it was lent (the HTTP
 * session's exchange and body relay do), or let it go.
 */
export function lendWhileStreaming(socket: Socket, client = false): void {
  lendsWhileStreaming.add(socket);
  if (client) clientLenders.add(socket);
}

/** Stops lendWhileStreaming for `socket` (a connection handed to the buffered engine), from the read after the one already armed. */
export function stopLendingWhileStreaming(socket: Socket): void {
  lendsWhileStreaming.delete(socket);
  streaming.delete(socket);
}

/** A response buffer for `socket`'s next read: handed on as a lent chunk. */
function lendResponseBuffer(socket: Socket): Buffer {
  const b = responseFree.pop() ?? made();
  if (responseFree.length < fewestResponseFree) fewestResponseFree = responseFree.length;
  return armed(socket, b);
}

/** The lent chunk being handed to 'data' listeners now, if any. */
let emittingLent: Buffer | null = null;

/** Sockets that read through `readIntoBuffers`, marked by whoever set that up. */
const throughCallback = new WeakSet<Socket>();
export function markReadsIntoBuffers(socket: Socket): void {
  throughCallback.add(socket);
}

/**
 * How a SocketReader stops and restarts a plain socket that reads through `onread`
 * (this file): by its handle alone. Such a socket hands each read to its 'data' listeners
 * whether or not its stream flows, so the stream's pause() and resume() add nothing but their
 * cost (resume: an event and a tick that runs read(0), per spliced response). Bytes put back
 * in the stream's buffer (after a transfer) still go out through resume(), as do the reads of a
 * socket still connecting.
 */
const handleReads = {
  stop: stopReading,
  start: (socket: Socket) => (socket.readableLength > 0 || socket.connecting ? socket.resume() : restartReading(socket)),
  // Asked by a 'data' listener about the chunk it is given: the one being emitted, no lookup.
  isLent: (chunk: Buffer) => chunk === emittingLent,
  giveBack: (chunk: Buffer) => giveBack(chunk),
};

/** The cheaper read switch for `socket` when it has one (see handleReads), else undefined. */
export function readSwitchFor(socket: Socket): typeof handleReads | undefined {
  return throughCallback.has(socket) && !isTls(socket) ? handleReads : undefined;
}

/** `onread` options for a socket made by `net.connect` or `tls.connect`: see the top of this file. */
export function readIntoBuffers(socket: () => Socket | null): OnReadOpts {
  return {
    // Called once at the start and after each read: the buffer the next read lands in.
    buffer: () => {
      const s = socket();
      // A TLS socket hands over one record (16 KiB at most) per read: a lent buffer would hold 256 KiB for it.
      if (s === null) return SMALL;
      if (lending.has(s)) return (!isTls(s) && borrow(s)) || SMALL;
      if (!streaming.has(s)) return SMALL;
      if (clientLenders.has(s) && !armedClients.has(s)) {
        if (clientsArmed >= MAX_ARMED_CLIENTS) return SMALL;
        clientsArmed++;
        armedClients.add(s);
      }
      return lendResponseBuffer(s);
    },
    callback: (n, buf) => {
      const s = socket();
      if (s === null) return true;
      // Nobody listens, or the stream still holds bytes to deliver first: the stream keeps
      // these too, in order, as Node's own reads would (a TLS socket decrypts on after a
      // pause: one read of ciphertext can hold several records). False stops the reading.
      const held = s.listenerCount("data") === 0 || s.readableLength > 0;
      // Streaming on while its reads fill SMALL (see lendWhileStreaming).
      if (lendsWhileStreaming.has(s)) {
        if (n >= SMALL.length) streaming.add(s);
        else streaming.delete(s);
      }
      if (buf === SMALL) {
        const copy = copyOfSmall(n);
        if (held) return s.push(copy);
        s.emit("data", copy);
        return true;
      }
      // `.buffer` is a call into C++ (about 120 instructions): read once.
      const memory = buf.buffer as ArrayBuffer;
      const view = viewOf(buf as Buffer, 0, n);
      // This read's buffer is no longer the socket's to give back when it closes.
      if (pending.get(s) === buf) {
        pending.set(s, null);
        disarmClient(s);
      }
      if (held) {
        const kept = Buffer.from(view);
        toPool(memory);
        return s.push(kept);
      }
      const response = memory.byteLength === RESPONSE_READ_SIZE;
      if (response) {
        responseLent++;
        responseLentBytes += n;
      }
      if (response || lending.has(s)) {
        holder.set(memory, view);
        emittingLent = view;
        try {
          s.emit("data", view);
        } finally {
          emittingLent = null;
        }
      } else {
        // Lending stopped while this read was pending: its bytes go on as an ordinary copy.
        s.emit("data", Buffer.from(view));
        toPool(memory);
      }
      return true;
    },
  };
}
