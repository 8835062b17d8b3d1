// The span ring and the export worker behind the fast recorder (the default): a request's
// fields cross threads intact, whatever they hold, through a small ring wrapped many times; a
// full ring drops and counts, never waits; a worker that dies is replaced, counted, and the
// spans it held or left in the ring are counted as dropped, so that what the collector got plus
// what was dropped is still every span made. Own file: tracing is set up once per process.
import { expect, test, vi } from "vitest";
import { FastTracing } from "../proxy/observe/fast-tracing.js";
import type { SpanPlace, SpanRequest, SpanTry } from "../proxy/observe/span-encoding.js";
import {
  createSpanRing,
  DROPPED,
  type FinishedRequest,
  SpanRingReader,
  SpanRingWriter,
  TAKEN,
} from "../proxy/observe/span-ring.js";
import { outcome } from "../proxy/request/outcome.js";
import { metricValue } from "./helpers/metrics.js";
import { sendRequests, spanCounter, startTracedProxy } from "./helpers/traced-proxy.js";

/** A request as drain() handed it, copied: the reader fills the same objects again for the next one. */
const kept = (r: FinishedRequest): FinishedRequest => {
  const c = structuredClone(r);
  // Plain arrays of their own, as the ids were handed over (views of the reader's memory).
  const own = (id: Uint8Array) => new Uint8Array(id);
  c.place.traceId = own(c.place.traceId);
  c.place.spanId = own(c.place.spanId);
  c.place.parentId = c.place.parentId && own(c.place.parentId);
  c.tryIds = c.tryIds.map(own);
  return c;
};

/** What the reader hands over for a hex id: its bytes in a plain Uint8Array. */
const idBytes = (hex: string) => new Uint8Array(Buffer.from(hex, "hex"));
const placeBytes = (p: SpanPlace<string>): SpanPlace => ({
  ...p,
  traceId: idBytes(p.traceId),
  spanId: idBytes(p.spanId),
  parentId: p.parentId === null ? null : idBytes(p.parentId),
});

/** The ids as the main thread hands them to the ring (RequestWords), made here from their hex. */
function wordsOf(place: SpanPlace<string>, ids: readonly string[]): number[] {
  const hex = place.traceId + place.spanId + (place.parentId ?? "0".repeat(16)) + ids.join("");
  return Array.from({ length: hex.length / 8 }, (_, i) => Number.parseInt(hex.slice(8 * i, 8 * i + 8), 16) | 0);
}

type Sample = ReturnType<typeof sample>;
/** Writes a sample's entry (or with other tries and ids). */
const put = (w: SpanRingWriter, s: Sample, tries: SpanTry[] = s.tries, ids: string[] = s.ids) =>
  w.writeRequest(s.place, s.rec, tries, ids.length, wordsOf(s.place, ids));

function sample(i: number): { place: SpanPlace<string>; rec: SpanRequest; tries: SpanTry[]; ids: string[] } {
  const odd = i % 2 === 1;
  const place: SpanPlace<string> = {
    traceId: i.toString(16).padStart(32, "0"),
    spanId: (i + 1).toString(16).padStart(16, "0"),
    // Often the same as the entry before (ids are written whole each time), sometimes none.
    parentId: i % 3 !== 0 ? "00f067aa0ba902b7" : null,
    remoteParent: odd,
    traceState: odd ? "vendor=abc" : null,
  };
  const rec: SpanRequest = {
    engine: odd ? "buffered" : "splice",
    method: odd ? "POST" : "GET",
    // Of many lengths, so entries land at every offset of the ring; some entries all ASCII, some
    // not (Latin-1, and beyond the BMP), since the two are written differently.
    path: `/${i % 3 === 0 ? "café" : "cafe"}/${"x".repeat(i % 97)}?q=${i}`,
    version: "1.1",
    host: odd ? null : "example.com:8080",
    userAgent: odd ? "agent 🚀" : null,
    clientAddress: "::1",
    clientPort: 40000 + i,
    localAddress: "127.0.0.1",
    localPort: 8080,
    tls:
      i % 3 !== 0
        ? {
            protocol: "TLSv1.3",
            cipher: "TLS_AES_128_GCM_SHA256",
            serverName: "example.com",
            clientSubject: odd ? "CN=alice" : null,
          }
        : null,
    route: odd ? null : "app",
    status: odd ? null : 200,
    outcome: odd ? outcome("upstream_reset", "response_head", "ECONNRESET") : outcome("completed", "response_body"),
    start: 1000.25 + i,
    end: 2000.5 + i,
  };
  const tries: SpanTry[] = Array.from({ length: 1 + (i % 3) }, (_, k) => ({
    endpoint: { address: { host: "10.0.0.1", port: 3000 + ((k + i) % 3) } },
    index: k,
    start: 1001 + k,
    end: 1002 + k,
    // Counts that go up and down from one entry to the next in the same try's place (the reader fills the same arrays).
    connects: Array.from({ length: 1 + ((k + i) % 3) }, (_, c) => ({ at: 1001.5 + c, reused: c % 2 === 0 })),
    staleAt: (k + i) % 2 === 1 ? [1001.75] : [],
    responseHeadAt: k === 0 ? null : 1001.9,
    status: k === 0 ? null : 502,
    firstBodyByteAt: null,
    request: { bytes: 10, spliced: 0, copied: 10, pipeSize: null },
    response: { bytes: 2 ** 40 + i, spliced: 2 ** 40, copied: i, pipeSize: 65536 },
    tunnel: k === 1,
    upstreamTls: k === 2,
    outcome: k === 0 ? outcome("upstream_refused", "connect", i % 4 < 2 ? "ECONNREFUSED" : null) : null,
  }));
  return { place, rec, tries, ids: tries.map((_, k) => `${k}`.padStart(16, "a")) };
}

test("a request's span fields cross the ring intact, through many wraps; a full ring drops and counts; read room is reused", () => {
  const ring = createSpanRing(8192);
  const writer = new SpanRingWriter(ring);
  const reader = new SpanRingReader(ring);
  const got: FinishedRequest[] = [];
  let made = 0;
  let spans = 0;
  for (let i = 0; i < 600; i++) {
    const s = sample(i);
    expect(put(writer, s)).toBe(true);
    made++;
    spans += 1 + s.tries.length;
    // Read now and then: the writer laps the reader's position dozens of times.
    if (i % 5 === 4) reader.drain((r) => got.push(kept(r)));
  }
  reader.drain((r) => got.push(kept(r)));
  expect(got).toHaveLength(made);
  expect(Number(Atomics.load(reader.counters, TAKEN))).toBe(spans);
  for (const [i, r] of got.entries()) {
    const s = sample(i);
    expect(r.place).toEqual(placeBytes(s.place));
    expect(r.rec).toEqual(s.rec);
    expect(r.tries).toEqual(s.tries);
    expect(r.tryIds).toEqual(s.ids.map(idBytes));
  }

  // Nobody reads: the ring fills, and every later request's spans are dropped and counted.
  const full = createSpanRing(4096);
  const w = new SpanRingWriter(full);
  let written = 0;
  let droppedSpans = 0;
  for (let i = 0; i < 100; i++) {
    const s = sample(i);
    if (put(w, s)) written++;
    else droppedSpans += 1 + s.tries.length;
  }
  expect(written).toBeGreaterThan(2);
  expect(written).toBeLessThan(100);
  expect(w.dropped).toBe(droppedSpans);
  // Once read, the room is there again.
  expect(new SpanRingReader(full).drain(() => undefined)).toBe(written);
  const s = sample(0);
  expect(put(w, s)).toBe(true);
});

test("a request that cannot be encoded is read once: the drain that threw freed its room and counted its spans", () => {
  const ring = createSpanRing(8192);
  const writer = new SpanRingWriter(ring);
  const reader = new SpanRingReader(ring);
  const spansOf = (i: number) => 1 + sample(i).tries.length;
  for (let i = 0; i < 4; i++) expect(put(writer, sample(i))).toBe(true);
  const seen: string[] = [];
  const who = (r: FinishedRequest) => Buffer.from(r.place.traceId).toString("hex");
  expect(() =>
    reader.drain((r) => {
      seen.push(who(r));
      if (seen.length === 2) throw new Error("cannot encode");
    }),
  ).toThrow("cannot encode");
  expect(Number(Atomics.load(reader.counters, TAKEN))).toBe(spansOf(0) + spansOf(1));
  // The next drain starts after the one that threw, and counts the rest.
  expect(reader.drain((r) => void seen.push(who(r)))).toBe(2);
  expect(seen).toEqual([0, 1, 2, 3].map((i) => sample(i).place.traceId));
  expect(Number(Atomics.load(reader.counters, TAKEN))).toBe([0, 1, 2, 3].reduce((n, i) => n + spansOf(i), 0));
  // All the room is free again: as many entries fit as in an empty ring.
  let fits = 0;
  while (put(writer, sample(fits))) fits++;
  const fresh = new SpanRingWriter(createSpanRing(8192));
  let freshFits = 0;
  while (put(fresh, sample(freshFits))) freshFits++;
  expect(fits).toBe(freshFits);
});

test("a napping reader is woken by a 32nd of the ring written, or by its nap's end; an idle one by the first entry; a drain stops at its span budget", async () => {
  const ring = createSpanRing(1 << 16);
  const writer = new SpanRingWriter(ring);
  const reader = new SpanRingReader(ring);
  /** Whether `p` settles within `ms`. */
  const settlesWithin = (p: Promise<void>, ms: number) =>
    Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

  // Idle (the last turn found nothing): the first entry wakes it, at once.
  const idle = reader.sleep(true, 60_000);
  expect(idle).not.toBeNull();
  expect(put(writer, sample(0))).toBe(true);
  expect(await settlesWithin(idle as Promise<void>, 5_000)).toBe(true);
  // Something to read already: no sleep at all.
  expect(reader.sleep(true, 60_000)).toBeNull();
  reader.drain(() => undefined);

  // Napping: one entry is not enough (2 KiB of this 64 KiB ring is), and the nap ends on its own.
  const nap = reader.sleep(false, 60_000) as Promise<void>;
  expect(nap).not.toBeNull();
  expect(put(writer, sample(1))).toBe(true);
  expect(await settlesWithin(nap, 300)).toBe(false);
  let i = 2;
  let spans = 1 + sample(1).tries.length;
  let entries = 1;
  while (!(await settlesWithin(nap, 0))) {
    const s = sample(i++);
    expect(put(writer, s)).toBe(true);
    spans += 1 + s.tries.length;
    entries++;
    expect(entries).toBeLessThan(100);
  }
  expect(entries).toBeGreaterThan(1);
  // Enough to read already: no nap at all.
  expect(reader.sleep(false, 50)).toBeNull();

  // A budget of spans: whole requests only, and the rest stays for the next drain.
  const first = sample(1).tries.length + 1;
  expect(reader.drain(() => undefined, first + 1)).toBe(1);
  expect(reader.stoppedShort).toBe(true);
  expect(reader.drain(() => undefined)).toBe(entries - 1);
  expect(reader.stoppedShort).toBe(false);
  expect(Number(Atomics.load(reader.counters, TAKEN))).toBe(1 + sample(0).tries.length + spans);

  // An empty ring: a nap ends when its time is up.
  const timed = reader.sleep(false, 50);
  expect(timed).not.toBeNull();
  expect(await settlesWithin(timed as Promise<void>, 5_000)).toBe(true);
});

test("a string equal to the one before is sent once; a reader of a new epoch drops (and counts) the entries of the old one", () => {
  const ring = createSpanRing(1 << 16);
  const writer = new SpanRingWriter(ring);
  const first = new SpanRingReader(ring);
  const got: FinishedRequest[] = [];
  // Runs of equal requests (every string but the ids repeats), then changes.
  const order = [0, 0, 0, 2, 2, 1, 1, 4, 0, 0];
  for (const i of order) {
    const s = sample(i);
    put(writer, s);
  }
  first.drain((r) => got.push(kept(r)));
  expect(got.map((r) => r.rec)).toEqual(order.map((i) => sample(i).rec));
  expect(got.map((r) => r.tries)).toEqual(order.map((i) => sample(i).tries));
  // A repeated request's entry is smaller than the first of its run.
  const sizes: number[] = [];
  for (const i of [3, 3]) {
    const before = Atomics.load(new Int32Array(ring, 0, 1), 0);
    const s = sample(i);
    put(writer, s);
    sizes.push(Atomics.load(new Int32Array(ring, 0, 1), 0) - before);
  }
  expect(sizes[1]).toBeLessThan((sizes[0] as number) - 40);

  // The reader dies with two entries unread; the next reader gets a new epoch.
  writer.newEpoch();
  const s5 = sample(5);
  put(writer, s5);
  const second = new SpanRingReader(ring, writer.epoch);
  const after: FinishedRequest[] = [];
  const taken0 = second.count(TAKEN);
  const dropped0 = second.count(DROPPED);
  second.drain((r) => after.push(kept(r)));
  expect(after).toHaveLength(1);
  expect(after[0]?.rec).toEqual(s5.rec);
  expect(after[0]?.place).toEqual(placeBytes(s5.place));
  const spans3 = 1 + sample(3).tries.length;
  expect(second.count(DROPPED) - dropped0).toBe(2 * spans3);
  expect(second.count(TAKEN) - taken0).toBe(2 * spans3 + 1 + s5.tries.length);
});

test("empty strings in a reader's first entry, and again after a new epoch, cross as themselves", () => {
  const ring = createSpanRing(1 << 16);
  const writer = new SpanRingWriter(ring);
  const emptied = (i: number): Sample => {
    const s = sample(i);
    return { ...s, rec: { ...s.rec, path: "", userAgent: "", route: "", host: "" } };
  };
  const got: FinishedRequest[] = [];
  for (const i of [0, 2]) put(writer, emptied(i));
  new SpanRingReader(ring).drain((r) => got.push(kept(r)));
  writer.newEpoch();
  put(writer, emptied(4));
  new SpanRingReader(ring, writer.epoch).drain((r) => got.push(kept(r)));
  expect(got.map((r) => r.rec)).toEqual([0, 2, 4].map((i) => emptied(i).rec));
  expect(got.map((r) => r.rec.path)).toEqual(["", "", ""]);
});

test("a request with many tries (more strings and numbers than an entry usually holds) crosses intact", () => {
  const ring = createSpanRing(1 << 16);
  const writer = new SpanRingWriter(ring);
  const reader = new SpanRingReader(ring);
  const s = sample(7);
  const tries = Array.from({ length: 40 }, (_, k) => ({ ...(s.tries[k % s.tries.length] as SpanTry), index: k, end: 5000 + k }));
  const ids = tries.map((_, k) => k.toString(16).padStart(16, "0"));
  expect(put(writer, s, tries, ids)).toBe(true);
  const got: FinishedRequest[] = [];
  reader.drain((r) => got.push(kept(r)));
  expect(got).toHaveLength(1);
  expect(got[0]?.tries).toEqual(tries);
  expect(got[0]?.tryIds).toEqual(ids.map(idBytes));
  expect(got[0]?.rec).toEqual(s.rec);
});

test("the export worker dies: another starts on the same ring, it is counted, and every span is exported or counted as dropped", async () => {
  const collector = await spanCounter();
  // No batch leaves before the flush (the SDK's variables), so no export is in flight when the
  // worker is killed: every span it held is lost with it, and counted, exactly.
  const { runtime, base, close } = await startTracedProxy(collector.port, {
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "100000",
    OTEL_BSP_SCHEDULE_DELAY: "600000",
  });
  try {
    const tracing = runtime.sinks.tracing;
    expect(tracing).toBeInstanceOf(FastTracing);
    const fast = tracing as FastTracing;
    const first = fast.exportWorker;
    expect(first).not.toBeNull();

    await sendRequests(base, 300);
    await first?.terminate();
    // A worker that dies young is replaced after a short pause (200 ms the first time).
    await vi.waitFor(() => expect(fast.exportWorker).not.toBeNull(), { timeout: 15_000, interval: 50 });
    expect(fast.exportWorker).not.toBe(first);
    expect(fast.stats().restarts).toBe(1);
    expect(collector.spans()).toBe(0);
    // What the dead worker had taken is dropped now; what was still in the ring when the next
    // one starts (entries refer to the ones before them, which the dead worker read), then.
    const lost = fast.stats().dropped;
    expect(lost).toBeGreaterThan(0);

    await sendRequests(base, 300);
    await fast.flush();
    const stats = fast.stats();
    // The spans of the requests before the death are dropped and counted (their last one may
    // have ended as the worker died), every one after it exported.
    expect(stats.dropped).toBeGreaterThanOrEqual(lost);
    expect(collector.spans()).toBeGreaterThanOrEqual(600);
    expect(collector.spans()).toBe(stats.exported);
    expect(collector.spans() + stats.dropped).toBe(2 * 600);
    expect(await metricValue(runtime.sinks.metrics, "sluice_trace_export_worker_restarts_total", {})).toBe(1);
    expect(await metricValue(runtime.sinks.metrics, "sluice_trace_spans_dropped_total", {})).toBe(stats.dropped);
  } finally {
    await runtime.close();
    close();
    collector.close();
  }
}, 60_000);

test("an idle export worker sleeps, and the next request wakes it: its spans are exported without a flush", async () => {
  const collector = await spanCounter();
  const { runtime, base, close } = await startTracedProxy(collector.port, { OTEL_BSP_SCHEDULE_DELAY: "20" });
  try {
    await sendRequests(base, 10);
    await vi.waitFor(() => expect(collector.spans()).toBe(20), { timeout: 10_000, interval: 20 });
    // Idle for longer than the worker's nap (100 ms) and the empty turn after it: it is asleep now.
    await new Promise((r) => setTimeout(r, 500));
    await sendRequests(base, 10);
    await vi.waitFor(() => expect(collector.spans()).toBe(40), { timeout: 10_000, interval: 20 });
  } finally {
    await runtime.close();
    close();
    collector.close();
  }
}, 60_000);
