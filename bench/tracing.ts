// What tracing costs: 1 KiB requests at 50 connections through sluice with tracing off,
// with 100% and with 10% sampling (the fast recorder, the default), and with the SDK recorder
// at 100%, exported over OTLP/HTTP (protobuf) to a collector stand-in that accepts and
// discards; rotating runs, side by side, and the goals computed from the run.
import { type ChildProcess, spawn } from "node:child_process";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cpuSeconds, median, wrk } from "./measure.js";
import { freePort, startNginx, waitForPort, writeTestFile } from "./peers.js";
import { sdkCostPerRequest } from "./tracing-sdk.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const cli = fileURLToPath(new URL("../proxy/cli.js", import.meta.url));

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
  const start = async (env: Record<string, string>) => {
    const port = await freePort();
    const child: ChildProcess = spawn(
      process.execPath,
      [cli, "--listen", `127.0.0.1:${port}`, "--upstream", `127.0.0.1:${upstream.port}`],
      {
        stdio: "ignore",
        env: { ...process.env, SLUICE_LOG_LEVEL: "warn", ...env },
      },
    );
    await waitForPort(port);
    return { port, child };
  };
  const procs = {
    off: await start({}),
    on: await start({ OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl, OTEL_TRACES_SAMPLER: "always_on" }),
    tenth: await start({
      OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl,
      OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
      OTEL_TRACES_SAMPLER_ARG: "0.1",
    }),
    sdk: await start({ OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl, OTEL_TRACES_SAMPLER: "always_on", SLUICE_TRACING_RECORDER: "sdk" }),
  };
  type Variant = keyof typeof procs;
  const results: Record<Variant, { rps: number[]; cpuPerReq: number[] }> = {
    off: { rps: [], cpuPerReq: [] },
    on: { rps: [], cpuPerReq: [] },
    tenth: { rps: [], cpuPerReq: [] },
    sdk: { rps: [], cpuPerReq: [] },
  };
  const orders: Variant[][] = [
    ["off", "on", "tenth", "sdk"],
    ["sdk", "off", "on", "tenth"],
    ["tenth", "sdk", "off", "on"],
    ["on", "tenth", "sdk", "off"],
  ];
  try {
    for (let r = 0; r < RUNS; r++) {
      for (const name of orders[r % orders.length] as Variant[]) {
        const p = procs[name];
        const c0 = cpuSeconds([p.child.pid as number]);
        const w = await wrk(p.port, "/1k.bin", 50, SECONDS);
        results[name].rps.push(w.requests / w.seconds);
        results[name].cpuPerReq.push(((cpuSeconds([p.child.pid as number]) - c0) / w.requests) * 1e6);
        process.stderr.write(`run ${r + 1}/${RUNS} tracing ${name}: ${(w.requests / w.seconds).toFixed(0)} req/s\n`);
      }
    }
  } finally {
    for (const p of Object.values(procs)) p.child.kill();
    sink.close();
    await upstream.stop();
  }
  const rOff = median(results.off.rps);
  const rOn = median(results.on.rps);
  const rTenth = median(results.tenth.rps);
  const sdk = await sdkCostPerRequest();
  const offCpu = median(results.off.cpuPerReq);
  const cpu = os.cpus();
  console.log(`### Tracing cost, ${new Date().toISOString().slice(0, 10)}

Machine: ${cpu.length} × ${cpu[0]?.model ?? "?"}, Linux ${os.release()}, Node ${process.version}. 1 KiB responses from nginx,
wrk with 2 threads and 50 connections for ${SECONDS} s, medians of ${RUNS} alternating runs. Tracing on: 100% sampling,
OTLP/HTTP protobuf to a local sink (${(received / 2 ** 20).toFixed(1)} MiB of spans received).

| sluice | req/s | proxy CPU µs/request |
|---|---|---|
| tracing off | ${rOff.toFixed(0)} | ${median(results.off.cpuPerReq).toFixed(0)} |
| tracing on, 100% | ${rOn.toFixed(0)} | ${median(results.on.cpuPerReq).toFixed(0)} |
| tracing on, 10% (parentbased_traceidratio) | ${rTenth.toFixed(0)} | ${median(results.tenth.cpuPerReq).toFixed(0)} |
| tracing on, 100%, SDK recorder | ${median(results.sdk.rps).toFixed(0)} | ${median(results.sdk.cpuPerReq).toFixed(0)} |

Throughput with tracing: ×${(rOn / rOff).toFixed(2)} of without at 100%, ×${(rTenth / rOff).toFixed(2)} at 10%; the SDK recorder ×${(median(results.sdk.rps) / rOff).toFixed(2)}.

Goals (issue: ≤ 5% of untraced CPU per request at 100%, export included; 10% within noise):
- CPU per request at 100%: ×${(median(results.on.cpuPerReq) / offCpu).toFixed(3)} of untraced (+${(median(results.on.cpuPerReq) - offCpu).toFixed(1)} µs; the goal is ≤ ×1.050)
- CPU per request at 10%: ×${(median(results.tenth.cpuPerReq) / offCpu).toFixed(3)} of untraced
- per-run pairs (100% ÷ off, same round): ${results.on.cpuPerReq.map((v, i) => (v / (results.off.cpuPerReq[i] as number)).toFixed(2)).join(", ")}

The same spans with the SDK alone, in this process, no proxy and no network: ${sdk.spans.toFixed(1)} µs CPU per
request to record and queue them, ${sdk.encoded.toFixed(1)} µs with the OTLP protobuf encoding (${sdk.bytes.toFixed(0)} bytes per
request). A 10% cost at 100% sampling leaves ${(offCpu / 10).toFixed(1)} µs per request (a tenth of the untraced request's CPU above).`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
