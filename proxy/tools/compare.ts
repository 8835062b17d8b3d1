// `sluice compare`: drives a bounded workload through sluice (splice), sluice (buffered
// engine) and straight to the upstream, collects sluice's spans in-process over OTLP,
// and reports latency, throughput, proxy CPU and bytes spliced vs copied per body size,
// as a table and a self-contained HTML chart. The spans can be forwarded to a collector.
// Fair by construction: every path and size is warmed up first, the paths are interleaved
// in rounds (in a rotating order), and what is reported is the rounds' spread, not one run.

import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { Pool } from "undici";
import { formatHostPort, type HostPort } from "../base/address.js";
import { selfCommand } from "../base/embedded.js";
import { VERSION } from "../base/version.js";
import { startDemoUpstream } from "./demo-upstream.js";
import { freePort, waitForPort } from "./ports.js";

export interface CompareOptions {
  sizes: number[];
  concurrency: number;
  /** Measured time per path and size, over all rounds. */
  durationMs: number;
  /** At most this many measured requests per path and size, over all rounds. */
  maxRequests: number;
  /** Rounds: each path and size is measured once per round, in a rotating order. */
  rounds: number;
  /** Unmeasured load per path and size before the first round. */
  warmupMs: number;
  /** The splice threshold the splice path runs with. */
  spliceThreshold: number;
  upstream: HostPort | null;
  out: string;
  /** OTLP/HTTP base URL to forward the collected spans to. */
  forward: string | null;
  /** Both sluice listeners terminate TLS with this certificate (the direct path stays plain). */
  tls?: { cert: string; key: string } | null;
}

type PathName = "direct" | "splice" | "buffered";

interface SpanRow {
  engine: string;
  size: number;
  /** Wall-clock start, ms. */
  start: number;
  ms: number;
  spliced: number;
  copied: number;
}

interface Cell {
  path: PathName;
  size: number;
  requests: number;
  seconds: number;
  bytes: number;
  cpuSeconds: number;
  latencies: number[];
  spliced: number;
  copied: number;
  /** Throughput of each round, MiB/s. */
  roundMiBs: number[];
  /** When the measured load ran (wall clock, ms): spans outside are warm-up. */
  windows: Array<[number, number]>;
}

function cpuOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
};

/** An OTLP/HTTP JSON receiver: keeps what sluice's spans say about each request. */
async function startReceiver(forward: string | null) {
  const spans: SpanRow[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
      if (forward) {
        void fetch(`${forward.replace(/\/$/, "")}/v1/traces`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body,
        }).catch(() => undefined);
      }
      type Attr = { key: string; value: { stringValue?: string; intValue?: string | number } };
      const msg = JSON.parse(body.toString()) as {
        resourceSpans?: Array<{
          scopeSpans?: Array<{
            spans?: Array<{
              kind: number;
              spanId: string;
              parentSpanId?: string;
              startTimeUnixNano: string;
              endTimeUnixNano: string;
              attributes?: Attr[];
            }>;
          }>;
        }>;
      };
      const all = (msg.resourceSpans ?? []).flatMap((r) => (r.scopeSpans ?? []).flatMap((s) => s.spans ?? []));
      const attr = (a: Attr[] | undefined, k: string) => {
        const v = a?.find((x) => x.key === k)?.value;
        return v?.stringValue ?? (v?.intValue !== undefined ? Number(v.intValue) : undefined);
      };
      // A server span (kind 2) gives the latency; its client span (kind 3) the engine and bytes.
      for (const s of all.filter((x) => x.kind === 2)) {
        const c = all.find((x) => x.kind === 3 && x.parentSpanId === s.spanId);
        const size = Number(/\/bytes\/(\d+)/.exec(String(attr(s.attributes, "url.path")))?.[1]);
        if (!c || !Number.isFinite(size)) continue;
        spans.push({
          engine: String(attr(c.attributes, "sluice.engine")),
          size,
          start: Number(BigInt(s.startTimeUnixNano) / 1_000_000n),
          ms: Number(BigInt(s.endTimeUnixNano) - BigInt(s.startTimeUnixNano)) / 1e6,
          spliced: Number(attr(c.attributes, "sluice.response.bytes_spliced") ?? 0),
          copied: Number(attr(c.attributes, "sluice.response.bytes_copied") ?? 0),
        });
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return { spans, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => server.close() };
}

async function startSluice(
  engine: "splice" | "buffered",
  upstream: HostPort,
  otlp: string,
  spliceThreshold: number,
  tls: CompareOptions["tls"],
): Promise<{ port: number; child: ChildProcess }> {
  const [command, ...self] = selfCommand(() => fileURLToPath(new URL("../cli.js", import.meta.url)));
  const port = await freePort();
  const child = spawn(
    command,
    [
      ...self,
      "--listen",
      `127.0.0.1:${port}`,
      "--upstream",
      formatHostPort(upstream),
      "--engine",
      engine,
      "--splice-threshold",
      String(spliceThreshold),
      ...(tls ? ["--tls-cert", tls.cert, "--tls-key", tls.key] : []),
    ],
    {
      stdio: "ignore",
      env: {
        ...process.env,
        SLUICE_LOG_LEVEL: "warn",
        OTEL_EXPORTER_OTLP_ENDPOINT: otlp,
        OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
        OTEL_TRACES_SAMPLER: "always_on",
        OTEL_SERVICE_NAME: `sluice-${engine}`,
      },
    },
  );
  await waitForPort(port);
  return { port, child };
}

/** Closed-loop load: `concurrency` workers, bounded by time and by count. */
async function drive(
  port: number,
  size: number,
  concurrency: number,
  durationMs: number,
  maxRequests: number,
  secure = false,
): Promise<{ requests: number; bytes: number; seconds: number; latencies: number[] }> {
  // Over TLS the client measures the listener's cost, not whom to trust: the certificate is not verified.
  const pool = secure
    ? new Pool(`https://127.0.0.1:${port}`, { connections: concurrency, connect: { rejectUnauthorized: false } })
    : new Pool(`http://127.0.0.1:${port}`, { connections: concurrency });
  const latencies: number[] = [];
  let bytes = 0;
  let issued = 0;
  const t0 = performance.now();
  const deadline = t0 + durationMs;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline && issued < maxRequests) {
        issued++;
        const s = performance.now();
        const res = await pool.request({ path: `/bytes/${size}`, method: "GET" });
        for await (const chunk of res.body) bytes += (chunk as Buffer).length;
        latencies.push(performance.now() - s);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  await pool.close();
  return { requests: latencies.length, bytes, seconds, latencies };
}

const PATHS: PathName[] = ["direct", "splice", "buffered"];
const COLORS: Record<PathName, string> = { direct: "#888", splice: "#1b7f3b", buffered: "#c0392b" };

/** One panel: a line per path (p99 dashed when given) against the body sizes. */
function panel(title: string, sizes: number[], series: Array<{ path: PathName; values: number[]; dashed?: boolean }>): string {
  const W = 420;
  const H = 260;
  const pad = 46;
  const max = Math.max(...series.flatMap((s) => s.values).filter(Number.isFinite), 1e-9);
  const x = (i: number) => pad + (i * (W - 2 * pad)) / Math.max(1, sizes.length - 1);
  const y = (v: number) => H - pad - (v / max) * (H - 2 * pad);
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`;
  svg += `<text x="${W / 2}" y="16" text-anchor="middle">${title}</text>`;
  svg += `<line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="#000"/><line x1="${pad}" y1="${pad}" x2="${pad}" y2="${H - pad}" stroke="#000"/>`;
  sizes.forEach((s, i) => {
    svg += `<text x="${x(i)}" y="${H - pad + 14}" text-anchor="middle">${human(s)}</text>`;
  });
  svg += `<text x="${pad - 4}" y="${pad}" text-anchor="end">${max.toPrecision(3)}</text><text x="${pad - 4}" y="${H - pad}" text-anchor="end">0</text>`;
  series.forEach((s, k) => {
    const pts = s.values
      .map((v, i) => (Number.isFinite(v) ? `${x(i)},${y(v)}` : ""))
      .filter(Boolean)
      .join(" ");
    svg += `<polyline fill="none" stroke="${COLORS[s.path]}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5,4"' : ""} points="${pts}"/>`;
    if (!s.dashed) svg += `<text x="${W - pad + 2}" y="${pad + 13 * k}" fill="${COLORS[s.path]}">${s.path}</text>`;
  });
  return `${svg}</svg>`;
}

/** Latency (p50 solid, p99 dashed), throughput and proxy CPU per GiB, per path and size. */
function charts(cells: Cell[], sizes: number[]): string {
  const cell = (p: PathName, s: number) => cells.find((c) => c.path === p && c.size === s);
  const of = (p: PathName, f: (c: Cell) => number) => sizes.map((s) => (cell(p, s) ? f(cell(p, s) as Cell) : Number.NaN));
  const latency = PATHS.flatMap((path) => [
    { path, values: of(path, (c) => pct(c.latencies, 50)) },
    { path, values: of(path, (c) => pct(c.latencies, 99)), dashed: true },
  ]);
  const throughput = PATHS.map((path) => ({ path, values: of(path, (c) => c.bytes / (1 << 20) / c.seconds) }));
  const cpu = (["splice", "buffered"] as const).map((path) => ({
    path,
    values: of(path, (c) => c.cpuSeconds / (c.bytes / (1 << 30))),
  }));
  return [
    panel("latency, ms (p50 solid, p99 dashed)", sizes, latency),
    panel("throughput, MiB/s", sizes, throughput),
    panel("proxy CPU, s per GiB", sizes, cpu),
  ].join("");
}

function human(n: number): string {
  return n >= 1 << 20 ? `${n / (1 << 20)} MiB` : n >= 1024 ? `${n / 1024} KiB` : `${n} B`;
}

/** The run's facts, printed above the table and the charts. */
function facts(o: CompareOptions): string {
  const cpus = os.cpus();
  return [
    `sluice ${VERSION}, Node ${process.version}, ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`,
    `machine: ${cpus.length} × ${cpus[0]?.model ?? "?"}, Linux ${os.release()}`,
    `splice threshold ${human(o.spliceThreshold)}, concurrency ${o.concurrency}, ${o.rounds} rounds of ${Math.round(
      o.durationMs / o.rounds,
    )} ms per path and size (paths interleaved), ${o.warmupMs} ms of warm-up each first`,
    ...(o.tls
      ? [`client → sluice over TLS (${o.tls.cert}); direct is plain. Bodies on a TLS leg are copied, never spliced.`]
      : []),
  ].join("\n");
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runCompare(o: CompareOptions): Promise<string> {
  const receiver = await startReceiver(o.forward);
  const demo = o.upstream ? null : await startDemoUpstream({ host: "127.0.0.1", port: 0 });
  const upstream = o.upstream ?? (demo?.address as HostPort);
  const splice = await startSluice("splice", upstream, receiver.url, o.spliceThreshold, o.tls);
  const buffered = await startSluice("buffered", upstream, receiver.url, o.spliceThreshold, o.tls);
  const secure = (proxied: boolean) => proxied && Boolean(o.tls);
  const cells: Cell[] = [];
  for (const size of o.sizes)
    for (const path of PATHS)
      cells.push({
        path,
        size,
        requests: 0,
        seconds: 0,
        bytes: 0,
        cpuSeconds: 0,
        latencies: [],
        spliced: 0,
        copied: 0,
        roundMiBs: [],
        windows: [],
      });
  const perRound = Math.max(100, Math.round(o.durationMs / o.rounds));
  const perRoundRequests = Math.max(1, Math.ceil(o.maxRequests / o.rounds));
  try {
    for (let round = 0; round < o.rounds; round++) {
      for (const size of o.sizes) {
        // A rotating order: no path always goes first (cold) or last.
        const order = PATHS.map((_, k) => PATHS[(k + round) % PATHS.length] as PathName);
        for (const path of order) {
          const c = cells.find((x) => x.path === path && x.size === size) as Cell;
          const proxy = path === "splice" ? splice : path === "buffered" ? buffered : null;
          const port = proxy ? proxy.port : upstream.port;
          if (round === 0 && o.warmupMs > 0) {
            await drive(port, size, o.concurrency, o.warmupMs, Number.POSITIVE_INFINITY, secure(proxy !== null));
            // Warm-up spans start before the measured window, with a margin for the clocks.
            await sleep(50);
          }
          const cpu0 = proxy ? cpuOf(proxy.child.pid as number) : 0;
          const from = Date.now();
          const r = await drive(port, size, o.concurrency, perRound, perRoundRequests, secure(proxy !== null));
          c.windows.push([from, Date.now()]);
          c.cpuSeconds += proxy ? cpuOf(proxy.child.pid as number) - cpu0 : 0;
          c.requests += r.requests;
          c.seconds += r.seconds;
          c.bytes += r.bytes;
          c.latencies.push(...r.latencies);
          c.roundMiBs.push(r.bytes / (1 << 20) / r.seconds);
        }
      }
    }
  } finally {
    // SIGTERM lets each sluice flush its last spans before exiting.
    for (const p of [splice, buffered]) p.child.kill("SIGTERM");
    await Promise.all([splice, buffered].map((p) => new Promise((r) => p.child.once("exit", r))));
    await demo?.close();
  }
  await sleep(200);
  receiver.close();
  // Proxied rows take latency and bytes from the spans of the measured windows, so a trace backend shows the same.
  const MARGIN_MS = 20;
  for (const c of cells) {
    if (c.path === "direct") continue;
    const rows = receiver.spans.filter(
      (s) =>
        s.size === c.size &&
        (c.path === "buffered" ? s.engine === "buffered" : s.engine !== "buffered") &&
        c.windows.some(([a, b]) => s.start >= a - MARGIN_MS && s.start <= b + MARGIN_MS),
    );
    if (rows.length) c.latencies = rows.map((s) => s.ms);
    c.spliced = rows.reduce((a, s) => a + s.spliced, 0);
    c.copied = rows.reduce((a, s) => a + s.copied, 0);
  }
  const GiB = 1 << 30;
  let table = `${facts(o)}\n`;
  for (const size of o.sizes) {
    table += `\nresponse body ${human(size)}${
      o.tls
        ? " (TLS listener: the splice path copies these bodies)"
        : size < o.spliceThreshold
          ? ` (below the splice threshold: the splice path copies these bodies)`
          : ""
    }\n`;
    table +=
      "path      requests  spans   p50 ms   p90 ms   p99 ms   MiB/s   proxy CPU s/GiB  spliced MiB  copied MiB  MiB/s by round\n";
    for (const c of cells.filter((x) => x.size === size)) {
      const spans = c.path === "direct" ? "-" : String(c.latencies.length);
      const cpu = c.path === "direct" ? "-" : (c.cpuSeconds / (c.bytes / GiB)).toFixed(2);
      const spread = `${Math.min(...c.roundMiBs).toFixed(1)}–${Math.max(...c.roundMiBs).toFixed(1)}`;
      table += `${c.path.padEnd(9)} ${String(c.requests).padStart(8)} ${spans.padStart(6)} ${pct(c.latencies, 50).toFixed(2).padStart(8)} ${pct(c.latencies, 90).toFixed(2).padStart(8)} ${pct(c.latencies, 99).toFixed(2).padStart(8)} ${(c.bytes / (1 << 20) / c.seconds).toFixed(1).padStart(7)} ${cpu.padStart(16)} ${(c.spliced / (1 << 20)).toFixed(2).padStart(12)} ${(c.copied / (1 << 20)).toFixed(2).padStart(11)}  ${spread}\n`;
    }
  }
  const html = `<!doctype html><meta charset="utf-8"><title>sluice compare</title><body style="font-family:sans-serif">
<h1>sluice: splice vs buffered vs direct</h1><pre>${facts(o)}</pre><div>${charts(cells, o.sizes)}</div><pre>${table}</pre></body>`;
  writeFileSync(o.out, html);
  return table;
}
