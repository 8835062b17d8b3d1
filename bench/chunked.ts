// Chunked bodies, the kind a Node or Go application streams: 1 MiB responses in chunks of 16 to
// 256 KiB from a Node upstream, and 1 MiB uploads in the same chunks from the client (wrk with a
// Lua script that sends the raw request: wrk adds a Content-Length to any body it is given),
// through sluice (default thresholds: small chunks copied and gathered, large ones spliced)
// and, loaded at the same time as sluice, each of: HAProxy with splicing forced (one thread), a
// Node process that only passes bytes (the floor of any Node proxy copying through userspace),
// and the build in BENCH_BASELINE when given. Every proxy has an upstream process of its own.
// CPU per request of each, and the ratio inside each pair. BENCH_DIRECTION=responses or
// uploads runs one of the two.
//   [BENCH_DIRECTION=responses|uploads] BENCH_BASELINE=<other build's dist/proxy/cli.js> npm run bench:chunked
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { cpuSeconds, has, type Loaded, median, stealSeconds, WINDOW_WARMUP, wrk } from "./measure.js";
import { freePort, haproxySplicing, startChunkedUpstream, waitForPort } from "./peers.js";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const CONNS = Number(process.env.BENCH_CONNS ?? 10);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 10);
const BASELINE = process.env.BENCH_BASELINE ?? null;
const CHUNKS = [16, 32, 64, 128, 256].map((k) => k * 1024);
const DIRECTIONS = (process.env.BENCH_DIRECTION ?? "responses,uploads").split(",").map((d) => d.trim());
const scripts = mkdtempSync(join(os.tmpdir(), "sluice-bench-uploads-"));

/** A wrk script whose every request is a 1 MiB upload in chunks of `size` bytes. */
function uploadScript(size: number): string {
  const file = join(scripts, `upload-${size}.lua`);
  writeFileSync(
    file,
    `local chunk = "${size.toString(16)}\\r\\n" .. string.rep("u", ${size}) .. "\\r\\n"
local raw = "POST /upload HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n" .. string.rep(chunk, ${(1 << 20) / size}) .. "0\\r\\n\\r\\n"
request = function() return raw end
`,
  );
  return file;
}

/** What a measured request is: a response of chunks of `size` bytes, or an upload in them. */
interface Load {
  path: string;
  script?: string;
}
const loadOf = (direction: string, size: number): Load =>
  direction === "uploads" ? { path: "/upload", script: uploadScript(size) } : { path: `/chunked/${size}` };
const cli = fileURLToPath(new URL("../proxy/cli.js", import.meta.url));

interface Peer extends Loaded {
  name: string;
  stop(): void;
}

/** `cmd args` listening on `port`, with an upstream process of its own. */
async function start(name: string, launch: (port: number, upstream: number) => [string, string[]]): Promise<Peer> {
  const upstream = await startChunkedUpstream();
  const port = await freePort();
  const [cmd, args] = launch(port, upstream.port);
  const child = spawn(cmd, args, { stdio: "ignore", env: { ...process.env, SLUICE_LOG_LEVEL: "warn" } });
  await waitForPort(port);
  return {
    name,
    port,
    pids: () => [child.pid as number],
    stop: () => {
      child.kill();
      upstream.stop();
    },
  };
}

const sluice = (name: string, build: string) =>
  start(name, (port, up) => [process.execPath, [build, "--listen", `127.0.0.1:${port}`, "--upstream", `127.0.0.1:${up}`]]);

function haproxy(): Promise<Peer> {
  const dir = mkdtempSync(join(os.tmpdir(), "sluice-bench-haproxy-"));
  return start("haproxy (splice, 1 thread)", (port, up) => {
    const cfg = join(dir, "haproxy.cfg");
    writeFileSync(
      cfg,
      `${haproxySplicing(1)}frontend fe\n  bind 127.0.0.1:${port}\n  default_backend be\nbackend be\n  server app 127.0.0.1:${up}\n`,
    );
    // -db: in the foreground, in the bench's scheduling group like every other process here.
    return ["haproxy", ["-f", cfg, "-db"]];
  });
}

const floor = () =>
  start("node bytes-only (floor)", (port, up) => [
    process.execPath,
    [fileURLToPath(new URL("./node-floor-proxy.js", import.meta.url)), String(port), String(up)],
  ]);

/** `a` and `b` loaded at the same time with `w`: each one's CPU µs per request. */
async function atOnce(a: Peer, b: Peer, w: Load): Promise<[number, number]> {
  const load = (s: number) => Promise.all([a, b].map((p) => wrk(p.port, w.path, CONNS, s, "http", w.script)));
  if (WINDOW_WARMUP > 0) await load(WINDOW_WARMUP);
  const c0 = [a, b].map((p) => cpuSeconds(p.pids()));
  const runs = await load(SECONDS);
  const us = (i: number) => ((cpuSeconds(([a, b][i] as Peer).pids()) - (c0[i] as number)) / (runs[i]?.requests ?? 1)) * 1e6;
  return [us(0), us(1)];
}

async function main() {
  if (!has("wrk")) throw new Error("wrk is needed (apt-get install wrk)");
  const first = await sluice("sluice", cli);
  const others: Peer[] = [];
  if (has("haproxy")) others.push(await haproxy());
  others.push(await floor());
  if (BASELINE) others.push(await sluice("sluice (baseline)", BASELINE));
  const peers = [first, ...others];
  const steal0 = stealSeconds();
  const wall0 = performance.now();
  const tables = new Map<string, string[]>();
  try {
    for (const direction of DIRECTIONS) {
      const rows: string[] = [];
      tables.set(direction, rows);
      // JIT-compiled proxies: warmed on every size first, as a long-running proxy would be.
      const warm = Math.max(1, Math.round(WARMUP / CHUNKS.length));
      for (const c of CHUNKS) {
        const w = loadOf(direction, c);
        await Promise.all(peers.map((p) => wrk(p.port, w.path, CONNS, warm, "http", w.script)));
      }
      for (const c of CHUNKS) {
        const w = loadOf(direction, c);
        const mine: number[] = [];
        const cells: string[] = [];
        for (const other of others) {
          const theirs: number[] = [];
          const ratios: number[] = [];
          for (let r = 0; r < RUNS; r++) {
            const [a, b] = await atOnce(first, other, w);
            mine.push(a);
            theirs.push(b);
            ratios.push(a / b);
          }
          cells.push(`${median(theirs).toFixed(0)} | ×${median(ratios).toFixed(2)}`);
          process.stderr.write(
            `${direction}, ${c / 1024} KiB chunks: ${other.name} ${median(theirs).toFixed(0)} µs, sluice ÷ it ×${median(ratios).toFixed(2)}\n`,
          );
        }
        rows.push(`| ${c / 1024} KiB | ${median(mine).toFixed(0)} | ${cells.join(" | ")} |`);
      }
    }
  } finally {
    for (const p of peers) p.stop();
  }
  const cpus = os.cpus();
  const steal = (stealSeconds() - steal0) / ((performance.now() - wall0) / 1000) / cpus.length;
  const head = others.map((o) => `${o.name} CPU µs/req | sluice ÷ ${o.name}`).join(" | ");
  const titles: Record<string, string> = {
    responses: "1 MiB chunked responses from a Node upstream",
    uploads: "1 MiB chunked uploads from the client, to a Node upstream that reads them whole",
  };
  console.log(
    `Machine: ${cpus.length} × ${cpus[0]?.model.trim()}, Node ${process.version}. One Node upstream process per proxy, ${CONNS} connections to each of two proxies loaded at once (wrk), ${RUNS} windows of ${SECONDS} s per pair, medians; sluice's CPU is the median over all its windows. Steal time during the run: ${(steal * 100).toFixed(1)}% of the CPUs.`,
  );
  for (const [direction, rows] of tables)
    console.log(
      `\n**${titles[direction] ?? direction}**\n\n| chunks | sluice CPU µs/req | ${head} |\n|---|---|${others.map(() => "---|---|").join("")}\n${rows.join("\n")}`,
    );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
