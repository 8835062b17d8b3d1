// The HTTP engine with real peers: nginx and Node upstreams, curl, undici and ws clients.
import { createHash } from "node:crypto";
import { rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { spliceAddon } from "../proxy/transfer/native.js";
import { metricValue } from "./helpers/metrics.js";
import { listen, openFds, settle } from "./helpers/net.js";
import { curl, proxyTo } from "./helpers/proxy.js";
import { tempDir } from "./helpers/tmp.js";
import { type Nginx, rawExchange, startNginx, startRecorder, writeTestFile } from "./helpers/upstreams.js";

const GiB = 1 << 30;
const MiB = 1 << 20;
let nginx: Nginx;
let bigHash = "";
let work = "";

const fdsInUse = () => openFds() - 2 * (spliceAddon()?.stats().idle ?? 0);

beforeAll(async () => {
  nginx = await startNginx();
  work = tempDir("http");
  bigHash = writeTestFile(join(nginx.root, "big.bin"), GiB);
  writeTestFile(join(nginx.root, "small.bin"), 1000);
});

afterAll(async () => {
  await nginx.stop();
  rmSync(work, { recursive: true, force: true });
});

describe("downloads from nginx", () => {
  test("1 GiB through the splice path is byte-identical, and the connection is reused after it", async () => {
    const p = await proxyTo({ host: "127.0.0.1", port: nginx.port });
    const file = join(work, "down.bin");
    const r = await curl([
      "-o",
      file,
      "-o",
      "/dev/null",
      "-w",
      "%{http_code} %{num_connects}\\n",
      `${p.url}/big.bin`,
      `${p.url}/small.bin`,
    ]);
    expect(r.code).toBe(0);
    expect(r.out.toString()).toBe("200 1\n200 0\n");
    const { execFileSync } = await import("node:child_process");
    expect(execFileSync("sha256sum", [file]).toString().split(" ")[0]).toBe(bigHash);
    expect(spliceAddon()?.stats().bytesMoved).toBeGreaterThan(GiB - 4 * MiB);
    rmSync(file);
    await p.close();
  });

  test("HEAD, 204 and 304 carry no body, and keep-alive survives each", async () => {
    const p = await proxyTo({ host: "127.0.0.1", port: nginx.port });
    const head = await curl(["-I", "-w", "%{num_connects}", `${p.url}/small.bin`]);
    expect(head.out.toString()).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*Content-Length: 1000\r\n[\s\S]*\r\n\r\n1$/i);
    const etag = /ETag: (.*)\r\n/i.exec(head.out.toString())?.[1] as string;
    const r = await curl([
      "-s",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code} %{size_download} %{num_connects}\\n",
      `${p.url}/nocontent`,
      "-H",
      `If-None-Match: ${etag}`,
      `${p.url}/small.bin`,
      `${p.url}/small.bin`,
    ]);
    expect(r.out.toString()).toBe("204 0 1\n304 0 0\n304 0 0\n");
    await p.close();
  });

  test("nginx answers 413 before the upload ends; the client gets it", async () => {
    const p = await proxyTo({ host: "127.0.0.1", port: nginx.port });
    const file = join(work, "up.bin");
    writeTestFile(file, 50 * MiB);
    const r = await curl(["-o", "/dev/null", "-w", "%{http_code}", "--data-binary", `@${file}`, `${p.url}/limited`]);
    expect(r.out.toString()).toBe("413");
    await p.close();
  });
});

describe("uploads to a Node upstream", () => {
  let rec: Awaited<ReturnType<typeof startRecorder>>;
  beforeAll(async () => {
    rec = await startRecorder();
  });
  afterAll(() => rec.close());

  test("1 GiB upload is byte-identical, then the same connection carries the next request", async () => {
    const p = await proxyTo({ host: "127.0.0.1", port: rec.port });
    const file = join(work, "up1g.bin");
    const hash = writeTestFile(file, GiB);
    // -T streams the file (--data-binary would load 1 GiB into curl's memory first).
    const r = await curl([
      "-H",
      "Expect:",
      "-X",
      "POST",
      "-T",
      file,
      "-w",
      "\\n%{num_connects}\\n",
      `${p.url}/upload`,
      "--next",
      "-w",
      "\\n%{num_connects}\\n",
      `${p.url}/after`,
    ]);
    const lines = r.out.toString().trim().split("\n");
    expect(JSON.parse(lines[0] as string)).toMatchObject({ bodyHash: hash, bodyBytes: GiB });
    expect(lines[1]).toBe("1");
    expect(JSON.parse(lines[2] as string).url).toBe("/after");
    expect(lines[3]).toBe("0");
    rmSync(file);
    await p.close();
  });

  test("chunked upload keeps its framing, payloads arrive intact, 100-continue passes", async () => {
    const p = await proxyTo({ host: "127.0.0.1", port: rec.port });
    const file = join(work, "chunked.bin");
    const hash = writeTestFile(file, 20 * MiB + 17);
    const r = await curl([
      "-H",
      "Transfer-Encoding: chunked",
      "-H",
      "Expect: 100-continue",
      "--data-binary",
      `@${file}`,
      `${p.url}/chunked`,
    ]);
    expect(JSON.parse(r.out.toString())).toMatchObject({ bodyHash: hash, bodyBytes: 20 * MiB + 17 });
    expect(rec.requests.at(-1)?.headers["transfer-encoding"]).toBe("chunked");
    await p.close();
  });

  test("large chunk payloads are spliced while size lines and trailers pass through", async () => {
    const p = await proxyTo({ host: "127.0.0.1", port: rec.port });
    const a = Buffer.alloc(MiB, 1);
    const b = Buffer.alloc(MiB + 5, 2);
    const before = spliceAddon()?.stats().bytesMoved ?? 0;
    const req = Buffer.concat([
      Buffer.from("POST /big-chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
      Buffer.from(`${a.length.toString(16)};n=1\r\n`),
      a,
      Buffer.from(`\r\n${b.length.toString(16)}\r\n`),
      b,
      Buffer.from("\r\n0\r\nX-Checksum: ok\r\n\r\n"),
    ]);
    const { text } = await rawExchange(p.port, req, 5000);
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    const sent = rec.requests.at(-1);
    expect(sent?.bodyHash).toBe(createHash("sha256").update(a).update(b).digest("hex"));
    expect(sent?.trailers).toEqual(["X-Checksum", "ok"]);
    // Only the bytes Node read along with the head and size lines were copied.
    expect((spliceAddon()?.stats().bytesMoved ?? 0) - before).toBeGreaterThan(a.length + b.length - 256 * 1024);
    await p.close();
  });

  test("hop-by-hop fields are removed and forwarding fields added", async () => {
    const p = await proxyTo({ host: "127.0.0.1", port: rec.port });
    await curl([
      "-H",
      "Connection: keep-alive, X-Secret",
      "-H",
      "X-Secret: 1",
      "-H",
      "Keep-Alive: timeout=5",
      "-H",
      "TE: trailers",
      "-H",
      "Proxy-Authorization: x",
      "-H",
      "X-Forwarded-For: 10.0.0.1",
      `${p.url}/hop`,
    ]);
    const h = rec.requests.at(-1)?.headers ?? {};
    expect(h["x-secret"]).toBeUndefined();
    expect(h["keep-alive"]).toBeUndefined();
    expect(h.te).toBeUndefined();
    expect(h["proxy-authorization"]).toBeUndefined();
    expect(h["x-forwarded-for"]).toBe("10.0.0.1, 127.0.0.1");
    expect(h["x-forwarded-proto"]).toBe("http");
    expect(h["x-forwarded-host"]).toBe(`127.0.0.1:${p.port}`);
    expect(h.via).toBe("1.1 sluice");
    expect(h.host).toBe(`127.0.0.1:${p.port}`);
    await p.close();
  });

  test.each(["splice", "buffered"] as const)(
    "repeated forwarding fields (%s engine): one list in the order received, the proxy's entry last; a set field once",
    async (engine) => {
      const p = await proxyTo({ host: "127.0.0.1", port: rec.port }, (o) => {
        o.engine = engine;
      });
      await curl([
        ...["-H", "X-Forwarded-For: 10.0.0.1", "-H", "Via: 1.0 a", "-H", "X-Forwarded-For: 10.0.0.2"],
        ...["-H", "X-Forwarded-Proto: https", "-H", "X-Forwarded-For: 10.0.0.3", "-H", "Via: 1.1 b"],
        ...["-H", "X-Forwarded-Proto: ftp", `${p.url}/repeated`],
      ]);
      const h = rec.requests.at(-1)?.headers ?? {};
      // As lists: http-proxy-3 joins with "," where the splice engine writes ", " (the same list to RFC 9110).
      const list = (v: unknown) =>
        String(v)
          .split(",")
          .map((x) => x.trim());
      expect(list(h["x-forwarded-for"])).toEqual(["10.0.0.1", "10.0.0.2", "10.0.0.3", "127.0.0.1"]);
      // The buffered engine leaves these to http-proxy-3 (docs/failure-semantics.md, what still differs).
      if (engine === "buffered") return p.close();
      expect(list(h.via)).toEqual(["1.0 a", "1.1 b", "1.1 sluice"]);
      expect(h["x-forwarded-proto"]).toBe("http");
      await p.close();
    },
  );

  test("pipelined requests are answered in order", async () => {
    const p = await proxyTo({ host: "127.0.0.1", port: rec.port });
    const reqs = [1, 2, 3].map((i) => `POST /p${i} HTTP/1.1\r\nHost: x\r\nContent-Length: ${i}\r\n\r\n${"x".repeat(i)}`).join("");
    const { text } = await rawExchange(p.port, `${reqs}GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    const urls = [...text.matchAll(/"url":"([^"]+)"/g)].map((m) => m[1]);
    expect(urls).toEqual(["/p1", "/p2", "/p3", "/last"]);
    await p.close();
  });

  test("undici keep-alive: 200 requests over few connections, every body intact", async () => {
    const p = await proxyTo({ host: "127.0.0.1", port: rec.port });
    const before = rec.requests.length;
    for (let i = 0; i < 200; i++) {
      const body = Buffer.alloc(i * 1000, i);
      const res = await request(`${p.url}/k${i}`, { method: "POST", body });
      const json = (await res.body.json()) as { bodyHash: string };
      expect(json.bodyHash).toBe(createHash("sha256").update(body).digest("hex"));
    }
    expect(rec.requests.length - before).toBe(200);
    await p.close();
  });
});

describe("error statuses", () => {
  test("malformed requests get 400 and the connection is closed", async () => {
    const rec = await startRecorder();
    const p = await proxyTo({ host: "127.0.0.1", port: rec.port });
    const cases = [
      "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  folded\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nX-Bad : 1\r\n\r\n",
      "GET / HTTP/1.1\nHost: x\n\n",
      "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n",
      "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /admin%00.png HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET / HTTP/1.x\r\nHost: x\r\n\r\n",
      "GET / HTTP/1.1\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
      `POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;${"a".repeat(5000)}\r\n`,
    ];
    for (const [i, c] of cases.entries()) {
      const before = rec.requests.length;
      const r = await rawExchange(p.port, c);
      expect(r.text, `case ${i}: ${JSON.stringify(c.slice(0, 120))}`).toMatch(/^HTTP\/1\.1 (400|501) /);
      expect(r.closed).toBe(true);
      // Chunked errors may reach the upstream as an aborted request, never a complete one.
      expect(rec.requests.length).toBe(before);
    }
    await p.close();
    await rec.close();
  });

  test("a Connection header naming a framing field is refused by both engines: the body can't become the next request", async () => {
    // RFC 9110 §7.6.1 would have the proxy drop every field Connection names; dropping
    // Content-Length while forwarding the body smuggles the body in as a second request.
    const rec = await startRecorder();
    const engines = [
      await proxyTo({ host: "127.0.0.1", port: rec.port }),
      await proxyTo({ host: "127.0.0.1", port: rec.port }, (o) => {
        o.engine = "buffered";
      }),
    ];
    const smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    const cases = [
      `POST / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, content-length\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
      `POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ${smuggled.length}\r\nConnection: Content-Length\r\n\r\n${smuggled}`,
      "POST / HTTP/1.1\r\nHost: x\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, host\r\n\r\n",
    ];
    for (const p of engines) {
      for (const [i, c] of cases.entries()) {
        const r = await rawExchange(p.port, c);
        expect(r.text, `case ${i}: ${JSON.stringify(c.slice(0, 120))}`).toMatch(/^HTTP\/1\.1 400 /);
        expect(r.closed).toBe(true);
      }
      await p.close();
    }
    expect(rec.requests).toEqual([]);
    await rec.close();
  });

  test("an upstream response whose Connection names a framing field becomes a 502 in both engines, not a body without its length", async () => {
    const upstream = net.createServer((s) => {
      s.on("error", () => undefined);
      s.once("data", () =>
        s.write("HTTP/1.1 200 OK\r\nConnection: keep-alive, content-length\r\nContent-Length: 5\r\n\r\nhello"),
      );
    });
    const port = await listen(upstream);
    for (const engine of ["splice", "buffered"] as const) {
      const p = await proxyTo({ host: "127.0.0.1", port }, (o) => {
        o.engine = engine;
      });
      const r = await rawExchange(p.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
      expect(r.text, engine).toMatch(/^HTTP\/1\.1 502 /);
      expect(r.text, engine).not.toContain("hello");
      expect(r.closed, engine).toBe(true);
      await p.close();
    }
    upstream.close();
  });

  test("an upstream response in a transfer coding sluice can't frame is a 502", async () => {
    const upstream = net.createServer((s) => {
      s.on("error", () => undefined);
      s.once("data", () => s.end("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello"));
    });
    const port = await listen(upstream);
    const p = await proxyTo({ host: "127.0.0.1", port });
    const r = await rawExchange(p.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(r.text).toMatch(/^HTTP\/1\.1 502 /);
    expect(r.closed).toBe(true);
    await p.close();
    upstream.close();
  });

  test("408, 414 and 431 for slow or oversized heads", async () => {
    const rec = await startRecorder();
    const p = await proxyTo({ host: "127.0.0.1", port: rec.port }, (o) => {
      o.timeouts.headMs = 300;
    });
    expect((await rawExchange(p.port, "GET / HTTP/1.1\r\nHost: x\r\n")).text).toMatch(/^HTTP\/1\.1 408 /);
    expect((await rawExchange(p.port, `GET /${"a".repeat(40_000)} HTTP/1.1\r\nHost: x\r\n\r\n`)).text).toMatch(
      /^HTTP\/1\.1 414 /,
    );
    expect((await rawExchange(p.port, `GET / HTTP/1.1\r\nHost: x\r\nX: ${"a".repeat(40_000)}\r\n\r\n`)).text).toMatch(
      /^HTTP\/1\.1 431 /,
    );
    const many = Array.from({ length: 150 }, (_, i) => `X-${i}: 1\r\n`).join("");
    expect((await rawExchange(p.port, `GET / HTTP/1.1\r\nHost: x\r\n${many}\r\n`)).text).toMatch(/^HTTP\/1\.1 431 /);
    await p.close();
    await rec.close();
  });

  test("502 for a refused upstream, 504 for a slow one, 503 when the pool is exhausted", async () => {
    const refused = await proxyTo({ host: "127.0.0.1", port: 1 });
    expect((await curl(["-w", "%{http_code}", "-o", "/dev/null", `${refused.url}/`])).out.toString()).toBe("502");
    await refused.close();
    const rec = await startRecorder();
    const slow = await proxyTo({ host: "127.0.0.1", port: rec.port }, (o) => {
      o.timeouts.firstByteMs = 800;
      o.pool.maxConnections = 1;
      o.pool.queueTimeoutMs = 200;
    });
    const [a, b] = await Promise.all([
      curl(["-w", "%{http_code}", "-o", "/dev/null", `${slow.url}/slow`]),
      new Promise((r) => setTimeout(r, 100)).then(() => curl(["-w", "%{http_code}", "-o", "/dev/null", `${slow.url}/fast`])),
    ]);
    expect(a.out.toString()).toBe("504");
    expect(b.out.toString()).toBe("503");
    await slow.close();
    await rec.close();
  });
});

describe("limits and timeouts", () => {
  test("413 for a body over maxBodyBytes, announced or discovered while chunked", async () => {
    const rec = await startRecorder();
    const p = await proxyTo({ host: "127.0.0.1", port: rec.port }, (o) => {
      o.limits.maxBodyBytes = 1000;
    });
    const announced = await rawExchange(p.port, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n");
    expect(announced.text).toMatch(/^HTTP\/1\.1 413 /);
    const chunked = await rawExchange(
      p.port,
      `POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n${"a".repeat(1000)}\r\n1\r\n`,
    );
    expect(chunked.text).toMatch(/^HTTP\/1\.1 413 /);
    expect(rec.requests).toHaveLength(0);
    await p.close();
    await rec.close();
  });

  test("the first-byte timeout ends with the response head: a response that starts before the request body ends and outlasts it is not cut", async () => {
    // The upstream answers at once and streams its response for a second while the request body is still coming.
    const upstream = http.createServer((req, res) => {
      req.resume();
      res.writeHead(200, { "content-length": 20 * 100 });
      res.flushHeaders();
      let n = 0;
      const tick = setInterval(() => {
        res.write("x".repeat(100));
        if (++n === 20) {
          clearInterval(tick);
          res.end();
        }
      }, 50);
    });
    const port = await listen(upstream);
    const p = await proxyTo({ host: "127.0.0.1", port }, (o) => {
      o.timeouts.firstByteMs = 300;
    });
    const got = await new Promise<Buffer>((resolve, reject) => {
      const s = net.connect(p.port, "127.0.0.1", () => {
        s.write("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello");
        setTimeout(() => s.write("world"), 150);
      });
      const parts: Buffer[] = [];
      s.on("data", (c: Buffer) => {
        parts.push(c);
        const all = Buffer.concat(parts);
        const head = all.indexOf("\r\n\r\n");
        if (head !== -1 && all.length - head - 4 >= 2000) {
          s.destroy();
          resolve(all);
        }
      });
      s.on("close", () => resolve(Buffer.concat(parts)));
      s.on("error", reject);
    });
    const text = got.toString("latin1");
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(text.slice(text.indexOf("\r\n\r\n") + 4)).toBe("x".repeat(2000));
    await p.close();
    upstream.close();
  });

  test("an idle keep-alive connection is closed after keepAliveMs; over maxConnections a connection gets 503 and is closed", async () => {
    const rec = await startRecorder();
    const p = await proxyTo({ host: "127.0.0.1", port: rec.port }, (o) => {
      o.timeouts.keepAliveMs = 200;
      o.limits.maxConnections = 2;
    });
    const t0 = performance.now();
    const r = await rawExchange(p.port, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 3000);
    expect(r.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(r.closed).toBe(true);
    expect(performance.now() - t0).toBeLessThan(2000);
    // The proxy has let go of that connection too (its close is seen by the client first).
    const until = performance.now() + 10_000;
    while ((await metricValue(p.sinks.metrics, "sluice_active_connections", {})) > 0 && performance.now() < until)
      await new Promise((res) => setTimeout(res, 10));
    // Two connections held open: a third is refused at once.
    const held = await Promise.all(
      [0, 1].map(
        () =>
          new Promise<net.Socket>((res) => {
            const s = net.connect(p.port, "127.0.0.1", () => res(s));
          }),
      ),
    );
    await new Promise((res) => setTimeout(res, 50));
    // A third is refused at once, clearly: 503 with Retry-After, then closed; the upstream never sees it.
    const seen = rec.requests.length;
    const third = await rawExchange(p.port, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n", 2000);
    expect(third.text).toMatch(/^HTTP\/1\.1 503 Service Unavailable\r\n/);
    expect(third.text).toMatch(/^retry-after: 1\r$/im);
    expect(third.text).toMatch(/too many connections\n$/);
    expect(third.closed).toBe(true);
    expect(rec.requests.length).toBe(seen);
    // Once one of the two goes, a new connection is served again.
    held[0]?.destroy();
    await new Promise((res) => setTimeout(res, 50));
    const fourth = await rawExchange(p.port, "GET /c HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n", 2000);
    expect(fourth.text).toMatch(/^HTTP\/1\.1 200 /);
    for (const s of held) s.destroy();
    await p.close();
    await rec.close();
  });
});

describe("faults leave no fd or pipe behind", () => {
  test("upstream dying mid-body aborts the client; a client aborting mid-download frees everything", async () => {
    // An upstream that promises 100 MiB and dies after 10 MiB.
    const liar = net.createServer((s) => {
      s.once("data", () => {
        s.write("HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n");
        s.write(Buffer.alloc(10 * MiB), () => s.resetAndDestroy());
      });
    });
    const port = await listen(liar);
    await settle();
    const before = fdsInUse();
    const p = await proxyTo({ host: "127.0.0.1", port });
    const r = await curl(["-o", "/dev/null", "-w", "%{size_download}", `${p.url}/`]);
    expect([18, 56]).toContain(r.code); // curl: partial file / failure receiving
    expect(Number(r.out.toString())).toBeLessThan(100 * MiB);
    const nginxProxy = await proxyTo({ host: "127.0.0.1", port: nginx.port });
    const aborted = await curl([
      "-o",
      "/dev/null",
      "--max-filesize",
      String(5 * MiB),
      "--limit-rate",
      "50M",
      "-m",
      "1",
      `${nginxProxy.url}/big.bin`,
    ]);
    expect(aborted.code).not.toBe(0);
    // A client that goes away mid-upload: the upstream sees an aborted request, not a complete one.
    const rec = await startRecorder();
    const up = await proxyTo({ host: "127.0.0.1", port: rec.port });
    const uploader = net.connect(up.port, "127.0.0.1");
    uploader.on("error", () => undefined);
    uploader.write(`POST /partial HTTP/1.1\r\nHost: x\r\nContent-Length: ${50 * MiB}\r\n\r\n`);
    uploader.write(Buffer.alloc(5 * MiB));
    await new Promise((r) => setTimeout(r, 200));
    uploader.resetAndDestroy();
    await new Promise((r) => setTimeout(r, 200));
    expect(rec.requests.find((q) => q.url === "/partial")).toBeUndefined();
    await up.close();
    await rec.close();
    await p.close();
    await nginxProxy.close();
    liar.close();
    await settle(20);
    expect(fdsInUse()).toBeLessThanOrEqual(before);
    expect(spliceAddon()?.stats().inUse).toBe(0);
  });
});

describe("tunnels", () => {
  test("WebSocket echo through the proxy", async () => {
    const server = http.createServer();
    const wss = new WebSocketServer({ server });
    wss.on("connection", (ws) => ws.on("message", (m, binary) => ws.send(m, { binary })));
    const port = await listen(server as unknown as net.Server);
    const p = await proxyTo({ host: "127.0.0.1", port });
    const ws = new WebSocket(`ws://127.0.0.1:${p.port}/echo`);
    await new Promise((r, j) => ws.once("open", r).once("error", j));
    const big = Buffer.alloc(3 * MiB, 9);
    const got: Buffer[] = [];
    const done = new Promise<void>((r) =>
      ws.on("message", (m: Buffer) => {
        got.push(m);
        if (got.length === 2) r();
      }),
    );
    ws.send("hello");
    ws.send(big);
    await done;
    expect(got[0]?.toString()).toBe("hello");
    expect(Buffer.compare(got[1] as Buffer, big)).toBe(0);
    ws.close();
    await p.close();
    wss.close();
    server.close();
  });

  test("CONNECT is refused unless a route names it (405, closed; with framing fields 400), and then becomes a tunnel after the upstream's 200", async () => {
    let connects = 0;
    const server = http.createServer();
    server.on("connect", (_req, sock: net.Socket, head: Buffer) => {
      connects++;
      sock.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length) sock.write(head);
      sock.pipe(sock);
    });
    const port = await listen(server as unknown as net.Server);
    // A route that matches everything does not tunnel: after a CONNECT, nothing on the connection passes sluice's checks.
    const closed = await proxyTo({ host: "127.0.0.1", port });
    const refused = await rawExchange(closed.port, "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n");
    expect(refused.text).toMatch(/^HTTP\/1\.1 405 /);
    expect(refused.closed).toBe(true);
    await closed.close();
    const p = await proxyTo({ host: "127.0.0.1", port }, undefined, [
      { name: "tunnel", match: { method: "CONNECT" }, forward: { cluster: "upstream" } },
    ]);
    const framed = await rawExchange(
      p.port,
      "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\nContent-Length: 4\r\n\r\nGET ",
    );
    expect(framed.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(connects).toBe(0);
    const sock = net.connect(p.port, "127.0.0.1");
    sock.write("CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n");
    let text = "";
    await new Promise<void>((resolve) =>
      sock.on("data", (c: Buffer) => {
        text += c.toString("latin1");
        if (text.includes("\r\n\r\n") && !text.includes("ping")) sock.write("ping");
        if (text.endsWith("ping")) resolve();
      }),
    );
    expect(text).toMatch(/^HTTP\/1\.1 200 /);
    expect(connects).toBe(1);
    sock.destroy();
    await p.close();
    server.close();
  });
});

describe("the buffered engine answers like the splice engine", () => {
  test("same statuses and bodies for the same requests", async () => {
    const splice = await proxyTo({ host: "127.0.0.1", port: nginx.port });
    const buffered = await proxyTo({ host: "127.0.0.1", port: nginx.port }, (o) => {
      o.engine = "buffered";
    });
    const paths = ["/small.bin", "/nocontent", "/missing", "/big.bin"];
    for (const path of paths) {
      const [a, b] = await Promise.all(
        [splice, buffered].map(async (p) => {
          const args = path === "/big.bin" ? ["-r", "0-9999999"] : [];
          const r = await curl([...args, "-w", "\\n%{http_code}", `${p.url}${path}`]);
          const out = r.out;
          const nl = out.lastIndexOf(10);
          return {
            status: out.subarray(nl + 1).toString(),
            hash: createHash("sha256").update(out.subarray(0, nl)).digest("hex"),
          };
        }),
      );
      expect(a, path).toEqual(b);
    }
    await splice.close();
    await buffered.close();
  });
});
