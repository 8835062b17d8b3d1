// Chunked request bodies are parsed on two paths: complete small chunks already buffered in one
// synchronous pass, anything else line by line. The same bytes must get the same verdict and
// the same payload whichever path reads them: each body is sent in one write (mostly the fast
// path) and in pieces of a few bytes (mostly the line path).
import { createHash } from "node:crypto";
import http from "node:http";
import net from "node:net";
import { afterAll, beforeAll, expect, test } from "vitest";
import { listen } from "./helpers/net.js";
import { proxyTo } from "./helpers/proxy.js";

let upstream: http.Server;
/** Called when the upstream has a request's head: the body is being relayed from then on. */
let onHead: () => void = () => undefined;
let proxy: Awaited<ReturnType<typeof proxyTo>>;

beforeAll(async () => {
  // Answers with the sha256 of the body it decoded (llhttp un-chunks it).
  upstream = http.createServer((req, res) => {
    res.setHeader("connection", "close");
    onHead();
    const h = createHash("sha256");
    req.on("data", (c: Buffer) => h.update(c));
    req.on("end", () => res.end(h.digest("hex")));
    req.on("error", () => undefined);
  });
  const port = await listen(upstream as unknown as net.Server);
  proxy = await proxyTo({ host: "127.0.0.1", port }, (o) => {
    o.spliceThreshold = 1024;
    o.spliceChunkThreshold = 1024;
  });
});

afterAll(async () => {
  await proxy.close();
  upstream.closeAllConnections();
  upstream.close();
});

/** A small deterministic generator, so a failure can be replayed from its case number. */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return (n: number) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
}

/** A chunked body whose size lines take every form the grammar allows, and its payload. */
function body(r: (n: number) => number): { wire: string; payload: string; valid: boolean } {
  let wire = "";
  let payload = "";
  let valid = true;
  for (let i = r(40); i >= 0; i--) {
    // Mostly small chunks; now and then one over the splice threshold (1 KiB here).
    const size = r(10) === 0 ? 1024 + r(3000) : 1 + r(200);
    const data = String.fromCharCode(...Array.from({ length: size }, () => 32 + r(95)));
    let line = size.toString(16);
    const form = r(8);
    if (form === 0) line = line.toUpperCase();
    if (form === 1) line = `${"0".repeat(r(20))}${line}`;
    if (form === 2) line = `${line};ext=${r(100)}`;
    if (form === 3) line = `${line};q="a b"`;
    if (form === 4 && r(10) === 0) line = `${"0".repeat(4090 - line.length + r(8))}${line}`; // around the 4 KiB line limit
    // A size line's LF may come at most 4096 bytes after its start.
    if (line.length + 1 > 4096) valid = false;
    wire += `${line}\r\n${data}\r\n`;
    payload += data;
  }
  wire += r(4) === 0 ? "0\r\nx-trailer: 1\r\n\r\n" : "0\r\n\r\n";
  return { wire, payload, valid };
}

/** Breaks one byte of the framing, or leaves the body intact. */
function mutate(wire: string, r: (n: number) => number): string {
  const at = r(wire.length);
  switch (r(6)) {
    case 0:
      return wire.slice(0, at) + wire.slice(at + 1); // a byte lost
    case 1:
      return `${wire.slice(0, at)}\n${wire.slice(at)}`; // a bare LF
    case 2:
      return `${wire.slice(0, at)}\r${wire.slice(at + 1)}`; // a bare CR
    case 3:
      return `${wire.slice(0, at)}${"f".repeat(1 + r(14))}${wire.slice(at)}`; // a longer size, or junk
    default:
      return wire;
  }
}

async function send(wire: string, trickle: boolean): Promise<{ status: string; text: string }> {
  const head = "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
  const data = Buffer.from(trickle ? wire : head + wire, "latin1");
  const parts: Buffer[] = [];
  if (!trickle) parts.push(data);
  else for (let i = 0; i < data.length; i += 3) parts.push(data.subarray(i, i + 3));
  const relaying = new Promise<void>((resolve) => {
    onHead = resolve;
  });
  const text = await new Promise<string>((resolve, reject) => {
    const chunks: Buffer[] = [];
    const sock = net.connect(proxy.port, "127.0.0.1", async () => {
      // Trickled: the head first; once the relay runs, each piece in its own turn of the event
      // loop (sluice runs in this process), so each reaches it as a separate read.
      if (trickle) {
        sock.write(head);
        await relaying;
      }
      for (const p of parts) {
        if (sock.destroyed) return;
        sock.write(p);
        if (trickle) await new Promise((r) => setImmediate(r));
      }
    });
    sock.on("data", (c: Buffer) => chunks.push(c));
    sock.on("error", () => undefined);
    const timer = setTimeout(() => reject(new Error("no answer in 10 s")), 10_000);
    sock.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString("latin1"));
    });
  });
  return { status: text.slice(0, 12), text };
}

test("200 cases: a body sent at once and the same body trickled get the same status and the same payload", async () => {
  const verdicts = new Map<string, number>();
  for (let n = 0; n < 200; n++) {
    const r = rng(n + 1);
    const { wire, payload, valid } = body(r);
    const sent = n % 2 === 0 ? wire : mutate(wire, r);
    const [whole, trickled] = [await send(sent, false), await send(sent, true)];
    expect(`case ${n}: ${trickled.status}`).toBe(`case ${n}: ${whole.status}`);
    verdicts.set(whole.status, (verdicts.get(whole.status) ?? 0) + 1);
    if (sent === wire && valid) {
      expect(whole.status, `case ${n}: ${whole.text.slice(0, 300)}`).toBe("HTTP/1.1 200");
      const hash = createHash("sha256").update(payload, "latin1").digest("hex");
      expect(whole.text.endsWith(hash)).toBe(true);
      expect(trickled.text.endsWith(hash)).toBe(true);
    }
  }
  // Both kinds of verdict were met: the mutations do reach the refusals.
  expect(verdicts.get("HTTP/1.1 200")).toBeGreaterThan(100);
  expect(verdicts.get("HTTP/1.1 400")).toBeGreaterThan(20);
});
