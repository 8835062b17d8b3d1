// A head (with a small body) written straight to a plain socket's descriptor, in one system call,
// when nothing else is queued on the socket: Node's stream machinery around a write of a few
// hundred bytes cost several times the write itself (docs/BENCHMARKS.md). What the kernel does
// not take at once, and every write that cannot go this way (TLS, no splice addon, a socket
// with writes pending, corked or connecting), goes through socket.write in order, a head and its
// body as one buffer: over TLS two writes are two records, two system calls and two wake-ups
// of the client.
//
// A spliced body's first bytes (read with its head) leave the same way, after the response head
// (transfer.ts): the pump may only start once they are in the kernel, and a write that went
// straight there needs no wait for Node's write callback.
import type { Socket } from "node:net";
import { spliceAddon } from "./native.js";
import { fdOf, handleOf, isTls, type StreamHandle } from "./socket-handoff.js";

/**
 * Writes `head` and `body` to `socket`, in order after anything queued on it. True when they
 * went to the kernel in this call; false when some of it is queued on the socket (or failed,
 * which Node then reports as its own write error).
 */
export function writeHead(socket: Socket, head: string, body: Buffer | null = null): boolean {
  const addon = spliceAddon();
  // A TLS socket's descriptor carries ciphertext: never written here.
  // The handle read once (see handleOf).
  const handle = addon !== null && !isTls(socket) ? handleOf(socket) : null;
  const fd = fdOf(handle);
  const idle =
    fd !== -1 &&
    socket.writableLength === 0 &&
    socket.writableCorked === 0 &&
    (handle as StreamHandle).writeQueueSize === 0 &&
    !socket.connecting &&
    socket.writable;
  const sent = idle ? (addon as NonNullable<typeof addon>).send(fd, head, body ?? undefined) : 0;
  const total = head.length + (body?.length ?? 0);
  if (idle && sent === total) return true;
  // Nothing sent (not idle, the kernel's buffer full, or an error, which Node then reports as its own): all of it in order.
  if (sent <= 0) {
    if (body === null || body.length === 0) socket.write(head, "latin1");
    else socket.write(joined(head, body));
  } else if (sent < head.length) {
    socket.write(head.slice(sent), "latin1");
    if (body) socket.write(Buffer.from(body));
  } else socket.write(Buffer.from((body as Buffer).subarray(sent - head.length)));
  // What is queued is a copy (joined, or the rest copied): `body` may be a view of a lent read's
  // memory, given back as soon as this returns (read-buffers.ts), and the kernel refusing part
  // of a write is rare.
  return false;
}

/** `head` (Latin-1) and `body` in one buffer (bodies written with heads are small: a copy is cheaper than a second write). */
function joined(head: string, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(head.length + body.length);
  out.write(head, 0, "latin1");
  body.copy(out, head.length);
  return out;
}
