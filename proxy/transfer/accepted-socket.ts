// An accepted client connection made to read the way upstream sockets do (read-buffers.ts):
// each read handed to a callback by Node's `onread`, not pushed through the Readable stream
// that net.Server's sockets read through (a push, a 'data' emit and a scheduled read-more per
// read: about 6% of a small request's CPU, docs/BENCHMARKS.md).
//
// net.Server takes no `onread`. What net.Socket's constructor does with that option is set
// three of its own properties (keyed by symbols private to Node) and, once it has a handle,
// switch the handle to reading into the given buffer (`useUserBuffer`); here the same is done
// to a socket the server already made. The symbols are found on a probe socket made with
// `onread`, and only when each holds exactly what was given to it: on a Node that keeps them
// otherwise, connections read as Node gave them. Opening the connection again as a new
// net.Socket on a duplicate descriptor (public options only) was measured too: about 40 µs
// more per connection, a sixth of a one-request connection's cost, for the same saving.
import net from "node:net";
import { markReadsIntoBuffers, readIntoBuffers } from "./read-buffers.js";

interface OnreadKeys {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

let keys: OnreadKeys | null | undefined;

/** The properties net.Socket keeps an `onread` option in, checked on a probe; null if not as expected. */
function onreadKeys(): OnreadKeys | null {
  if (keys !== undefined) return keys;
  const buffer = Buffer.alloc(1);
  const callback = () => true;
  const probe = new net.Socket({ onread: { buffer, callback } } as net.SocketConstructorOpts);
  const own = probe as unknown as Record<symbol, unknown>;
  const symbols = Object.getOwnPropertySymbols(probe);
  const holding = (name: string, value: unknown) => symbols.find((s) => s.description === name && own[s] === value);
  const b = holding("kBuffer", buffer);
  const c = holding("kBufferCb", callback);
  const g = holding("kBufferGen", null);
  probe.destroy();
  keys = b && c && g ? { buffer: b, callback: c, generator: g } : null;
  return keys;
}

interface UserBufferHandle {
  useUserBuffer(buffer: Uint8Array): void;
}

/**
 * Makes `socket` (a plain one just accepted, or a server-side TLS socket after its handshake)
 * read into buffers as read-buffers.ts says, from its next read on: bytes Node already read
 * stay in the stream's buffer and reach 'data' listeners first. False when this Node does not
 * allow it; the socket reads as before.
 */
export function readAcceptedIntoBuffers(socket: net.Socket): boolean {
  const k = onreadKeys();
  const handle = (socket as unknown as { _handle?: Partial<UserBufferHandle> | null })._handle;
  if (k === null || typeof handle?.useUserBuffer !== "function") return false;
  const onread = readIntoBuffers(() => socket);
  const generate = onread.buffer as () => Uint8Array;
  const first = generate();
  const own = socket as unknown as Record<symbol, unknown>;
  own[k.buffer] = first;
  own[k.callback] = onread.callback;
  own[k.generator] = generate;
  handle.useUserBuffer(first);
  markReadsIntoBuffers(socket);
  return true;
}
