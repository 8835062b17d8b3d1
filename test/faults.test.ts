// 10,000 faults of mixed kinds through one proxy, from both sides of it: an upstream that
// refuses, resets, stalls, cuts bodies short or sends too much, closes keep-alive
// connections as they are reused; clients that abort, half-close or stop reading. Each gets
// its documented outcome (docs/failure-semantics.md); afterwards no descriptor, pipe or
// poll handle is left behind.
import { createHash } from "node:crypto";
import net from "node:net";
import { afterAll, beforeAll, expect, test } from "vitest";
import { freePort } from "../proxy/tools/ports.js";
import { spliceAddon } from "../proxy/transfer/native.js";
import { metricValue } from "./helpers/metrics.js";
import { listen, openFds, settle } from "./helpers/net.js";
import { proxyTo } from "./helpers/proxy.js";
import { rawExchange } from "./helpers/upstreams.js";

const SMALL = 1000; // copied
const LARGE = 300_000; // spliced (threshold 256 KiB)
const block = Buffer.alloc(LARGE);
for (let i = 0; i < block.length; i++) block[i] = (i * 31 + (i >> 8)) & 0xff;
const hashOf = (n: number) => createHash("sha256").update(block.subarray(0, n)).digest("hex");
const HASH = { [SMALL]: hashOf(SMALL), [LARGE]: hashOf(LARGE) } as Record<number, string>;

type Upstream = "ok" | "reset-head" | "reset-mid" | "stall-mid" | "short" | "long" | "close-after" | "upload";

/** An upstream that misbehaves as the request path says: /<behaviour>/<size>. */
function faultyUpstream(): net.Server {
  return net.createServer((s) => {
    s.on("error", () => undefined);
    let buf = Buffer.alloc(0);
    let want = -1;
    let kind: Upstream = "ok";
    let size = 0;
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (want < 0) {
          const end = buf.indexOf("\r\n\r\n");
          if (end < 0) return;
          const head = buf.subarray(0, end).toString("latin1");
          const m = /^[A-Z]+ \/([a-z-]+)\/(\d+) /.exec(head);
          kind = (m?.[1] ?? "ok") as Upstream;
          size = Number(m?.[2] ?? 0);
          want = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
          buf = buf.subarray(end + 4);
        }
        if (buf.length < want) return;
        buf = buf.subarray(want);
        want = -1;
        respond(s, kind, size);
        if (s.destroyed) return;
      }
    };
    s.on("data", onData);
  });
}

function respond(s: net.Socket, kind: Upstream, size: number): void {
  const head = `HTTP/1.1 200 OK\r\ncontent-length: ${size}\r\n\r\n`;
  const half = block.subarray(0, size >> 1);
  switch (kind) {
    case "ok":
    case "upload":
      s.write(head);
      s.write(block.subarray(0, size));
      return;
    case "reset-head":
      s.resetAndDestroy();
      return;
    case "reset-mid":
      s.write(head);
      s.write(half, () => s.resetAndDestroy());
      return;
    case "stall-mid":
      s.write(head);
      s.write(half);
      return;
    case "short":
      s.write(head);
      s.end(half);
      return;
    case "long":
      s.write(head);
      s.write(Buffer.concat([block.subarray(0, size), Buffer.from("garbage after the body")]));
      return;
    case "close-after":
      s.write(head);
      // The response is whole; the connection goes away just as the proxy may reuse it.
      s.end(block.subarray(0, size));
      return;
  }
}

interface Seen {
  status: number | null;
  body: number;
  hash: string;
  closed: boolean;
}

/** One raw exchange; `client` says how this client misbehaves. */
function exchange(
  port: number,
  path: string,
  client: "normal" | "abort-download" | "abort-upload" | "half-close" | "upload",
): Promise<Seen> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    const h = createHash("sha256");
    let head: Buffer | null = Buffer.alloc(0);
    let status: number | null = null;
    let length = -1;
    let body = 0;
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      s.destroy();
      resolve({ status, body, hash: h.digest("hex"), closed });
    };
    s.on("error", () => finish(true));
    s.on("close", () => finish(true));
    s.setTimeout(10_000, () => finish(false));
    s.on("data", (d: Buffer) => {
      if (head !== null) {
        head = Buffer.concat([head, d]);
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) return;
        const text = head.subarray(0, end).toString("latin1");
        status = Number(text.slice(9, 12));
        length = Number(/content-length: (\d+)/i.exec(text)?.[1] ?? -1);
        d = head.subarray(end + 4);
        head = null;
        if (client === "abort-download") return finish(true);
      }
      h.update(d);
      body += d.length;
      if (length >= 0 && body >= length) finish(false);
    });
    s.once("connect", () => {
      if (client === "upload" || client === "abort-upload") {
        s.write(`POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-length: ${LARGE}\r\n\r\n`);
        if (client === "abort-upload") s.write(block.subarray(0, 50_000), () => finish(true));
        else s.write(block);
        return;
      }
      s.write(`GET ${path} HTTP/1.1\r\nhost: x\r\n\r\n`);
      if (client === "half-close") s.end();
    });
  });
}

// live: most cases, upstream connections reused; stale: only upstreams that close after each
// response (bodiless requests are then sent again on a fresh connection); long: an upstream
// that sends more than it announced, with no reuse (the excess would poison the next answer);
// dead: nothing listens.
type Via = "live" | "dead" | "stale" | "long";
type Case = {
  name: string;
  via: Via;
  path: string;
  client: Parameters<typeof exchange>[2];
  check: (r: Seen) => boolean;
};

const complete = (size: number) => (r: Seen) => r.status === 200 && r.body === size && r.hash === HASH[size];
const aborted = (size: number) => (r: Seen) => r.status === 200 && r.closed && r.body < size;

function cases(size: number): Case[] {
  return [
    { name: `ok ${size}`, via: "live", path: `/ok/${size}`, client: "normal", check: complete(size) },
    { name: "upstream refuses", via: "dead", path: `/ok/${size}`, client: "normal", check: (r) => r.status === 502 },
    { name: "reset before head", via: "live", path: `/reset-head/${size}`, client: "normal", check: (r) => r.status === 502 },
    { name: `reset mid-body ${size}`, via: "live", path: `/reset-mid/${size}`, client: "normal", check: aborted(size) },
    { name: `stall mid-body ${size}`, via: "live", path: `/stall-mid/${size}`, client: "normal", check: aborted(size) },
    { name: `short body ${size}`, via: "live", path: `/short/${size}`, client: "normal", check: aborted(size) },
    { name: `too long ${size}`, via: "long", path: `/long/${size}`, client: "normal", check: complete(size) },
    { name: `closed after reuse ${size}`, via: "stale", path: `/close-after/${size}`, client: "normal", check: complete(size) },
    {
      name: `client aborts download ${size}`,
      via: "live",
      path: `/ok/${size}`,
      client: "abort-download",
      check: (r) => r.status === 200,
    },
    { name: "client aborts upload", via: "live", path: `/upload/${size}`, client: "abort-upload", check: (r) => r.closed },
    { name: `upload ${size}`, via: "live", path: `/upload/${size}`, client: "upload", check: complete(size) },
    { name: `client half-closes ${size}`, via: "live", path: `/ok/${size}`, client: "half-close", check: complete(size) },
  ];
}

let upstream: net.Server;
let upstreamPort: number;

beforeAll(async () => {
  upstream = faultyUpstream();
  upstreamPort = await listen(upstream);
});

afterAll(() => {
  upstream.close();
});

test("10,000 mixed faults: each gets its outcome, nothing leaks", async () => {
  const pool = () => spliceAddon()?.stats() ?? { idle: 0, inUse: 0 };
  await settle(10);
  const fdsBefore = openFds() - 2 * pool().idle;
  const tweak = (o: Parameters<NonNullable<Parameters<typeof proxyTo>[1]>>[0]) => {
    o.timeouts.bodyIdleMs = 150;
    o.timeouts.firstByteMs = 2000;
  };
  const at = { host: "127.0.0.1", port: upstreamPort };
  const proxies: Record<Via, Awaited<ReturnType<typeof proxyTo>>> = {
    live: await proxyTo(at, tweak),
    stale: await proxyTo(at, tweak),
    long: await proxyTo(at, (o) => {
      tweak(o);
      o.pool.maxIdle = 0;
    }),
    dead: await proxyTo({ host: "127.0.0.1", port: await freePort() }, tweak),
  };

  const all = [...cases(SMALL), ...cases(LARGE)];
  const total = 10_000;
  const failures: string[] = [];
  const counts = new Map<string, number>();
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < total; i = next++) {
      const c = all[i % all.length] as Case;
      const r = await exchange((proxies[c.via] as { port: number }).port, c.path, c.client);
      counts.set(c.name, (counts.get(c.name) ?? 0) + 1);
      if (!c.check(r) && failures.length < 20) failures.push(`${c.name}: ${JSON.stringify(r)}`);
    }
  };
  await Promise.all(Array.from({ length: 40 }, worker));
  expect(failures).toEqual([]);
  expect([...counts.values()].reduce((a, b) => a + b, 0)).toBe(total);

  for (const p of Object.values(proxies)) await p.close();
  // Close callbacks, pooled upstream sockets and pipes returned: back to where we started.
  for (let i = 0; i < 50 && (openFds() - 2 * pool().idle !== fdsBefore || pool().inUse !== 0); i++) await settle(10);
  expect(pool().inUse).toBe(0);
  expect(openFds() - 2 * pool().idle).toBe(fdsBefore);
}, 180_000);

test.each([
  ["spliced", 256 * 1024],
  ["copied", Number.MAX_SAFE_INTEGER],
])("a client that stops reading holds back the upstream (%s): sluice does not buffer without bound", async (_path, threshold) => {
  const big = 256 << 20;
  let sent = 0;
  const server = net.createServer((s) => {
    s.on("error", () => undefined);
    s.once("data", () => {
      s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${big}\r\n\r\n`);
      const chunk = Buffer.alloc(1 << 20, 7);
      const pump = () => {
        while (sent < big) {
          sent += chunk.length;
          if (!s.write(chunk)) return void s.once("drain", pump);
        }
      };
      pump();
    });
  });
  const port = await listen(server);
  const p = await proxyTo({ host: "127.0.0.1", port }, (o) => {
    o.timeouts.bodyIdleMs = 60_000;
    o.spliceThreshold = threshold;
  });
  const rssBefore = process.memoryUsage().rss;
  const c = net.connect(p.port, "127.0.0.1", () => c.write("GET /big HTTP/1.1\r\nhost: x\r\n\r\n"));
  c.pause(); // never reads
  await new Promise((r) => setTimeout(r, 1500));
  // What left the upstream is what the kernel buffers hold (socket buffers and a pipe), not the body.
  expect(sent).toBeLessThan(64 << 20);
  expect(process.memoryUsage().rss - rssBefore).toBeLessThan(64 << 20);
  c.destroy();
  await p.close();
  server.close();
});

test("an upstream that closes a keep-alive connection as it is reused: GET is sent again, a bodiless POST is not (502)", async () => {
  // Answers the first request on each connection; at the second, closes without a word,
  // as an upstream whose keep-alive timeout just fired does.
  const seen: string[] = [];
  const server = net.createServer((s) => {
    s.on("error", () => undefined);
    let served = 0;
    let buf = "";
    s.on("data", (d: Buffer) => {
      buf += d.toString("latin1");
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const line = buf.slice(0, buf.indexOf("\r\n"));
      buf = buf.slice(end + 4);
      seen.push(line);
      // The first answers wait a little, so that concurrent requests open connections of their own.
      if (served++ === 0) setTimeout(() => s.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), 100);
      else s.end();
    });
  });
  const port = await listen(server);
  const p = await proxyTo({ host: "127.0.0.1", port });
  const ask = (head: string) => rawExchange(p.port, `${head}\r\nhost: x\r\nconnection: close\r\n\r\n`);
  const failures = (kind: string) =>
    metricValue(p.sinks.metrics, "sluice_upstream_failures_total", { cluster: "upstream", kind });
  const [stale0, reset0] = [await failures("stale"), await failures("reset")];
  try {
    // Three pooled connections, each of which will close when it is reused.
    const first = await Promise.all([1, 2, 3].map(() => ask("GET /a HTTP/1.1")));
    for (const r of first) expect(r.text).toMatch(/^HTTP\/1.1 200 OK\r\n[\s\S]*\r\n\r\nok$/);
    // Reuses the newest pooled connection, which closes: sent again on a new one, not on the
    // older pooled ones (they have been idle at least as long).
    expect((await ask("GET /b HTTP/1.1")).text).toMatch(/^HTTP\/1.1 200 OK\r\n[\s\S]*\r\n\r\nok$/);
    // The new one is pooled and closes at the POST: the upstream may have acted on it, so no retry.
    expect((await ask("POST /c HTTP/1.1")).text).toMatch(/^HTTP\/1.1 502 /);
    expect(seen.slice(3)).toEqual(["GET /b HTTP/1.1", "GET /b HTTP/1.1", "POST /c HTTP/1.1"]);
    // Both are counted: the GET's stale connection, and the POST's failure.
    expect((await failures("stale")) - stale0).toBe(1);
    expect((await failures("reset")) - reset0).toBe(1);
  } finally {
    await p.close();
    server.close();
  }
});
