// An accepted client connection made to read the way upstream sockets do (read-buffers.ts):
// each read handed to a callback by Node's `onread`, not pushed through the Readable stream
// that net.Server's sockets read through (a push, a 'data' emit and a scheduled read-more per
// read: about 6% of a small request's CPU, docs/BENCHMARKS.md).
//
// net.Server takes no `onread`. What net.Socket's constructor does with that option is set
// three of its own properties and, once it has a handle, switch the handle to reading into the
// given buffer; here the same is done to a socket the server already made (onread-internals.ts;
// on a Node that keeps them otherwise, connections read as Node gave them). Opening the connection again as a new
// net.Socket on a duplicate descriptor (public options only) was measured too: about 40 µs
// more per connection, a sixth of a one-request connection's cost, for the same saving.
import type net from "node:net";
import { onreadKeys, readNextInto, userBufferHandle } from "./onread-internals.js";
import { lendWhileStreaming, markReadsIntoBuffers, readIntoBuffers } from "./read-buffers.js";
import { isTls } from "./socket-handoff.js";

/**
 * Makes `socket` (a plain one just accepted, or a server-side TLS socket after its handshake)
 * read into buffers as read-buffers.ts says (a plain one lent response buffers while its bytes
 * stream in: its reader's owner gives them back), from its next read on: bytes Node already read
 * stay in the stream's buffer and reach 'data' listeners first. False when this Node does not
 * allow it; the socket reads as before.
 */
export function readAcceptedIntoBuffers(socket: net.Socket): boolean {
  const k = onreadKeys();
  if (k === null || userBufferHandle(socket) === null) return false;
  const onread = readIntoBuffers(() => socket);
  const generate = onread.buffer as () => Buffer;
  const own = socket as unknown as Record<symbol, unknown>;
  own[k.callback] = onread.callback;
  own[k.generator] = generate;
  // The first buffer as every later one: through kBuffer and the handle together.
  readNextInto(socket, generate());
  markReadsIntoBuffers(socket);
  // A body that streams in (a chunked upload) is read 64 KiB at a time, as an upstream's is; a
  // TLS socket hands over one record per read.
  if (!isTls(socket)) lendWhileStreaming(socket, true);
  return true;
}
