// Heads written straight to a plain socket's descriptor (transfer/head-write.ts): whatever the
// kernel takes at once, whatever is queued before, every byte arrives once and in order; a TLS
// socket is never written this way (its descriptor carries ciphertext).
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import tls from "node:tls";
import { afterAll, expect, test } from "vitest";
import { writeHead } from "../proxy/transfer/head-write.js";
import { spliceAddon } from "../proxy/transfer/native.js";
import { selfSigned } from "./helpers/certs.js";
import { destroyAll, openFds, receive, settle, socketPair } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

const hash = (...parts: Array<string | Buffer>) => {
  const h = createHash("sha256");
  for (const p of parts) h.update(typeof p === "string" ? Buffer.from(p, "latin1") : p);
  return h.digest("hex");
};
/** A Latin-1 head of `n` bytes, every byte value in it. */
const latin1Head = (n: number) => {
  let s = "";
  for (let i = 0; s.length < n; i++) s += String.fromCharCode(i % 256);
  return s.slice(0, n);
};

const fdsBefore = openFds();
afterAll(async () => {
  await settle();
  expect(openFds()).toBe(fdsBefore);
});

test("the splice addon is here to write heads (the other tests would prove nothing without it)", () => {
  expect(spliceAddon()).not.toBeNull();
});

test("a head and a small body arrive whole and in order", async () => {
  const { local, remote } = await socketPair();
  const head = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
  const got = receive(remote, head.length + 5);
  // All of it went to the kernel in the call: a caller need not wait for a write callback.
  expect(writeHead(local, head, Buffer.from("hello"))).toBe(true);
  expect(local.writableLength).toBe(0);
  expect((await got).hash).toBe(hash(head, "hello"));
  destroyAll(local, remote);
});

test("more than the kernel takes at once (the peer not reading yet): the rest follows through the socket, in order", async () => {
  for (const [headBytes, bodyBytes] of [
    [12 << 20, 0], // the head alone, cut
    [12 << 20, 1 << 20], // cut in the head, the body after it
    [100, 12 << 20], // cut in the body
  ] as const) {
    const { local, remote } = await socketPair();
    remote.pause();
    const head = latin1Head(headBytes);
    const body = bodyBytes > 0 ? Buffer.alloc(bodyBytes, 7) : null;
    expect(writeHead(local, head, body)).toBe(false); // the rest is queued on the socket
    expect(writeHead(local, "after\r\n")).toBe(false); // queued behind what the socket still holds: never ahead of it
    const total = headBytes + bodyBytes + 7;
    expect((await receive(remote, total)).hash).toBe(hash(head, body ?? Buffer.alloc(0), "after\r\n"));
    destroyAll(local, remote);
  }
});

test("writes already queued or corked on the socket go first", async () => {
  const { local, remote } = await socketPair();
  local.cork();
  local.write("first;");
  writeHead(local, "second;", Buffer.from("third;"));
  local.uncork();
  expect((await receive(remote, 19)).hash).toBe(hash("first;second;third;"));
  destroyAll(local, remote);
});

/** Both ends of a TLS connection over loopback (a self-signed certificate), and its server to close. */
async function tlsPair(name: string): Promise<{ client: tls.TLSSocket; serverSide: tls.TLSSocket; server: tls.Server }> {
  const pair = selfSigned(tempDir(name), "localhost", ["DNS:localhost"]);
  const server = tls.createServer({ key: readFileSync(pair.key), cert: readFileSync(pair.cert) });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  const accepted = new Promise<tls.TLSSocket>((r) => server.once("secureConnection", r));
  const client = tls.connect({ port, host: "127.0.0.1", servername: "localhost", rejectUnauthorized: false });
  await new Promise<void>((r) => client.once("secureConnect", () => r()));
  return { client, serverSide: await accepted, server };
}

test("a TLS socket gets its head through TLS", async () => {
  const { client, serverSide, server } = await tlsPair("head-write-tls");
  const got = receive(serverSide, 15);
  expect(writeHead(client, "GET / HTTP/1.1\r", Buffer.from(""))).toBe(false);
  expect((await got).hash).toBe(hash("GET / HTTP/1.1\r"));
  destroyAll(client, serverSide);
  server.close();
});

test("a TLS socket gets a head and its small body in one record (one write: one record, one system call)", async () => {
  const { client, serverSide, server } = await tlsPair("head-write-tls-record");
  // Node's TLS socket hands each record's plaintext over as its own chunk.
  const first = new Promise<Buffer>((r) => client.once("data", r));
  const head = "HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n";
  const body = Buffer.alloc(1024, 0xe9);
  writeHead(serverSide, head, body);
  expect(hash(await first)).toBe(hash(head, body));
  destroyAll(client, serverSide);
  server.close();
});

test("a socket whose peer is gone: no exception, the socket reports it as usual", async () => {
  const { local, remote } = await socketPair();
  local.on("error", () => undefined);
  remote.resetAndDestroy();
  await new Promise((r) => local.once("close", r).once("end", r).once("error", r).resume());
  expect(() => writeHead(local, "HTTP/1.1 200 OK\r\n\r\n")).not.toThrow();
  local.destroy();
});

test("a socket its owner has ended: the head is not written past the end; Node reports the write after end, as it does", async () => {
  const { local, remote } = await socketPair();
  const errors: string[] = [];
  local.on("error", (e: NodeJS.ErrnoException) => errors.push(e.code ?? ""));
  const got = receive(remote); // up to the peer's end
  local.end("bye");
  // The descriptor is open still (the shutdown waits for the event loop): a head written
  // straight to it would reach the peer after "bye".
  expect(writeHead(local, "HTTP/1.1 200 OK\r\n\r\n")).toBe(false);
  const all = await got;
  expect(all.bytes).toBe(3);
  expect(all.hash).toBe(hash("bye"));
  await settle();
  expect(errors).toEqual(["ERR_STREAM_WRITE_AFTER_END"]);
  destroyAll(local, remote);
});
