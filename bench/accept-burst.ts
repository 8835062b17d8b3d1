// A burst of new connections into a busy proxy: while wrk keeps 50 connections of 1 KiB
// requests going, 200 new connections open at once, each sending one GET of 1 KiB; reported is
// how long each took, from its connect to its whole response (p50, p99, max), and the same
// burst into the idle proxy. Side by side in one run: sluice and, when installed, HAProxy
// (splice forced, one thread). A proxy that accepts one connection per turn of its event loop
// makes the burst's last connections wait as many turns as there are connections before them
// (docs/BENCHMARKS.md, "Where the 200-connection tail comes from").
//   [BENCH_RUNS=3] [BENCH_BURST=200] npm run bench:accept
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { has, median, wrk } from "./measure.js";
import { freePort, haproxySplicing, startNginx, waitForPort } from "./peers.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const BURST = Number(process.env.BENCH_BURST ?? 200);
/** Seconds of background load; the burst starts one second in. */
const LOAD_SECONDS = 4;
const cli = fileURLToPath(new URL("../proxy/cli.js", import.meta.url));

interface Proc {
  name: string;
  port: number;
  child: ChildProcess;
  dir: string;
}

async function start(name: string, cmd: string, args: string[], port: number, dir: string): Promise<Proc> {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, SLUICE_LOG_LEVEL: "warn" } });
  await waitForPort(port);
  return { name, port, child, dir };
}

async function startSluice(upstream: number): Promise<Proc> {
  const dir = mkdtempSync(join(os.tmpdir(), "sluice-bench-accept-"));
  const port = await freePort();
  return start(
    "sluice",
    process.execPath,
    [cli, "--listen", `127.0.0.1:${port}`, "--upstream", `127.0.0.1:${upstream}`],
    port,
    dir,
  );
}

async function startHaproxy(upstream: number): Promise<Proc> {
  const dir = mkdtempSync(join(os.tmpdir(), "sluice-bench-accept-haproxy-"));
  const port = await freePort();
  writeFileSync(
    join(dir, "haproxy.cfg"),
    `${haproxySplicing(1, ["maxconn 4000"])}frontend fe
  bind 127.0.0.1:${port}
  default_backend app
backend app
  server app 127.0.0.1:${upstream}
`,
  );
  return start("haproxy (splice forced, 1 thread)", "haproxy", ["-f", join(dir, "haproxy.cfg"), "-db"], port, dir);
}

/** One new connection, one GET of /1k.bin: ms from the connect to the whole response. */
function oneRequest(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const sock = net.connect(port, "127.0.0.1", () => sock.write("GET /1k.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    let got = Buffer.alloc(0);
    sock.on("data", (d: Buffer) => {
      got = Buffer.concat([got, d]);
      const end = got.indexOf("\r\n\r\n");
      if (end !== -1 && got.length >= end + 4 + 1024) {
        const ms = performance.now() - t0;
        sock.destroy();
        if (!got.subarray(0, 12).toString("latin1").startsWith("HTTP/1.1 200")) reject(new Error("not a 200"));
        else resolve(ms);
      }
    });
    sock.on("error", reject);
  });
}

/** BURST connections opened at once: their times, sorted. */
async function burst(port: number): Promise<number[]> {
  const times = await Promise.all(Array.from({ length: BURST }, () => oneRequest(port)));
  return times.sort((a, b) => a - b);
}

const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor(xs.length * p))] as number;

async function main() {
  for (const tool of ["wrk", "nginx"]) if (!has(tool)) throw new Error(`bench:accept needs ${tool}`);
  const nginx = await startNginx();
  writeFileSync(join(nginx.root, "1k.bin"), Buffer.alloc(1024, 120));
  const procs: Proc[] = [await startSluice(nginx.port)];
  if (has("haproxy")) procs.push(await startHaproxy(nginx.port));
  const rows = new Map<string, { quiet: number[][]; busy: number[][] }>();
  try {
    for (let r = 0; r < RUNS; r++) {
      for (const p of procs) {
        const row = rows.get(p.name) ?? { quiet: [], busy: [] };
        if (r === 0) await wrk(p.port, "/1k.bin", 50, 2); // warm-up
        row.quiet.push(await burst(p.port));
        const load = wrk(p.port, "/1k.bin", 50, LOAD_SECONDS);
        await new Promise((res) => setTimeout(res, 1000));
        row.busy.push(await burst(p.port));
        await load;
        rows.set(p.name, row);
      }
    }
  } finally {
    for (const p of procs) {
      p.child.kill("SIGTERM");
      rmSync(p.dir, { recursive: true, force: true });
    }
    await nginx.stop();
  }
  const cpus = os.cpus();
  console.log(
    `\nA burst of ${BURST} new connections, one GET of 1 KiB each, ${new Date().toISOString().slice(0, 16)} UTC, ` +
      `${cpus.length} × ${cpus[0]?.model}, Node ${process.version}; medians of ${RUNS} runs; ms from connect to the whole response\n`,
  );
  console.log("| proxy | idle: p50 | p99 | max | under 50 connections of load: p50 | p99 | max |");
  console.log("|---|---|---|---|---|---|---|");
  const f = (xs: number[][], p: number) => median(xs.map((x) => pct(x, p))).toFixed(1);
  for (const [name, r] of rows)
    console.log(
      `| ${name} | ${f(r.quiet, 0.5)} | ${f(r.quiet, 0.99)} | ${f(r.quiet, 1)} | ${f(r.busy, 0.5)} | ${f(r.busy, 0.99)} | ${f(r.busy, 1)} |`,
    );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
