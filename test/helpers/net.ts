// Real loopback sockets for transfer tests: a sender, a forwarding pair and a receiver.
import { createHash, randomBytes } from "node:crypto";
import { readdirSync } from "node:fs";
import type { AddressInfo } from "node:net";
import net from "node:net";
import { SocketReader } from "../../proxy/http1/socket-reader.js";

export function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port)));
}

/** Two connected sockets: `local` is ours, `remote` is the far end. */
export async function socketPair(opts: { allowHalfOpen?: boolean } = {}): Promise<{ local: net.Socket; remote: net.Socket }> {
  const server = net.createServer({ allowHalfOpen: opts.allowHalfOpen ?? true });
  const port = await listen(server);
  const accepted = new Promise<net.Socket>((r) => server.once("connection", r));
  const local = net.connect({ port, host: "127.0.0.1", allowHalfOpen: opts.allowHalfOpen ?? true });
  await new Promise<void>((r) => local.once("connect", () => r()));
  const remote = await accepted;
  server.close();
  return { local, remote };
}

/**
 * A forwarding setup: `sender` writes into `fin`; `fout` writes into `receiver`.
 * The code under test moves bytes fin -> fout (or fout -> fin for the other direction).
 */
export async function forwardingPairs(opts: { allowHalfOpen?: boolean } = {}) {
  const a = await socketPair(opts);
  const b = await socketPair(opts);
  // Like a proxy, the forwarder owns error listeners on its sockets; the tests read
  // failures from the transfer's result, and the peers' errors from their own calls.
  for (const s of [a.local, b.local, a.remote, b.remote]) s.on("error", () => undefined);
  return { sender: a.remote, fin: a.local, fout: b.local, receiver: b.remote };
}

/** Deterministic-length random stream written with backpressure; resolves to its sha256. */
export function sendRandom(sock: net.Socket, total: number, opts: { end?: boolean; block?: number } = {}): Promise<string> {
  const block = opts.block ?? 1 << 20;
  const base = randomBytes(Math.min(block, Math.max(total, 1)));
  const hash = createHash("sha256");
  let sent = 0;
  let counter = 0;
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(e);
    sock.once("error", onError);
    const pump = () => {
      while (sent < total) {
        const n = Math.min(block, total - sent);
        const chunk = Buffer.from(base.subarray(0, n));
        // A counter in each block makes reordered blocks change the hash.
        if (n >= 8) chunk.writeBigUInt64LE(BigInt(counter++), 0);
        hash.update(chunk);
        sent += n;
        if (!sock.write(chunk)) {
          sock.once("drain", pump);
          return;
        }
      }
      sock.off("error", onError);
      if (opts.end) sock.end();
      resolve(hash.digest("hex"));
    };
    pump();
  });
}

/** Reads exactly `total` bytes (or until EOF when total is undefined) and hashes them. */
export function receive(sock: net.Socket, total?: number): Promise<{ hash: string; bytes: number; extra: Buffer }> {
  const hash = createHash("sha256");
  let got = 0;
  return new Promise((resolve, reject) => {
    const finish = (extra: Buffer) => {
      sock.off("data", onData);
      sock.off("end", onEnd);
      sock.off("error", reject);
      resolve({ hash: hash.digest("hex"), bytes: got, extra });
    };
    const onData = (chunk: Buffer) => {
      if (total !== undefined && got + chunk.length >= total) {
        const need = total - got;
        hash.update(chunk.subarray(0, need));
        got += need;
        sock.pause();
        finish(chunk.subarray(need));
        return;
      }
      hash.update(chunk);
      got += chunk.length;
    };
    const onEnd = () => finish(Buffer.alloc(0));
    sock.on("data", onData);
    sock.on("end", onEnd);
    sock.on("error", reject);
    sock.resume();
    if (total === 0) finish(Buffer.alloc(0));
  });
}

/** sha256 and length of a streamed body (an undici response body, a socket). */
export async function hashStream(body: AsyncIterable<Uint8Array>): Promise<{ hash: string; bytes: number }> {
  const h = createHash("sha256");
  let bytes = 0;
  for await (const c of body) {
    h.update(c);
    bytes += c.length;
  }
  return { hash: h.digest("hex"), bytes };
}

export function sha256(buf: Buffer): string {
  return createHash("sha256").update(buf).digest("hex");
}

export function openFds(): number {
  return readdirSync("/proc/self/fd").length;
}

/** Lets libuv run its close callbacks so fd counts settle. */
export async function settle(rounds = 3): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setTimeout(r, 10));
}

export function destroyAll(...socks: net.Socket[]): void {
  for (const s of socks) s.destroy();
}

/** A SocketReader over one end of a loopback connection (paused, as the proxy's are), and the peer that writes to it. */
export async function readerPair(): Promise<{ reader: SocketReader; peer: net.Socket; close: () => void }> {
  const { local, remote } = await socketPair({ allowHalfOpen: false });
  remote.pause();
  return {
    reader: new SocketReader(remote),
    peer: local,
    close: () => {
      local.destroy();
      remote.destroy();
    },
  };
}
