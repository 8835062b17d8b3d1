// Where a socket's reads land (Node's `onread`), by what its bytes are for: upstream sockets
// from their start, the splice engine's client sockets from their accept (accepted-socket.ts).
//
// Normally a socket reads into one small buffer shared by all, and each read is copied out:
// ahead of a splice only heads and a body's first bytes reach userspace, and a small buffer
// keeps that little (about 14% less CPU per spliced 1 MiB response than Node's 64 KiB reads,
// in an A/B here). A body that is copied through userspace (to a TLS client, or when splice
// could not start) is read whole, though, and 16 KiB reads cost a 'data' event, a write and a
// wake-up of the peer per 16 KiB. While a copy runs, the socket reads into large buffers lent
// from a pool instead; the copy hands each back once the destination has written it.
import type { OnReadOpts, Socket } from "node:net";
import { isTls, restartReading, stopReading } from "./socket-handoff.js";

/** The shared small buffer: every read out of it is copied before the next read can land. */
const SMALL = Buffer.allocUnsafe(16 * 1024);
/** A lent buffer: 16 TLS records, a few TCP windows of loopback. */
export const LENT_SIZE = 256 * 1024;
/** Free lent buffers kept for reuse (4 MiB); more are left to the garbage collector. */
const MAX_FREE = 16;
/**
 * Lent buffers out at once (64 MiB): many slow copies (paused sources each hold the buffer
 * their next read lands in) must not hold memory without bound. Past it, reads are small again.
 */
const MAX_OUT = 256;
let out = 0;

const free: Buffer[] = [];
/**
 * Who has each pooled buffer's memory: the pool, a socket's pending read, or the consumer of
 * the 'data' chunk (the chunk itself). Only that chunk gives it back, once: a late or second
 * give-back of an older chunk of the same memory must never free it under someone else.
 */
const holder = new WeakMap<ArrayBuffer, "pool" | "read" | Buffer>();
/** Sockets reading into lent buffers now. */
const lending = new WeakSet<Socket>();

/** The lent buffer each socket's next read lands in, to take back if the socket closes first. */
const pending = new WeakMap<Socket, Buffer>();
const watched = new WeakSet<Socket>();

function borrow(socket: Socket): Buffer | null {
  if (out >= MAX_OUT) return null;
  const b = free.pop() ?? Buffer.allocUnsafeSlow(LENT_SIZE);
  out++;
  holder.set(b.buffer as ArrayBuffer, "read");
  if (!watched.has(socket)) {
    watched.add(socket);
    socket.once("close", () => returnPending(socket));
  }
  pending.set(socket, b);
  return b;
}

/** A closed socket reads no more: the buffer its next read would have used comes back. */
function returnPending(socket: Socket): void {
  const b = pending.get(socket);
  pending.delete(socket);
  if (b && holder.get(b.buffer as ArrayBuffer) === "read") toPool(b.buffer as ArrayBuffer);
}

function toPool(memory: ArrayBuffer): void {
  out--;
  if (free.length >= MAX_FREE) {
    holder.delete(memory);
    return;
  }
  holder.set(memory, "pool");
  free.push(Buffer.from(memory, 0, LENT_SIZE));
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
      return (s !== null && lending.has(s) && !isTls(s) && borrow(s)) || SMALL;
    },
    callback: (n, buf) => {
      const s = socket();
      if (s === null) return true;
      const view = (buf as Buffer).subarray(0, n);
      // This read's buffer is no longer the socket's to give back when it closes.
      if (pending.get(s) === buf) pending.delete(s);
      // Nobody listens, or the stream still holds bytes to deliver first: the stream keeps
      // these too, in order, as Node's own reads would (a TLS socket decrypts on after a
      // pause: one read of ciphertext can hold several records). False stops the reading.
      if (s.listenerCount("data") === 0 || s.readableLength > 0) {
        const kept = Buffer.from(view);
        if (buf !== SMALL) toPool(view.buffer as ArrayBuffer);
        return s.push(kept);
      }
      if (buf === SMALL) s.emit("data", Buffer.from(view));
      else if (lending.has(s)) {
        holder.set(view.buffer as ArrayBuffer, view);
        s.emit("data", view);
      } else {
        // Lending stopped while this read was pending: its bytes go on as an ordinary copy.
        s.emit("data", Buffer.from(view));
        toPool(view.buffer as ArrayBuffer);
      }
      return true;
    },
  };
}
