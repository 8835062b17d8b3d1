// A burst of spans larger than the exports in flight may carry, with a collector that answers,
// slowly: the export worker takes from the span ring only what the exporter has room for and
// waits for an export to finish before it takes more, so nothing is dropped while the
// collector keeps answering (the ring holds the rest). Own file: tracing is set up once per process.
import { expect, test, vi } from "vitest";
import { metricValue } from "./helpers/metrics.js";
import { sendRequests, spanCounter, startTracedProxy } from "./helpers/traced-proxy.js";

test("spans faster than two exports in flight carry, to a slow collector that answers: all exported, none dropped", async () => {
  // Each export answered 150 ms after it came; batches of 16 spans, so 600 spans are 38 exports.
  const collector = await spanCounter(true, 150);
  const { runtime, base, close } = await startTracedProxy(collector.port, {
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "16",
    OTEL_BSP_SCHEDULE_DELAY: "20",
  });
  try {
    const requests = 300;
    await sendRequests(base, requests);
    // A server and a client span per request.
    await vi.waitFor(() => expect(collector.spans()).toBe(2 * requests), { timeout: 60_000, interval: 50 });
    const stats = runtime.sinks.tracing?.stats() ?? { exported: -1, dropped: -1 };
    expect(stats.dropped).toBe(0);
    expect(await metricValue(runtime.sinks.metrics, "sluice_trace_spans_dropped_total", {})).toBe(0);
    // Two at a time at most, 150 ms each: the burst went out over many turns, not at once.
    expect(collector.exports()).toBeGreaterThanOrEqual((2 * requests) / 16);
  } finally {
    await runtime.close();
    close();
    collector.close();
  }
}, 120_000);
