// A collector that takes requests and never answers: the fast recorder keeps two exports in
// flight and drops (and counts) every other span, so the accounting is exact: spans the
// collector received plus spans dropped are all the spans made. Own file: tracing is set up
// once per process.
import { expect, test } from "vitest";
import { metricValue } from "./helpers/metrics.js";
import { sendRequests, spanCounter, startTracedProxy } from "./helpers/traced-proxy.js";

test("a collector that never answers: two exports in flight, every other span dropped and counted, nothing waits", async () => {
  const collector = await spanCounter(false);
  const { runtime, base, close } = await startTracedProxy(collector.port);
  global.gc?.();
  const heap0 = process.memoryUsage().heapUsed;
  const requests = 2000;
  await sendRequests(base, requests);
  // Flushing while both exports hang gives up in bounded time.
  const f0 = performance.now();
  await runtime.sinks.tracing?.flush(300);
  expect(performance.now() - f0).toBeLessThan(3000);
  const stats = runtime.sinks.tracing?.stats() ?? { exported: 0, dropped: 0 };
  expect(collector.exports()).toBe(2);
  expect(stats.exported).toBe(0);
  // A server and a client span per request: each one either reached the collector or was counted as dropped.
  expect(collector.spans() + stats.dropped).toBe(2 * requests);
  // The counter on /metrics says the same.
  expect(await metricValue(runtime.sinks.metrics, "sluice_trace_spans_dropped_total", {})).toBe(stats.dropped);
  expect(collector.spans()).toBeGreaterThan(0);
  expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(64 << 20);
  const c0 = performance.now();
  await runtime.close();
  expect(performance.now() - c0).toBeLessThan(4000);
  collector.close();
  close();
}, 60_000);
