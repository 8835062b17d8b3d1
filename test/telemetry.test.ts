// Traces exported over OTLP/HTTP (protobuf) to a receiver in the test, decoded with the
// official OTLP definitions: span shape, parent/child links, trace context propagation,
// engine values and byte counts.
import { readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import net from "node:net";
import { join } from "node:path";
import { Agent, request } from "undici";
import { afterAll, beforeAll, expect, test, vi } from "vitest";
import { Runtime } from "../proxy/control/runtime.js";
import { makeCa, type Pair, type TestCa } from "./helpers/certs.js";
import { listen } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";
import { rawExchange } from "./helpers/upstreams.js";

const require = createRequire(import.meta.url);
const otlp = require("otlp-transformer-decode/build/src/generated/root.js");
const ExportRequest = otlp.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;

interface DecodedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  attributes: Record<string, unknown>;
  events: string[];
  status: number;
  statusMessage: string;
}

const hex = (b: Uint8Array | undefined) => Buffer.from(b ?? []).toString("hex");

const spans: DecodedSpan[] = [];
/** The resource attributes of the last export. */
let resource: Record<string, unknown> = {};
const contentTypes: string[] = [];
let collector: http.Server;
let upstream: http.Server;
let runtime: Runtime;
let base = "";
let ca: TestCa;
let alice: Pair;
const upstreamSaw: Record<string, string> = {};

beforeAll(async () => {
  collector = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      contentTypes.push(String(req.headers["content-type"]));
      const msg = ExportRequest.decode(Buffer.concat(chunks));
      for (const rs of msg.resourceSpans ?? []) {
        resource = Object.fromEntries(
          (rs.resource?.attributes ?? []).map((kv: { key: string; value?: { stringValue?: string } }) => [
            kv.key,
            kv.value?.stringValue,
          ]),
        );
        for (const ss of rs.scopeSpans ?? [])
          for (const s of ss.spans ?? []) {
            const attributes: Record<string, unknown> = {};
            for (const kv of s.attributes ?? []) {
              const v = kv.value ?? {};
              attributes[kv.key] =
                v.stringValue ??
                (v.intValue !== undefined && v.intValue !== null ? Number(v.intValue) : (v.boolValue ?? v.doubleValue));
            }
            spans.push({
              traceId: hex(s.traceId),
              spanId: hex(s.spanId),
              parentSpanId: hex(s.parentSpanId),
              name: s.name,
              kind: s.kind,
              attributes,
              events: (s.events ?? []).map((e: { name: string }) => e.name),
              status: s.status?.code ?? 0,
              statusMessage: s.status?.message ?? "",
            });
          }
      }
      res.writeHead(200, { "content-type": "application/x-protobuf" });
      res.end();
    });
  });
  const collectorPort = await listen(collector as unknown as net.Server);
  const big = Buffer.alloc(1 << 20, 5);
  const servedOn = new WeakMap<object, number>();
  upstream = http.createServer((req, res) => {
    upstreamSaw[req.url ?? ""] = String(req.headers.traceparent ?? "");
    if (req.url === "/reset-head") return req.socket.destroy();
    if (req.url === "/huge") {
      // Larger than the socket buffers on the way, so a client that leaves does so mid-transfer.
      const chunk = Buffer.alloc(1 << 20, 2);
      let left = 64;
      res.writeHead(200, { "content-length": left * chunk.length });
      const more = () => {
        while (left > 0) {
          left--;
          if (!res.write(chunk)) return void res.once("drain", more);
        }
        res.end();
      };
      res.on("error", () => undefined);
      return more();
    }
    if (req.url === "/stall-mid") {
      res.writeHead(200, { "content-length": 100_000 });
      res.write(Buffer.alloc(30_000, 1));
      return; // and nothing more: the proxy's body_idle ends it
    }
    if (req.url === "/short") {
      res.writeHead(200, { "content-length": 100_000 });
      res.write(Buffer.alloc(30_000, 1), () => req.socket.end());
      return;
    }
    if (req.url === "/reset-mid") {
      res.writeHead(200, { "content-length": 100_000 });
      res.write(Buffer.alloc(30_000, 1), () => req.socket.destroy());
      return;
    }
    if (req.url?.startsWith("/stale")) {
      // Answers only the first request on a connection; at a later one it closes without a word.
      const served = servedOn.get(req.socket) ?? 0;
      servedOn.set(req.socket, served + 1);
      if (served > 0) return req.socket.end();
      return res.end("fresh");
    }
    if (req.url === "/sink") {
      // Reads the whole upload before answering.
      req.on("data", () => undefined);
      req.on("error", () => undefined);
      return req.on("end", () => res.end("got it"));
    }
    if (req.url === "/big") {
      res.writeHead(200, { "content-length": big.length });
      return res.end(big);
    }
    res.end("small");
  });
  const upstreamPort = await listen(upstream as unknown as net.Server);
  const dir = tempDir("otel");
  ca = makeCa(dir);
  const site = ca.issue("site", { san: ["DNS:localhost"] });
  alice = ca.issue("alice", { client: true, o: "Acme" });
  const file = join(dir, "c.yaml");
  writeFileSync(
    file,
    `telemetry:
  tracing: { endpoint: "http://127.0.0.1:${collectorPort}", sampler_ratio: 1, service_name: sluice-test }
listeners:
  - name: main
    address: 127.0.0.1:0
    timeouts: { body_idle: 500ms }
    routes: [{ name: app, match: {}, forward: { cluster: app } }]
  - name: baseline
    address: 127.0.0.1:0
    engine: buffered
    routes: [{ name: app, match: {}, forward: { cluster: app } }]
  - name: secure
    address: 127.0.0.1:0
    routes: [{ name: secure-app, match: {}, forward: { cluster: app } }]
    tls:
      certificates: [{ cert: ${site.cert}, key: ${site.key} }]
      client_certificate: { ca: ${ca.cert}, required: false }
clusters:
  app: { endpoints: ["127.0.0.1:${upstreamPort}"] }
`,
  );
  runtime = new Runtime({ file });
  await runtime.start();
  base = `http://${runtime.addresses().get("main")}`;
});

afterAll(async () => {
  await runtime.close();
  collector.close();
  upstream.close();
});

test("server and client spans with engine, byte counts and W3C context continued and propagated", async () => {
  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const parentId = "00f067aa0ba902b7";
  for (const path of ["/big", "/small"]) {
    const res = await request(`${base}${path}`, {
      headers: { traceparent: `00-${traceId}-${parentId}-01`, "user-agent": "sluice-test/1.0" },
    });
    await res.body.arrayBuffer();
  }
  await runtime.sinks.tracing?.flush();
  await vi.waitFor(() => expect(spans.length).toBeGreaterThanOrEqual(4), { timeout: 5000 });
  expect(contentTypes[0]).toBe("application/x-protobuf");

  const servers = spans.filter((s) => s.kind === 2);
  const clients = spans.filter((s) => s.kind === 3);
  expect(servers).toHaveLength(2);
  expect(clients).toHaveLength(2);
  for (const s of servers) {
    expect(s.name).toBe("GET app");
    expect(s.traceId).toBe(traceId);
    expect(s.parentSpanId).toBe(parentId);
    // The route's name is sluice's own attribute: http.route is for path templates.
    expect(s.attributes["http.route"]).toBeUndefined();
    expect(s.attributes).toMatchObject({
      "http.request.method": "GET",
      "sluice.route": "app",
      "url.scheme": "http",
      "user_agent.original": "sluice-test/1.0",
      "http.response.status_code": 200,
      "network.protocol.version": "1.1",
    });
  }
  for (const c of clients) {
    const parent = servers.find((s) => s.spanId === c.parentSpanId);
    expect(parent, "client span is a child of a server span").toBeDefined();
    expect(c.events).toEqual(["upstream connected", "response head received", "first body byte", "last body byte"]);
    expect(c.attributes["sluice.retry_count"]).toBe(0);
  }
  const [bigSpan, smallSpan] = clients;
  expect(bigSpan?.attributes).toMatchObject({
    "sluice.engine": "splice",
    "sluice.request.bytes_spliced": 0,
    "sluice.pipe_size": expect.any(Number),
  });
  const bigMoved =
    Number(bigSpan?.attributes["sluice.response.bytes_spliced"]) + Number(bigSpan?.attributes["sluice.response.bytes_copied"]);
  expect(bigMoved).toBe(1 << 20);
  expect(Number(bigSpan?.attributes["sluice.response.bytes_spliced"])).toBeGreaterThan(0);
  expect(smallSpan?.attributes).toMatchObject({
    "sluice.engine": "copy",
    "sluice.response.bytes_copied": 5,
    "sluice.response.bytes_spliced": 0,
  });

  // The upstream got the trace, with the client span as its parent.
  for (const [path, c] of [
    ["/big", bigSpan],
    ["/small", smallSpan],
  ] as const) {
    expect(upstreamSaw[path]).toBe(`00-${traceId}-${c?.spanId}-01`);
  }
  expect(runtime.sinks.tracing?.stats().dropped).toBe(0);
  // The resource: who sent the spans, in which version, with the SDK's own attributes.
  expect(resource).toMatchObject({
    "service.version": JSON.parse(readFileSync("package.json", "utf8")).version,
    "telemetry.sdk.language": "nodejs",
    // The fast recorder (the default) names itself; the SDK recorder says "opentelemetry" (test/otlp.test.ts).
    "telemetry.sdk.name": "sluice",
  });
});

test("over a TLS listener: the server span has url.scheme https and the tls.* attributes; the try says why its body was copied", async () => {
  const port = runtime.addresses().get("secure")?.split(":").pop();
  const dispatcher = new Agent({
    connect: { ca: readFileSync(ca.cert), cert: readFileSync(alice.cert), key: readFileSync(alice.key), servername: "localhost" },
  });
  const res = await request(`https://127.0.0.1:${port}/big`, { dispatcher });
  expect((await res.body.arrayBuffer()).byteLength).toBe(1 << 20);
  await dispatcher.close();
  await runtime.sinks.tracing?.flush();
  await vi.waitFor(() => expect(spans.some((s) => s.attributes["sluice.route"] === "secure-app")).toBe(true), { timeout: 5000 });
  const server = spans.find((s) => s.kind === 2 && s.attributes["sluice.route"] === "secure-app") as DecodedSpan;
  expect(server.attributes).toMatchObject({
    "url.scheme": "https",
    "tls.protocol.name": "tls",
    "tls.protocol.version": "1.3",
    "tls.client.server_name": "localhost",
    "tls.client.subject": "CN=alice, O=Acme",
  });
  expect(String(server.attributes["tls.cipher"])).toMatch(/^TLS_/);
  const client = spans.find((s) => s.kind === 3 && s.parentSpanId === server.spanId) as DecodedSpan;
  expect(client.attributes).toMatchObject({
    "sluice.engine": "copy",
    "sluice.body.copy_reason": "tls_client",
    "sluice.response.bytes_spliced": 0,
    "sluice.response.bytes_copied": 1 << 20,
    "url.scheme": "http",
  });
});

test("the buffered engine's spans have the same shape and say engine buffered", async () => {
  spans.length = 0;
  const res = await request(`http://${runtime.addresses().get("baseline")}/big`);
  expect((await res.body.arrayBuffer()).byteLength).toBe(1 << 20);
  await runtime.sinks.tracing?.flush();
  await vi.waitFor(() => expect(spans.length).toBeGreaterThanOrEqual(2), { timeout: 5000 });
  const server = spans.find((s) => s.kind === 2);
  const client = spans.find((s) => s.kind === 3);
  expect(server?.name).toBe("GET app");
  expect(server?.attributes).toMatchObject({
    "sluice.route": "app",
    "http.response.status_code": 200,
    "sluice.listener.engine": "buffered",
  });
  expect(client?.parentSpanId).toBe(server?.spanId);
  expect(client?.events).toEqual(["upstream connected", "response head received", "first body byte", "last body byte"]);
  expect(client?.attributes).toMatchObject({
    "sluice.engine": "buffered",
    "sluice.response.bytes_copied": 1 << 20,
    "sluice.response.bytes_spliced": 0,
  });
});

test("faults are in the spans: a reset before the head (502) and a reset mid-body (client aborted), each with its reason", async () => {
  spans.length = 0;
  const port = Number(base.split(":").pop());
  const head = await rawExchange(port, "GET /reset-head HTTP/1.1\r\nhost: x\r\n\r\n");
  expect(head.text).toMatch(/^HTTP\/1\.1 502 /);
  await runtime.sinks.tracing?.flush();
  await vi.waitFor(() => expect(spans.length).toBeGreaterThanOrEqual(2), { timeout: 5000 });
  let server = spans.find((s) => s.kind === 2);
  let client = spans.find((s) => s.kind === 3);
  expect(server).toMatchObject({ status: 2, attributes: { "http.response.status_code": 502 } });
  expect(server?.statusMessage).toMatch(/upstream failed before the response head/);
  expect(server?.events).toContain("exception");
  expect(client?.status).toBe(2);
  expect(client?.statusMessage).toMatch(/upstream failed before the response head/);

  spans.length = 0;
  const mid = await rawExchange(port, "GET /reset-mid HTTP/1.1\r\nhost: x\r\n\r\n");
  expect(mid.text).toMatch(/^HTTP\/1\.1 200 /);
  expect(mid.closed).toBe(true);
  expect(Buffer.byteLength(mid.text.slice(mid.text.indexOf("\r\n\r\n") + 4), "latin1")).toBeLessThan(100_000);
  await runtime.sinks.tracing?.flush();
  await vi.waitFor(() => expect(spans.length).toBeGreaterThanOrEqual(2), { timeout: 5000 });
  server = spans.find((s) => s.kind === 2);
  client = spans.find((s) => s.kind === 3);
  // The head went out as 200; the span still says the exchange failed, and why.
  expect(server).toMatchObject({ status: 2, attributes: { "http.response.status_code": 200 } });
  expect(server?.statusMessage).not.toBe("");
  expect(client?.status).toBe(2);
  expect(client?.events).toContain("response head received");
});

test("more faults in the spans: a stalled body, a short body, a client that goes away mid-download or mid-upload", async () => {
  const port = Number(base.split(":").pop());
  const reasons: Record<string, string> = {};
  for (const path of ["/stall-mid", "/short", "/huge (client leaves)", "/sink (client leaves)"]) {
    spans.length = 0;
    if (path.startsWith("/sink")) {
      await new Promise<void>((resolve) => {
        const c = net.connect(port, "127.0.0.1", () => {
          c.write("POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n");
          c.write(Buffer.alloc(300_000, 3), () =>
            setTimeout(() => {
              c.resetAndDestroy();
              resolve();
            }, 50),
          );
        });
        c.on("error", () => undefined);
      });
    } else if (path.startsWith("/huge")) {
      await new Promise<void>((resolve) => {
        const c = net.connect(port, "127.0.0.1", () => c.write("GET /huge HTTP/1.1\r\nhost: x\r\n\r\n"));
        c.once("data", () => {
          c.resetAndDestroy();
          resolve();
        });
      });
    } else {
      const r = await rawExchange(port, `GET ${path} HTTP/1.1\r\nhost: x\r\n\r\n`, 3000);
      expect(r.closed).toBe(true);
      expect(r.text).toMatch(/^HTTP\/1\.1 200 /);
    }
    await runtime.sinks.tracing?.flush();
    await vi.waitFor(() => expect(spans.filter((s) => s.kind === 2)).toHaveLength(1), { timeout: 5000 });
    const server = spans.find((s) => s.kind === 2);
    expect(server?.status, path).toBe(2);
    reasons[path] = server?.statusMessage ?? "";
  }
  expect(reasons["/stall-mid"]).toMatch(/ETIMEDOUT/);
  expect(reasons["/short"]).toMatch(/UNEXPECTED_EOF/);
  expect(reasons["/huge (client leaves)"]).toMatch(/ECONNRESET|EPIPE|client/i);
  expect(reasons["/sink (client leaves)"]).toMatch(/client went away/);
});

test("a pooled connection that closes as it is reused is an event of the try, and the request is sent again", async () => {
  spans.length = 0;
  await (await request(`${base}/stale-1`)).body.text();
  await runtime.sinks.tracing?.flush();
  await vi.waitFor(() => expect(spans.length).toBeGreaterThanOrEqual(2), { timeout: 5000 });
  spans.length = 0;
  const res = await request(`${base}/stale-2`);
  expect(res.statusCode).toBe(200);
  expect(await res.body.text()).toBe("fresh");
  await runtime.sinks.tracing?.flush();
  await vi.waitFor(() => expect(spans.length).toBeGreaterThanOrEqual(2), { timeout: 5000 });
  const client = spans.find((s) => s.kind === 3);
  expect(client?.status).not.toBe(2);
  expect(client?.events).toEqual([
    "upstream connected",
    "upstream closed the reused connection; sending again",
    "upstream connected",
    "response head received",
    "first body byte",
    "last body byte",
  ]);
});

test("an upstream failure marks both spans as errors", async () => {
  spans.length = 0;
  upstream.closeAllConnections();
  await new Promise<void>((r) => upstream.close(() => r()));
  const res = await request(`${base}/gone`);
  expect(res.statusCode).toBe(502);
  await res.body.text();
  await runtime.sinks.tracing?.flush();
  await vi.waitFor(() => expect(spans.length).toBeGreaterThanOrEqual(2), { timeout: 5000 });
  const server = spans.find((s) => s.kind === 2);
  const client = spans.find((s) => s.kind === 3);
  expect(server?.status).toBe(2);
  expect(server?.attributes["http.response.status_code"]).toBe(502);
  expect(client?.status).toBe(2);
});
