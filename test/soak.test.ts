// A short soak (bench/soak.ts runs it for minutes): mixed downloads and uploads with their
// hashes checked, keep-alive churn, WebSockets and a config reload every 700 ms against a
// running sluice; afterwards its descriptors, pipes and V8 heap are back and RSS is bounded.
import { expect, test } from "vitest";
import { HEAP_SLACK, runSoak } from "../bench/soak.js";

test("10 s of mixed load with reloads: every body intact, then fds, pipes and the heap back to baseline", async () => {
  const r = await runSoak({ seconds: 10, concurrency: 8 });
  expect(r.failures).toEqual([]);
  expect(r.requests).toBeGreaterThan(200);
  expect(r.uploads).toBeGreaterThan(20);
  expect(r.websockets).toBeGreaterThan(5);
  expect(r.reloads).toBeGreaterThanOrEqual(10);
  expect(r.fds.after).toBe(r.fds.before);
  expect(r.pipesInUse).toBe(0);
  // Bodies are spliced or streamed, never held: memory stays within a small bound of the start.
  expect(r.rss.peak - r.rss.before).toBeLessThan(150 << 20);
  // Nothing is kept per request: once idle, the V8 heap in use is back near where it started.
  expect(r.heapUsed.after).toBeLessThanOrEqual(r.heapUsed.before + HEAP_SLACK);
}, 90_000);
