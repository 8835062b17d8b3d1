// The fast recorder (fast-tracing.ts, the default; with its export worker and encoding on the
// main thread) and the SDK recorder, side by side on the same traffic: what each sends is
// decoded with the official OTLP protobuf definitions and compared field by field: trace and
// parent ids, names, kinds, flags, attributes, events, status, resource and scope. Only what differs by nature may differ: span ids and times, the client's
// port, and the resource's telemetry.sdk.* (which say what recorded the spans).

import { writeFileSync } from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import net from "node:net";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, expect, test, vi } from "vitest";
import { Runtime } from "../proxy/control/runtime.js";
import { listen } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

const require = createRequire(import.meta.url);
const otlp = require("otlp-transformer-decode/build/src/generated/root.js");
const ExportRequest = otlp.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;

type Value = string | number | boolean;
interface Span {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  traceState: string;
  name: string;
  kind: number;
  flags: number;
  start: bigint;
  end: bigint;
  attributes: Record<string, Value>;
  events: Array<{ name: string; time: bigint; attributes: Record<string, Value> }>;
  status: { code: number; message: string };
}
interface Received {
  spans: Span[];
  resource: Record<string, Value>;
  scope: { name: string; version: string };
  batches: number;
}

const hex = (b: Uint8Array | undefined) => Buffer.from(b ?? []).toString("hex");
const nanos = (v: { toString(): string } | number | undefined) => BigInt(String(v ?? 0));
function attrs(kvs: Array<{ key: string; value?: Record<string, unknown> }> | undefined): Record<string, Value> {
  const out: Record<string, Value> = {};
  for (const kv of kvs ?? []) {
    const v = kv.value ?? {};
    out[kv.key] =
      (v.stringValue as string | undefined) ??
      (v.intValue !== undefined && v.intValue !== null ? Number(String(v.intValue)) : undefined) ??
      (v.boolValue as boolean | undefined) ??
      (v.doubleValue as number);
  }
  return out;
}

/**
 * Span.flags (field 16, fixed32) by span id: the decoder at hand predates the field, so these
 * are read from the bytes with the wire format's own rules (varint keys, length prefixes).
 */
function rawFlags(buf: Buffer): Map<string, number> {
  const out = new Map<string, number>();
  const fields = (b: Buffer, each: (field: number, wire: number, value: Buffer | number) => void) => {
    let p = 0;
    const varint = () => {
      let v = 0;
      let mul = 1;
      for (;;) {
        const byte = b[p++] as number;
        v += (byte & 0x7f) * mul;
        if (byte < 0x80) return v;
        mul *= 128;
      }
    };
    while (p < b.length) {
      const key = varint();
      const [field, wire] = [Math.floor(key / 8), key % 8];
      if (wire === 0) each(field, wire, varint());
      else if (wire === 1) {
        each(field, wire, b.subarray(p, p + 8));
        p += 8;
      } else if (wire === 5) {
        each(field, wire, b.readUInt32LE(p));
        p += 4;
      } else {
        const len = varint();
        each(field, wire, b.subarray(p, p + len));
        p += len;
      }
    }
  };
  fields(buf, (f, _w, rs) => {
    if (f !== 1) return;
    fields(rs as Buffer, (f2, _w2, ss) => {
      if (f2 !== 2) return;
      fields(ss as Buffer, (f3, _w3, span) => {
        if (f3 !== 2) return;
        let id = "";
        let flags = -1;
        fields(span as Buffer, (f4, _w4, v) => {
          if (f4 === 2) id = (v as Buffer).toString("hex");
          if (f4 === 16) flags = v as number;
        });
        out.set(id, flags);
      });
    });
  });
  return out;
}

async function collector(): Promise<{ port: number; got: Received; close(): void }> {
  const got: Received = { spans: [], resource: {}, scope: { name: "", version: "" }, batches: 0 };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      expect(req.headers["content-type"]).toBe("application/x-protobuf");
      const bytes = Buffer.concat(chunks);
      const msg = ExportRequest.decode(bytes);
      const flags = rawFlags(bytes);
      got.batches++;
      for (const rs of msg.resourceSpans ?? []) {
        got.resource = attrs(rs.resource?.attributes);
        for (const ss of rs.scopeSpans ?? []) {
          got.scope = { name: ss.scope?.name ?? "", version: ss.scope?.version ?? "" };
          for (const s of ss.spans ?? [])
            got.spans.push({
              traceId: hex(s.traceId),
              spanId: hex(s.spanId),
              parentSpanId: hex(s.parentSpanId),
              traceState: s.traceState ?? "",
              name: s.name,
              kind: s.kind,
              flags: flags.get(hex(s.spanId)) ?? -1,
              start: nanos(s.startTimeUnixNano),
              end: nanos(s.endTimeUnixNano),
              attributes: attrs(s.attributes),
              events: (s.events ?? []).map((e: { name: string; timeUnixNano: unknown; attributes: [] }) => ({
                name: e.name,
                time: nanos(e.timeUnixNano as number),
                attributes: attrs(e.attributes),
              })),
              status: { code: s.status?.code ?? 0, message: s.status?.message ?? "" },
            });
        }
      }
      res.writeHead(200, { "content-type": "application/x-protobuf" });
      res.end();
    });
  });
  const port = await listen(server as unknown as net.Server);
  return { port, got, close: () => server.close() };
}

const dir = tempDir("otlp");

/** A runtime started from `yaml`, written to `name`.yaml; and the base URL of its listener "main". */
async function runtimeFrom(name: string, yaml: string): Promise<{ runtime: Runtime; base: string }> {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, yaml);
  const runtime = new Runtime({ file });
  await runtime.start();
  return { runtime, base: `http://${runtime.addresses().get("main")}` };
}
let upstream: http.Server;
const upstreamSaw: string[] = [];
/** The fast recorder with its export worker (the default), the fast recorder encoding on the main thread, the SDK. */
type Recorder = "fast" | "fastMain" | "sdk";
const runs: Record<Recorder, { runtime: Runtime; base: string; got: Received; close(): void }> = {} as never;

beforeAll(async () => {
  const servedOn = new WeakMap<object, number>();
  upstream = http.createServer((req, res) => {
    upstreamSaw.push(String(req.headers.traceparent ?? ""));
    if (req.url === "/reset") return req.socket.destroy();
    // The first try of each request is refused (its trace context seen once), the retry served.
    if (req.url === "/retry" && upstreamSaw.filter((tp) => tp === req.headers.traceparent).length === 1) {
      res.statusCode = 503;
      return res.end();
    }
    if (req.url === "/stale") {
      const n = servedOn.get(req.socket) ?? 0;
      servedOn.set(req.socket, n + 1);
      if (n > 0) return req.socket.end();
    }
    req.resume();
    req.on("end", () => res.end(req.url === "/big" ? Buffer.alloc(300_000, 1) : "ok"));
  });
  const up = await listen(upstream as unknown as net.Server);
  for (const recorder of ["fast", "fastMain", "sdk"] as const) {
    const c = await collector();
    const settings =
      recorder === "sdk" ? "recorder: sdk" : recorder === "fast" ? "recorder: fast" : "recorder: fast, export_thread: main";
    const { runtime, base } = await runtimeFrom(
      recorder,
      `telemetry:
  tracing: { endpoint: "http://127.0.0.1:${c.port}", service_name: compare-me, ${settings} }
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - { name: local, match: { path: { exact: /local } }, respond: { status: 200, body: "here" } }
      - { name: retried, match: { path: { exact: /retry } }, forward: { cluster: app, retry: { attempts: 1, on: [503] } } }
      - { name: app, match: { path: { prefix: / } }, forward: { cluster: app } }
clusters:
  app: { endpoints: ["127.0.0.1:${up}"] }
`,
    );
    runs[recorder] = { runtime, base, got: c.got, close: c.close };
  }
});

afterAll(async () => {
  for (const r of Object.values(runs)) {
    await r.runtime.close();
    r.close();
  }
  upstream.close();
});

/** The same requests, each with its own trace id (the i-th of each run share the parent). */
const PARENT_TRACE = (i: number) => `4bf92f3577b34da6a3ce929d0e0e47${String(i).padStart(2, "0")}`;
const PARENT_SPAN = "00f067aa0ba902b7";
const TRAFFIC: Array<{ path: string; method?: string; body?: string; parent?: "sampled" | "unsampled" | "none" }> = [
  { path: "/small?q=1", parent: "sampled" },
  { path: "/big" },
  { path: "/post", method: "POST", body: "x".repeat(1000), parent: "sampled" },
  { path: "/reset", parent: "sampled" },
  { path: "/local", parent: "sampled" },
  { path: "/stale" },
  { path: "/stale" },
  // Answered 503 once, then retried: two tries of a request that is not sampled.
  { path: "/retry", parent: "unsampled" },
  { path: "/unsampled", parent: "unsampled" },
];

async function drive(base: string): Promise<void> {
  for (const [i, r] of TRAFFIC.entries()) {
    const headers: Record<string, string> = { "user-agent": "otlp-test/1.0" };
    if (r.parent === "sampled" || r.parent === "unsampled") {
      headers.traceparent = `00-${PARENT_TRACE(i)}-${PARENT_SPAN}-${r.parent === "sampled" ? "01" : "00"}`;
      headers.tracestate = "vendor=abc,other=1";
    }
    const res = await request(`${base}${r.path}`, { method: (r.method ?? "GET") as "GET", headers, body: r.body });
    await res.body.arrayBuffer();
  }
}

/** A span without what differs by nature: ids (kept as relations), times, the client's port. */
function shape(s: Span, byId: Map<string, Span>) {
  const { "client.port": _p, "server.port": serverPort, ...rest } = s.attributes;
  const parent = byId.get(s.parentSpanId);
  return {
    name: s.name,
    kind: s.kind,
    flags: s.flags,
    traceState: s.traceState,
    parent: parent ? `${parent.kind}:${parent.name}` : s.parentSpanId,
    attributes: { ...rest, ...(s.kind === 3 ? {} : { "server.port": typeof serverPort }) } as Record<string, Value>,
    events: s.events.map((e) => ({ name: e.name, attributes: e.attributes })),
    status: s.status,
    duration: s.end >= s.start,
    eventsInside: s.events.every((e) => e.time >= s.start && e.time <= s.end),
  };
}

test("the fast recorder sends what the SDK recorder sends, field by field, for the same traffic", async () => {
  for (const r of Object.values(runs)) await drive(r.base);
  for (const r of Object.values(runs)) await r.runtime.sinks.tracing?.flush();
  // Per run: 6 sampled requests with a server span, 5 of them with client spans (the local answer
  // has none; the stale connection's second request is one try with two connects).
  await vi.waitFor(() => {
    for (const r of Object.values(runs)) expect(r.got.spans.length).toBe(runs.sdk.got.spans.length);
    expect(runs.sdk.got.spans.length).toBeGreaterThanOrEqual(12);
  });
  const summarise = (got: Received) => {
    const byId = new Map(got.spans.map((s) => [s.spanId, s]));
    const servers = got.spans.filter((s) => s.kind === 2);
    // Requests in traffic order: by start time.
    servers.sort((a, b) => (a.start < b.start ? -1 : 1));
    return servers.map((s) => ({
      server: shape(s, byId),
      // Continued traces keep the caller's trace id and parent; new ones have their own.
      continued: s.traceId.startsWith("4bf92f3577b34da6a3ce929d0e0e47") ? s.traceId : "new",
      parentIsCaller: s.parentSpanId === PARENT_SPAN,
      clients: got.spans
        .filter((c) => c.parentSpanId === s.spanId)
        .map((c) => ({ ...shape(c, byId), sameTrace: c.traceId === s.traceId })),
    }));
  };
  const fast = summarise(runs.fast.got);
  const sdk = summarise(runs.sdk.got);
  expect(fast).toEqual(sdk);
  expect(summarise(runs.fastMain.got)).toEqual(sdk);
  // Not empty comparisons: the cases are there.
  expect(sdk.map((r) => r.server.attributes["url.path"])).toEqual([
    "/small",
    "/big",
    "/post",
    "/reset",
    "/local",
    "/stale",
    "/stale",
  ]);
  expect(sdk[3]?.server.status.code).toBe(2);
  expect(sdk[3]?.clients[0]?.events.map((e) => e.name)).toContain("exception");
  expect(sdk[6]?.clients[0]?.events.map((e) => e.name)).toContain("upstream closed the reused connection; sending again");
  expect(sdk[0]?.server.flags).toBe(0x301);
  expect(sdk[0]?.clients[0]?.flags).toBe(0x101);
  expect(sdk[0]?.server.traceState).toBe("vendor=abc,other=1");
  // The resource and scope: the same but for what says which recorder made the spans.
  const { "telemetry.sdk.name": fastSdk, "telemetry.sdk.version": _fv, ...fastResource } = runs.fast.got.resource;
  const { "telemetry.sdk.name": sdkSdk, "telemetry.sdk.version": _sv, ...sdkResource } = runs.sdk.got.resource;
  expect(fastResource).toEqual(sdkResource);
  expect([fastSdk, sdkSdk]).toEqual(["sluice", "opentelemetry"]);
  expect(runs.fast.got.scope).toEqual(runs.sdk.got.scope);
  expect(runs.fastMain.got.resource).toEqual(runs.fast.got.resource);
  expect(runs.fastMain.got.scope).toEqual(runs.fast.got.scope);
});

test("W3C context goes upstream the same way: the try's span as parent, the caller's flags, tracestate kept", async () => {
  // upstreamSaw holds the runs' traffic in order: fast, fastMain, then sdk (the first test drove them so).
  const n = upstreamSaw.length / 3;
  const fast = upstreamSaw.slice(0, n);
  const fastMain = upstreamSaw.slice(n, 2 * n);
  const sdk = upstreamSaw.slice(2 * n);
  const form = (tp: string) => tp.replace(/^00-([0-9a-f]{32})-[0-9a-f]{16}-(0[01])$/, "00-$1-<span>-$2");
  const newTrace = (tp: string) =>
    tp.includes("4bf92f3577b34da6a3ce929d0e0e47") ? tp : tp.replace(/00-[0-9a-f]{32}-/, "00-<new>-");
  expect(fast.map(form).map(newTrace)).toEqual(sdk.map(form).map(newTrace));
  expect(fastMain.map(form).map(newTrace)).toEqual(sdk.map(form).map(newTrace));
  // The unsampled caller's request went upstream unsampled, with sluice's span id in between.
  expect(fast.at(-1)).toMatch(new RegExp(`^00-${PARENT_TRACE(TRAFFIC.length - 1)}-(?!${PARENT_SPAN})[0-9a-f]{16}-00$`));
  // An unsampled request's tries all pass on one context, as the SDK's do: nothing of it is recorded.
  for (const run of [fast, fastMain, sdk]) {
    const tries = run.filter((tp) => tp.includes(PARENT_TRACE(TRAFFIC.length - 2)));
    expect(tries).toHaveLength(2);
    expect(tries[0]).toMatch(new RegExp(`^00-${PARENT_TRACE(TRAFFIC.length - 2)}-(?!${PARENT_SPAN})[0-9a-f]{16}-00$`));
    expect(tries[1]).toBe(tries[0]);
  }
});

test("span ids are lower-case hex of their length, never all zeros, their words their bytes, and do not repeat across the random pool's refills", async () => {
  const { newSpanId } = await import("../proxy/observe/trace-context.js");
  const spans = new Set<string>();
  const hex = (w: number) => (w >>> 0).toString(16).padStart(8, "0");
  // Far more than one 4 KiB pool: refills in between.
  for (let i = 0; i < 5000; i++) {
    const words: number[] = [7];
    const s = newSpanId(words);
    expect(s).toMatch(/^[0-9a-f]{16}$/);
    expect(s).not.toBe("0".repeat(16));
    // Pushed after what the list held.
    expect(words).toHaveLength(3);
    expect(words.slice(1).map(hex).join("")).toBe(s);
    spans.add(s);
  }
  expect(spans.size).toBe(5000);
});

test("new root traces: their traceparent, ids, words and sampling agree with each other and with the SDK, across batches", async () => {
  const { TraceIdRatioBasedSampler, SamplingDecision } = await import("@opentelemetry/sdk-trace-base");
  const { ROOT_CONTEXT } = await import("@opentelemetry/api");
  const { nextRoot, rootTraceparent, rootTraceId, rootSpanId, rootWords, rootXor, idXor, ratioSampler, parseTraceparent } =
    await import("../proxy/observe/trace-context.js");
  const sdk = new TraceIdRatioBasedSampler(0.3);
  const ours = ratioSampler(0.3);
  const traces = new Set<string>();
  const spans = new Set<string>();
  const hex = (w: number) => (w >>> 0).toString(16).padStart(8, "0");
  // Many batches of 128: each made afresh.
  for (let i = 0; i < 3000; i++) {
    const r = nextRoot();
    const tp = rootTraceparent(r);
    const trace = rootTraceId(r);
    const span = rootSpanId(r);
    const words = rootWords(r);
    expect(tp).toBe(`00-${trace}-${span}-00`);
    expect(trace).toMatch(/^[0-9a-f]{32}$/);
    expect(span).toMatch(/^[0-9a-f]{16}$/);
    expect(trace).not.toBe("0".repeat(32));
    expect(span).not.toBe("0".repeat(16));
    // The words are the ids' bytes, as the span ring writes them.
    expect(words.map(hex).join("")).toBe(trace + span);
    expect(rootXor(r)).toBe(idXor(words));
    // A parser reads back what the proxy sends, unsampled.
    expect(parseTraceparent(tp)).toMatchObject({ traceId: trace, spanId: span, sampled: false });
    expect(ours(rootXor(r))).toBe(sdk.shouldSample(ROOT_CONTEXT, trace).decision === SamplingDecision.RECORD_AND_SAMPLED);
    traces.add(trace);
    spans.add(span);
  }
  expect(traces.size).toBe(3000);
  expect(spans.size).toBe(3000);
});

test("the fast recorder's sampler and traceparent parser decide as the SDK's do", async () => {
  const { TraceIdRatioBasedSampler, SamplingDecision } = await import("@opentelemetry/sdk-trace-base");
  const { W3CTraceContextPropagator } = await import("@opentelemetry/core");
  const { ROOT_CONTEXT, trace } = await import("@opentelemetry/api");
  const { ratioSampler, parseTraceparent, nextRoot, rootTraceId, rootWords, idXor } = await import(
    "../proxy/observe/trace-context.js"
  );
  for (const ratio of [0, 0.1, 0.25, 0.5, 1]) {
    const ours = ratioSampler(ratio);
    const sdk = new TraceIdRatioBasedSampler(ratio);
    let kept = 0;
    for (let i = 0; i < 4000; i++) {
      // The id and its words, as a new trace's start takes them.
      const root = nextRoot();
      const words = rootWords(root).slice(0, 4);
      const id = rootTraceId(root);
      const decision = sdk.shouldSample(ROOT_CONTEXT, id).decision;
      expect(ours(idXor(words)), `${ratio} ${id}`).toBe(decision === SamplingDecision.RECORD_AND_SAMPLED);
      if (ours(idXor(words))) kept++;
    }
    // Ids at the edges of the decision: the words' XOR just at and past the bound, and with its top bit set.
    const bound = Math.floor(ratio * 0xffffffff);
    for (const xor of [0, bound - 1, bound, bound + 1, 0x7fffffff, 0x80000000, 0xffffffff]) {
      if (xor < 0 || xor > 0xffffffff) continue;
      const hex = (n: number) => (n >>> 0).toString(16).padStart(8, "0");
      const id = `${hex(0x12345678)}${hex(0x9abcdef0)}${hex(0x0fedcba9)}${hex((xor ^ 0x12345678 ^ 0x9abcdef0 ^ 0x0fedcba9) >>> 0)}`;
      const words = [0, 8, 16, 24].map((k) => Number.parseInt(id.slice(k, k + 8), 16) | 0);
      const decision = sdk.shouldSample(ROOT_CONTEXT, id).decision;
      expect(ours(idXor(words)), `${ratio} ${id}`).toBe(decision === SamplingDecision.RECORD_AND_SAMPLED);
    }
    // And the ratio holds within a tolerance (4000 draws: a few percent).
    expect(Math.abs(kept / 4000 - ratio)).toBeLessThan(0.04);
  }
  const propagator = new W3CTraceContextPropagator();
  const getter = { keys: (c: Record<string, string>) => Object.keys(c), get: (c: Record<string, string>, k: string) => c[k] };
  const cases = [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    "garbage",
  ];
  const { extractContext } = await import("../proxy/observe/trace-context.js");
  const { listedFields } = await import("../proxy/request/record.js");
  const valid = cases[0] as string;
  const states = [
    "vendor=abc,other=1",
    "Vendor=abc,other=1",
    "a=1,,b=2",
    " a=1 , b=2 ",
    "a=1,b",
    "tenant@system=x,c=3",
    Array.from({ length: 40 }, (_, i) => `k${i}=v${i}`).join(","),
    "a=has space,b=ok",
    "a=,b=2",
  ];
  for (const ts of states) {
    const ctx = trace.getSpanContext(propagator.extract(ROOT_CONTEXT, { traceparent: valid, tracestate: ts }, getter));
    const ours = extractContext(
      listedFields([
        ["traceparent", valid],
        ["tracestate", ts],
      ]),
    );
    expect(ours?.traceState ?? null, ts).toBe(ctx?.traceState?.serialize() || null);
  }
  for (const tp of cases) {
    const ctx = trace.getSpanContext(propagator.extract(ROOT_CONTEXT, { traceparent: tp }, getter));
    const ours = parseTraceparent(tp);
    expect(ours === null ? null : { traceId: ours.traceId, spanId: ours.spanId, sampled: ours.sampled }, tp).toEqual(
      ctx ? { traceId: ctx.traceId, spanId: ctx.spanId, sampled: (ctx.traceFlags & 1) === 1 } : null,
    );
  }
});

test("times are exact: fixed64 nanoseconds as the SDK computes them from a millisecond time", async () => {
  const { ProtoWriter } = await import("../proxy/observe/otlp-protobuf.js");
  const samples = [0, 1, 999.999999, 1_764_600_000_000, 1_796_160_000_123.456, performance.timeOrigin + performance.now()];
  for (let i = 0; i < 2000; i++) samples.push(1.7e12 + Math.random() * 1e11);
  for (const ms of samples) {
    const w = new ProtoWriter(16);
    w.time(7, ms);
    const seconds = Math.trunc(ms / 1000);
    const nanos = Math.round((ms % 1000) * 1e6);
    // Field 7, wire type 1 (fixed64): one key byte, then eight little-endian bytes.
    expect(w.view()[0]).toBe(7 * 8 + 1);
    expect(w.view().readBigUInt64LE(1), String(ms)).toBe(BigInt(seconds) * 1_000_000_000n + BigInt(nanos));
  }
});

test("server.address and server.port come from the Host field, or the listener's address without one", async () => {
  const { ProtoWriter, exportRequest, resourceMessage, scopeMessage } = await import("../proxy/observe/otlp-protobuf.js");
  const { placeBytes, SpanEncoder } = await import("../proxy/observe/span-encoding.js");
  const encoder = new SpanEncoder();
  const cases: Array<[string | null, string, number]> = [
    ["example.com:8080", "example.com", 8080],
    ["[::1]:9000", "[::1]", 9000],
    ["example.com", "example.com", 4430],
    ["[::1]", "[::1]", 4430],
    ["example.com:", "example.com:", 4430],
    ["example.com:80x", "example.com:80x", 4430],
    [null, "10.1.2.3", 4430],
  ];
  for (const [hostField, address, port] of cases) {
    const w = new ProtoWriter(1024);
    encoder.writeServerSpan(
      w,
      placeBytes({
        traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
        spanId: "00f067aa0ba902b7",
        parentId: null,
        remoteParent: false,
        traceState: null,
      }),
      {
        engine: "splice",
        method: "GET",
        path: "/a?b=c",
        version: "1.1",
        host: hostField,
        userAgent: null,
        clientAddress: "127.0.0.1",
        clientPort: 5000,
        localAddress: "10.1.2.3",
        localPort: 4430,
        tls: null,
        route: null,
        status: 200,
        outcome: null,
        start: 1,
        end: 2,
      },
      performance.timeOrigin,
    );
    const msg = ExportRequest.decode(exportRequest(resourceMessage([]), scopeMessage("t"), w.view()));
    const span = msg.resourceSpans[0].scopeSpans[0].spans[0];
    const a = attrs(span.attributes);
    expect([a["server.address"], a["server.port"], a["url.path"]], String(hostField)).toEqual([address, port, "/a"]);
  }
});

test("client.address and client.port are each connection's own, on every request of a keep-alive connection (read once per connection)", async () => {
  const { runtime, base, got } = runs.fast;
  const [host, port] = base.slice("http://".length).split(":") as [string, string];
  /** `n` requests one after another on one new connection; its local port. */
  const onOneConnection = async (tag: string, n: number): Promise<number> => {
    const socket = net.connect(Number(port), host);
    await new Promise((r) => socket.once("connect", r));
    let text = "";
    socket.on("data", (c: Buffer) => {
      text += c.toString("latin1");
    });
    for (let i = 0; i < n; i++) {
      const answered = text.split("\r\n\r\nok").length;
      socket.write(`GET /addr-${tag}-${i} HTTP/1.1\r\nHost: ${host}:${port}\r\n\r\n`);
      await vi.waitFor(() => expect(text.split("\r\n\r\nok").length).toBe(answered + 1));
    }
    const local = socket.localPort as number;
    socket.end();
    return local;
  };
  const first = await onOneConnection("a", 3);
  const second = await onOneConnection("b", 2);
  expect(first).not.toBe(second);
  await runtime.sinks.tracing?.flush();
  const servers = () => got.spans.filter((s) => s.kind === 2 && String(s.attributes["url.path"]).startsWith("/addr-"));
  await vi.waitFor(() => expect(servers()).toHaveLength(5));
  const seen = servers()
    .map((s) => [s.attributes["url.path"], s.attributes["client.address"], s.attributes["client.port"]])
    .sort((a, b) => String(a[0]).localeCompare(String(b[0])));
  expect(seen).toEqual([
    ["/addr-a-0", "127.0.0.1", first],
    ["/addr-a-1", "127.0.0.1", first],
    ["/addr-a-2", "127.0.0.1", first],
    ["/addr-b-0", "127.0.0.1", second],
    ["/addr-b-1", "127.0.0.1", second],
  ]);
});

test("new traces under a ratio sampler: what goes upstream and what is exported follow the SDK's decision for each trace id", async () => {
  const { TraceIdRatioBasedSampler, SamplingDecision } = await import("@opentelemetry/sdk-trace-base");
  const { ROOT_CONTEXT } = await import("@opentelemetry/api");
  const sdk = new TraceIdRatioBasedSampler(0.5);
  const saw: Array<{ path: string; tp: string }> = [];
  const up = http.createServer((req, res) => {
    saw.push({ path: req.url ?? "", tp: String(req.headers.traceparent ?? "") });
    // Each /twice request is refused once, then retried: two tries of one request.
    if (req.url?.startsWith("/twice") && saw.filter((s) => s.path === req.url).length === 1) {
      res.statusCode = 503;
      return res.end();
    }
    res.end("ok");
  });
  const upPort = await listen(up as unknown as net.Server);
  const c = await collector();
  const { runtime, base } = await runtimeFrom(
    "ratio",
    `telemetry:
  tracing: { endpoint: "http://127.0.0.1:${c.port}", sampler_ratio: 0.5 }
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - { name: twice, match: { path: { prefix: /twice } }, forward: { cluster: app, retry: { attempts: 1, on: [503] } } }
      - { name: app, match: { path: { prefix: / } }, forward: { cluster: app } }
clusters:
  app: { endpoints: ["127.0.0.1:${upPort}"] }
`,
  );
  try {
    // More requests than one batch of new roots (128).
    const paths = [...Array.from({ length: 300 }, (_, i) => `/r${i}`), ...Array.from({ length: 20 }, (_, i) => `/twice${i}`)];
    for (const p of paths) await (await request(`${base}${p}`)).body.arrayBuffer();
    await runtime.sinks.tracing?.flush();
    const byPath = new Map<string, string[]>();
    for (const s of saw) byPath.set(s.path, [...(byPath.get(s.path) ?? []), s.tp]);
    const sampledTraces = new Set<string>();
    const unsampledTraces = new Set<string>();
    for (const p of paths) {
      const tps = byPath.get(p) ?? [];
      expect(tps, p).toHaveLength(p.startsWith("/twice") ? 2 : 1);
      const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$/.exec(tps[0] as string);
      expect(m, tps[0]).not.toBeNull();
      const [, trace, , flags] = m as RegExpExecArray;
      const sampled = sdk.shouldSample(ROOT_CONTEXT, trace as string).decision === SamplingDecision.RECORD_AND_SAMPLED;
      expect(flags, `${p} ${trace}`).toBe(sampled ? "01" : "00");
      (sampled ? sampledTraces : unsampledTraces).add(trace as string);
      if (p.startsWith("/twice")) {
        const second = tps[1] as string;
        // A sampled request's tries are spans of their own; an unsampled one's send one context twice.
        if (sampled) expect(second).toMatch(new RegExp(`^00-${trace}-(?!${m?.[2]})[0-9a-f]{16}-01$`));
        else expect(second).toBe(tps[0]);
      }
    }
    // Every request its own trace; about half of each kind (320 draws).
    expect(sampledTraces.size + unsampledTraces.size).toBe(paths.length);
    expect(sampledTraces.size).toBeGreaterThan(100);
    expect(unsampledTraces.size).toBeGreaterThan(100);
    // Exported: a server span for each sampled request (no parent: a new trace), none for the others.
    await vi.waitFor(() => expect(c.got.spans.filter((s) => s.kind === 2)).toHaveLength(sampledTraces.size));
    for (const s of c.got.spans) {
      expect(sampledTraces.has(s.traceId), s.traceId).toBe(true);
      if (s.kind === 2) expect(s.parentSpanId).toBe("");
    }
    // Each sampled request's client span is what went upstream: its span id is the traceparent's.
    const clientIds = new Set(c.got.spans.filter((s) => s.kind === 3).map((s) => `${s.traceId}-${s.spanId}`));
    for (const s of saw) {
      const [, trace, span, flags] = s.tp.split("-");
      if (flags === "01") expect(clientIds.has(`${trace}-${span}`), s.tp).toBe(true);
    }
  } finally {
    await runtime.close();
    c.close();
    up.close();
  }
});
