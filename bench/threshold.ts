// Where splicing starts to pay: the same bodies through sluice made to splice whatever is left
// of a body after its head's read (threshold 1) and sluice made to copy every body, both loaded
// at once (the same seconds of the machine) after a warm-up. Content-Length bodies from nginx,
// and 1 MiB chunked bodies in chunks of each size from a small Node upstream, one process per
// proxy (a transfer per chunk). Picks the defaults of `splice.threshold` and `splice.chunk_threshold`.
import { type ChildProcess, spawn } from "node:child_process";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cpuSeconds, median, stealSeconds, wrk } from "./measure.js";
import { freePort, startChunkedUpstream, startNginx, waitForPort, writeTestFile } from "./peers.js";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const CONNS = Number(process.env.BENCH_CONNS ?? 50);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 10);
const SIZES = [8, 16, 24, 32, 48, 64, 128, 256, 1024].map((k) => k * 1024);
const CHUNKS = [16, 32, 64, 128, 256].map((k) => k * 1024);
const NEVER = 1 << 30; // the largest threshold the config allows
const cli = fileURLToPath(new URL("../proxy/cli.js", import.meta.url));

async function sluice(upstream: number, threshold: number): Promise<{ port: number; child: ChildProcess }> {
  const port = await freePort();
  const t = String(threshold);
  const child = spawn(
    process.execPath,
    [
      cli,
      "--listen",
      `127.0.0.1:${port}`,
      "--upstream",
      `127.0.0.1:${upstream}`,
      "--splice-threshold",
      t,
      "--splice-chunk-threshold",
      t,
    ],
    { stdio: "ignore", env: { ...process.env, SLUICE_LOG_LEVEL: "warn" } },
  );
  await waitForPort(port);
  return { port, child };
}

type Row = { splice: { rps: number[]; us: number[] }; copy: { rps: number[]; us: number[] } };

/** Both proxies loaded at once on `path`: requests per second and CPU µs per request of each. */
async function atOnce(pair: { splice: number; copy: number }, pids: { splice: number; copy: number }, path: string, row: Row) {
  const names = ["splice", "copy"] as const;
  await Promise.all(names.map((n) => wrk(pair[n], path, CONNS, 1)));
  const c0 = names.map((n) => cpuSeconds([pids[n]]));
  const runs = await Promise.all(names.map((n) => wrk(pair[n], path, CONNS, SECONDS)));
  names.forEach((n, i) => {
    const r = runs[i] as { requests: number; seconds: number };
    row[n].rps.push(r.requests / r.seconds);
    row[n].us.push(((cpuSeconds([pids[n]]) - (c0[i] as number)) / r.requests) * 1e6);
  });
}

async function main() {
  const nginx = await startNginx();
  for (const s of SIZES) writeTestFile(join(nginx.root, `${s}.bin`), s);
  // One chunked upstream per proxy: two proxies loaded at once must not share its event loop.
  const chunked = [await startChunkedUpstream(), await startChunkedUpstream()] as const;
  const up = {
    length: { splice: await sluice(nginx.port, 1), copy: await sluice(nginx.port, NEVER) },
    chunked: { splice: await sluice(chunked[0].port, 1), copy: await sluice(chunked[1].port, NEVER) },
  };
  const steal0 = stealSeconds();
  const wall0 = performance.now();
  const out: string[] = [];
  try {
    for (const [kind, paths] of [
      ["length", SIZES.map((s) => [`${s / 1024} KiB`, `/${s}.bin`] as const)],
      ["chunked", CHUNKS.map((s) => [`1 MiB in ${s / 1024} KiB chunks`, `/chunked/${s}`] as const)],
    ] as const) {
      const p = up[kind];
      const ports = { splice: p.splice.port, copy: p.copy.port };
      const pids = { splice: p.splice.child.pid as number, copy: p.copy.child.pid as number };
      // JIT-compiled proxies: warmed on every path first, as a long-running proxy would be.
      const warm = Math.max(1, Math.round(WARMUP / paths.length));
      for (const [, path] of paths) await Promise.all([wrk(ports.splice, path, CONNS, warm), wrk(ports.copy, path, CONNS, warm)]);
      out.push(
        `\n**${kind === "length" ? "Content-Length bodies (nginx)" : "Chunked bodies (a Node upstream)"}**\n\n| body | req/s spliced | req/s copied | CPU µs/req spliced | CPU µs/req copied | spliced ÷ copied, CPU per request |\n|---|---|---|---|---|---|`,
      );
      for (const [label, path] of paths) {
        const row: Row = { splice: { rps: [], us: [] }, copy: { rps: [], us: [] } };
        for (let r = 0; r < RUNS; r++) await atOnce(ports, pids, path, row);
        const ratios = row.splice.us.map((u, i) => u / (row.copy.us[i] as number));
        out.push(
          `| ${label} | ${median(row.splice.rps).toFixed(0)} | ${median(row.copy.rps).toFixed(0)} | ${median(row.splice.us).toFixed(0)} | ${median(row.copy.us).toFixed(0)} | ×${median(ratios).toFixed(2)} |`,
        );
        process.stderr.write(`${out.at(-1)}\n`);
      }
    }
  } finally {
    for (const p of Object.values(up)) for (const s of Object.values(p)) s.child.kill();
    for (const c of chunked) c.stop();
    await nginx.stop();
  }
  const cpus = os.cpus();
  const steal = (stealSeconds() - steal0) / ((performance.now() - wall0) / 1000) / cpus.length;
  console.log(
    `Machine: ${cpus.length} × ${cpus[0]?.model.trim()}, Node ${process.version}. ${CONNS} connections to each of the two proxies at once (wrk), ${RUNS} windows of ${SECONDS} s, medians. Steal time during the run: ${(steal * 100).toFixed(1)}% of the CPUs. "Spliced": whatever of a body is still to come after its head's read is spliced (threshold 1); "copied": nothing is.\n${out.join("\n")}`,
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
