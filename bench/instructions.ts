// Instructions per 1 KiB request, counted by valgrind's callgrind: a yardstick for the
// per-request work that the machine's noise cannot blur (CPU time per request moves by ±30%
// between windows on these shared machines; these counts repeat to about 1%). Each proxy runs
// under callgrind with counting off while warm-up requests go through it, on for the measured
// ones, sent one at a time over one keep-alive connection (undici; BENCH_CONNECTIONS=50 spreads
// them over 50 such connections, closer to a loaded proxy's batching). Reports the main thread
// (the event loop) apart from all threads (the JIT compiler and GC helpers run on others).
// Counts user-space instructions only: the kernel's part of a request is not in them.
// BENCH_FLOOR=0 leaves the floor's row out. BENCH_TRACED=1 adds rows with every request traced (OTLP/HTTP to a stand-in collector in
// this process): the main thread's count minus the untraced one is what tracing costs it, and
// the export worker's thread (the other thread with an event loop) is reported apart. Its
// batches are held to 512 spans (OTEL_BSP_SCHEDULE_DELAY long), as under load: under callgrind
// requests are so slow that the default 500 ms would post a batch every few dozen requests.
// A row with 10% of requests sampled (parentbased_traceidratio) follows, and one with tracing on
// and none sampled (ratio 0): what a request that is not sampled costs, without the sampled
// tenth's spans, the export worker's wake-ups or code that only a sampled request runs (which
// at 10% may still be in a lower tier of V8 when counting starts).
// BENCH_TLS=1 adds rows with a TLS listener (ECDSA P-256, TLS 1.3, the client undici): what
// terminating TLS costs the process per request in user space, and the floor's row over TLS.
// BENCH_BUFFERED=1 adds the buffered engine and plain http-proxy-3 (bench/plain-http-proxy.ts):
// what the buffered engine does per request beyond the ordinary Node proxy it stands for.
// BENCH_BODY=<bytes> sets the response body's size (1024 by default; 1048576 is spliced). BENCH_FIELDS=browser
// adds the eleven fields a browser sends with a GET to each request.
// BENCH_PROFILE=<dir> keeps each row's callgrind files and V8's map of its compiled code
// (--perf-basic-prof) in <dir>/<row>/, for `node dist/bench/callgrind-top.js <dir>/<row>`.
//   BENCH_WARM=8000 [BENCH_WARM_ROUNDS=5] BENCH_REQUESTS=3000 [BENCH_BASELINE=<other build's dist/proxy/cli.js>] [BENCH_TRACED=1] npm run bench:instructions
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Client } from "undici";
import { has } from "./measure.js";
import { freePort, startNginx, waitForPort } from "./peers.js";

const WARM = Number(process.env.BENCH_WARM ?? 8000);
/** Connections (or sets of CONNECTIONS) the warm-up is spread over, one after another. */
const WARM_ROUNDS = Number(process.env.BENCH_WARM_ROUNDS ?? 5);
const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 3000);
const BASELINE = process.env.BENCH_BASELINE ?? null;
const TRACED = process.env.BENCH_TRACED === "1";
/** Connections the requests are spread over (each sends one at a time). */
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 1);
const TLS = process.env.BENCH_TLS === "1";
const BUFFERED = process.env.BENCH_BUFFERED === "1";
const PROFILE = process.env.BENCH_PROFILE ?? null;
/** The response body's size: 1 KiB by default; 1048576 counts a spliced response's per-request work. */
const BODY = Number(process.env.BENCH_BODY ?? 1024);
const BODY_PATH = BODY === 1024 ? "/1k.bin" : `/${BODY}.bin`;
/**
 * BENCH_FIELDS=browser: each request also carries the fields a browser sends with a GET (eleven
 * of them, about 700 bytes), where undici sends only Host and Connection.
 */
const BROWSER = process.env.BENCH_FIELDS === "browser";
const BROWSER_FIELDS: Record<string, string> = {
  "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
  Accept: "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
  "Accept-Language": "en-US,en;q=0.9,de;q=0.8",
  "Accept-Encoding": "gzip, deflate, br, zstd",
  Referer: "https://shop.example.test/catalog/page/2?sort=price",
  Cookie: "session=7f3a9c2e41d84b0f9a6e5c1d2b3a4f5e; theme=dark; consent=analytics:0,ads:0",
  "Sec-Fetch-Dest": "document",
  "Sec-Fetch-Mode": "navigate",
  "Sec-Fetch-Site": "same-origin",
  "Upgrade-Insecure-Requests": "1",
  "Cache-Control": "max-age=0",
};
const cli = fileURLToPath(new URL("../proxy/cli.js", import.meta.url));
const floor = fileURLToPath(new URL("./node-floor-proxy.js", import.meta.url));
const plainHttpProxy = fileURLToPath(new URL("./plain-http-proxy.js", import.meta.url));

/** `n` GETs of BODY_PATH over CONNECTIONS connections, each sending one after another. */
async function send(port: number, n: number, scheme: "http" | "https"): Promise<void> {
  const one = async (count: number) => {
    // The bench's own certificate: nothing to verify it against but itself.
    const client = new Client(`${scheme}://127.0.0.1:${port}`, { pipelining: 1, connect: { rejectUnauthorized: false } });
    try {
      for (let i = 0; i < count; i++) {
        const res = await client.request({ method: "GET", path: BODY_PATH, headers: BROWSER ? BROWSER_FIELDS : undefined });
        // dump() stops at 128 KiB by default and closes the connection on a larger body.
        await res.body.dump({ limit: BODY });
        if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
      }
    } finally {
      await client.close();
    }
  };
  await Promise.all(
    Array.from({ length: CONNECTIONS }, (_, i) => one(Math.floor(n / CONNECTIONS) + (i < n % CONNECTIONS ? 1 : 0))),
  );
}

/** Instructions per measured request: the main thread's and all threads'. */
async function count(
  name: string,
  args: (port: number) => string[],
  env: Record<string, string> = {},
  scheme: "http" | "https" = "http",
): Promise<{ name: string; main: number; all: number; worker: number | null; deopts: string[] }> {
  const dir = mkdtempSync(join(os.tmpdir(), "sluice-bench-callgrind-"));
  const port = await freePort();
  const argv = args(port);
  // The map names JIT-compiled code, which callgrind knows only by address.
  if (PROFILE) argv.unshift("--perf-basic-prof");
  // V8 says on stdout when it deoptimizes code: a deoptimization in the counted window means
  // part of it ran slower code until it was compiled again, and the count is not the steady state's.
  argv.unshift("--trace-deopt");
  const out = openSync(join(dir, "deopts.log"), "w");
  const child: ChildProcess = spawn(
    "valgrind",
    [
      "--tool=callgrind",
      "--smc-check=all-non-file",
      "--instr-atstart=no",
      "--separate-threads=yes",
      `--callgrind-out-file=${join(dir, "cg.out")}`,
      process.execPath,
      ...argv,
    ],
    { stdio: ["ignore", out, "ignore"], env: { ...process.env, SLUICE_LOG_LEVEL: "warn", ...env } },
  );
  closeSync(out);
  let windowFrom = 0;
  let windowTo = 0;
  try {
    // Node under valgrind takes tens of seconds to start.
    await waitForPort(port, 1800);
    // The warm-up over several connections, one after another: one connection's warm-up leaves
    // code specialised to it that the next connection deoptimizes, and the recompiling (and the
    // slower code until then) used to fall in the counted window. It settles after a few.
    for (let i = 0; i < WARM_ROUNDS; i++) await send(port, Math.ceil(WARM / WARM_ROUNDS), scheme);
    execFileSync("callgrind_control", ["-i", "on", String(child.pid)], { stdio: "ignore" });
    windowFrom = statSync(join(dir, "deopts.log")).size;
    await send(port, REQUESTS, scheme);
    windowTo = statSync(join(dir, "deopts.log")).size;
    execFileSync("callgrind_control", ["-i", "off", String(child.pid)], { stdio: "ignore" });
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
  }
  if (PROFILE) {
    const keep = join(PROFILE, name.replace(/[^a-z0-9]+/gi, "-"));
    mkdirSync(keep, { recursive: true });
    for (const f of readdirSync(dir)) copyFileSync(join(dir, f), join(keep, f));
    // V8 writes the map to /tmp whatever TMPDIR says.
    const map = `/tmp/perf-${child.pid}.map`;
    if (existsSync(map)) {
      copyFileSync(map, join(keep, "perf.map"));
      rmSync(map);
    }
  }
  // One file per thread: cg.out-01 is the main thread's; a worker thread is the other one that runs an event loop.
  const totals = new Map<string, number>();
  let worker: number | null = null;
  for (const f of readdirSync(dir).filter((f) => /^cg\.out-\d+$/.test(f))) {
    const text = readFileSync(join(dir, f), "utf8");
    const total = Number(/^totals: (\d+)/m.exec(text)?.[1] ?? 0);
    totals.set(f, total);
    if (f !== "cg.out-01" && /^fn=\(\d+\) uv_run$/m.test(text)) worker = (worker ?? 0) + total;
  }
  // The functions deoptimized while the requests were counted (any thread).
  const log = readFileSync(join(dir, "deopts.log")).subarray(windowFrom, windowTo).toString("latin1");
  const deopts = [
    ...log.matchAll(/^\[bailout \(kind: [^,]*, reason: ([^)]*)\): begin\. deoptimizing \S+ <JSFunction ([^ >(]*)/gm),
  ].map((m) => `${m[2] || "(anonymous)"} (${m[1]})`);
  rmSync(dir, { recursive: true, force: true });
  const main = totals.get("cg.out-01") ?? Number.NaN;
  const all = [...totals.values()].reduce((a, b) => a + b, 0);
  return { name, main: main / REQUESTS, all: all / REQUESTS, worker: worker === null ? null : worker / REQUESTS, deopts };
}

async function main() {
  for (const tool of ["valgrind", "callgrind_control", "nginx", ...(TLS ? ["openssl"] : [])])
    if (!has(tool)) throw new Error(`bench:instructions needs ${tool} (apt-get install valgrind nginx-light)`);
  const nginx = await startNginx();
  writeFileSync(join(nginx.root, BODY_PATH.slice(1)), Buffer.alloc(BODY, 120));
  const up = String(nginx.port);
  const sluice =
    (build: string, ...more: string[]) =>
    (port: number) => [build, "--listen", `127.0.0.1:${port}`, "--upstream", `127.0.0.1:${up}`, ...more];
  const certDir = mkdtempSync(join(os.tmpdir(), "sluice-bench-cert-"));
  const cert = join(certDir, "cert.pem");
  const key = join(certDir, "key.pem");
  if (TLS) {
    execFileSync("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key]);
    execFileSync("openssl", ["req", "-x509", "-key", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"]);
  }
  const overTls = ["--tls-cert", cert, "--tls-key", key];
  // A collector stand-in: accepts OTLP/HTTP exports and discards them.
  const collector = http.createServer((req, res) => {
    req.resume().on("end", () => res.writeHead(200, { "content-type": "application/x-protobuf" }).end());
  });
  await new Promise<void>((r) => collector.listen(0, "127.0.0.1", () => r()));
  const traced = {
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(collector.address() as AddressInfo).port}`,
    OTEL_TRACES_SAMPLER: "always_on",
    OTEL_BSP_SCHEDULE_DELAY: "600000",
  };
  const rows = [];
  try {
    rows.push(await count("sluice splice", sluice(cli)));
    if (BASELINE) rows.push(await count("sluice splice (baseline)", sluice(BASELINE)));
    if (TRACED) {
      rows.push(await count("sluice splice, 100% traced", sluice(cli), traced));
      if (BASELINE) rows.push(await count("sluice splice, 100% traced (baseline)", sluice(BASELINE), traced));
      // The tracing issue's other goal: 10% sampled within noise of untraced.
      const tenth = { ...traced, OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.1" };
      rows.push(await count("sluice splice, 10% traced", sluice(cli), tenth));
      const none = { ...tenth, OTEL_TRACES_SAMPLER_ARG: "0" };
      rows.push(await count("sluice splice, traced, none sampled", sluice(cli), none));
      if (BASELINE) rows.push(await count("sluice splice, traced, none sampled (baseline)", sluice(BASELINE), none));
    }
    if (TLS) {
      rows.push(await count("sluice, TLS listener", sluice(cli, ...overTls), {}, "https"));
      if (BASELINE) rows.push(await count("sluice, TLS listener (baseline)", sluice(BASELINE, ...overTls), {}, "https"));
    }
    if (BUFFERED) {
      rows.push(await count("sluice buffered", sluice(cli, "--engine", "buffered")));
      if (BASELINE) rows.push(await count("sluice buffered (baseline)", sluice(BASELINE, "--engine", "buffered")));
      rows.push(await count("http-proxy-3 (plain)", (port) => [plainHttpProxy, String(port), up]));
    }
    if (process.env.BENCH_FLOOR !== "0") {
      rows.push(await count("node bytes-only (floor)", (port) => [floor, String(port), up]));
      // The same floor terminating TLS with Node's own TLS socket and defaults, as sluice's listener above.
      if (TLS)
        rows.push(await count("node bytes-only over TLS (floor)", (port) => [floor, String(port), up, cert, key], {}, "https"));
    }
  } finally {
    await nginx.stop();
    collector.close();
    rmSync(certDir, { recursive: true, force: true });
  }
  console.log(
    `\nInstructions per ${BODY === 1024 ? "1 KiB" : `${BODY}-byte`} request (callgrind), ${new Date().toISOString().slice(0, 16)} UTC, Node ${process.version}; ` +
      `${BROWSER ? "a browser's request fields, " : ""}${WARM} requests of warm-up, ${REQUESTS} measured, ` +
      (CONNECTIONS === 1
        ? "one at a time over one connection\n"
        : `over ${CONNECTIONS} connections, each one request at a time\n`),
  );
  const k = (n: number | null) => (n === null ? "" : `${(n / 1000).toFixed(1)}k`);
  console.log("| proxy | main thread | export worker | all threads | deoptimized while counted |\n|---|---|---|---|---|");
  for (const r of rows)
    console.log(
      `| ${r.name} | ${k(r.main)} | ${k(r.worker)} | ${k(r.all)} | ${r.deopts.length === 0 ? "none" : r.deopts.join(", ")} |`,
    );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
