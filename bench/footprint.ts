// npm run bench:footprint: what a proxy costs before it does anything. For sluice (from flags
// and from a config file), nginx and HAProxy side by side: the time from the start of the
// process to the first 200 through it, and its resident memory after 2 s idle (all processes
// of the proxy: nginx's master and worker). Medians of RUNS starts each.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import { join } from "node:path";
import { has } from "./measure.js";
import { freePort } from "./peers.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 5);

/** Resident memory of a process and its children, MiB. */
function rssTree(pid: number): number {
  const kids = (() => {
    try {
      return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return [];
    }
  })();
  const own = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;
  return own + kids.reduce((a, k) => a + rssTree(k), 0);
}

const ok = (port: number) =>
  new Promise<boolean>((resolve) => {
    const r = http.get({ host: "127.0.0.1", port, path: "/", agent: false }, (m) => {
      m.resume();
      m.on("end", () => resolve(m.statusCode === 200));
    });
    r.on("error", () => resolve(false));
  });

interface Proxy {
  name: string;
  start(port: number, upstream: number, dir: string): ChildProcess;
}

const proxies: Proxy[] = [
  {
    name: "sluice (flags)",
    start: (port, upstream) =>
      spawn(process.execPath, ["dist/proxy/cli.js", "--listen", `127.0.0.1:${port}`, "--upstream", `127.0.0.1:${upstream}`], {
        stdio: "ignore",
        env: { ...process.env, SLUICE_LOG_LEVEL: "warn" },
      }),
  },
  {
    name: "sluice (config file, admin port)",
    start: (port, upstream, dir) => {
      const file = join(dir, "sluice.yaml");
      writeFileSync(
        file,
        `admin: { address: "127.0.0.1:0" }\nlisteners:\n  - name: main\n    address: 127.0.0.1:${port}\n    routes: [{ name: app, match: {}, forward: { cluster: app } }]\nclusters:\n  app: { endpoints: ["127.0.0.1:${upstream}"] }\n`,
      );
      return spawn(process.execPath, ["dist/proxy/cli.js", "--config", file], {
        stdio: "ignore",
        env: { ...process.env, SLUICE_LOG_LEVEL: "warn" },
      });
    },
  },
  {
    name: "nginx",
    start: (port, upstream, dir) => {
      writeFileSync(
        join(dir, "nginx.conf"),
        `daemon off; worker_processes 1; pid ${dir}/nginx.pid; error_log stderr error;
events {} http { access_log off; client_body_temp_path ${dir}; proxy_temp_path ${dir};
server { listen 127.0.0.1:${port}; location / { proxy_pass http://127.0.0.1:${upstream}; } } }\n`,
      );
      return spawn("nginx", ["-c", join(dir, "nginx.conf"), "-p", dir], { stdio: "ignore" });
    },
  },
  {
    name: "haproxy",
    start: (port, upstream, dir) => {
      writeFileSync(
        join(dir, "haproxy.cfg"),
        `global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend fe\n  bind 127.0.0.1:${port}\n  default_backend be\nbackend be\n  server s 127.0.0.1:${upstream}\n`,
      );
      return spawn("haproxy", ["-f", join(dir, "haproxy.cfg"), "-db"], { stdio: "ignore" });
    },
  },
];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main() {
  const upstream = http.createServer((_req, res) => res.end("ok"));
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", () => r()));
  const upstreamPort = (upstream.address() as import("node:net").AddressInfo).port;
  const rows: string[] = [];
  for (const p of proxies) {
    if (p.name === "nginx" && !has("nginx")) continue;
    if (p.name === "haproxy" && !has("haproxy")) continue;
    const firsts: number[] = [];
    const rss: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const dir = mkdtempSync(join(os.tmpdir(), "sluice-bench-footprint-"));
      const port = await freePort();
      const t0 = performance.now();
      const child = p.start(port, upstreamPort, dir);
      // Bounded: 20 s to answer.
      while (!(await ok(port))) {
        if (performance.now() - t0 > 20_000) throw new Error(`${p.name} did not answer`);
        await new Promise((r) => setTimeout(r, 2));
      }
      firsts.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 2000));
      rss.push(rssTree(child.pid as number));
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
      rmSync(dir, { recursive: true, force: true });
    }
    process.stderr.write(`${p.name}: ${firsts.map((f) => f.toFixed(0)).join(", ")} ms\n`);
    rows.push(`| ${p.name} | ${median(firsts).toFixed(0)} | ${median(rss).toFixed(1)} |`);
  }
  upstream.close();
  const cpu = os.cpus();
  console.log(`### Footprint, ${new Date().toISOString().slice(0, 10)}

Machine: ${cpu.length} × ${cpu[0]?.model ?? "?"}, Linux ${os.release()}, Node ${process.version}. \`npm run bench:footprint\`: time from spawning the process to the first 200 through it, and resident memory (the process and its children) after 2 s idle. Medians of ${RUNS} starts.

| proxy | first answer, ms | idle RSS, MiB |
|---|---|---|
${rows.join("\n")}
`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
