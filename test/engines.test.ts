// The two engines differ in the body path only: the same traffic through a splice listener
// and a buffered one (http-proxy-3) meets the same routing, endpoint choice, retries and
// outlier ejection, and leaves the same counters and outcomes behind.
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Registry } from "prom-client";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { freePort } from "../bench/peers.js";
import { Runtime } from "../proxy/control/runtime.js";
import { listen } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

const dir = tempDir("engines");
const ENGINES = ["splice", "buffered"] as const;
type Engine = (typeof ENGINES)[number];

/** Reads a request head, then resets the connection. */
async function resetter() {
  let seen = 0;
  const server = net.createServer((s) => {
    s.on("error", () => undefined);
    s.once("data", () => {
      seen++;
      s.resetAndDestroy();
    });
  });
  const port = await listen(server);
  return { port, seen: () => seen, close: () => server.close() };
}

/** Answers with its name after `delayMs`; counts requests. */
async function named(name: string, delayMs = 0) {
  let seen = 0;
  const server = http.createServer((req, res) => {
    seen++;
    if (req.url?.startsWith("/app/big")) {
      // More than the socket buffers on the way hold, so a client that leaves does so mid-transfer.
      res.writeHead(200, { "content-length": 64 << 20 });
      res.on("error", () => undefined);
      return res.end(Buffer.alloc(64 << 20, 7));
    }
    if (req.url?.startsWith("/app/cut")) {
      // A head and part of the body, then a reset: the upstream fails after the head.
      res.writeHead(200, { "content-length": 100_000 });
      return res.write(Buffer.alloc(10_000, 1), () => req.socket.resetAndDestroy());
    }
    setTimeout(() => res.end(name), delayMs);
  });
  const port = await listen(server as unknown as net.Server);
  return { port, seen: () => seen, close: () => server.close() };
}

async function runtimeFor(
  engine: Engine,
  endpoints: number[],
  lb = "round_robin",
  timeouts = "",
  limits = "",
): Promise<{ runtime: Runtime; base: string }> {
  const file = join(dir, `${engine}-${lb}-${endpoints.join("-")}${timeouts ? "-timeouts" : ""}${limits ? "-limits" : ""}.yaml`);
  writeFileSync(
    file,
    `listeners:
  - name: main
    address: 127.0.0.1:0
    engine: ${engine}
${timeouts ? `    timeouts: ${timeouts}\n` : ""}${limits ? `    limits: ${limits}\n` : ""}    routes:
      - { name: local, match: { path: { exact: /local } }, respond: { status: 200, body: "here\\n" } }
      - { name: app, match: { path: { prefix: /app } }, forward: { cluster: c, retry: { attempts: 1, on: [connect-failure, reset] } } }
      - { name: edit, match: { path: { prefix: /edit } }, forward: { cluster: c, response_headers_add: { x-served-by: sluice }, response_headers_remove: [x-drop] } }
clusters:
  c:
    endpoints: [${endpoints.map((p) => `"127.0.0.1:${p}"`).join(", ")}]
    lb: ${lb}
    outlier_detection: { consecutive_failures: 3, base_ejection: 60s, max_ejected_percent: 67 }
`,
  );
  const runtime = new Runtime({ file });
  await runtime.start();
  return { runtime, base: `http://${runtime.addresses().get("main")}` };
}

/** Every sample of `registry` as "name{labels} value", without the engine label, sorted. */
async function counters(registry: Registry, names: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const m of await registry.getMetricsAsJSON()) {
    if (!names.includes(m.name)) continue;
    for (const v of m.values as Array<{ labels: Record<string, string | number>; value: number; metricName?: string }>) {
      if (v.metricName !== undefined && !v.metricName.endsWith("_count") && String(m.type) === "histogram") continue;
      const labels = Object.entries(v.labels)
        .filter(([k]) => k !== "engine" && k !== "endpoint")
        .map(([k, x]) => `${k}=${x}`)
        .sort()
        .join(",");
      out.push(`${v.metricName ?? m.name}{${labels}} ${v.value}`);
    }
  }
  return out.sort();
}

async function until(what: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 300 && !(await what()); i++) await new Promise((r) => setTimeout(r, 100));
}

async function send(base: string, path: string, method = "GET") {
  const res = await request(`${base}${path}`, { method, reset: true });
  await res.body.dump();
  return res.statusCode;
}

/** Writes `text` on a new connection; the response head's fields, names lower-cased. */
function responseFields(port: number, text: string): Promise<[string, string][]> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1", () => s.write(text));
    let got = Buffer.alloc(0);
    s.on("data", (d: Buffer) => {
      got = Buffer.concat([got, d]);
      const end = got.indexOf("\r\n\r\n");
      if (end < 0) return;
      s.destroy();
      const lines = got.subarray(0, end).toString("latin1").split("\r\n").slice(1);
      resolve(lines.map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
    });
    s.on("error", reject);
    s.setTimeout(30_000, () => reject(new Error("no response head")));
  });
}

/** Writes `text` on a new connection; everything the proxy sends until it closes the connection. */
function wholeAnswer(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1", () => s.write(text));
    let got = "";
    s.on("data", (d: Buffer) => {
      got += d.toString("latin1");
    });
    s.on("close", () => resolve(got));
    s.on("error", reject);
    s.setTimeout(30_000, () => reject(new Error(`not closed; got ${JSON.stringify(got)}`)));
  });
}

/** Writes `text` on a new connection; the response's status line. */
function statusLine(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1", () => s.write(text));
    let got = "";
    s.on("data", (d: Buffer) => {
      got += d.toString("latin1");
      const end = got.indexOf("\r\n");
      if (end < 0) return;
      s.destroy();
      resolve(got.slice(0, end));
    });
    s.on("error", reject);
    s.setTimeout(30_000, () => reject(new Error(`no status line; got ${JSON.stringify(got)}`)));
  });
}

/**
 * Sends a request line, then a header line every 200 ms, never ending the head; resolves with
 * what the proxy answered and when it closed the connection (gives up after 20 s).
 */
function dripHead(port: number): Promise<{ answer: string; closedAfterMs: number }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const s = net.connect(port, "127.0.0.1", () => s.write("GET /app/drip HTTP/1.1\r\nHost: x\r\n"));
    let answer = "";
    let n = 0;
    const drip = setInterval(() => s.write(`X-Drip-${n++}: ${"y".repeat(10)}\r\n`), 200);
    const giveUp = setTimeout(() => {
      clearInterval(drip);
      s.destroy();
      reject(new Error(`still open after 20 s of a dripped head; answered: ${JSON.stringify(answer)}`));
    }, 20_000);
    s.on("data", (d: Buffer) => {
      answer += d.toString("latin1");
    });
    s.on("error", () => undefined);
    s.on("close", () => {
      clearInterval(drip);
      clearTimeout(giveUp);
      resolve({ answer, closedAfterMs: performance.now() - started });
    });
  });
}

describe("the same traffic through both engines", () => {
  let good: Awaited<ReturnType<typeof named>>;
  let bad: Awaited<ReturnType<typeof resetter>>;
  let dead: number;
  beforeAll(async () => {
    good = await named("good");
    bad = await resetter();
    dead = await freePort();
  });
  afterAll(() => {
    good.close();
    bad.close();
  });

  test("a failing endpoint, a refusing one, retries and ejection: the same statuses, counters and outcomes", async () => {
    const results: Record<string, { statuses: number[]; counters: string[]; seen: [number, number] }> = {};
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [good.port, bad.port, dead]);
      const [good0, bad0] = [good.seen(), bad.seen()];
      const statuses: number[] = [];
      // Sequential, so every pick is deterministic: GETs are retried, bodiless POSTs only after a
      // connect failure (nothing was sent); after three failures in a row an endpoint is ejected.
      for (let i = 0; i < 24; i++) statuses.push(await send(base, `/app/${i}`, i % 4 === 3 ? "POST" : "GET"));
      statuses.push(await send(base, "/local"), await send(base, "/nowhere"));
      results[engine] = {
        statuses,
        counters: await counters(runtime.sinks.metrics.registry, [
          "sluice_http_request_duration_seconds",
          "sluice_upstream_failures_total",
          "sluice_upstream_retries_total",
          "sluice_upstream_ejections_total",
        ]),
        seen: [good.seen() - good0, bad.seen() - bad0],
      };
      await runtime.close();
    }
    const [s, b] = [results.splice, results.buffered];
    expect(b?.statuses).toEqual(s?.statuses);
    expect(b?.seen).toEqual(s?.seen);
    expect(b?.counters).toEqual(s?.counters);
    // The traffic did meet what the test is about.
    const text = s?.counters.join("\n") ?? "";
    expect(text).toMatch(/sluice_upstream_retries_total\{cluster=c\} [1-9]/);
    expect(text).toMatch(/sluice_upstream_ejections_total\{cluster=c\} [1-9]/);
    expect(text).toMatch(/kind=connect_failure\} [1-9]/);
    expect(text).toMatch(/kind=reset\} [1-9]/);
    expect(text).toMatch(/outcome=upstream_reset,route=app,status_class=5xx\} [1-9]/);
    expect(text).toMatch(/outcome=local,route=local,status_class=2xx\} 1/);
    expect(text).toMatch(/outcome=no_route,route=none,status_class=4xx\} 1/);
    expect(s?.statuses).toContain(502);
  });

  test("an upstream that fails after the head and a client that leaves are told apart by the outcome, in both engines", async () => {
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [good.port]);
      const port = Number(base.split(":").pop());
      // The upstream resets mid-body: the client's connection is cut too, by a reset (a FIN
      // after part of a body could pass for its end). curl tells them apart in its words.
      const { stderr } = await promisify(execFile)("curl", ["-sS", "-o", "/dev/null", `${base}/app/cut`]).catch(
        (err: { stderr: string }) => err,
      );
      expect(stderr, engine).toMatch(/reset by peer/i);
      // The client leaves mid-download: it reads the head, then resets its connection.
      await new Promise<void>((resolve) => {
        const c = net.connect(port, "127.0.0.1", () => c.write("GET /app/big HTTP/1.1\r\nhost: x\r\n\r\n"));
        c.on("error", () => undefined);
        c.once("data", () => {
          c.resetAndDestroy();
          resolve();
        });
      });
      await until(
        async () => (await counters(runtime.sinks.metrics.registry, ["sluice_http_request_duration_seconds"])).length === 2,
      );
      const cut = await counters(runtime.sinks.metrics.registry, ["sluice_http_request_duration_seconds"]);
      // Reset or close: which one the kernel reports first depends on timing; the party does not.
      expect(cut.join("\n"), engine).toMatch(/outcome=upstream_(reset|closed),route=app,status_class=2xx\} 1/);
      expect(cut.join("\n"), engine).toMatch(/outcome=client_(closed|reset),route=app,status_class=2xx\} 1/);
      await runtime.close();
    }
  });

  test("least_request sees the buffered engine's requests in flight too: a slow endpoint gets fewer", async () => {
    const slow = await named("slow", 1000);
    const fast = await named("fast");
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [slow.port, fast.port], "least_request");
      const [slow0, fast0] = [slow.seen(), fast.seen()];
      let next = 0;
      const worker = async () => {
        for (let i = next++; i < 24; i = next++) expect(await send(base, `/app/${i}`)).toBe(200);
      };
      await Promise.all(Array.from({ length: 4 }, worker));
      const [s, f] = [slow.seen() - slow0, fast.seen() - fast0];
      // Round robin would split 12/12; counting what is in flight sends most to the fast one.
      expect(f, `${engine}: slow ${s}, fast ${f}`).toBeGreaterThan(2 * s);
      await runtime.close();
    }
    slow.close();
    fast.close();
  });

  test("hop-by-hop fields stop at the proxy both ways, in both engines; the end-to-end ones pass the same", async () => {
    let received: string[] = [];
    let upstreamConnection: string | undefined;
    const upstream = http.createServer((req, res) => {
      received = req.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
      upstreamConnection = req.headers.connection;
      res.setHeader("Connection", "keep-alive, X-Foo");
      res.setHeader("X-Foo", "named in Connection");
      res.setHeader("Keep-Alive", "timeout=77");
      res.setHeader("Proxy-Authenticate", "Basic");
      res.setHeader("X-End", "1");
      res.end("ok");
    });
    const port = await listen(upstream as unknown as net.Server);
    const hop = ["connection", "keep-alive", "proxy-connection", "te", "proxy-authorization", "proxy-authenticate"];
    const passed: Record<string, string[]> = {};
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [port]);
      const fields = await responseFields(
        Number(new URL(base).port),
        "GET /app/hop HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, X-Bar\r\nX-Bar: named in Connection\r\n" +
          "Keep-Alive: timeout=9\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nX-Keep: 1\r\n\r\n",
      );
      const names = fields.map(([n]) => n);
      expect(received, engine).toContain("x-keep");
      expect(
        received.filter((n) => n !== "connection" && (hop.includes(n) || n === "x-bar")),
        engine,
      ).toEqual([]);
      // The upstream connection is kept whatever the client asked (node:http's agent says so).
      expect([undefined, "keep-alive"], engine).toContain(upstreamConnection);
      expect(names, engine).toContain("x-end");
      expect(
        names.filter((n) => n !== "connection" && (hop.includes(n) || n === "x-foo")),
        engine,
      ).toEqual([]);
      // node:http says keep-alive of a connection it keeps; what the client's Connection named is not repeated.
      for (const [n, v] of fields) if (n === "connection") expect(v, engine).toBe("keep-alive");
      passed[engine] = names.filter((n) => n !== "connection").sort();
      // A client that closes its connection: told so, and the upstream's connection is still kept.
      const closing = await responseFields(
        Number(new URL(base).port),
        "GET /app/hop HTTP/1.1\r\nHost: example.test\r\nConnection: close, X-Bar\r\nX-Bar: named in Connection\r\n\r\n",
      );
      expect(
        closing.filter(([n]) => n === "connection" || n === "x-bar"),
        engine,
      ).toEqual([["connection", "close"]]);
      expect([undefined, "keep-alive"], engine).toContain(upstreamConnection);
      await runtime.close();
    }
    expect(passed.buffered).toEqual(passed.splice);
    upstream.close();
  });

  test("an upstream's Keep-Alive timeout is learned by both engines' pools (the connection let go a second before it) and never reaches the client", async () => {
    let connections = 0;
    const upstream = http.createServer((_req, res) => res.end("ok"));
    // node:http announces `Keep-Alive: timeout=2`.
    upstream.keepAliveTimeout = 2000;
    upstream.on("connection", () => connections++);
    const port = await listen(upstream as unknown as net.Server);
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [port]);
      connections = 0;
      const ask = async () => {
        const r = await request(`${base}/app/ka`, { reset: true });
        await r.body.dump();
        expect(r.headers["keep-alive"], engine).toBeUndefined();
      };
      await ask();
      // Past the learned second (the pooled connection is gone), before the upstream's two.
      await new Promise((r) => setTimeout(r, 1500));
      await ask();
      expect(connections, engine).toBe(2);
      await runtime.close();
    }
    upstream.close();
  });

  test("a route's response header edits are made by both engines, on top of the upstream's fields", async () => {
    const upstream = http.createServer((_req, res) => {
      res.setHeader("X-Drop", "1");
      res.setHeader("X-Keep", "1");
      res.end("ok");
    });
    const port = await listen(upstream as unknown as net.Server);
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [port]);
      for (let i = 0; i < 2; i++) {
        const r = await request(`${base}/edit/x`);
        expect(await r.body.text(), engine).toBe("ok");
        expect(r.headers["x-served-by"], engine).toBe("sluice");
        expect(r.headers["x-drop"], engine).toBeUndefined();
        expect(r.headers["x-keep"], engine).toBe("1");
      }
      // A local answer on the same connection gets none of the edits, and no fields but its own
      // (node:http would add a Date) but for the connection's.
      const local = await request(`${base}/local`);
      expect(await local.body.text(), engine).toBe("here\n");
      expect(local.headers["x-served-by"], engine).toBeUndefined();
      const { connection, "keep-alive": _ka, ...own } = local.headers;
      expect(own, engine).toEqual({ "content-type": "text/plain; charset=utf-8", "content-length": "5" });
      await runtime.close();
    }
    upstream.close();
  });

  test("the forwarding fields are the same from both engines: X-Forwarded-For appended, -Proto and -Host replaced, Via appended both ways", async () => {
    let seen: http.IncomingHttpHeaders = {};
    const upstream = http.createServer((req, res) => {
      seen = req.headers;
      res.setHeader("Via", "1.1 upstream");
      res.end("ok");
    });
    const port = await listen(upstream as unknown as net.Server);
    const got: Record<string, unknown> = {};
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [port]);
      // A client that claims to have come over TLS from elsewhere, through another proxy.
      const r = await request(`${base}/app/fwd`, {
        headers: {
          host: "shop.example",
          "x-forwarded-for": "203.0.113.7",
          "x-forwarded-proto": "https",
          "x-forwarded-host": "evil.example",
          via: "1.0 client-proxy",
        },
      });
      expect(await r.body.text(), engine).toBe("ok");
      const fields = {
        xff: seen["x-forwarded-for"],
        proto: seen["x-forwarded-proto"],
        host: seen["x-forwarded-host"],
        port: seen["x-forwarded-port"],
        via: seen.via,
        responseVia: r.headers.via,
      };
      expect(fields, engine).toEqual({
        xff: "203.0.113.7, 127.0.0.1",
        proto: "http",
        host: "shop.example",
        port: undefined,
        via: "1.0 client-proxy, 1.1 sluice",
        responseVia: "1.1 upstream, 1.1 sluice",
      });
      got[engine] = fields;
      // A local answer carries no Via.
      const local = await request(`${base}/local`);
      await local.body.dump();
      expect(local.headers.via, engine).toBeUndefined();
      await runtime.close();
    }
    expect(got.buffered).toEqual(got.splice);
    upstream.close();
  });

  test("max_body_bytes and max_uri_bytes: 413 (announced, or found while chunked) and 414 from both engines; no such request reaches the upstream whole", async () => {
    let whole = 0;
    const upstream = http.createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        whole++;
        res.end("ok");
      });
    });
    const port = await listen(upstream as unknown as net.Server);
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(
        engine,
        [port],
        "round_robin",
        "",
        "{ max_body_bytes: 1000, max_uri_bytes: 100 }",
      );
      const p = Number(new URL(base).port);
      whole = 0;
      expect(await statusLine(p, "POST /app/u HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"), engine).toMatch(
        /^HTTP\/1\.1 413 /,
      );
      // 1,001 bytes in chunks, and the body never ends.
      const chunked = `POST /app/u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n${"a".repeat(1000)}\r\n1\r\na\r\n`;
      expect(await statusLine(p, chunked), engine).toMatch(/^HTTP\/1\.1 413 /);
      expect(await statusLine(p, `GET /app/${"u".repeat(200)} HTTP/1.1\r\nHost: x\r\n\r\n`), engine).toMatch(/^HTTP\/1\.1 414 /);
      // At the limits: served.
      const ok = await request(`${base}/app/u`, { method: "POST", body: "a".repeat(1000) });
      expect(await ok.body.text(), engine).toBe("ok");
      expect(whole, engine).toBe(1);
      await runtime.close();
    }
    upstream.close();
  });

  test("a head dripped past the head timeout is answered 408 and its connection closed, in both engines (slowloris)", async () => {
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [good.port], "round_robin", "{ head: 1s }");
      const r = await dripHead(Number(new URL(base).port));
      expect(r.answer, engine).toMatch(/^HTTP\/1\.1 408 /);
      // Not before the deadline, although header lines kept coming.
      expect(r.closedAfterMs, engine).toBeGreaterThanOrEqual(900);
      await runtime.close();
    }
  });

  test("heads that fail (malformed, too large, past the head timeout, a client gone mid-head) are answered alike and each counted as one request with the same outcome, in both engines", async () => {
    const results: Record<string, { answers: string[]; counters: string[] }> = {};
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [good.port], "round_robin", "{ head: 1s }");
      const port = Number(new URL(base).port);
      const answers = [
        await statusLine(port, "GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n"),
        await statusLine(port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(40_000)}\r\n\r\n`),
        await statusLine(port, "HELLO\r\n\r\n"),
        // The head is never finished: answered at the head timeout.
        await statusLine(port, "GET / HTTP/1.1\r\nHost: x\r\n"),
      ];
      const gone = net.connect(port, "127.0.0.1");
      await new Promise((r) => gone.once("connect", r));
      gone.write("GET / HTTP/1.1\r\nHost: x\r\nX-Partial");
      await new Promise((r) => setTimeout(r, 100));
      gone.destroy();
      const names = ["sluice_http_request_duration_seconds"];
      await until(async () => (await counters(runtime.sinks.metrics.registry, names)).join("\n").includes("client_closed"));
      results[engine] = { answers, counters: await counters(runtime.sinks.metrics.registry, names) };
      await runtime.close();
    }
    const [s, b] = [results.splice, results.buffered];
    expect(s?.answers.map((a) => a.slice(0, 12))).toEqual(["HTTP/1.1 400", "HTTP/1.1 431", "HTTP/1.1 400", "HTTP/1.1 408"]);
    expect(b?.answers.map((a) => a.slice(0, 12))).toEqual(s?.answers.map((a) => a.slice(0, 12)));
    expect(b?.counters).toEqual(s?.counters);
    const text = s?.counters.join("\n") ?? "";
    expect(text).toMatch(/outcome=client_protocol,route=none,status_class=4xx\} 2/);
    expect(text).toMatch(/outcome=client_limit,route=none,status_class=4xx\} 1/);
    expect(text).toMatch(/outcome=client_timeout,route=none,status_class=4xx\} 1/);
    expect(text).toMatch(/outcome=client_closed,route=none,status_class=aborted\} 1/);
  });

  test("what the strict parser refuses and llhttp would let through is refused by both engines alike, and never reaches the upstream (two Hosts, HTTP/1.0 with Transfer-Encoding, other transfer codings, HTTP/2.0, stray target characters, bad Hosts, too many fields)", async () => {
    const heads = [
      "GET /app/h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
      "POST /app/h HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      "POST /app/h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
      "GET /app/h HTTP/2.0\r\nHost: a\r\n\r\n",
      "GET /app\\h HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET /app/h#f HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET /app/h HTTP/1.1\r\nHost: a/b\r\n\r\n",
      "GET /app/h HTTP/1.1\r\nHost: user@a\r\n\r\n",
      // More fields than max_headers (100): node:http would keep the first 100 and drop the rest.
      `GET /app/h HTTP/1.1\r\nHost: a\r\n${Array.from({ length: 120 }, (_, i) => `X-F${i}: v\r\n`).join("")}\r\n`,
    ];
    const answers: Record<string, string[]> = {};
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [good.port]);
      const port = Number(new URL(base).port);
      const seen = good.seen();
      answers[engine] = [];
      for (const h of heads) answers[engine]?.push((await statusLine(port, h)).slice(0, 12));
      expect(good.seen(), engine).toBe(seen);
      await runtime.close();
    }
    expect(answers.splice).toEqual([
      "HTTP/1.1 400",
      "HTTP/1.1 400",
      "HTTP/1.1 501",
      "HTTP/1.1 505",
      "HTTP/1.1 400",
      "HTTP/1.1 400",
      "HTTP/1.1 400",
      "HTTP/1.1 400",
      "HTTP/1.1 431",
    ]);
    expect(answers.buffered).toEqual(answers.splice);
  });

  test("an absolute-form target's authority is the request's host in both engines: routed on, and sent upstream as Host and X-Forwarded-Host in place of the client's Host", async () => {
    let seen: { url?: string; host?: string; xfh?: string | string[] } = {};
    const upstream = http.createServer((req, res) => {
      seen = { url: req.url, host: req.headers.host, xfh: req.headers["x-forwarded-host"] };
      res.end("ok");
    });
    const port = await listen(upstream as unknown as net.Server);
    const got: Record<string, unknown> = {};
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [port]);
      const proxyPort = Number(new URL(base).port);
      const line = await statusLine(
        proxyPort,
        "GET http://shop.example:8080/app/abs?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
      );
      got[engine] = { line: line.slice(0, 12), ...seen };
      seen = {};
      // Not a URL at all: refused by both, nothing sent.
      got[`${engine} bad`] = (await statusLine(proxyPort, "GET http://a b/ HTTP/1.1\r\nHost: x\r\n\r\n")).slice(0, 12);
      expect(seen, engine).toEqual({});
      await runtime.close();
    }
    upstream.close();
    expect(got.splice).toEqual({
      line: "HTTP/1.1 200",
      url: "/app/abs?q=1",
      host: "shop.example:8080",
      xfh: "shop.example:8080",
    });
    expect(got.buffered).toEqual(got.splice);
    expect([got["splice bad"], got["buffered bad"]]).toEqual(["HTTP/1.1 400", "HTTP/1.1 400"]);
  });

  test("responses the strict parser refuses are 502 from both engines, byte for byte: a coding besides chunked (read to the close by llhttp), Transfer-Encoding in HTTP/1.0, a 101 nobody asked for, a status below 100 or a reason with control characters", async () => {
    const bad: Record<string, string> = {
      "/app/gzip": "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
      "/app/old": "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
      // Switching protocols to a request that asked for no upgrade.
      "/app/switch": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n",
      // llhttp reads these (a status of 99, a reason with DEL or a control character), which
      // node:http refuses to write: the buffered engine's process died of them.
      "/app/odd": "HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nhi",
      "/app/del": "HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nhi",
      "/app/ctl": "HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nhi",
    };
    const upstream = net.createServer((s) => {
      let got = "";
      s.on("error", () => undefined);
      s.on("data", (d: Buffer) => {
        got += d.toString("latin1");
        if (got.includes("\r\n\r\n")) s.end(bad[got.split(" ")[1] as string] ?? "HTTP/1.1 404 Not Found\r\n\r\n");
      });
    });
    const port = await listen(upstream);
    const answers: Record<string, string[]> = {};
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [port]);
      const proxyPort = Number(new URL(base).port);
      answers[engine] = [];
      // The whole answer, to the close: the same bytes from both engines (no Via, no Date on an answer made here).
      for (const path of Object.keys(bad))
        answers[engine]?.push(await wholeAnswer(proxyPort, `GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`));
      await runtime.close();
    }
    upstream.close();
    expect(answers.splice?.map((a) => a.slice(0, 12))).toEqual(Object.keys(bad).map(() => "HTTP/1.1 502"));
    expect(answers.splice?.[2]).toContain("upstream switched protocols unasked");
    expect(answers.buffered).toEqual(answers.splice);
  });

  test("a drain closes idle keep-alive connections without waiting out their keep-alive timeout, in both engines", async () => {
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [good.port], "round_robin", "{ keep_alive: 300s }");
      const s = net.connect(Number(new URL(base).port), "127.0.0.1");
      s.on("error", () => undefined);
      let got = "";
      await new Promise<void>((resolve) => {
        s.on("data", (d: Buffer) => {
          got += d.toString("latin1");
          if (got.endsWith("\r\n\r\ngood")) resolve();
        });
        s.write("GET /app/idle HTTP/1.1\r\nHost: x\r\n\r\n");
      });
      const closed = new Promise((r) => s.once("close", r));
      // The connection is idle (its response complete, kept alive): the drain must not wait on it.
      const result = await runtime.drain(30_000);
      expect(result.timedOut, engine).toBe(false);
      await closed;
    }
  });

  test("an Upgrade request keeps its Upgrade and Connection: upgrade, and loses the other hop-by-hop fields, in both engines", async () => {
    let received: http.IncomingHttpHeaders = {};
    const upstream = http.createServer();
    upstream.on("upgrade", (req: http.IncomingMessage, socket: net.Socket) => {
      received = req.headers;
      socket.end("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    });
    const port = await listen(upstream as unknown as net.Server);
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [port]);
      received = {};
      const fields = await responseFields(
        Number(new URL(base).port),
        "GET /app/up HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade, X-Bar\r\nUpgrade: websocket\r\n" +
          "X-Bar: named in Connection\r\nKeep-Alive: timeout=9\r\nProxy-Authorization: Basic eA==\r\nX-Keep: 1\r\n\r\n",
      );
      expect(fields.find(([n]) => n === "upgrade")?.[1], engine).toBe("websocket");
      expect(received.upgrade, engine).toBe("websocket");
      expect(received.connection?.toLowerCase(), engine).toBe("upgrade");
      expect(received["x-keep"], engine).toBe("1");
      for (const n of ["x-bar", "keep-alive", "proxy-authorization"]) expect(received[n], `${engine}: ${n}`).toBeUndefined();
      await runtime.close();
    }
    upstream.close();
  });

  test("X-Request-Id: made when absent or unusable, kept when given, sent upstream the same way by both engines", async () => {
    const seen: string[] = [];
    const upstream = http.createServer((req, res) => {
      seen.push(String(req.headers["x-request-id"]));
      res.end("ok");
    });
    const port = await listen(upstream as unknown as net.Server);
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
    for (const engine of ENGINES) {
      const { runtime, base } = await runtimeFor(engine, [port]);
      seen.length = 0;
      const ask = async (headers: Record<string, string>) => {
        const r = await request(`${base}/app/x`, { headers, reset: true });
        await r.body.dump();
        expect(r.statusCode).toBe(200);
      };
      await ask({});
      await ask({});
      await ask({ "x-request-id": "given-by-the-client" });
      await ask({ "x-request-id": "x".repeat(200) });
      expect(seen[0], engine).toMatch(uuid);
      expect(seen[1], engine).toMatch(uuid);
      expect(seen[0], engine).not.toBe(seen[1]);
      expect(seen[2], engine).toBe("given-by-the-client");
      expect(seen[3], engine).toMatch(uuid);
      await runtime.close();
    }
    upstream.close();
  });
});
