#!/usr/bin/env node
// Command line: `sluice demo` and the no-file sidecar form.
import "./base/worker-hangup.js"; // first: see the module
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Command, InvalidArgumentError, Option } from "commander";
import { formatHostPort, parseHostPort } from "./base/address.js";
import { commandLine } from "./base/embedded.js";
import { log } from "./base/log.js";
import { VERSION } from "./base/version.js";
import { type CompiledConfig, compileConfig, configFromFlags } from "./config/compile.js";
import { DEFAULTS } from "./config/defaults.js";
import { ConfigError, loadConfigFile, loadConfigText } from "./config/load.js";
import type { ConfigFile } from "./config/types.js";
import { type ConfigSource, Runtime } from "./control/runtime.js";
import { drainThenClose, exitOnSignals, holdStopSignals } from "./control/shutdown.js";
import { isWorker, type Supervisor, serveAsWorker, superviseWorkers, workerCount } from "./control/workers.js";
import { startDemoUpstream } from "./tools/demo-upstream.js";
import { spliceAddon, spliceUnavailableReason } from "./transfer/native.js";

function hostPort(what: string) {
  return (v: string) => {
    try {
      return parseHostPort(v, what);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError(`expected a positive integer, got "${v}"`);
  return n;
}

/** Says which engine moves bodies: loaded, here; unavailable, spliceAddon() has said why, once. */
function reportEngine(): void {
  const addon = spliceAddon();
  if (addon) log.info({ pipeSize: addon.stats().pipeSize }, "splice engine loaded");
}

function workersOption(v: string): "auto" | number {
  return v === "auto" ? "auto" : positiveInt(v);
}

/**
 * Runs a config, from a file or from the flags, in this process, as the primary of workers,
 * or as one worker (which takes its config from the primary). The one composition root.
 */
async function run(source: ConfigSource, opts: { workers?: "auto" | number; drainTimeout?: number; accessLog?: boolean }) {
  if (isWorker) {
    reportEngine();
    const runtime = new Runtime(source, { kind: "worker" }, opts.accessLog ?? false);
    let started = false;
    serveAsWorker(async (cfg) => {
      if (started) return runtime.run(cfg);
      await runtime.start(cfg);
      started = true;
      exitOnSignals(() => runtime.drain(opts.drainTimeout));
      log.info({ listeners: Object.fromEntries(runtime.addresses()) }, "worker running");
      return runtime.lastReload ?? { at: new Date(), ok: true, errors: [] };
    }, runtime.sinks.metrics.registry);
    // Until the primary's config arrives, a SIGTERM has nothing to drain.
    exitOnSignals(async () => (started ? runtime.drain(opts.drainTimeout) : undefined));
    return;
  }
  let cfg: ConfigFile;
  try {
    cfg = "file" in source ? await loadConfigFile(source.file) : loadConfigText(JSON.stringify(source.flags), "command line");
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
  const workers = workerCount(opts.workers ?? cfg.workers);
  if (workers > 1) {
    let supervisor: Supervisor | null = null;
    const runtime = new Runtime(source, {
      kind: "primary",
      apply: (c) => (supervisor as Supervisor).apply(c.source, c.hash),
      ready: () => supervisor?.ready() ?? false,
      metrics: () => (supervisor as Supervisor).metrics(),
    });
    await runtime.start(cfg);
    supervisor = superviseWorkers(workers, () => {
      const c = runtime.current as CompiledConfig;
      return { config: c.source, hash: c.hash };
    });
    runtime.watch();
    log.info({ config: runtime.origin, workers, admin: runtime.adminAddress() }, "sluice running");
    exitOnSignals(async () => {
      runtime.startDraining();
      // Each worker drains on its own; the extra margin lets them finish closing.
      await supervisor?.stop((opts.drainTimeout ?? runtime.drainTimeoutMs()) + 5000);
      await runtime.close();
    });
    return;
  }
  reportEngine();
  const runtime = new Runtime(source, { kind: "single" }, opts.accessLog ?? false);
  await runtime.start(cfg);
  runtime.watch();
  log.info({ config: runtime.origin, workers: 1, listeners: Object.fromEntries(runtime.addresses()) }, "sluice running");
  exitOnSignals(() => runtime.drain(opts.drainTimeout));
}

/** What --version says: enough to tell whether a bug report's sluice could splice. */
function versionText(): string {
  const addon = spliceAddon() ? "splice addon loaded" : `splice addon unavailable: ${spliceUnavailableReason()}`;
  return `sluice ${VERSION} (Node ${process.version}, ${process.platform}-${process.arch}; ${addon})`;
}

const program = new Command()
  .name("sluice")
  .description("Reverse proxy whose bodies cross with Linux splice()")
  .helpCommand(true)
  // The proxy's own options go before a command; after one, options are the command's
  // (`compare --splice-threshold`, `compare --tls-cert` were taken by the proxy's before).
  .enablePositionalOptions()
  .option("-V, --version", "print the version, Node's, the platform and whether the splice addon loads")
  .option("-c, --config <file>", "run from a YAML config file (reloaded on change and on SIGHUP)")
  .addOption(
    new Option("--listen <host:port>", "address to accept connections on").env("SLUICE_LISTEN").argParser(hostPort("--listen")),
  )
  .addOption(
    new Option("--upstream <host:port>", "where to forward them").env("SLUICE_UPSTREAM").argParser(hostPort("--upstream")),
  )
  .option("--mode <mode>", "http (reverse proxy) or tcp (raw tunnel per connection)", "http")
  .option("--engine <engine>", "http bodies: splice, or buffered (http-proxy-3)", "splice")
  .option(
    "--splice-threshold <bytes>",
    `bodies with at least this many bytes to come after their head are spliced (default ${DEFAULTS.splice.threshold})`,
    positiveInt,
  )
  .option(
    "--splice-chunk-threshold <bytes>",
    `the same for each chunk of a chunked body (default ${DEFAULTS.splice.chunkThreshold})`,
    positiveInt,
  )
  .option("--connect-timeout <ms>", `upstream connect timeout (default ${DEFAULTS.cluster.pool.connectTimeoutMs})`, positiveInt)
  .option(
    "--idle-timeout <ms>",
    `tcp mode: close a tunnel idle for this long (default ${DEFAULTS.tcp.idleTimeoutMs})`,
    positiveInt,
  )
  .option("--workers <n>", "worker processes sharing the listeners: a number or auto (default 1, or the file's)", workersOption)
  .option(
    "--drain-timeout <ms>",
    "on SIGTERM/SIGINT, how long in-flight work may take (default 25000, or the file's)",
    positiveInt,
  )
  .option("--access-log", "one JSON line per request (or the file's access_log)")
  .addOption(
    new Option("--tls-cert <file>", "http mode: terminate TLS with this PEM certificate chain (bodies are then copied)").env(
      "SLUICE_TLS_CERT",
    ),
  )
  .addOption(new Option("--tls-key <file>", "the certificate's PEM private key").env("SLUICE_TLS_KEY"))
  .action(async (opts) => {
    if (opts.version) return void process.stdout.write(`${versionText()}\n`);
    holdStopSignals();
    if (opts.config) {
      // SLUICE_LISTEN may be set for the file's ${...} substitutions; only flags conflict.
      const given = (o: string) => program.getOptionValueSource(o) === "cli";
      if (given("listen") || given("upstream")) program.error("--config and --listen/--upstream exclude each other");
      return run({ file: opts.config }, opts);
    }
    if (!opts.listen || !opts.upstream)
      program.error("--config, or --listen and --upstream, are required (or use `sluice demo`)");
    if (opts.mode !== "tcp" && opts.mode !== "http") program.error(`--mode ${opts.mode}: expected http or tcp`);
    if (opts.engine !== "splice" && opts.engine !== "buffered")
      program.error(`--engine ${opts.engine}: expected splice or buffered`);
    if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey)) program.error("--tls-cert and --tls-key go together");
    if (opts.tlsCert && opts.mode === "tcp") program.error("--tls-cert is for http mode (tcp mode passes TLS through)");
    return run(
      {
        flags: configFromFlags({
          listen: formatHostPort(opts.listen),
          upstream: formatHostPort(opts.upstream),
          mode: opts.mode,
          engine: opts.engine,
          spliceThreshold: opts.spliceThreshold,
          spliceChunkThreshold: opts.spliceChunkThreshold,
          connectTimeoutMs: opts.connectTimeout,
          idleTimeoutMs: opts.idleTimeout,
          accessLog: opts.accessLog,
          ...(opts.tlsCert ? { tls: { cert: resolve(opts.tlsCert), key: resolve(opts.tlsKey) } } : {}),
        }),
      },
      opts,
    );
  });

program
  .command("validate <file>")
  .description("check a config file; prints file:line:col for each problem, exits 0 or 1")
  .action(async (file: string) => {
    try {
      // What start does with a file, short of opening its sockets: what passes here starts.
      compileConfig(await loadConfigFile(file));
      process.stdout.write(`${file}: ok\n`);
    } catch (err) {
      process.stderr.write(`${err instanceof ConfigError ? err.message : `${file}: ${(err as Error).message}`}\n`);
      process.exitCode = 1;
    }
  });

function sizeList(v: string): number[] {
  return v.split(",").map((s) => {
    const m = /^(\d+)([kKmM]?)$/.exec(s.trim());
    if (!m) throw new InvalidArgumentError(`expected sizes like 1k,64k,1m, got "${s}"`);
    return Number(m[1]) * (m[2]?.toLowerCase() === "k" ? 1024 : m[2]?.toLowerCase() === "m" ? 1 << 20 : 1);
  });
}

program
  .command("compare")
  .description("drive a bounded workload through splice, buffered and direct; print a table per body size and write a chart")
  .option(
    "--sizes <list>",
    "response body sizes (by default 4 KiB, below the splice threshold, to 16 MiB)",
    sizeList,
    sizeList("4k,128k,256k,1m,16m"),
  )
  .option("--concurrency <n>", "requests in flight", positiveInt, 8)
  .option("--duration <ms>", "measured time per body size and path, over all rounds", positiveInt, 3000)
  .option("--requests <n>", "at most this many measured requests per body size and path", positiveInt, 6000)
  .option("--rounds <n>", "each path and size measured once per round, paths interleaved", positiveInt, 3)
  .option(
    "--warmup <ms>",
    "unmeasured load per path and size first (0: none)",
    (v: string) => (v === "0" ? 0 : positiveInt(v)),
    300,
  )
  .option(
    "--splice-threshold <bytes>",
    `the splice path's threshold (default ${DEFAULTS.splice.threshold})`,
    positiveInt,
    DEFAULTS.splice.threshold,
  )
  .option(
    "--upstream <host:port>",
    "an upstream serving GET /bytes/N (default: the built-in demo upstream)",
    hostPort("--upstream"),
  )
  .option("--out <file>", "HTML chart to write", "sluice-compare.html")
  .option("--tls-cert <file>", "run both sluice listeners with TLS, this certificate (bodies are then copied)")
  .option("--tls-key <file>", "the certificate's key")
  .action(async (o) => {
    if (Boolean(o.tlsCert) !== Boolean(o.tlsKey)) program.error("--tls-cert and --tls-key go together");
    const { runCompare } = await import("./tools/compare.js");
    const table = await runCompare({
      sizes: o.sizes,
      concurrency: o.concurrency,
      durationMs: o.duration,
      maxRequests: o.requests,
      rounds: o.rounds,
      warmupMs: o.warmup,
      spliceThreshold: o.spliceThreshold,
      upstream: o.upstream ?? null,
      out: o.out,
      tls: o.tlsCert ? { cert: resolve(o.tlsCert), key: resolve(o.tlsKey) } : null,
      forward: process.env.OTEL_EXPORTER_OTLP_ENDPOINT ?? null,
    });
    process.stdout.write(`${table}\nchart: ${o.out}\n`);
  });

/**
 * What `sluice health` asks by default: SLUICE_HEALTH_URL, else /healthz on the admin address
 * of the config the sluice running as PID 1 was started with (a container's HEALTHCHECK
 * follows the config, whatever it says), else the default admin address.
 */
async function defaultHealthUrl(): Promise<string> {
  if (process.env.SLUICE_HEALTH_URL) return process.env.SLUICE_HEALTH_URL;
  const fallback = "http://127.0.0.1:9901/healthz";
  let argv: string[];
  try {
    argv = readFileSync("/proc/1/cmdline", "latin1").split("\0");
  } catch {
    return fallback;
  }
  const i = argv.findIndex((a) => a === "--config" || a === "-c");
  const file = i >= 0 ? argv[i + 1] : argv.find((a) => a.startsWith("--config="))?.slice("--config=".length);
  if (!file) return fallback;
  try {
    const admin = (await loadConfigFile(file)).admin?.address;
    if (!admin) return fallback;
    const { host, port } = parseHostPort(admin, "admin.address");
    // A wildcard bind is asked on loopback.
    const asked = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
    return `http://${formatHostPort({ host: asked, port })}/healthz`;
  } catch {
    return fallback;
  }
}

program
  .command("health")
  .description("exit 0 when the admin port answers 200 (for container HEALTHCHECKs and exec probes)")
  .argument("[url]", "what to ask (default: the admin address of the running sluice's config)")
  .option("--timeout <ms>", "give up after", positiveInt, 2000)
  .action(async (given: string | undefined, o: { timeout: number }) => {
    const { request } = await import("undici");
    const url = given ?? (await defaultHealthUrl());
    try {
      const r = await request(url, { headersTimeout: o.timeout, bodyTimeout: o.timeout });
      await r.body.dump();
      process.stdout.write(`${url}: ${r.statusCode}\n`);
      process.exitCode = r.statusCode === 200 ? 0 : 1;
    } catch (err) {
      process.stderr.write(`${url}: ${(err as Error).message}\n`);
      process.exitCode = 1;
    }
  });

program
  .command("demo")
  .description("run a demo upstream and the proxy in front of it")
  .option("--port <port>", "proxy port", positiveInt, 8080)
  .option("--upstream-port <port>", "demo upstream port", positiveInt, 3000)
  .action(async (opts) => {
    holdStopSignals();
    reportEngine();
    const upstream = await startDemoUpstream({ host: "127.0.0.1", port: opts.upstreamPort });
    const flags = configFromFlags({
      listen: `127.0.0.1:${opts.port}`,
      upstream: formatHostPort(upstream.address),
      mode: "http",
      engine: "splice",
    });
    const runtime = new Runtime({ flags });
    await runtime.start();
    runtime.watch();
    const at = runtime.addresses().get("main") as string;
    log.info({ listen: at, upstream: formatHostPort(upstream.address) }, "demo running");
    process.stdout.write(`\nsluice demo: try\n  curl -s http://${at}/bytes/1073741824 | sha256sum\n\n`);
    exitOnSignals(() =>
      Promise.all([runtime.drain(), drainThenClose([upstream], DEFAULTS.drainTimeoutMs)]).then(([proxy, demo]) => ({
        timedOut: proxy.timedOut || demo.timedOut,
      })),
    );
  });

program.parseAsync(commandLine(isWorker)).catch((err: unknown) => {
  // One clear line for whoever started it; the stack only in the debug log.
  log.debug({ err }, "start failed");
  process.stderr.write(`sluice: cannot start: ${(err as Error).message ?? String(err)}\n`);
  process.exit(1);
});
