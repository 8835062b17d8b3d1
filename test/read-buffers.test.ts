// Reads into lent buffers (transfer/read-buffers.ts), on real loopback sockets: large reads
// while lending, bytes intact and in order, buffers reused once given back, and never while
// someone still holds their bytes, even after a second, stale give-back; a closed socket's
// buffer comes back, and the buffers out at once are bounded. A socket net.Server accepted reads
// the same way once made to (transfer/accepted-socket.ts). A TLS socket that is paused and
// left without a listener mid-stream keeps what it decrypts on. Through the proxy, after a
// spliced response the next response's first read lands in a 64 KiB buffer of its own, and
// every kind of response arrives intact while those buffers are given back and reused, also
// when more responses are in flight at once than the pool held before (64); the upstream
// socket's handle is never pointed at another buffer per response.
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";
import { afterEach, expect, test } from "vitest";
import { readAcceptedIntoBuffers } from "../proxy/transfer/accepted-socket.js";
import {
  giveBack,
  isLent,
  LENT_SIZE,
  lendReads,
  lentBuffers,
  readIntoBuffers,
  trimPools,
} from "../proxy/transfer/read-buffers.js";
import { selfSigned } from "./helpers/certs.js";
import { listen } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()));
});

/** A client socket reading through readIntoBuffers, the server's end to send from, and receive(n). */
async function connected() {
  let far!: net.Socket;
  const server = net.createServer((s) => {
    far = s;
  });
  const port = await listen(server);
  let socket: net.Socket | null = null;
  socket = net.connect({ port, host: "127.0.0.1", onread: readIntoBuffers(() => socket) });
  const near = socket;
  await new Promise((r) => near.once("connect", r));
  while (!far) await new Promise((r) => setTimeout(r, 5));
  closers.push(async () => {
    const closed = new Promise((r) => near.once("close", r));
    near.destroy();
    far.destroy();
    server.close();
    if (!near.closed) await closed;
  });
  let onChunk: ((c: Buffer) => void) | null = null;
  near.on("data", (c: Buffer) => onChunk?.(c));
  /** Sends `bytes` from the server and hands each chunk that arrives to `each` until all came. */
  const exchange = (bytes: Buffer, each: (c: Buffer) => void) =>
    new Promise<void>((resolve) => {
      let got = 0;
      onChunk = (c) => {
        got += c.length;
        each(c);
        if (got >= bytes.length) resolve();
      };
      far.write(bytes);
    });
  return { near, exchange };
}

test("while lending, reads are large and land in a few reused buffers; the bytes arrive intact and in order", async () => {
  const { near, exchange } = await connected();
  lendReads(near, true);
  const sent = randomBytes(8 << 20);
  const h = createHash("sha256");
  const memories = new Set<ArrayBufferLike>();
  let lent = 0;
  let largest = 0;
  await exchange(sent, (c) => {
    h.update(c);
    largest = Math.max(largest, c.length);
    if (isLent(c)) {
      lent++;
      memories.add(c.buffer);
    }
    giveBack(c);
  });
  expect(h.digest("hex")).toBe(sha(sent));
  expect(largest).toBeGreaterThan(16 * 1024);
  expect(largest).toBeLessThanOrEqual(LENT_SIZE);
  expect(lent).toBeGreaterThan(10);
  expect(memories.size).toBeLessThanOrEqual(3);

  // Off again: reads are small copies, never lent (after the one read already under way).
  lendReads(near, false);
  const after: Buffer[] = [];
  const more = randomBytes(1 << 20);
  await exchange(more, (c) => after.push(c));
  expect(sha(Buffer.concat(after))).toBe(sha(more));
  expect(after.slice(1).every((c) => !isLent(c) && c.length <= 16 * 1024)).toBe(true);
});

test("a lent chunk kept, or given back twice, is never read into again", async () => {
  const { near, exchange } = await connected();
  lendReads(near, true);
  // Kept: never given back.
  let kept: Buffer | null = null;
  let keptCopy: Buffer | null = null;
  // Given back at once, and again later when its memory holds someone else's bytes.
  let twice: Buffer | null = null;
  await exchange(randomBytes(2 << 20), (c) => {
    if (!isLent(c)) return;
    if (kept === null) {
      kept = c;
      keptCopy = Buffer.from(c);
    } else {
      if (twice === null) twice = c;
      giveBack(c);
    }
  });
  expect(kept).not.toBeNull();
  expect(twice).not.toBeNull();
  const stale = twice as unknown as Buffer;
  // The pool lends the last buffer given back first: its memory is soon read into again.
  let reused: Buffer | null = null;
  let reusedCopy: Buffer | null = null;
  await exchange(randomBytes(2 << 20), (c) => {
    if (reused === null && c.buffer === stale.buffer) {
      reused = c;
      reusedCopy = Buffer.from(c);
      return;
    }
    giveBack(c);
  });
  expect(reused).not.toBeNull();
  // A stale give-back of memory now held by `reused` must not free it.
  giveBack(stale);
  // Chunks held a while, as a slow destination would: the pool lends out all it has.
  const held: Buffer[] = [];
  await exchange(randomBytes(8 << 20), (c) => {
    held.push(c);
    if (held.length > 4) giveBack(held.shift() as Buffer);
  });
  for (const c of held) giveBack(c);
  expect(sha(kept as unknown as Buffer)).toBe(sha(keptCopy as unknown as Buffer));
  expect(sha(reused as unknown as Buffer)).toBe(sha(reusedCopy as unknown as Buffer));
});

test("a socket that closes while lending gives back the buffer its next read would have used", async () => {
  const { near, exchange } = await connected();
  lendReads(near, true);
  await exchange(randomBytes(1 << 20), (c) => giveBack(c));
  // Everything read was given back; the buffer of the next read is out, waiting in the socket.
  const open = lentBuffers().out;
  near.destroy();
  await new Promise((r) => near.once("close", r));
  expect(lentBuffers().out).toBe(open - 1);
});

test("at most 256 buffers are out at once: past that, reads are small copies, and the bytes still arrive intact", async () => {
  const { near, exchange } = await connected();
  lendReads(near, true);
  const sent = randomBytes(96 << 20);
  const held: Buffer[] = [];
  const h = createHash("sha256");
  let most = 0;
  let smallAfterCap = 0;
  // Nothing given back until the end, as from a destination that never finishes a write.
  await exchange(sent, (c) => {
    h.update(c);
    most = Math.max(most, lentBuffers().out);
    if (isLent(c)) held.push(c);
    else if (lentBuffers().out >= 256) smallAfterCap++;
  });
  expect(h.digest("hex")).toBe(sha(sent));
  expect(most).toBe(256);
  expect(smallAfterCap).toBeGreaterThan(0);
  for (const c of held) giveBack(c);
  lendReads(near, false);
});

test("lent buffers given back are all kept (as many as were out at once), and those that stay unused are given back over time, half the excess at a time, down to 16", async () => {
  // Whatever earlier tests left goes first: trims with nothing borrowed in between.
  for (let i = 0; i < 40; i++) trimPools();
  expect(lentBuffers().free).toBeLessThanOrEqual(16);
  const { near, exchange } = await connected();
  lendReads(near, true);
  const held: Buffer[] = [];
  // Nothing given back while it runs: every read lands in a buffer of its own.
  await exchange(randomBytes(16 << 20), (c) => {
    if (isLent(c)) held.push(c);
  });
  lendReads(near, false);
  expect(held.length).toBeGreaterThan(32);
  for (const c of held) giveBack(c);
  // All kept (a pool of 16 dropped the rest, and the next copies made them again).
  expect(lentBuffers().free).toBeGreaterThanOrEqual(held.length);
  // Unused since the trim before: half of those past 16 go at each trim, until 16 are left.
  trimPools();
  const sizes = [lentBuffers().free];
  for (let i = 0; i < 12 && lentBuffers().free > 16; i++) {
    trimPools();
    sizes.push(lentBuffers().free);
  }
  for (let i = 1; i < sizes.length; i++)
    expect(sizes[i]).toBe((sizes[i - 1] as number) - Math.ceil(((sizes[i - 1] as number) - 16) / 2));
  expect(lentBuffers().free).toBe(16);
});

test("a socket net.Server accepted reads through readIntoBuffers once made to: small copies, 64 KiB lent reads while bytes stream in, lent buffers while lending, pause and EOF as before", async () => {
  let accepted: net.Socket | null = null;
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (s) => {
    expect(readAcceptedIntoBuffers(s)).toBe(true);
    accepted = s;
  });
  const port = await listen(server);
  const far = net.connect({ port, host: "127.0.0.1" });
  await new Promise((r) => far.once("connect", r));
  while (accepted === null) await new Promise((r) => setTimeout(r, 5));
  const near = accepted as net.Socket;
  closers.push(async () => {
    near.destroy();
    far.destroy();
    server.close();
  });
  const chunks: Buffer[] = [];
  near.on("data", (c: Buffer) => chunks.push(c));
  const receive = async (bytes: Buffer) => {
    chunks.length = 0;
    far.write(bytes);
    while (chunks.reduce((n, c) => n + c.length, 0) < bytes.length) await new Promise((r) => setTimeout(r, 5));
    expect(sha(Buffer.concat(chunks))).toBe(sha(bytes));
  };
  near.resume();
  // A first message smaller than the shared buffer: a copy of it.
  await receive(randomBytes(1000));
  expect(chunks.some(isLent)).toBe(false);
  // Bytes that stream in (a chunked upload) come as an upstream's do: once a read fills the
  // shared 16 KiB buffer, the next ones land in 64 KiB response buffers, lent, given back here.
  await receive(randomBytes(4 << 20));
  expect(Math.max(...chunks.map((c) => c.length))).toBeLessThanOrEqual(64 * 1024);
  expect(chunks.some((c) => isLent(c) && c.length > 16 * 1024)).toBe(true);
  for (const c of chunks) giveBack(c);
  lendReads(near, true);
  await receive(randomBytes(4 << 20));
  expect(chunks.some((c) => isLent(c) && c.length > 16 * 1024)).toBe(true);
  for (const c of chunks) giveBack(c);
  lendReads(near, false);
  // Paused, it reads nothing (the bytes wait in the kernel); resumed, they come, then the peer's EOF.
  near.pause();
  chunks.length = 0;
  far.write(randomBytes(1000));
  await new Promise((r) => setTimeout(r, 100));
  expect(chunks.length).toBe(0);
  const ended = new Promise((r) => near.once("end", r));
  far.end();
  near.resume();
  await ended;
  expect(Buffer.concat(chunks).length).toBe(1000);
});

test("a TLS socket reading through readIntoBuffers, paused with no listener between records, loses no byte", async () => {
  const pair = selfSigned(tempDir("read-buffers"), "rb", ["IP:127.0.0.1"]);
  const sent = randomBytes(4 << 20);
  const server = tls.createServer({ cert: readFileSync(pair.cert), key: readFileSync(pair.key) }, (s) => s.end(sent));
  const port = await listen(server as unknown as net.Server);
  let socket: tls.TLSSocket | null = null;
  const onread = readIntoBuffers(() => socket);
  socket = tls.connect({ port, host: "127.0.0.1", rejectUnauthorized: false, onread } as tls.ConnectionOptions);
  const s = socket;
  closers.push(async () => {
    s.destroy();
    server.close();
  });
  const got: Buffer[] = [];
  const ended = new Promise((r) => s.once("end", r));
  // At each chunk the consumer lets go (no listener, paused) and comes back a moment later, as a
  // socket's reader does when a body copy takes it over: one read of ciphertext holds several
  // records, and the TLS layer hands them over after the pause.
  const take = (c: Buffer) => {
    got.push(c);
    s.off("data", take);
    s.pause();
    setTimeout(() => {
      s.on("data", take);
      s.resume();
    }, 1);
  };
  s.on("data", take);
  await ended;
  expect(sha(Buffer.concat(got))).toBe(sha(sent));
});

/**
 * A Node upstream answering by path, each response written the way that path says: a spliced
 * 1 MiB body, a small body read with its head, a 100 KiB body copied through the reader, a
 * chunked body, no body, and a head that arrives in two pieces.
 */
async function responder(bodies: Record<string, Buffer>) {
  const server = net.createServer((s) => {
    let pending = "";
    s.on("data", (c: Buffer) => {
      pending += c.toString("latin1");
      for (let end = pending.indexOf("\r\n\r\n"); end !== -1; end = pending.indexOf("\r\n\r\n")) {
        const path = /^GET (\S+)/.exec(pending)?.[1] ?? "";
        pending = pending.slice(end + 4);
        const body = bodies[path.replace(/^\/split/, "")] ?? Buffer.alloc(0);
        if (path === "/none") s.write("HTTP/1.1 204 No Content\r\n\r\n");
        else if (path === "/chunked") {
          s.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
          for (let at = 0; at < body.length; at += 3000) {
            const piece = body.subarray(at, at + 3000);
            s.write(`${piece.length.toString(16)}\r\n`);
            s.write(piece);
            s.write("\r\n");
          }
          s.write("0\r\n\r\n");
        } else if (path.startsWith("/split")) {
          // The head in two writes a moment apart: the reader copies the first before the rest lands.
          s.write("HTTP/1.1 200 OK\r\nContent-Le");
          setTimeout(() => s.write(Buffer.concat([Buffer.from(`ngth: ${body.length}\r\n\r\n`), body])), 20);
        } else s.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`), body]));
      }
    });
    s.on("error", () => undefined);
  });
  const port = await listen(server);
  closers.push(async () => {
    server.close();
  });
  return port;
}

test("after a spliced response, the next one's first read lands in a 64 KiB buffer of its own: every kind of response arrives intact, a spliced one's first read takes more than 16 KiB of its body, and the buffers come back", async () => {
  const { proxyTo } = await import("./helpers/proxy.js");
  const { metricValue } = await import("./helpers/metrics.js");
  const { responseBuffers } = await import("../proxy/transfer/read-buffers.js");
  const { spliceAddon } = await import("../proxy/transfer/native.js");
  const { Pool } = await import("undici");
  const bodies: Record<string, Buffer> = {
    "/big": randomBytes(1 << 20),
    "/small": randomBytes(1000),
    "/medium": randomBytes(100 * 1024),
    "/chunked": randomBytes(300 * 1024),
  };
  const port = await responder(bodies);
  const p = await proxyTo({ host: "127.0.0.1", port });
  closers.push(() => p.close());
  const fetchOne = async (pool: InstanceType<typeof Pool>, path: string) => {
    const r = await pool.request({ path, method: "GET" });
    const got = Buffer.from(await r.body.arrayBuffer());
    expect(r.statusCode, path).toBe(path === "/none" ? 204 : 200);
    expect(sha(got), path).toBe(sha(bodies[path.replace(/^\/split/, "")] ?? Buffer.alloc(0)));
  };
  const splicedSoFar = () => metricValue(p.sinks.metrics, "sluice_body_bytes_total", { direction: "response", path: "spliced" });

  // One connection, responses in a known order: how much of each 1 MiB body was spliced says
  // how much its first read took (the rest of the body is what was copied with the head).
  const one = new Pool(p.url, { connections: 1 });
  closers.push(() => one.close());
  const order = ["/big", "/big", "/big", "/small", "/big", "/big", "/big"];
  const firstReads: number[] = [];
  const lentBefore = responseBuffers().lent;
  for (const path of order) {
    const before = await splicedSoFar();
    await fetchOne(one, path);
    if (path !== "/big") continue;
    let now = await splicedSoFar();
    for (let i = 0; i < 100 && now === before; i++) {
      await new Promise((r) => setTimeout(r, 10));
      now = await splicedSoFar();
    }
    firstReads.push((1 << 20) - (now - before));
  }
  if (spliceAddon() !== null) {
    // Every response after a spliced one had its first read lent a buffer (the 2nd, 3rd, 4th, 6th and 7th), and no other.
    expect(responseBuffers().lent - lentBefore).toBe(5);
    // After a non-spliced response (and on a new connection) the first read is the shared 16 KiB one.
    expect(firstReads[0]).toBeLessThanOrEqual(16 * 1024);
    expect(firstReads[3]).toBeLessThanOrEqual(16 * 1024);
    // After a spliced one, up to 64 KiB: more than 16 KiB when that much had arrived (it nearly always has).
    for (const n of firstReads) expect(n).toBeLessThanOrEqual(64 * 1024);
    expect(Math.max(firstReads[1] ?? 0, firstReads[2] ?? 0, firstReads[4] ?? 0, firstReads[5] ?? 0)).toBeGreaterThan(16 * 1024);
  }

  // Every kind of response, four connections, mixed: each arrives intact, and the buffers are reused.
  const pool = new Pool(p.url, { connections: 4 });
  closers.push(() => pool.close());
  const paths = ["/big", "/small", "/big", "/medium", "/big", "/chunked", "/none", "/split/big", "/split/small"];
  const made = responseBuffers().made;
  for (let round = 0; round < 5; round++) await Promise.all(paths.map((path) => fetchOne(pool, path)));
  if (spliceAddon() !== null) {
    // At most one out per connection at a time, given back and reused: not one per response.
    expect(responseBuffers().made - made).toBeLessThanOrEqual(8);
    expect(responseBuffers().free).toBeGreaterThan(0);
  }
});

test("with more spliced responses in flight at once than 64, the response buffers are kept and reused round after round, not made again", async () => {
  const { proxyTo } = await import("./helpers/proxy.js");
  const { responseBuffers } = await import("../proxy/transfer/read-buffers.js");
  const { spliceAddon } = await import("../proxy/transfer/native.js");
  const { Pool } = await import("undici");
  const body = randomBytes(300 * 1024); // above the splice threshold
  const clients = 100;
  // An upstream that answers only once every client's request of the round has arrived: all
  // of them are in flight at once, each with its first read's buffer lent.
  let waiting: net.Socket[] = [];
  const server = net.createServer((s) => {
    s.on("data", (c: Buffer) => {
      for (let at = c.indexOf("\r\n\r\n"); at !== -1; at = c.indexOf("\r\n\r\n", at + 4)) waiting.push(s);
      if (waiting.length < clients) return;
      for (const w of waiting.splice(0))
        w.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`), body]));
    });
    s.on("error", () => undefined);
  });
  const port = await listen(server);
  closers.push(async () => {
    server.close();
  });
  const p = await proxyTo({ host: "127.0.0.1", port });
  closers.push(() => p.close());
  const pool = new Pool(p.url, { connections: clients });
  closers.push(() => pool.close());
  const round = () =>
    Promise.all(
      Array.from({ length: clients }, async () => {
        const r = await pool.request({ path: "/", method: "GET" });
        const got = Buffer.from(await r.body.arrayBuffer());
        expect(r.statusCode).toBe(200);
        expect(sha(got)).toBe(sha(body));
      }),
    );
  // The first response on each connection is read the ordinary way (its head's read, which
  // fills the shared 16 KiB buffer, arms a lent one for the next); from the second on, lent.
  const start = responseBuffers();
  await round();
  const afterOne = responseBuffers();
  for (let i = 0; i < 5; i++) await round();
  const end = responseBuffers();
  waiting = [];
  if (spliceAddon() === null) return;
  // Every response of the last five rounds was lent a buffer, and each connection waits for its
  // next one in a buffer of its own: more than 64 out at once after the first round.
  expect(end.lent - afterOne.lent).toBe(5 * clients);
  // (Earlier tests in this file may have left free ones: counted with those made.)
  expect(afterOne.made - start.made + start.free).toBeGreaterThan(64);
  // The later rounds reused them: a response's first read and the next one armed can overlap
  // on a connection, so one or two more than the first round's, not a round's worth.
  expect(end.made - afterOne.made).toBeLessThanOrEqual(2);
});

test("responses one after another on one upstream connection never point its handle at another buffer: each such call stacks a listener kept until the socket closes", async () => {
  const { proxyTo } = await import("./helpers/proxy.js");
  const { Pool } = await import("undici");
  const big = randomBytes(300 * 1024);
  const port = await responder({ "/big": big, "/small": randomBytes(100) });
  const p = await proxyTo({ host: "127.0.0.1", port });
  closers.push(() => p.close());
  // Counted on the prototype of every TCP handle in this process (the proxy's and the client's).
  const probe = net.connect({ port, host: "127.0.0.1" });
  await new Promise((r) => probe.once("connect", r));
  const proto = Object.getPrototypeOf((probe as unknown as { _handle: object })._handle) as {
    useUserBuffer: (b: Buffer) => void;
  };
  probe.destroy();
  const original = proto.useUserBuffer;
  let calls = 0;
  proto.useUserBuffer = function (this: unknown, b: Buffer) {
    calls++;
    return original.call(this, b);
  };
  try {
    const one = new Pool(p.url, { connections: 1 });
    closers.push(() => one.close());
    for (let i = 0; i < 20; i++) {
      const r = await one.request({ path: i % 5 === 4 ? "/small" : "/big", method: "GET" });
      const got = Buffer.from(await r.body.arrayBuffer());
      expect(r.statusCode).toBe(200);
      if (i % 5 !== 4) expect(sha(got)).toBe(sha(big));
    }
  } finally {
    proto.useUserBuffer = original;
  }
  // Once per socket: Node's own as the upstream socket (made with onread) got its handle, and the
  // one client connection's at its accept (accepted-socket.ts). Not one per response.
  expect(calls).toBeLessThanOrEqual(2);
});
