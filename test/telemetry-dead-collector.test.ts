// A collector that is down costs bounded memory and never holds requests up: spans are
// dropped and counted. Own file: tracing is set up once per process.
import { expect, test } from "vitest";
import { freePort } from "../bench/peers.js";
import { sendRequests, startTracedProxy } from "./helpers/traced-proxy.js";

test("3000 traced requests with the collector down: all answered, spans dropped and counted, heap bounded", async () => {
  // A port just freed: nothing listens there, connects are refused.
  const dead = await freePort();
  const { runtime, base, close } = await startTracedProxy(dead);
  global.gc?.();
  const heap0 = process.memoryUsage().heapUsed;
  // All answered (sendRequests checks each). That no request waits for an export is shown by
  // the slow collector's test, whose exports never end; a deadline on this loop would only
  // measure the machine (it took 10.9 s on one core shared with three busy processes).
  await sendRequests(base, 3000);
  // Flushing to a dead collector gives up in bounded time and does not throw.
  const f0 = performance.now();
  await runtime.sinks.tracing?.flush(1000);
  expect(performance.now() - f0).toBeLessThan(2000);
  const stats = runtime.sinks.tracing?.stats() ?? { exported: 0, dropped: 0 };
  expect(stats.exported).toBe(0);
  expect(stats.dropped).toBeGreaterThan(0);
  // 6000 spans would be several MB if kept; at most 4 MiB of encoded spans wait (the SDK recorder: 4096 spans).
  expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(64 << 20);
  // Shutting down with spans queued for a dead collector neither hangs nor throws.
  const c0 = performance.now();
  await runtime.close();
  expect(performance.now() - c0).toBeLessThan(4000);
  close();
}, 60_000);
