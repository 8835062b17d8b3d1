// TLS termination benchmark, side by side in one run: sluice, HAProxy and nginx each terminate
// TLS with the same certificate (ECDSA P-256) and the same cipher (TLS 1.3,
// TLS_AES_128_GCM_SHA256, the only suite every server is allowed), in front of the same plain
// nginx upstream. Workloads: one 1 GiB download (curl) and 1 KiB requests at 50 connections
// (wrk over https, keep-alive). Reports throughput, proxy CPU per GiB and per request, and the
// ratios against HAProxy (one thread, the fair match for sluice's one process). Over TLS
// nothing is spliced by anyone: each proxy decrypts and encrypts in userspace.
// A Node process that only passes bytes (bench/node-floor-proxy.ts, Node's own TLS socket) is
// measured too: the floor under any Node proxy over TLS.
// BENCH_BASELINE=<another build's dist/proxy/cli.js> adds that build's TLS row, measured in the same rounds.
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { cpuSeconds, has, median, processTree, WINDOW_WARMUP, wrk } from "./measure.js";
import { freePort, startNginx, waitForPort, writeTestFile } from "./peers.js";

const run = promisify(execFile);
const GiB = 1 << 30;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const SUITE = "TLS_AES_128_GCM_SHA256";
const cli = fileURLToPath(new URL("../proxy/cli.js", import.meta.url));
/** Another build's dist/proxy/cli.js: its TLS row beside this build's, to compare the two in one run. */
const BASELINE = process.env.BENCH_BASELINE ?? null;
/** Seconds of 1 KiB load each JIT-compiled proxy (sluice) gets before the rounds: measured in its steady state, as HAProxy is. */
const WARMUP = Number(process.env.BENCH_WARMUP ?? 20);

interface Proxy {
  name: string;
  port: number;
  /** Plain rows measure the same proxy without TLS: what TLS itself costs is the difference. */
  scheme: "https" | "http";
  pids(): number[];
  stop(): void;
  /** Compiled while it runs (V8): warmed up before it is measured. */
  jit?: boolean;
}

/** Proxies started and not exited: a bench that fails half-way (process.exit) leaves none running behind it. */
const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of running) c.kill("SIGKILL");
});

async function spawnProxy(name: string, cmd: string, args: string[], port: number): Promise<Proxy> {
  const child: ChildProcess = spawn(cmd, args, {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, SLUICE_LOG_LEVEL: "warn" },
  });
  running.add(child);
  child.once("exit", () => running.delete(child));
  await waitForPort(port);
  return { name, port, scheme: "https", pids: () => processTree(child.pid as number), stop: () => child.kill("SIGTERM") };
}

/** One ECDSA P-256 certificate for localhost, and its key, and both in one file (HAProxy's form). */
function makeCertificate(dir: string): { cert: string; key: string; combined: string } {
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  execFileSync("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key]);
  execFileSync("openssl", ["req", "-x509", "-key", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"]);
  const combined = join(dir, "combined.pem");
  writeFileSync(combined, Buffer.concat([readFileSync(cert), readFileSync(key)]));
  return { cert, key, combined };
}

async function startSluice(dir: string, upstream: number, c: { cert: string; key: string } | null, build = cli): Promise<Proxy> {
  const port = await freePort();
  const file = join(dir, `sluice-${port}.yaml`);
  const tls = c
    ? `
    tls:
      certificates: [{ cert: ${c.cert}, key: ${c.key} }]
      min_version: TLSv1.3
      ciphers: ${SUITE}`
    : "";
  writeFileSync(
    file,
    `listeners:
  - name: main
    address: 127.0.0.1:${port}
    routes: [{ name: all, match: {}, forward: { cluster: app } }]${tls}
clusters:
  app: { endpoints: ["127.0.0.1:${upstream}"] }
`,
  );
  const name = `${c ? "sluice" : "sluice, plain"}${build === cli ? "" : " (baseline)"}`;
  const p = await spawnProxy(name, process.execPath, [build, "--config", file], port);
  return { ...p, scheme: c ? "https" : "http", jit: true };
}

/** A Node process that only passes bytes, terminating TLS with Node's own TLS socket: the floor under any Node proxy over TLS. */
async function startNodeFloor(upstream: number, c: { cert: string; key: string }): Promise<Proxy> {
  const port = await freePort();
  const script = fileURLToPath(new URL("./node-floor-proxy.js", import.meta.url));
  const p = await spawnProxy(
    "node bytes-only (floor)",
    process.execPath,
    [script, String(port), String(upstream), c.cert, c.key, SUITE],
    port,
  );
  return { ...p, jit: true };
}

/**
 * HAProxy terminating TLS (`combined`) or not. `bufsize`: its buffer size, which bounds its
 * reads and so its TLS records per write (16 KiB by default; sluice's copies read 256 KiB).
 */
async function startHaproxy(
  dir: string,
  upstream: number,
  combined: string | null,
  threads: number,
  bufsize?: number,
): Promise<Proxy> {
  const port = await freePort();
  const file = join(dir, `haproxy-${threads}-${bufsize ?? "default"}.cfg`);
  writeFileSync(
    file,
    `global
${threads > 0 ? `  nbthread ${threads}\n` : ""}${bufsize ? `  tune.bufsize ${bufsize}\n` : ""}  maxconn 4000
  ssl-default-bind-ciphersuites ${SUITE}
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:${port}${combined ? ` ssl crt ${combined} alpn http/1.1` : ""}
  default_backend be
backend be
  server app 127.0.0.1:${upstream}
`,
  );
  const name = `${threads > 0 ? `haproxy (${threads} thread${bufsize ? `, tune.bufsize ${bufsize >> 10}k` : ""})` : "haproxy (default threads)"}${combined ? "" : ", plain"}`;
  const p = await spawnProxy(name, "haproxy", ["-f", file, "-db"], port);
  return { ...p, scheme: combined ? "https" : "http" };
}

async function startNginxProxy(dir: string, upstream: number, c: { cert: string; key: string }): Promise<Proxy> {
  const port = await freePort();
  const base = mkdtempSync(join(dir, "nginx-"));
  const temp = (n: string) => `${n}_temp_path ${join(base, n)};`;
  writeFileSync(
    join(base, "nginx.conf"),
    `${process.getuid?.() === 0 ? "user root;" : ""}
worker_processes 1; daemon off; pid ${join(base, "pid")}; error_log ${join(base, "error.log")} warn;
events { worker_connections 4096; }
http {
  access_log off; ${temp("client_body")} ${temp("proxy")} ${temp("fastcgi")} ${temp("uwsgi")} ${temp("scgi")}
  upstream app { server 127.0.0.1:${upstream}; keepalive 256; }
  server { listen 127.0.0.1:${port} ssl;
    ssl_certificate ${c.cert}; ssl_certificate_key ${c.key};
    ssl_protocols TLSv1.3; ssl_conf_command Ciphersuites ${SUITE};
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_max_temp_file_size 0; }
  }
}
`,
  );
  return spawnProxy("nginx (1 worker)", "nginx", ["-p", base, "-c", join(base, "nginx.conf")], port);
}

/** The protocol and cipher a proxy agreed on, as openssl s_client saw them. */
async function negotiated(port: number): Promise<string> {
  const child = execFile("openssl", ["s_client", "-brief", "-connect", `127.0.0.1:${port}`], { timeout: 10_000 });
  child.stdin?.end();
  let out = "";
  child.stderr?.on("data", (d) => {
    out += d;
  });
  child.stdout?.on("data", (d) => {
    out += d;
  });
  await new Promise((r) => child.on("close", r));
  const v = /Protocol version: (\S+)/.exec(out)?.[1];
  const c = /Ciphersuite: (\S+)/.exec(out)?.[1];
  return `${v ?? "?"} ${c ?? "?"}`;
}

async function curlBig(port: number, scheme: "http" | "https") {
  const { stdout } = await run("curl", [
    "-sk",
    "--tls13-ciphers",
    SUITE,
    "-o",
    "/dev/null",
    "-w",
    "%{time_total} %{size_download} %{http_code}",
    `${scheme}://127.0.0.1:${port}/big.bin`,
  ]);
  const [t, size, code] = stdout.split(" ");
  if (code !== "200" || Number(size) !== GiB) throw new Error(`1 GiB download failed: ${stdout}`);
  return { bytes: GiB, seconds: Number(t), requests: 1 };
}

interface Sample {
  gibPerS: number;
  cpuPerGiB: number;
  cpuPerRequest: number;
  rps: number;
  p99: number;
}

async function measure(proxy: Proxy, work: () => Promise<{ bytes: number; seconds: number; requests: number; p99?: number }>) {
  const pids = proxy.pids();
  const cpu0 = cpuSeconds(pids);
  const r = await work();
  const cpu = cpuSeconds(pids) - cpu0;
  return {
    gibPerS: r.bytes / GiB / r.seconds,
    cpuPerGiB: cpu / (r.bytes / GiB),
    cpuPerRequest: (cpu / r.requests) * 1e6,
    rps: r.requests / r.seconds,
    p99: r.p99 ?? Number.NaN,
  };
}

async function main() {
  for (const tool of ["curl", "wrk", "nginx", "openssl"])
    if (!has(tool)) throw new Error(`bench:tls needs ${tool} (apt install ${tool === "nginx" ? "nginx-light" : tool})`);
  const dir = mkdtempSync(join(os.tmpdir(), "sluice-bench-tls-"));
  const nginx = await startNginx();
  writeTestFile(join(nginx.root, "big.bin"), GiB);
  writeFileSync(join(nginx.root, "1k.bin"), Buffer.alloc(1024, 120));
  const c = makeCertificate(dir);
  const proxies: Proxy[] = [await startSluice(dir, nginx.port, c), await startSluice(dir, nginx.port, null)];
  if (BASELINE) proxies.push(await startSluice(dir, nginx.port, c, BASELINE));
  if (has("haproxy")) {
    proxies.push(await startHaproxy(dir, nginx.port, c.combined, 1));
    proxies.push(await startHaproxy(dir, nginx.port, c.combined, 1, 256 << 10));
    proxies.push(await startHaproxy(dir, nginx.port, c.combined, 0));
    proxies.push(await startHaproxy(dir, nginx.port, null, 1));
  }
  proxies.push(await startNginxProxy(dir, nginx.port, c));
  proxies.push(await startNodeFloor(nginx.port, c));
  const results = new Map<string, { big: Sample[]; small: Sample[] }>();
  try {
    for (const p of proxies) {
      results.set(p.name, { big: [], small: [] });
      if (p.scheme === "http") continue;
      const agreed = await negotiated(p.port);
      console.log(`${p.name}: ${agreed}`);
      if (agreed !== `TLSv1.3 ${SUITE}`) throw new Error(`${p.name} negotiated ${agreed}, not TLSv1.3 ${SUITE}`);
    }
    for (const p of proxies) {
      if (!p.jit || WARMUP <= 0) continue;
      process.stderr.write(`warming ${p.name} up for ${WARMUP} s\n`);
      await wrk(p.port, "/1k.bin", 50, WARMUP, p.scheme);
    }
    // Rounds, proxies interleaved in a rotating order: the machine's noise falls on all of them.
    for (let round = 0; round < RUNS; round++) {
      for (let k = 0; k < proxies.length; k++) {
        const p = proxies[(k + round) % proxies.length] as Proxy;
        const r = results.get(p.name) as { big: Sample[]; small: Sample[] };
        r.big.push(await measure(p, () => curlBig(p.port, p.scheme)));
        // After a 1 GiB download the small requests' path starts cold again (see bench:http).
        if (WINDOW_WARMUP > 0) await wrk(p.port, "/1k.bin", 50, WINDOW_WARMUP, p.scheme);
        r.small.push(await measure(p, () => wrk(p.port, "/1k.bin", 50, SECONDS, p.scheme)));
      }
    }
  } finally {
    for (const p of proxies) p.stop();
    await nginx.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const cpus = os.cpus();
  console.log(
    `\nTLS termination, ${new Date().toISOString().slice(0, 16)} UTC, ${cpus.length} × ${cpus[0]?.model}, ` +
      `Node ${process.version}, medians of ${RUNS}; client: curl (1 GiB), wrk -c50 ${SECONDS} s (1 KiB) after ${WINDOW_WARMUP} s of the same; sluice warmed up ${WARMUP} s first\n`,
  );
  const row = (name: string, s: { big: Sample[]; small: Sample[] }) => {
    const m = (xs: Sample[], f: (x: Sample) => number) => median(xs.map(f));
    return {
      name,
      gib: m(s.big, (x) => x.gibPerS),
      cpuGiB: m(s.big, (x) => x.cpuPerGiB),
      rps: m(s.small, (x) => x.rps),
      cpuReq: m(s.small, (x) => x.cpuPerRequest),
      p99: m(s.small, (x) => x.p99),
    };
  };
  const rows = [...results].map(([n, s]) => row(n, s));
  console.log("| proxy | 1 GiB GB/s | CPU s/GiB | 1 KiB req/s | CPU µs/req | p99 ms |");
  console.log("|---|---|---|---|---|---|");
  for (const r of rows)
    console.log(
      `| ${r.name} | ${((r.gib * GiB) / 1e9).toFixed(2)} | ${r.cpuGiB.toFixed(2)} | ${r.rps.toFixed(0)} | ${r.cpuReq.toFixed(0)} | ${r.p99.toFixed(1)} |`,
    );
  const by = (name: string) => rows.find((r) => r.name === name);
  const [anchor, sluice] = [by("haproxy (1 thread)"), by("sluice")];
  if (anchor && sluice) {
    // Against HAProxy at its best: each ratio takes the cheaper of its two one-thread rows.
    const big = by("haproxy (1 thread, tune.bufsize 256k)");
    const best = (f: (r: NonNullable<typeof anchor>) => number) => Math.min(f(anchor), big ? f(big) : Number.POSITIVE_INFINITY);
    console.log(`\nsluice over TLS against HAProxy over TLS (1 thread, the cheaper buffer size), goal ≤ 1.5×:`);
    console.log(`- CPU per GiB: ×${(sluice.cpuGiB / best((r) => r.cpuGiB)).toFixed(2)}`);
    console.log(`- CPU per 1 KiB request: ×${(sluice.cpuReq / best((r) => r.cpuReq)).toFixed(2)}`);
    // The same ratios for a Node process that does nothing but pass bytes: what any Node proxy
    // terminating TLS starts from.
    const floor = by("node bytes-only (floor)");
    if (floor) {
      console.log(
        `- the Node floor over TLS: ×${(floor.cpuGiB / best((r) => r.cpuGiB)).toFixed(2)} per GiB, ` +
          `×${(floor.cpuReq / best((r) => r.cpuReq)).toFixed(2)} per 1 KiB request; sluice above it: ` +
          `${(sluice.cpuReq - floor.cpuReq).toFixed(0)} µs per request`,
      );
    }
  }
  const [plainSluice, plainAnchor] = [by("sluice, plain"), by("haproxy (1 thread), plain")];
  if (sluice && plainSluice && anchor && plainAnchor) {
    // What TLS itself adds to each proxy, apart from what the proxy costs without it.
    console.log("\nwhat TLS adds (TLS row − plain row of the same proxy):");
    console.log(
      `- per 1 KiB request: sluice +${(sluice.cpuReq - plainSluice.cpuReq).toFixed(0)} µs, HAProxy +${(anchor.cpuReq - plainAnchor.cpuReq).toFixed(0)} µs`,
    );
    console.log(
      `- per GiB: sluice +${(sluice.cpuGiB - plainSluice.cpuGiB).toFixed(2)} s, HAProxy +${(anchor.cpuGiB - plainAnchor.cpuGiB).toFixed(2)} s`,
    );
  }
}

await main();
