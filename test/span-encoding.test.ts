// The span encoder keeps groups of bytes that repeat between requests and copies them while
// their inputs stay the same (span-encoding.ts). What it writes must not depend on what it wrote
// before: a long stream of requests that differ from the one before in one field or a few,
// chosen by a seeded generator from small sets (so that kept groups are hit often and missed by
// every single input), is encoded by one encoder and each request again by a fresh one; the
// bytes must be the same, and they must decode as OTLP.
import { createRequire } from "node:module";
import { expect, test } from "vitest";
import { exportRequest, ProtoWriter, resourceMessage, scopeMessage } from "../proxy/observe/otlp-protobuf.js";
import {
  idBytes,
  placeBytes,
  type SpanBatch,
  SpanEncoder,
  type SpanPlace,
  type SpanRequest,
  type SpanTry,
} from "../proxy/observe/span-encoding.js";
import { type Outcome, outcome } from "../proxy/request/outcome.js";
import { prng } from "./helpers/corpus.js";

const require = createRequire(import.meta.url);
const otlp = require("otlp-transformer-decode/build/src/generated/root.js");
const ExportRequest = otlp.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;

const random = prng(13);
const pick = <T>(values: readonly T[]): T => values[Math.floor(random() * values.length)] as T;
/** A copy of a string with its own identity: equal strings of different identity must count as equal. */
const fresh = (s: string) => s.split("").join("");

const OUTCOMES: ReadonlyArray<Outcome | null> = [
  null,
  outcome("completed", "response_body"),
  outcome("completed", "tunnel"),
  outcome("upstream_reset", "response_head", "ECONNRESET"),
  outcome("upstream_refused", "connect", null),
  outcome("local", "response_head"),
];

function randomTls(): SpanRequest["tls"] {
  if (random() < 0.5) return null;
  return {
    protocol: pick(["TLSv1.3", "TLSv1.2", null]),
    cipher: pick(["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256", null]),
    serverName: pick(["example.com", "other.example", null]),
    clientSubject: pick(["CN=alice, O=Acme", null]),
  };
}

function randomTry(index: number): SpanTry {
  const completed = random() < 0.7;
  const count = () => pick([0, 1, 1024, 300_000, 2 ** 40]);
  const connects = Array.from({ length: pick([0, 1, 1, 2]) }, (_, c) => ({ at: 10 + c, reused: random() < 0.5 }));
  return {
    endpoint: { address: { host: fresh(pick(["127.0.0.1", "10.0.0.2", "backend.internal"])), port: pick([80, 8080, 3000]) } },
    index,
    start: 10 + random(),
    end: 20 + random(),
    connects,
    staleAt: connects.length > 1 && random() < 0.5 ? [10.5] : [],
    responseHeadAt: random() < 0.8 ? 15 + random() : null,
    status: pick([200, 200, 404, 502, null]),
    firstBodyByteAt: random() < 0.7 ? 16 + random() : null,
    request: { bytes: 0, spliced: count(), copied: count(), pipeSize: pick([null, 65536]) },
    response: { bytes: 0, spliced: count(), copied: count(), pipeSize: pick([null, 65536, 1048576]) },
    tunnel: random() < 0.2,
    upstreamTls: random() < 0.3,
    outcome: completed ? outcome("completed", "response_body") : pick(OUTCOMES),
  };
}

function randomRequest(i: number): { place: SpanPlace; rec: SpanRequest; tries: SpanTry[]; ids: Uint8Array[] } {
  const remote = random() < 0.3;
  const place: SpanPlace<string> = {
    traceId: (i + 1).toString(16).padStart(32, "a"),
    spanId: (i + 1).toString(16).padStart(16, "b"),
    parentId: remote ? "00f067aa0ba902b7" : null,
    remoteParent: remote,
    traceState: remote ? pick(["vendor=abc", null]) : null,
  };
  const rec: SpanRequest = {
    engine: pick(["splice", "buffered"] as const),
    method: fresh(pick(["GET", "GET", "POST", "PUT"])),
    path: fresh(pick(["/", "/a?b=c", "/x/y", "/é"])),
    version: pick(["1.1", "1.0"]),
    host: pick([null, "example.com:8080", "example.com", "[::1]:9000"]),
    userAgent: pick([null, "curl/8.0", "agent 🚀"]),
    clientAddress: fresh(pick(["127.0.0.1", "::1"])),
    clientPort: pick([40000, 40001, 50000]),
    localAddress: pick(["127.0.0.1", "10.1.2.3"]),
    localPort: pick([8080, 4430]),
    tls: randomTls(),
    route: pick([null, "app", "api"]),
    status: pick([200, 200, 404, 502, 503, null]),
    outcome: pick(OUTCOMES),
    start: 1 + random(),
    end: 30 + random(),
  };
  const tries = Array.from({ length: pick([0, 1, 1, 1, 2]) }, (_, k) => randomTry(k));
  return { place: placeBytes(place), rec, tries, ids: tries.map((_, k) => idBytes(`${i + 1}${k}`.padStart(16, "c"))) };
}

/** A batch that takes every span into one writer. */
function batch(): SpanBatch & { w: ProtoWriter; spans: number } {
  const w = new ProtoWriter(1024);
  return {
    w,
    spans: 0,
    writerForSpan() {
      return w;
    },
    spanWritten() {
      this.spans++;
    },
  };
}

test("an encoder writes each request's spans as a fresh encoder would, whatever it wrote before", () => {
  const warm = new SpanEncoder();
  const stream = batch();
  const origin = 1_796_000_000_000.5;
  for (let i = 0; i < 4000; i++) {
    const { place, rec, tries, ids } = randomRequest(i);
    const from = stream.w.pos;
    warm.writeRequestSpans(stream, place, rec, tries, ids, origin);
    const alone = batch();
    new SpanEncoder().writeRequestSpans(alone, place, rec, tries, ids, origin);
    expect(Buffer.from(stream.w.buf.subarray(from, stream.w.pos)).equals(alone.w.view()), `request ${i}`).toBe(true);
  }
  // All of it decodes, span by span.
  const msg = ExportRequest.decode(exportRequest(resourceMessage([]), scopeMessage("t"), stream.w.view()));
  expect(msg.resourceSpans[0].scopeSpans[0].spans.length).toBe(stream.spans);
  expect(stream.spans).toBeGreaterThan(4000);
});

/** `a`'s fields, each replaced by `b`'s now and then. */
function mix<T extends object>(a: T, b: T, chance: number): T {
  const out = { ...a };
  for (const k of Object.keys(a) as Array<keyof T>) if (random() < chance) out[k] = b[k];
  return out;
}

/**
 * The next request of a stream that mostly repeats (as a proxy's traffic does): new ids, times,
 * counts, ports and paths each time, and now and then one of the fields a span's template is
 * kept for taken from another random request.
 */
function repeatedRequest(prev: ReturnType<typeof randomRequest>, i: number): ReturnType<typeof randomRequest> {
  const other = randomRequest(i);
  const chance = 0.03;
  const kept = mix(prev.place, other.place, chance);
  // A remote parent's id differs from one request to the next too.
  const parentId = kept.parentId && idBytes((i + 1).toString(16).padStart(16, "e"));
  const place = { ...kept, traceId: other.place.traceId, spanId: other.place.spanId, parentId };
  const rec = {
    ...mix(prev.rec, other.rec, chance),
    path: other.rec.path,
    clientPort: other.rec.clientPort,
    status: random() < 0.9 ? prev.rec.status : other.rec.status,
    start: other.rec.start,
    end: other.rec.end,
  };
  const tries =
    random() < chance
      ? other.tries
      : prev.tries.map((t, k) => {
          const o = other.tries[k] ?? randomTry(k);
          const next = mix(t, o, chance);
          const when = (v: number | null) => (v === null ? null : v + random());
          return {
            ...next,
            start: o.start,
            end: o.end,
            connects: next.connects.map((c) => ({ at: c.at + random(), reused: c.reused })),
            staleAt: next.staleAt.map((v) => v + random()),
            responseHeadAt: when(next.responseHeadAt),
            firstBodyByteAt: when(next.firstBodyByteAt),
            request: { ...next.request, spliced: o.request.spliced, copied: o.request.copied },
            response: { ...next.response, spliced: o.response.spliced, copied: o.response.copied },
          };
        });
  return { place, rec, tries, ids: tries.map((_, k) => idBytes(`${i + 1}${k}`.padStart(16, "d"))) };
}

test("spans of requests that mostly repeat (started from kept templates) are written as a fresh encoder would", () => {
  const warm = new SpanEncoder();
  const stream = batch();
  const origin = 1_796_000_000_000.25;
  let r = randomRequest(0);
  for (let i = 1; i < 6000; i++) {
    r = repeatedRequest(r, i);
    const from = stream.w.pos;
    warm.writeRequestSpans(stream, r.place, r.rec, r.tries, r.ids, origin);
    const alone = batch();
    new SpanEncoder().writeRequestSpans(alone, r.place, r.rec, r.tries, r.ids, origin);
    expect(Buffer.from(stream.w.buf.subarray(from, stream.w.pos)).equals(alone.w.view()), `request ${i}`).toBe(true);
  }
  const msg = ExportRequest.decode(exportRequest(resourceMessage([]), scopeMessage("t"), stream.w.view()));
  expect(msg.resourceSpans[0].scopeSpans[0].spans.length).toBe(stream.spans);
});

test("a length begun wide is the same canonical length as one begun narrow, for every size", () => {
  for (const n of [0, 1, 127, 128, 129, 300, 16383, 16384, 20000, 2_100_000]) {
    const narrow = new ProtoWriter(8);
    const wide = new ProtoWriter(8);
    const content = Buffer.alloc(n, 7);
    const a = narrow.begin(2);
    narrow.raw(content);
    narrow.end(a);
    const b = wide.beginWide(2);
    wide.raw(content);
    wide.endWide(b);
    expect(wide.view().equals(narrow.view()), String(n)).toBe(true);
  }
});
