// Taking a net.Socket away from Node's stream machinery while the kernel moves its
// bytes, and giving it back afterwards. See docs/splice-and-libuv.md for why this is safe.
import net, { type Socket } from "node:net";

/** The parts of Node's TCPWrap/PipeWrap handle that the handoff relies on. */
export interface StreamHandle {
  fd: number;
  reading: boolean;
  readStart(): number;
  readStop(): number;
  writeQueueSize: number;
}

type DataListener = (chunk: Buffer) => void;

export interface HeldSocket {
  socket: Socket;
  /** Bytes Node had already read from the socket, in order, taken out of its buffer. */
  buffered: Buffer[];
  /** The 'data' listeners set aside; null for a light hold (holdForSplice), which leaves them on. */
  listeners: DataListener[] | null;
}

/** A TLS socket: its descriptor carries ciphertext, and its reads are decrypted records. */
export const isTls = (s: Socket): boolean => (s as Socket & { encrypted?: boolean }).encrypted === true;

/** The socket's handle when it has a descriptor. (Each read of `fd` is a call into C++: read once.) */
export function streamHandle(socket: Socket): StreamHandle | null {
  const h = handleOf(socket);
  return fdOf(h) === -1 ? null : h;
}

/**
 * The symbol net.Socket keeps its handle under, when its `_handle` is a getter over it (Node 20:
 * `get() { return this[kHandle]; }`). That getter's load is one for every socket of the process,
 * so megamorphic (KeyedLoadIC_Megamorphic, about 185 instructions a read, callgrind); read here,
 * the load is this module's own and sees only the sockets sluice holds. Found on a probe socket
 * and checked to be what the getter reads; null otherwise, and `_handle` is read.
 */
const HANDLE_KEY: symbol | null = (() => {
  const probe = new net.Socket();
  const own = probe as unknown as Record<symbol, unknown>;
  const key = Object.getOwnPropertySymbols(probe).find((s) => s.description === "kHandle");
  let reads = false;
  if (key !== undefined) {
    const before = own[key];
    const marker = {};
    own[key] = marker;
    reads = (probe as unknown as { _handle?: unknown })._handle === marker;
    own[key] = before;
  }
  probe.destroy();
  return reads ? (key as symbol) : null;
})();

/** Whether handles are read through the symbol (HANDLE_KEY) on this Node, for tests. */
export const handleReadDirectly = HANDLE_KEY !== null;

/** The socket's handle as it is (null once closed), its descriptor not asked for. Read once per use (see HANDLE_KEY). */
export const handleOf = (socket: Socket): StreamHandle | null =>
  (HANDLE_KEY !== null
    ? (socket as unknown as Record<symbol, StreamHandle | null | undefined>)[HANDLE_KEY]
    : (socket as unknown as { _handle?: StreamHandle | null })._handle) ?? null;

/** A handle's descriptor, or -1 when it has none (closed, or not a descriptor's stream). */
export function fdOf(h: StreamHandle | null): number {
  if (h === null) return -1;
  const fd = h.fd;
  return typeof fd === "number" && fd >= 0 ? fd : -1;
}

/** The socket's descriptor, or -1 when it has none. */
export const streamFd = (socket: Socket): number => fdOf(handleOf(socket));

/**
 * Stops Node reading `socket` and takes out what it had read but not delivered.
 * 'data' listeners are set aside so the drained bytes reach nobody else.
 */
export function holdSocket(socket: Socket): HeldSocket {
  const held: HeldSocket = { socket, buffered: [], listeners: null };
  holdFully(held);
  const { buffered } = held;
  // An empty buffer has nothing to give (a socket read through `onread` nearly always): read()
  // would only start the handle reading for the readStop below to undo.
  if (socket.readableLength > 0)
    for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) {
      buffered.push(chunk);
    }
  // read() may have asked libuv to start reading; nothing can arrive before this
  // synchronous readStop, because libuv only delivers reads from its poll phase.
  stopReading(socket);
  return held;
}

/**
 * Stops libuv reading `socket` and nothing else, for a splice of a socket that reads through
 * `onread` (read-buffers.ts) with nothing in its stream's buffer: while the handle is stopped no
 * byte reaches its 'data' listeners, and such a socket's reads go to its listeners or its buffer
 * whatever the stream's flowing state, so neither is touched (taking the listeners off and
 * putting them back, and the pause, cost about 3k instructions per spliced body).
 */
export function holdForSplice(socket: Socket): HeldSocket {
  stopReading(socket);
  return { socket, buffered: [], listeners: null };
}

/** A light hold made whole (the body is copied after all): the listeners set aside, the stream paused. */
export function holdFully(held: HeldSocket): void {
  if (held.listeners !== null) return;
  const { socket } = held;
  held.listeners = socket.listeners("data") as DataListener[];
  socket.removeAllListeners("data");
  socket.pause();
}

/**
 * Puts bytes that belong to the socket's next message back in front of its buffer,
 * restores the 'data' listeners and lets libuv read again. The stream stays paused:
 * the owner resumes it when it wants the next message.
 */
export function releaseSocket(held: HeldSocket, unread: Buffer[], readAgain: boolean): void {
  const { socket } = held;
  // Bytes put back wait in the paused stream for the owner, as after a whole hold.
  if (held.listeners === null && unread.some((c) => c.length > 0)) socket.pause();
  for (let i = unread.length - 1; i >= 0; i--) {
    const chunk = unread[i];
    if (chunk && chunk.length > 0) socket.unshift(chunk);
  }
  if (held.listeners !== null) for (const l of held.listeners) socket.on("data", l);
  if (readAgain) restartReading(socket);
}

/**
 * Lets libuv read a held socket again. The stream may believe a read is already pending
 * (read() set that flag before the handle was stopped) and then never asks again, so
 * the handle is restarted here rather than through the stream.
 */
export function restartReading(socket: Socket): void {
  // A handle that reads already (nearly every call: a reader waits on a socket it watched
  // while idle) needs nothing, so that is asked first, of the handle read once (see handleOf).
  const handle = handleOf(socket);
  if (handle !== null && !handle.reading && fdOf(handle) !== -1 && !socket.destroyed && !socket.readableEnded) {
    handle.reading = true;
    handle.readStart();
  }
}

/** Stops libuv reading `socket`, leaving its stream's state alone. */
export function stopReading(socket: Socket): void {
  // A handle that reads has its descriptor: no need to ask for it.
  const handle = handleOf(socket);
  if (handle?.reading) {
    handle.reading = false;
    handle.readStop();
  }
}

/**
 * Resolves once every byte Node queued on `socket` has been handed to the kernel. A corked
 * socket (a response head waiting for its body's first bytes) is uncorked here, so the head
 * and these chunks leave in one writev.
 */
export function flushWrites(socket: Socket, chunks: Buffer[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const pending = chunks.filter((c) => c.length > 0);
    if (pending.length === 0 && socket.writableLength === 0 && !socket.connecting) return resolve();
    if (pending.length === 0) pending.push(Buffer.alloc(0));
    pending.forEach((chunk, i) => {
      const last = i === pending.length - 1;
      socket.write(chunk, (err) => {
        if (!last) return;
        if (err) reject(err);
        else resolve();
      });
    });
    while (socket.writableCorked > 0) socket.uncork();
  });
}

/**
 * Closes a connection with a reset (RST), so that a message cut short never looks complete to
 * the peer. A TLS socket's own handle is no TCP handle (Node refuses to reset it): the TCP
 * connection under it, which Node keeps as its `_parent`, is reset.
 */
export function resetConnection(socket: Socket): void {
  const tcp = isTls(socket) ? (socket as unknown as { _parent?: Socket | null })._parent : socket;
  if (tcp && streamHandle(tcp) !== null) tcp.resetAndDestroy();
  socket.destroy();
}

/** Ends a client connection after its last response without losing that response to a RST. */
export function closeGracefully(client: Socket): void {
  client.end();
  // Bytes the client still sends would make the kernel reset the connection and could
  // destroy the response in flight: read and drop them for a short while.
  client.removeAllListeners("data");
  client.on("data", () => undefined);
  restartReading(client);
  client.resume();
  const timer = setTimeout(() => client.destroy(), 2000);
  timer.unref();
  client.once("close", () => clearTimeout(timer));
}
