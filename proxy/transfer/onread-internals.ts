// Where a socket that reads through Node's `onread` lands its next read, changed from outside.
// Node keeps an `onread` option in three of the socket's own properties (keyed by symbols
// private to Node) and tells the handle where to read (`useUserBuffer`); here the same is done
// to a socket Node already made. The symbols are found on a probe socket made with `onread`,
// and only when each holds exactly what was given to it: on a Node that keeps them otherwise,
// nothing is changed and callers go on as if the option could not be set.
import net from "node:net";
import { handleOf } from "./socket-handoff.js";

export interface OnreadKeys {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

let keys: OnreadKeys | null | undefined;

/** The properties net.Socket keeps an `onread` option in, checked on a probe; null if not as expected. */
export function onreadKeys(): OnreadKeys | null {
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

/** The socket's handle when it can be told where to read, else null. */
export function userBufferHandle(socket: net.Socket): UserBufferHandle | null {
  const handle = handleOf(socket) as Partial<UserBufferHandle> | null;
  return typeof handle?.useUserBuffer === "function" ? (handle as UserBufferHandle) : null;
}

/**
 * Makes the next read of `socket` land in `buffer`; the buffers after it are its generator's
 * again. The socket reads through `onread` (its callback and generator set). False when this
 * Node does not allow it. Once per socket: each call stacks a new listener on the handle's
 * stream (Node's StreamBase::UseUserBuffer), kept until the socket closes; a choice per read
 * belongs in the generator (read-buffers.ts).
 */
export function readNextInto(socket: net.Socket, buffer: Buffer): boolean {
  const k = onreadKeys();
  const handle = userBufferHandle(socket);
  const own = socket as unknown as Record<symbol, unknown>;
  // Node hands its callback the buffer in kBuffer: both must name the same memory.
  if (k === null || handle === null || typeof own[k.callback] !== "function") return false;
  own[k.buffer] = buffer;
  handle.useUserBuffer(buffer);
  return true;
}
