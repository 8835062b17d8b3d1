// Soak: a running sluice (the built CLI, from a config file) under a bounded mixed load —
// small and large downloads, uploads, keep-alive churn, WebSockets, config reloads — with
// every body's hash checked; afterwards its descriptors, pipes and memory must be back.
//   npm run bench:soak -- [seconds]      (default 300; results appended to docs/BENCHMARKS.md by hand)
// test/soak.test.ts runs the same thing for a few seconds.
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent, request } from "undici";
import { WebSocket, WebSocketServer } from "ws";
import { demoBodySha256, startDemoUpstream } from "../proxy/tools/demo-upstream.js";
import { freePort, waitForPort } from "../proxy/tools/ports.js";
import { rssBytes } from "./measure.js";

export interface SoakResult {
  seconds: number;
  requests: number;
  bodyBytes: number;
  uploads: number;
  websockets: number;
  reloads: number;
  failures: string[];
  /** After warm-up / after the load, once idle connections have gone; idle pooled pipes (2 each) not counted. */
  fds: { before: number; after: number };
  /** At the start, half-way through the load, its peak, and after it: a leak grows from mid to after. */
  rss: { before: number; mid: number; peak: number; after: number };
  /** V8 heap in use at the start and once sluice has been idle a while (V8 collects when idle). */
  heapUsed: { before: number; after: number };
  pipesInUse: number;
}

const SIZES = [1024, 64 << 10, 1 << 20, 8 << 20];
/** How far above its starting point the V8 heap may settle after the load (reloads keep the last config's objects). */
export const HEAP_SLACK = 8 << 20;

const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function config(port: number, admin: number, demoPort: number, wsPort: number, variant: number): string {
  return `# soak, variant ${variant}
admin: { address: "127.0.0.1:${admin}" }
listeners:
  - name: inbound
    address: 127.0.0.1:${port}
    timeouts: { keep_alive: ${variant % 2 === 0 ? "2s" : "3s"} }
    routes:
      - { name: ws, match: { path: { prefix: /ws } }, forward: { cluster: ws } }
      - { name: variant, match: { path: { exact: /variant } }, respond: { status: 200, body: "${variant}" } }
      - { name: app, match: {}, forward: { cluster: app } }
clusters:
  app: { endpoints: ["127.0.0.1:${demoPort}"], pool: { max_idle: ${variant % 2 === 0 ? 16 : 4}, idle_timeout: 1s } }
  ws: { endpoints: ["127.0.0.1:${wsPort}"] }
`;
}

export async function runSoak(opts: { seconds: number; concurrency?: number }): Promise<SoakResult> {
  const dir = mkdtempSync(join(tmpdir(), "sluice-soak-"));
  const demo = await startDemoUpstream({ host: "127.0.0.1", port: 0 });
  const wsHttp = http.createServer();
  const wss = new WebSocketServer({ server: wsHttp });
  wss.on("connection", (ws) => ws.on("message", (m, binary) => ws.send(m, { binary })));
  await new Promise<void>((r) => wsHttp.listen(0, "127.0.0.1", () => r()));
  const wsPort = (wsHttp.address() as AddressInfo).port;
  const [port, admin] = [await freePort(), await freePort()];
  const file = join(dir, "soak.yaml");
  writeFileSync(file, config(port, admin, demo.address.port, wsPort, 0));
  const child: ChildProcess = spawn(process.execPath, ["dist/proxy/cli.js", "--config", file], {
    env: { ...process.env, SLUICE_LOG_LEVEL: "error" },
    stdio: "ignore",
  });
  const pid = child.pid as number;
  const base = `http://127.0.0.1:${port}`;
  const failures: string[] = [];
  const fail = (what: string) => {
    if (failures.length < 20) failures.push(what);
  };
  const result = { requests: 0, bodyBytes: 0, uploads: 0, websockets: 0, reloads: 0 };
  try {
    await waitForPort(port);
    await waitForPort(admin);
    const adminGet = async (path: string) => {
      const r = await request(`http://127.0.0.1:${admin}${path}`, { reset: true });
      return r.body.text();
    };
    // Warm-up: one of each, so lazily created descriptors exist before the baseline.
    const warm = new Agent({ connections: 4 });
    for (const n of SIZES) await (await request(`${base}/bytes/${n}`, { dispatcher: warm })).body.dump();
    await warm.close();
    await sleep(3500);
    // The pipe pool keeps idle pipes for reuse (2 descriptors each): those are not leaks.
    const idlePipes = async () =>
      Number(/^sluice_pipe_pool_pipes\{state="idle"\} (\d+)$/m.exec(await adminGet("/metrics"))?.[1] ?? 0);
    const heapUsed = async () =>
      Number(/^sluice_nodejs_heap_size_used_bytes (\d+)$/m.exec(await adminGet("/metrics"))?.[1] ?? Number.NaN);
    const fdsBefore = fdCount(pid) - 2 * (await idlePipes());
    const rssBefore = rssBytes([pid]);
    const heapBefore = await heapUsed();
    let rssPeak = rssBefore;
    let rssMid = 0;

    // Keep-alive churn: several agents, some connections closed after each request. Each
    // agent lets an idle connection go before sluice's keep-alive timeout (2-3 s) would: a
    // client that reuses a connection just as the server closes it for idling loses that
    // request whatever the server does (RFC 9112 §9.3.1 leaves the retry to the client), and
    // undici's default (4 s) made that race part of this test on a busy machine.
    const agents = [new Agent({ connections: 8, keepAliveTimeout: 500 }), new Agent({ connections: 8, keepAliveTimeout: 1500 })];
    const until = performance.now() + opts.seconds * 1000;
    const half = setTimeout(
      () => {
        rssMid = rssBytes([pid]);
      },
      (opts.seconds * 1000) / 2,
    );
    let n = 0;

    const download = async () => {
      const size = SIZES[n % SIZES.length] as number;
      const reset = n % 5 === 0;
      const r = await request(`${base}/bytes/${size}`, { dispatcher: agents[n % 2], reset });
      const h = createHash("sha256");
      let bytes = 0;
      for await (const c of r.body) {
        h.update(c as Buffer);
        bytes += (c as Buffer).length;
      }
      if (r.statusCode !== 200 || bytes !== size || h.digest("hex") !== demoBodySha256(size))
        fail(`download ${size}: status ${r.statusCode}, ${bytes} bytes`);
      result.bodyBytes += bytes;
    };
    const upload = async () => {
      const body = randomBytes(n % 3 === 0 ? 2 << 20 : 20_000);
      const r = await request(`${base}/echo`, { method: "POST", body, dispatcher: agents[n % 2] });
      const back = Buffer.from(await r.body.arrayBuffer());
      if (r.statusCode !== 200 || !back.equals(body))
        fail(`upload ${body.length}: status ${r.statusCode}, ${back.length} bytes back`);
      result.uploads++;
      result.bodyBytes += 2 * body.length;
    };
    const websocket = async () => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
      await new Promise((resolve, reject) => {
        ws.once("open", resolve);
        ws.once("error", reject);
      });
      for (let i = 0; i < 5; i++) {
        const msg = randomBytes(1000 + i * 5000);
        ws.send(msg);
        const back = await new Promise<Buffer>((r) => ws.once("message", (m) => r(m as Buffer)));
        if (!back.equals(msg)) fail("websocket echo differs");
      }
      ws.close();
      await new Promise((r) => ws.once("close", r));
      result.websockets++;
    };
    const worker = async () => {
      while (performance.now() < until) {
        const k = n++;
        try {
          if (k % 17 === 0) await websocket();
          else if (k % 4 === 0) await upload();
          else await download();
          result.requests++;
        } catch (err) {
          // The connection's history tells a reused connection closed under a request from one cut mid-response.
          const e = err as Error & { code?: string; socket?: { localPort?: number; bytesWritten?: number; bytesRead?: number } };
          const sock = e.socket
            ? ` (port ${e.socket.localPort}, ${e.socket.bytesWritten} bytes written, ${e.socket.bytesRead} read)`
            : "";
          fail(`request ${k}: ${e.message}${e.code ? ` [${e.code}]` : ""}${sock}`);
        }
        rssPeak = Math.max(rssPeak, rssBytes([pid]));
      }
    };
    // Reloads while all that runs: the file changes every 700 ms.
    const reloader = (async () => {
      for (let v = 1; performance.now() < until - 700; v++) {
        await sleep(700);
        writeFileSync(file, config(port, admin, demo.address.port, wsPort, v));
        result.reloads++;
      }
    })();
    await Promise.all([...Array.from({ length: opts.concurrency ?? 8 }, worker), reloader]);
    clearTimeout(half);
    await Promise.all(agents.map((a) => a.close()));
    const last = JSON.parse(await adminGet("/reload")) as { ok: boolean };
    if (!last.ok) fail("the last reload failed");

    // Idle keep-alive connections time out (3 s at most), then everything is back.
    let fdsAfter = fdCount(pid) - 2 * (await idlePipes());
    for (let i = 0; i < 60 && fdsAfter > fdsBefore; i++) {
      await sleep(200);
      fdsAfter = fdCount(pid) - 2 * (await idlePipes());
    }
    // Garbage is collected when V8 sees the process idle: give it up to 30 s to get back.
    let heapAfter = await heapUsed();
    for (let i = 0; i < 60 && heapAfter > heapBefore + HEAP_SLACK; i++) {
      await sleep(500);
      heapAfter = await heapUsed();
    }
    const metrics = await adminGet("/metrics");
    const pipesInUse = Number(/^sluice_pipe_pool_pipes\{state="in_use"\} (\d+)$/m.exec(metrics)?.[1] ?? -1);
    return {
      seconds: opts.seconds,
      ...result,
      failures,
      fds: { before: fdsBefore, after: fdsAfter },
      rss: { before: rssBefore, mid: rssMid, peak: rssPeak, after: rssBytes([pid]) },
      heapUsed: { before: heapBefore, after: heapAfter },
      pipesInUse,
    };
  } finally {
    child.kill("SIGKILL");
    await demo.close();
    wss.close();
    wsHttp.closeAllConnections();
    wsHttp.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1]?.endsWith("soak.js")) {
  const seconds = Number(process.argv[2] ?? 300);
  const r = await runSoak({ seconds });
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  process.stdout.write(
    `${new Date().toISOString()} soak ${seconds}s: ${r.requests} exchanges (${r.uploads} uploads, ${r.websockets} WebSockets), ` +
      `${mib(r.bodyBytes)} of bodies, ${r.reloads} reloads; failures ${r.failures.length}\n` +
      `fds ${r.fds.before} -> ${r.fds.after}; pipes in use after: ${r.pipesInUse}; ` +
      `RSS ${mib(r.rss.before)} -> half-way ${mib(r.rss.mid)} -> peak ${mib(r.rss.peak)} -> after ${mib(r.rss.after)}; ` +
      `V8 heap used ${mib(r.heapUsed.before)} -> ${mib(r.heapUsed.after)} once idle\n`,
  );
  for (const f of r.failures) process.stdout.write(`  ${f}\n`);
  const back = r.fds.after === r.fds.before && r.pipesInUse === 0 && r.heapUsed.after <= r.heapUsed.before + HEAP_SLACK;
  process.exitCode = r.failures.length === 0 && back ? 0 : 1;
}
