// Which bodies are spliced: a Content-Length body when at least `splice.threshold` (16 KiB) of it
// is still to come after the read that brought its head, in either direction; a chunk of a
// chunked body when at least `splice.chunk_threshold` (128 KiB) of it is. The upstream writes
// each body a moment after its head, so none of it comes with the head's read; the counters
// of spliced and copied bytes (summed over both body-path labels) say which way each body went, and
// every body arrives whole.
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import { afterAll, beforeAll, expect, test } from "vitest";
import { spliceAddon } from "../proxy/transfer/native.js";
import { metricValue } from "./helpers/metrics.js";
import { listen } from "./helpers/net.js";
import { proxyTo } from "./helpers/proxy.js";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const bodies: Record<string, Buffer> = {
  "200k": randomBytes(200 * 1024),
  "100k": randomBytes(100 * 1024),
  "10k": randomBytes(10 * 1024),
};
let upstream: net.Server;
let proxies: Awaited<ReturnType<typeof proxyTo>>[] = [];

/** GET /length/K or /chunked/K: the body K in one piece (one chunk), 30 ms after the head; POST: the body's length back. */
function serve(s: net.Socket) {
  let pending = Buffer.alloc(0);
  s.on("data", (c: Buffer) => {
    pending = Buffer.concat([pending, c]);
    const end = pending.indexOf("\r\n\r\n");
    if (end === -1) return;
    const head = pending.subarray(0, end).toString("latin1");
    const [, method, path] = /^(\S+) (\S+)/.exec(head) ?? [];
    if (method === "POST") {
      const length = Number(/content-length: *(\d+)/i.exec(head)?.[1]);
      if (pending.length - end - 4 < length) return;
      const got = sha(pending.subarray(end + 4, end + 4 + length));
      pending = pending.subarray(end + 4 + length);
      s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${got.length}\r\n\r\n${got}`);
      return;
    }
    pending = pending.subarray(end + 4);
    const [, kind, name] = (path ?? "").split("/");
    const body = bodies[name ?? ""] as Buffer;
    if (kind === "chunked") {
      s.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
      setTimeout(
        () => s.write(Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from("\r\n0\r\n\r\n")])),
        30,
      );
    } else {
      s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n`);
      setTimeout(() => s.write(body), 30);
    }
  });
  s.on("error", () => undefined);
}

beforeAll(async () => {
  upstream = net.createServer(serve);
  await listen(upstream);
});

afterAll(async () => {
  await Promise.all(proxies.map((p) => p.close()));
  proxies = [];
  upstream.close();
});

async function proxy(chunkThreshold?: number) {
  const port = (upstream.address() as net.AddressInfo).port;
  const p = await proxyTo({ host: "127.0.0.1", port }, (o) => {
    if (chunkThreshold !== undefined) o.spliceChunkThreshold = chunkThreshold;
  });
  proxies.push(p);
  const counted = (direction: string, path: string) =>
    metricValue(p.sinks.metrics, "sluice_body_bytes_total", { direction, path });
  /** The body fetched through `p`, and the response bytes spliced and copied meanwhile (counted once the exchange has ended, a moment after the client has the last byte). */
  const through = async (path: string) => {
    const [s0, c0] = [await counted("response", "spliced"), await counted("response", "copied")];
    const res = await fetch(`${p.url}${path}`);
    const body = Buffer.from(await res.arrayBuffer());
    expect(res.status).toBe(200);
    const moved = async () => ({
      spliced: (await counted("response", "spliced")) - s0,
      copied: (await counted("response", "copied")) - c0,
    });
    let m = await moved();
    for (let i = 0; i < 100 && m.spliced + m.copied < body.length; i++) {
      await new Promise((r) => setTimeout(r, 10));
      m = await moved();
    }
    return { body, ...m };
  };
  return { through };
}

test("by default a Content-Length body with 16 KiB or more still to come is spliced, a smaller one copied", async () => {
  const { through } = await proxy();
  const big = await through("/length/100k");
  expect(sha(big.body)).toBe(sha(bodies["100k"] as Buffer));
  expect(big.spliced).toBe(spliceAddon() !== null ? 100 * 1024 : 0);
  expect(big.spliced + big.copied).toBe(100 * 1024);
  const small = await through("/length/10k");
  expect(sha(small.body)).toBe(sha(bodies["10k"] as Buffer));
  expect(small).toMatchObject({ spliced: 0, copied: 10 * 1024 });
});

test("a request body of 100 KiB sent after its head is spliced to the upstream, one of 10 KiB copied", async () => {
  const p = await proxyTo({ host: "127.0.0.1", port: (upstream.address() as net.AddressInfo).port });
  proxies.push(p);
  const counted = (path: string) => metricValue(p.sinks.metrics, "sluice_body_bytes_total", { direction: "request", path });
  for (const size of [100 * 1024, 10 * 1024]) {
    const upload = randomBytes(size);
    const [s0, c0] = [await counted("spliced"), await counted("copied")];
    const c = net.connect(p.port, "127.0.0.1");
    c.write(`POST / HTTP/1.1\r\nhost: x\r\ncontent-length: ${size}\r\nconnection: close\r\n\r\n`);
    setTimeout(() => c.write(upload), 30);
    const chunks: Buffer[] = [];
    c.on("data", (d: Buffer) => chunks.push(d));
    await new Promise((r) => c.on("close", r));
    const answer = Buffer.concat(chunks).toString("latin1");
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer.endsWith(sha(upload))).toBe(true);
    // Counted once the exchange has ended, a moment after the client has the answer.
    const moved = async () => [(await counted("spliced")) - s0, (await counted("copied")) - c0] as const;
    let [spliced, copied] = await moved();
    for (let i = 0; i < 100 && spliced + copied < size; i++) {
      await new Promise((r) => setTimeout(r, 10));
      [spliced, copied] = await moved();
    }
    expect(spliced + copied).toBe(size);
    expect(spliced).toBe(size >= 16 * 1024 && spliceAddon() !== null ? size : 0);
  }
});

test("by default a chunk with 128 KiB or more still to come is spliced, a 100 KiB one copied; with splice.chunk_threshold at 256 KiB, both copied", async () => {
  const byDefault = await proxy();
  const raised = await proxy(256 * 1024);
  for (const [p, name, splicedAtLeast] of [
    // The size line's read brings some of the chunk (at most 16 KiB): that much is copied, the rest spliced.
    [byDefault, "200k", 200 * 1024 - 16 * 1024],
    [byDefault, "100k", 0],
    [raised, "200k", 0],
  ] as const) {
    const body = bodies[name] as Buffer;
    const chunk = await p.through(`/chunked/${name}`);
    expect(sha(chunk.body), name).toBe(sha(body));
    expect(chunk.spliced + chunk.copied, name).toBe(body.length);
    if (splicedAtLeast === 0 || spliceAddon() === null) expect(chunk.spliced, name).toBe(0);
    else expect(chunk.spliced, name).toBeGreaterThanOrEqual(splicedAtLeast);
  }
});
