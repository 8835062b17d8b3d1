// /metrics on the admin port: Prometheus text that parses, counters that match the
// traffic sent, and compare mode's share of buffered connections within tolerance.
import { writeFileSync } from "node:fs";
import http from "node:http";
import type net from "node:net";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, expect, test } from "vitest";
import { Runtime } from "../proxy/control/runtime.js";
import { listen } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";
import { rawExchange } from "./helpers/upstreams.js";

let upstream: http.Server;
let runtime: Runtime;
let port = 0;
const SMALL = Buffer.alloc(100, 1);
const BIG = Buffer.alloc(2 << 20, 2);

/** Parses Prometheus text exposition into name{labels} → value, checking every line's form. */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.e+-]+|[Nn]a[Nn]|\+Inf|-Inf)$/.exec(line);
    if (!m) throw new Error(`not Prometheus text: ${line}`);
    out.set(`${m[1]}${m[2] ?? ""}`, Number(m[3]));
  }
  return out;
}

function sum(metrics: Map<string, number>, name: string, ...labels: string[]): number {
  let total = 0;
  for (const [k, v] of metrics) if (k.startsWith(`${name}{`) && labels.every((l) => k.includes(l))) total += v;
  return total;
}

beforeAll(async () => {
  upstream = http.createServer((req, res) => {
    const body = req.url === "/big" ? BIG : SMALL;
    res.writeHead(200, { "content-length": body.length });
    res.end(body);
  });
  const upstreamPort = await listen(upstream as unknown as net.Server);
  const dir = tempDir("metrics");
  const file = join(dir, "c.yaml");
  writeFileSync(
    file,
    `admin: { address: 127.0.0.1:0 }
listeners:
  - name: main
    address: 127.0.0.1:0
    compare: { buffered_ratio: 0.25 }
    routes: [{ name: app, match: {}, forward: { cluster: app } }]
clusters:
  app: { endpoints: ["127.0.0.1:${upstreamPort}"] }
`,
  );
  runtime = new Runtime({ file });
  await runtime.start();
  port = Number(runtime.addresses().get("main")?.split(":")[1]);
});

afterAll(async () => {
  await runtime.close();
  upstream.close();
});

async function scrape(): Promise<Map<string, number>> {
  const res = await request(`http://${runtime.adminAddress()}/metrics`);
  expect(res.headers["content-type"]).toMatch(/^text\/plain; version=0\.0\.4/);
  return parse(await res.body.text());
}

test("400 connections: a quarter served buffered within tolerance, and counters match the traffic", async () => {
  for (let i = 0; i < 400; i++) {
    const r = await rawExchange(port, "GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    expect(r.text).toMatch(/^HTTP\/1\.1 200 /);
  }
  const m = await scrape();
  const buffered = sum(m, "sluice_http_request_duration_seconds_count", 'engine="buffered"', 'status_class="2xx"');
  const spliceEngine = sum(m, "sluice_http_request_duration_seconds_count", 'engine="copy"', 'route="app"');
  expect(buffered + spliceEngine).toBe(400);
  // Binomial(400, 0.25): mean 100, sd 8.7; ±40 is over four sd.
  expect(buffered).toBeGreaterThan(60);
  expect(buffered).toBeLessThan(140);
  expect(sum(m, "sluice_body_bytes_total", 'engine="copy"', 'direction="response"', 'path="copied"')).toBe(
    spliceEngine * SMALL.length,
  );
  expect(sum(m, "sluice_body_bytes_total", 'engine="buffered"', 'direction="response"')).toBe(buffered * SMALL.length);
});

test("spliced bytes, pipe pool, endpoint health and reloads are exported", async () => {
  const before = await scrape();
  // Keep going until one big response took the splice engine (a quarter go buffered).
  for (let i = 0; i < 20; i++) {
    const r = await request(`http://127.0.0.1:${port}/big`, { headers: { connection: "close" } });
    await r.body.arrayBuffer();
  }
  const after = await scrape();
  const spliced =
    sum(after, "sluice_body_bytes_total", 'engine="splice"', 'direction="response"', 'path="spliced"') -
    sum(before, "sluice_body_bytes_total", 'engine="splice"', 'direction="response"', 'path="spliced"');
  const splicedRequests = sum(after, "sluice_http_request_duration_seconds_count", 'engine="splice"');
  expect(splicedRequests).toBeGreaterThan(0);
  expect(spliced).toBeGreaterThan(splicedRequests * (BIG.length - 256 * 1024));
  expect(after.get('sluice_pipe_pool_pipes{state="in_use"}')).toBe(0);
  expect(sum(after, "sluice_upstream_endpoint_healthy", 'cluster="app"')).toBe(1);
  expect(sum(after, "sluice_config_reloads_total", 'result="success"')).toBe(1);
  expect(after.has("sluice_active_tunnels")).toBe(true);
});
