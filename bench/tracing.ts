// What tracing costs: 1 KiB requests at 50 connections through sluice with tracing off,
// with 100% and with 10% sampling (the fast recorder, the default), and with the SDK recorder
// at 100%, exported over OTLP/HTTP (protobuf) to a collector stand-in that accepts and
// discards, and a second untraced process to measure the noise by; rotating runs, side by
// side, and the goals computed from the run.
//   [BENCH_VARIANTS=offAgain,on,inline,tenth,tenthInline,none,sdk] [BENCH_BASELINE=<other build's dist/proxy/cli.js>] npm run bench:tracing
import { type ChildProcess, spawn } from "node:child_process";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  busiestOtherThread,
  cpuRatioAtOnce,
  cpuSeconds,
  median,
  stealSeconds,
  threadCpuSeconds,
  WINDOW_WARMUP,
  wrk,
} from "./measure.js";
import { freePort, startNginx, waitForPort, writeTestFile } from "./peers.js";
import { fastCostPerRequest } from "./tracing-fast.js";
import { sdkCostPerRequest } from "./tracing-sdk.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
/** Seconds of load each process gets before anything is measured: V8 compiles the request path for a minute or so. */
const WARMUP = Number(process.env.BENCH_WARMUP ?? 15);
const cli = fileURLToPath(new URL("../proxy/cli.js", import.meta.url));
/** Another build's dist/proxy/cli.js: its 100% row (export worker) runs beside this build's, for a before/after in one run. */
const BASELINE = process.env.BENCH_BASELINE ?? null;

async function main() {
  const upstream = await startNginx();
  writeTestFile(join(upstream.root, "1k.bin"), 1024);
  let received = 0;
  const sink = http.createServer((req, res) => {
    req.on("data", (c: Buffer) => {
      received += c.length;
    });
    req.on("end", () => res.writeHead(200, { "content-type": "application/x-protobuf" }).end());
  });
  await new Promise<void>((r) => sink.listen(0, "127.0.0.1", () => r()));
  const sinkUrl = `http://127.0.0.1:${(sink.address() as AddressInfo).port}`;
  const start = async (env: Record<string, string>, program = cli) => {
    const port = await freePort();
    const child: ChildProcess = spawn(
      process.execPath,
      [program, "--listen", `127.0.0.1:${port}`, "--upstream", `127.0.0.1:${upstream.port}`],
      {
        stdio: "ignore",
        env: { ...process.env, SLUICE_LOG_LEVEL: "warn", ...env },
      },
    );
    await waitForPort(port);
    return { port, child };
  };
  const traced = (env: Record<string, string>) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl, ...env });
  const tenth = { OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.1" };
  const variants = {
    off: { label: "tracing off", env: {} },
    // The same process again: how far two identical processes drift apart in the same rounds,
    // the noise that "10% within noise" is judged against.
    offAgain: { label: "tracing off, a second process (the noise)", env: {} },
    on: { label: "100%, fast recorder, export worker (the default)", env: traced({ OTEL_TRACES_SAMPLER: "always_on" }) },
    inline: {
      label: "100%, fast recorder, encoded and exported on the main thread",
      env: traced({ OTEL_TRACES_SAMPLER: "always_on", SLUICE_TRACING_EXPORT_THREAD: "main" }),
    },
    tenth: { label: "10% (parentbased_traceidratio), fast recorder, export worker", env: traced(tenth) },
    tenthInline: {
      label: "10%, fast recorder, on the main thread",
      env: traced({ ...tenth, SLUICE_TRACING_EXPORT_THREAD: "main" }),
    },
    none: { label: "0% (always_off): trace context only", env: traced({ OTEL_TRACES_SAMPLER: "always_off" }) },
    sdk: { label: "100%, SDK recorder", env: traced({ OTEL_TRACES_SAMPLER: "always_on", SLUICE_TRACING_RECORDER: "sdk" }) },
    baseline: { label: "100%, export worker, the baseline build", env: traced({ OTEL_TRACES_SAMPLER: "always_on" }) },
  };
  type Variant = keyof typeof variants;
  // BENCH_VARIANTS=on,inline: only those (and tracing off, the reference).
  const chosen = process.env.BENCH_VARIANTS?.split(",").map((v) => v.trim()) ?? ["offAgain", "on", "inline", "tenth", "sdk"];
  if (BASELINE) chosen.push("baseline");
  const names = (Object.keys(variants) as Variant[]).filter((v) => v === "off" || chosen.includes(v));
  const procs = {} as Record<Variant, { port: number; child: ChildProcess }>;
  for (const v of names) procs[v] = await start(variants[v].env, v === "baseline" && BASELINE ? BASELINE : cli);
  const results = Object.fromEntries(
    names.map((n) => [
      n,
      { rps: [] as number[], cpuPerReq: [] as number[], mainPerReq: [] as number[], otherPerReq: [] as number[] },
    ]),
  ) as Record<Variant, { rps: number[]; cpuPerReq: number[]; mainPerReq: number[]; otherPerReq: number[] }>;
  /** Each variant's CPU per request over the untraced process's, the two loaded at once (one per round). */
  const atOnce = Object.fromEntries(names.map((n) => [n, [] as number[]])) as Record<Variant, number[]>;
  // Rotating order: each variant runs first, second, ... in turn.
  const orders = names.map((_, i) => [...names.slice(i), ...names.slice(0, i)]);
  let steal0 = 0;
  let wall0 = 0;
  try {
    if (WARMUP > 0)
      for (const name of names) {
        process.stderr.write(`warming tracing ${name} up for ${WARMUP} s\n`);
        await wrk(procs[name].port, "/1k.bin", 50, WARMUP);
      }
    steal0 = stealSeconds();
    wall0 = performance.now();
    for (let r = 0; r < RUNS; r++) {
      for (const name of orders[r % orders.length] as Variant[]) {
        const p = procs[name];
        const pid = p.child.pid as number;
        // Each variant idles while the others take their turns: its first second back is not measured.
        if (WINDOW_WARMUP > 0) await wrk(p.port, "/1k.bin", 50, WINDOW_WARMUP);
        const c0 = cpuSeconds([pid]);
        const t0 = threadCpuSeconds(pid);
        const w = await wrk(p.port, "/1k.bin", 50, SECONDS);
        results[name].rps.push(w.requests / w.seconds);
        results[name].cpuPerReq.push(((cpuSeconds([pid]) - c0) / w.requests) * 1e6);
        const t1 = threadCpuSeconds(pid);
        results[name].mainPerReq.push((((t1.get(pid) ?? 0) - (t0.get(pid) ?? 0)) / w.requests) * 1e6);
        results[name].otherPerReq.push((busiestOtherThread(pid, t0, t1) / w.requests) * 1e6);
        process.stderr.write(`run ${r + 1}/${RUNS} tracing ${name}: ${(w.requests / w.seconds).toFixed(0)} req/s\n`);
      }
    }
    // Then each variant beside the untraced process, both loaded at once (half the connections
    // each): the two see the same seconds of the machine, which windows taken one after the other
    // (above) do not.
    for (let r = 0; r < RUNS; r++) {
      for (const name of names) {
        if (name === "off") continue;
        const loaded = (v: Variant) => ({ port: procs[v].port, pids: () => [procs[v].child.pid as number] });
        atOnce[name].push(await cpuRatioAtOnce(loaded("off"), loaded(name), "/1k.bin", 25, SECONDS));
        process.stderr.write(
          `run ${r + 1}/${RUNS} at once, tracing ${name} ÷ off: ×${(atOnce[name].at(-1) as number).toFixed(3)}\n`,
        );
      }
    }
  } finally {
    for (const p of Object.values(procs)) p.child.kill();
    sink.close();
    await upstream.stop();
  }
  const stealPct = ((stealSeconds() - steal0) / ((performance.now() - wall0) / 1000) / os.cpus().length) * 100;
  const sdk = await sdkCostPerRequest();
  const fast = await fastCostPerRequest();
  const med = (v: Variant, k: "rps" | "cpuPerReq" | "mainPerReq" | "otherPerReq") => median(results[v][k]);
  // Paired by round (the same seconds of the same machine): a variant's extra µs over untraced.
  const extra = (v: Variant, k: "cpuPerReq" | "mainPerReq") =>
    median(results[v][k].map((x, i) => x - (results.off[k][i] as number)));
  const label = (v: Variant) => variants[v].label;
  const rows = names
    .map(
      (v) =>
        `| ${label(v)} | ${med(v, "rps").toFixed(0)} | ${med(v, "cpuPerReq").toFixed(1)} | ${med(v, "mainPerReq").toFixed(1)} | ${v === "off" ? "" : `${extra(v, "cpuPerReq") >= 0 ? "+" : ""}${extra(v, "cpuPerReq").toFixed(1)}`} | ${v === "off" ? "" : `${extra(v, "mainPerReq") >= 0 ? "+" : ""}${extra(v, "mainPerReq").toFixed(1)}`} | ${med(v, "otherPerReq").toFixed(2)} |`,
    )
    .join("\n");
  const offCpu = med("off", "cpuPerReq");
  const has = (v: Variant) => names.includes(v);
  // Per round, a variant's CPU per request over the untraced process's in the same seconds.
  const pairs = (v: Variant) => results[v].cpuPerReq.map((x, i) => x / (results.off.cpuPerReq[i] as number));
  const listed = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(", ");
  // How far apart two identical processes typically are, loaded at once (the median of their
  // rounds' distances from ×1): a variant whose median is no further from ×1 is within noise.
  const noise = has("offAgain") ? median(atOnce.offAgain.map((x) => Math.abs(x - 1))) : null;
  const tenthGoal = () => {
    const m = median(atOnce.tenth);
    const verdict =
      noise === null
        ? "no second untraced process ran: noise not measured"
        : `${Math.abs(m - 1) <= noise ? "met" : "short"}: within noise means no further from ×1 than a second untraced process typically was (±${noise.toFixed(3)})`;
    return (
      `- CPU per request at 10%, loaded at once with untraced: ×${m.toFixed(3)} (rounds ${listed(atOnce.tenth)}; one after the other: ${listed(pairs("tenth"))}); ${verdict}` +
      (noise === null
        ? ""
        : `\n- two untraced processes, second ÷ first: loaded at once ${listed(atOnce.offAgain)}; one after the other ${listed(pairs("offAgain"))}`)
    );
  };
  const goals = [
    has("on")
      ? `- CPU per request at 100%: ×${(med("on", "cpuPerReq") / offCpu).toFixed(3)} of untraced (the goal is ≤ ×1.050)\n` +
        `- main-thread CPU per request at 100%: +${extra("on", "mainPerReq").toFixed(1)} µs (the goal is ≤ 2 µs)\n` +
        `- per-round pairs (100% ÷ off): ${listed(pairs("on"))}; loaded at once: ×${median(atOnce.on).toFixed(3)} (rounds ${listed(atOnce.on)})`
      : "- 100%: not run",
    has("tenth") ? tenthGoal() : "- 10%: not run",
    `- loaded at once, CPU per request ÷ the untraced process's (medians): ${names
      .filter((v) => v !== "off")
      .map((v) => `${label(v)} ×${median(atOnce[v]).toFixed(3)}`)
      .join("; ")}`,
  ].join("\n");
  const cpu = os.cpus();
  console.log(`### Tracing cost, ${new Date().toISOString().slice(0, 10)}

Machine: ${cpu.length} × ${cpu[0]?.model ?? "?"}, Linux ${os.release()}, Node ${process.version}, steal ${stealPct.toFixed(1)}% during the runs. 1 KiB responses from nginx,
wrk with 2 threads and 50 connections for ${SECONDS} s, medians of ${RUNS} rotating runs, the sluice processes side by side,
each warmed up first for ${WARMUP} s.
Tracing on: OTLP/HTTP protobuf to a local sink that discards (${(received / 2 ** 20).toFixed(1)} MiB of spans received).
"Main thread" is the CPU of the event loop's thread alone; "extra" is the median of each round's difference from the
untraced process in the same round. "Busiest other thread" is the most CPU any other thread of the process took in a
window: with tracing on, the export worker's (it takes several times what V8's helper threads do); with it off, a helper's.
Unlike the main thread's, it is steady from run to run. Then, once a round, each variant ran beside the untraced
process with both loaded at once (25 connections each, the same seconds): the ratios "loaded at once" below.

| sluice | req/s | CPU µs/request | main thread µs/request | extra CPU µs | extra main-thread µs | busiest other thread µs/request |
|---|---|---|---|---|---|---|
${rows}

Goals (issue: at 100% ≤ 5% of untraced CPU per request, export included, and ≤ 2 µs of main-thread CPU; 10% within noise):
${goals}

The fast recorder's calls alone, in this process (no proxy; timed on the main thread, records made outside the timing):
${fast.worker.toFixed(2)} µs per sampled request handing its spans to the export worker, ${fast.main.toFixed(2)} µs encoding and
exporting them on the main thread, ${fast.unsampled.toFixed(2)} µs per unsampled request (its trace context only).

The same spans with the SDK alone, in this process, no proxy and no network: ${sdk.spans.toFixed(1)} µs CPU per
request to record and queue them, ${sdk.encoded.toFixed(1)} µs with the OTLP protobuf encoding (${sdk.bytes.toFixed(0)} bytes per
request).`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
