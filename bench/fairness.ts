// Fairness under a cheap attack: p99 of ordinary 1 KiB requests (wrk) through a proxy, quiet
// and while one client uploads a body in 1-byte chunks as fast as it can through the same
// proxy. Side by side in one run: sluice and, when installed, HAProxy (splice forced).
// Goal (the hostile-input issue): the p99 under attack within 2x of the quiet case.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { has, median, wrk } from "./measure.js";
import { freePort, haproxySplicing, waitForPort } from "./peers.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const cli = fileURLToPath(new URL("../proxy/cli.js", import.meta.url));

interface Proc {
  name: string;
  port: number;
  child: ChildProcess;
  dir?: string;
}

async function start(name: string, cmd: string, args: string[], port: number, dir?: string): Promise<Proc> {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, SLUICE_LOG_LEVEL: "warn" } });
  await waitForPort(port);
  return { name, port, child, ...(dir ? { dir } : {}) };
}

/** The upstream, in its own process: GET answers 1 KiB, POST reads the whole body before it answers. */
async function startUpstream(): Promise<Proc> {
  const port = await freePort();
  const script = fileURLToPath(new URL("./sink-upstream.js", import.meta.url));
  return start("upstream", process.execPath, [script, String(port)], port);
}

async function startSluice(app: number, sink: number): Promise<Proc> {
  const dir = mkdtempSync(join(os.tmpdir(), "sluice-bench-fair-sluice-"));
  const port = await freePort();
  writeFileSync(
    join(dir, "sluice.yaml"),
    `listeners:
  - name: main
    address: 127.0.0.1:${port}
    routes:
      - { match: { path: { prefix: /upload } }, forward: { cluster: sink } }
      - { match: {}, forward: { cluster: app } }
clusters:
  app: { endpoints: ["127.0.0.1:${app}"] }
  sink: { endpoints: ["127.0.0.1:${sink}"] }
`,
  );
  return start("sluice", process.execPath, [cli, "--config", join(dir, "sluice.yaml")], port, dir);
}

async function startHaproxy(app: number, sink: number): Promise<Proc> {
  const dir = mkdtempSync(join(os.tmpdir(), "sluice-bench-fair-haproxy-"));
  const port = await freePort();
  writeFileSync(
    join(dir, "haproxy.cfg"),
    `${haproxySplicing(1)}frontend fe
  bind 127.0.0.1:${port}
  acl upload path_beg /upload
  use_backend sink if upload
  default_backend app
backend app
  server app 127.0.0.1:${app}
backend sink
  server sink 127.0.0.1:${sink}
`,
  );
  return start("haproxy (splice forced, 1 thread)", "haproxy", ["-f", join(dir, "haproxy.cfg"), "-db"], port, dir);
}

/** Uploads 1-byte chunks to `port` until stopped; returns how many went out. */
function attack(port: number): { stop(): Promise<number> } {
  const batch = Buffer.from("1\r\nX\r\n".repeat(1365));
  let on = true;
  const sock = net.connect(port, "127.0.0.1");
  sock.on("error", () => undefined);
  sock.write("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  const done = (async () => {
    while (on && !sock.destroyed) {
      if (!sock.write(batch)) await new Promise((r) => sock.once("drain", r));
    }
  })();
  return {
    stop: async () => {
      on = false;
      await done;
      // What the proxy took from the socket (written to the kernel, not just queued here).
      const sent = Math.floor((sock.bytesWritten - sock.writableLength) / 6);
      sock.destroy();
      return sent;
    },
  };
}

/** Uploads 2 MiB in 16-byte chunks in one request; ms until the answer (the sink answers at the body's end). */
function smallChunkUpload(port: number): Promise<number> {
  const chunk = `10\r\n${"x".repeat(16)}\r\n`;
  const body = Buffer.from(
    `POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunk.repeat((2 << 20) / 16)}0\r\n\r\n`,
  );
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let head = "";
    const sock = net.connect(port, "127.0.0.1", () => sock.end(body));
    sock.on("data", (d: Buffer) => {
      head += d.toString("latin1");
    });
    sock.on("error", reject);
    sock.on("close", () =>
      head.startsWith("HTTP/1.1 200") ? resolve(performance.now() - t0) : reject(new Error(`upload: ${head.slice(0, 40)}`)),
    );
  });
}

async function main() {
  if (!has("wrk")) throw new Error("wrk is needed");
  // Ordinary requests and the attacker's upload go to different upstream processes, so what is
  // measured is the proxy's fairness, not a shared upstream's load.
  const app = await startUpstream();
  const sink = await startUpstream();
  const procs: Proc[] = [await startSluice(app.port, sink.port)];
  if (has("haproxy")) procs.push(await startHaproxy(app.port, sink.port));
  const results = new Map<string, { quiet: number[]; attacked: number[]; chunks: number[]; upload: number[] }>();
  for (let r = 0; r < RUNS; r++) {
    for (const p of procs) {
      const row = results.get(p.name) ?? { quiet: [], attacked: [], chunks: [], upload: [] };
      if (r === 0) await wrk(p.port, "/1k.bin", 10, 1); // warm-up
      row.quiet.push((await wrk(p.port, "/1k.bin", 10, SECONDS)).p99);
      const a = attack(p.port);
      await new Promise((res) => setTimeout(res, 500));
      row.attacked.push((await wrk(p.port, "/1k.bin", 10, SECONDS)).p99);
      row.chunks.push((await a.stop()) / (SECONDS + 0.5));
      row.upload.push(await smallChunkUpload(p.port));
      results.set(p.name, row);
      process.stderr.write(
        `run ${r + 1}/${RUNS} ${p.name}: quiet p99 ${row.quiet.at(-1)} ms, attacked ${row.attacked.at(-1)} ms\n`,
      );
    }
  }
  for (const p of [...procs, app, sink]) {
    p.child.kill("SIGTERM");
    await new Promise((r) => p.child.once("exit", r));
    if (p.dir) rmSync(p.dir, { recursive: true, force: true });
  }
  const cpu = os.cpus();
  let out = `### Fairness under 1-byte chunks, ${new Date().toISOString().slice(0, 10)}\n\nMachine: ${cpu.length} × ${cpu[0]?.model ?? "?"}, Linux ${os.release()}, Node ${process.version}. wrk 1 KiB GETs at 10 connections for ${SECONDS} s, quiet and while one client uploads 1-byte chunks as fast as it can through the same proxy (to a second upstream process, which reads the whole body before it answers; the ordinary requests go to the first). Last column: one upload of 2 MiB in 16-byte chunks, alone. Medians of ${RUNS} runs.\n\n| proxy | p99 quiet, ms | p99 under attack, ms | ratio (goal ≤ 2) | attacker's chunks sent per s | 2 MiB in 16-byte chunks, ms |\n|---|---|---|---|---|---|\n`;
  for (const p of procs) {
    const row = results.get(p.name);
    if (!row) continue;
    const q = median(row.quiet);
    const a = median(row.attacked);
    out += `| ${p.name} | ${q.toFixed(2)} | ${a.toFixed(2)} | ${(a / q).toFixed(2)} | ${Math.round(median(row.chunks))} | ${median(row.upload).toFixed(0)} |\n`;
  }
  console.log(out);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
