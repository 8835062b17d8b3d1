// A collector that takes requests and never answers: the fast recorder keeps two exports in
// flight and drops (and counts) every other span, so the accounting is exact: spans the
// collector received plus spans dropped are all the spans made. Own file: tracing is set up
// once per process.
import http from "node:http";
import { createRequire } from "node:module";
import type net from "node:net";
import { expect, test } from "vitest";
import { metricValue } from "./helpers/metrics.js";
import { listen } from "./helpers/net.js";
import { sendRequests, startTracedProxy } from "./helpers/traced-proxy.js";

const require = createRequire(import.meta.url);
const otlp = require("otlp-transformer-decode/build/src/generated/root.js");
const ExportRequest = otlp.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;

test("a collector that never answers: two exports in flight, every other span dropped and counted, nothing waits", async () => {
  let received = 0;
  let exports = 0;
  const held: http.ServerResponse[] = [];
  const collector = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      exports++;
      for (const rs of ExportRequest.decode(Buffer.concat(chunks)).resourceSpans ?? [])
        for (const ss of rs.scopeSpans ?? []) received += (ss.spans ?? []).length;
      held.push(res); // and no answer
    });
  });
  const collectorPort = await listen(collector as unknown as net.Server);
  const { runtime, base, close } = await startTracedProxy(collectorPort);
  global.gc?.();
  const heap0 = process.memoryUsage().heapUsed;
  const requests = 2000;
  await sendRequests(base, requests);
  // Flushing while both exports hang gives up in bounded time.
  const f0 = performance.now();
  await runtime.sinks.tracing?.flush(300);
  expect(performance.now() - f0).toBeLessThan(3000);
  const stats = runtime.sinks.tracing?.stats() ?? { exported: 0, dropped: 0 };
  expect(exports).toBe(2);
  expect(stats.exported).toBe(0);
  // A server and a client span per request: each one either reached the collector or was counted as dropped.
  expect(received + stats.dropped).toBe(2 * requests);
  // The counter on /metrics says the same.
  expect(await metricValue(runtime.sinks.metrics, "sluice_trace_spans_dropped_total", {})).toBe(stats.dropped);
  expect(received).toBeGreaterThan(0);
  expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(64 << 20);
  const c0 = performance.now();
  await runtime.close();
  expect(performance.now() - c0).toBeLessThan(4000);
  for (const res of held) res.destroy();
  collector.close();
  close();
}, 60_000);
