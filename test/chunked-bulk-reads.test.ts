// A chunked body whose small chunks cross userspace is read in 64 KiB pieces while it streams in
// (transfer/read-buffers.ts, lendWhileStreaming): reads into buffers lent from the response pool
// instead of 16 KiB copies, each given back once what it brought was written on, so the pool
// makes no new ones response after response. A slow stream of small chunks reads small and
// holds no buffer while it waits; a large chunk after small ones is still spliced. A client's
// chunked upload is read the same way. A real Node http server upstream, fetch and node:http as
// the clients, bodies by sha256.
import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, expect, test } from "vitest";
import { spliceAddon } from "../proxy/transfer/native.js";
import { responseBuffers } from "../proxy/transfer/read-buffers.js";
import { metricValue } from "./helpers/metrics.js";
import { proxyTo } from "./helpers/proxy.js";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const MiB = 1 << 20;
const body = randomBytes(MiB);
const large = randomBytes(512 * 1024);
const mixed = Buffer.concat([body.subarray(0, 320 * 1024), large, body.subarray(0, 320 * 1024)]);

let upstream: http.Server;
let p: Awaited<ReturnType<typeof proxyTo>>;
/** Reads that landed in a response buffer so far, and their bytes. */
const lent = () => {
  const { lent: reads, lentBytes: bytes } = responseBuffers();
  return { reads, bytes };
};

/** Writes `pieces` as chunks (Node's http sends each write as one), as fast as the socket takes them. */
function stream(res: http.ServerResponse, pieces: Buffer[]) {
  let i = 0;
  const more = () => {
    while (i < pieces.length) if (!res.write(pieces[i++])) return void res.once("drain", more);
    res.end();
  };
  more();
}

const split = (b: Buffer, size: number) =>
  Array.from({ length: Math.ceil(b.length / size) }, (_, i) => b.subarray(i * size, (i + 1) * size));

beforeAll(async () => {
  upstream = http.createServer((req, res) => {
    if (req.method === "POST") {
      // An upload: answered with its bytes' sha256.
      const h = createHash("sha256");
      req.on("data", (c: Buffer) => h.update(c));
      req.on("end", () => res.end(h.digest("hex")));
      return;
    }
    res.writeHead(200, { "content-type": "application/octet-stream" });
    if (req.url === "/small-chunks") stream(res, split(body, 16 * 1024));
    else if (req.url === "/mixed")
      stream(res, [...split(mixed.subarray(0, 320 * 1024), 16 * 1024), large, ...split(mixed.subarray(832 * 1024), 16 * 1024)]);
    else {
      // /trickle: 20 chunks of 100 bytes, 10 ms apart.
      let n = 0;
      const timer = setInterval(() => {
        res.write(body.subarray(n * 100, (n + 1) * 100));
        if (++n === 20) {
          clearInterval(timer);
          res.end();
        }
      }, 10);
    }
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
  p = await proxyTo({ host: "127.0.0.1", port: (upstream.address() as AddressInfo).port });
});

afterAll(async () => {
  await p.close();
  upstream.close();
});

async function get(path: string): Promise<Buffer> {
  const res = await fetch(`${p.url}${path}`);
  expect(res.status).toBe(200);
  return Buffer.from(await res.arrayBuffer());
}

/** Response bytes counted as spliced so far (summed over the body-path labels). */
const spliced = () => metricValue(p.sinks.metrics, "sluice_body_bytes_total", { direction: "response", path: "spliced" });

test("1 MiB in 16 KiB chunks, five times: each arrives whole, most of it in reads of more than 16 KiB, into buffers given back and reused", async () => {
  await get("/small-chunks"); // the pool as a running proxy has it
  const before = lent();
  const made = responseBuffers().made;
  for (let i = 0; i < 5; i++) expect(sha(await get("/small-chunks"))).toBe(sha(body));
  const after = lent();
  // Reads of 16 KiB copies only (before bulk reads): none lent, no byte counted.
  expect(after.bytes - before.bytes).toBeGreaterThan((5 * MiB) / 2);
  expect(after.reads - before.reads).toBeGreaterThan(5 * 4);
  // A buffer never given back would be made again at the next read: over 80 for five bodies.
  expect(responseBuffers().made - made).toBeLessThanOrEqual(4);
  expect(await spliced()).toBe(0);
});

test("a slow stream of 100-byte chunks reads small: no read is lent a buffer while it waits", async () => {
  // A proxy of its own: a connection that has just streamed may read its next response's head into a lent buffer.
  const own = await proxyTo({ host: "127.0.0.1", port: (upstream.address() as AddressInfo).port });
  try {
    const before = lent();
    const res = await fetch(`${own.url}/trickle`);
    expect(sha(Buffer.from(await res.arrayBuffer()))).toBe(sha(body.subarray(0, 2000)));
    expect(lent()).toEqual(before);
  } finally {
    await own.close();
  }
});

test("a 512 KiB chunk among 16 KiB ones is spliced, the bytes around it read in bulk; the body arrives whole", async () => {
  const s0 = await spliced();
  const before = lent();
  expect(sha(await get("/mixed"))).toBe(sha(mixed));
  expect(lent().bytes - before.bytes).toBeGreaterThan(256 * 1024);
  // Its size line may come in a bulk read with up to 64 KiB of it: the rest goes through the kernel.
  if (spliceAddon() === null) return;
  // Counted once the exchange has ended, a moment after the client has the last byte.
  let moved = (await spliced()) - s0;
  for (let i = 0; i < 100 && moved < 448 * 1024; i++) {
    await new Promise((r) => setTimeout(r, 10));
    moved = (await spliced()) - s0;
  }
  expect(moved).toBeGreaterThanOrEqual(448 * 1024);
});

/** POSTs `pieces` as chunks (node:http sends each write as one) on `agent`'s connection; the upstream's sha256 of what it got. */
function upload(agent: http.Agent, pieces: Buffer[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${p.url}/hash`, { method: "POST", agent }, (res) => {
      let text = "";
      res.setEncoding("latin1").on("data", (c: string) => {
        text += c;
      });
      res.on("end", () => (res.statusCode === 200 ? resolve(text) : reject(new Error(`status ${res.statusCode}`))));
    });
    req.on("error", reject);
    let i = 0;
    const more = () => {
      while (i < pieces.length) if (!req.write(pieces[i++])) return void req.once("drain", more);
      req.end();
    };
    more();
  });
}

test("a chunked upload of 1 MiB in 16 KiB chunks, five times on one connection: each arrives whole, most of it in reads of more than 16 KiB, into buffers given back and reused", async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const pieces = split(body, 16 * 1024);
    expect(await upload(agent, pieces)).toBe(sha(body)); // the pool as a running proxy has it
    const before = lent();
    const made = responseBuffers().made;
    for (let i = 0; i < 5; i++) expect(await upload(agent, pieces)).toBe(sha(body));
    const after = lent();
    expect(after.bytes - before.bytes).toBeGreaterThan((5 * MiB) / 2);
    // A buffer the client's reads were lent and not given back would be made again: over 80 for five bodies.
    expect(responseBuffers().made - made).toBeLessThanOrEqual(4);
    // At most this connection's next read waits in one while it idles.
    expect(responseBuffers().clientsArmed).toBeLessThanOrEqual(1);
  } finally {
    agent.destroy();
  }
});
