// A collector that is down costs bounded memory and never holds requests up: spans are
// dropped and counted. Own file: tracing is set up once per process.
import { writeFileSync } from "node:fs";
import http from "node:http";
import type net from "node:net";
import { join } from "node:path";
import { request } from "undici";
import { expect, test } from "vitest";
import { freePort } from "../bench/peers.js";
import { Runtime } from "../proxy/control/runtime.js";
import { listen } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

test("3000 traced requests with the collector down: all answered, spans dropped and counted, heap bounded", async () => {
  // A port just freed: nothing listens there, connects are refused.
  const dead = await freePort();
  const upstream = http.createServer((_req, res) => res.end("ok"));
  const upstreamPort = await listen(upstream as unknown as net.Server);
  const file = join(tempDir("dead"), "c.yaml");
  writeFileSync(
    file,
    `telemetry:
  tracing: { endpoint: "http://127.0.0.1:${dead}", sampler_ratio: 1 }
listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: {}, forward: { cluster: app } }]
clusters:
  app: { endpoints: ["127.0.0.1:${upstreamPort}"] }
`,
  );
  const runtime = new Runtime({ file });
  await runtime.start();
  const base = `http://${runtime.addresses().get("main")}`;
  global.gc?.();
  const heap0 = process.memoryUsage().heapUsed;
  const t0 = performance.now();
  for (let i = 0; i < 300; i++) {
    await Promise.all(
      Array.from({ length: 10 }, async () => {
        const res = await request(`${base}/`);
        expect(res.statusCode).toBe(200);
        await res.body.text();
      }),
    );
  }
  const seconds = (performance.now() - t0) / 1000;
  // Flushing to a dead collector gives up in bounded time and does not throw.
  const f0 = performance.now();
  await runtime.sinks.tracing?.flush(1000);
  expect(performance.now() - f0).toBeLessThan(2000);
  const stats = runtime.sinks.tracing?.stats() ?? { exported: 0, dropped: 0 };
  expect(stats.exported).toBe(0);
  expect(stats.dropped).toBeGreaterThan(0);
  // 6000 spans would be several MB if kept; the queue holds at most 4096.
  expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(64 << 20);
  // Nothing on the data path waits for the collector (the same loop takes ~1 s without tracing).
  expect(seconds).toBeLessThan(10);
  // Shutting down with spans queued for a dead collector neither hangs nor throws.
  const c0 = performance.now();
  await runtime.close();
  expect(performance.now() - c0).toBeLessThan(4000);
  upstream.close();
}, 60_000);
