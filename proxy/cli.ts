#!/usr/bin/env node
// Command line: `sluice demo` and the no-file sidecar form.
import { Command, InvalidArgumentError, Option } from "commander";
import { formatHostPort, parseHostPort } from "./address.js";
import { ConfigError, loadConfigFile } from "./config/load.js";
import { startDemoUpstream } from "./demo-upstream.js";
import { defaultHttpOptions } from "./http/options.js";
import { startHttpProxy } from "./http/server.js";
import { log } from "./log.js";
import { spliceAddon, spliceUnavailableReason } from "./native.js";
import { Runtime } from "./runtime.js";
import { startTcpForwarder } from "./tcp-forwarder.js";
import { initTracing, shutdownTracing } from "./telemetry.js";

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

function reportEngine(): void {
  if (spliceAddon()) log.info({ pipeSize: spliceAddon()?.stats().pipeSize }, "splice engine loaded");
  else log.warn({ reason: spliceUnavailableReason() }, "splice engine unavailable, copying");
}

function stopOnSignals(stop: () => Promise<void>): void {
  const onSignal = (sig: string) => {
    log.info({ signal: sig }, "stopping");
    // Spans still queued go out before the process does.
    stop()
      .then(() => shutdownTracing())
      .then(() => process.exit(0));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
}

const program = new Command()
  .name("sluice")
  .description("Reverse proxy whose bodies cross with Linux splice()")
  .option("-c, --config <file>", "run from a YAML config file (reloaded on change and on SIGHUP)")
  .addOption(
    new Option("--listen <host:port>", "address to accept connections on").env("SLUICE_LISTEN").argParser(hostPort("--listen")),
  )
  .addOption(
    new Option("--upstream <host:port>", "where to forward them").env("SLUICE_UPSTREAM").argParser(hostPort("--upstream")),
  )
  .option("--mode <mode>", "http (reverse proxy) or tcp (raw tunnel per connection)", "http")
  .option("--engine <engine>", "http bodies: splice, or buffered (http-proxy-3)", "splice")
  .option("--splice-threshold <bytes>", "bodies and chunks of at least this size are spliced", positiveInt, 262144)
  .option("--connect-timeout <ms>", "upstream connect timeout", positiveInt, 5000)
  .option("--idle-timeout <ms>", "close a tunnel idle for this long", positiveInt, 300_000)
  .action(async (opts) => {
    if (opts.config) {
      if (opts.listen || opts.upstream) program.error("--config and --listen/--upstream exclude each other");
      reportEngine();
      const runtime = new Runtime(opts.config);
      try {
        await runtime.start();
      } catch (err) {
        if (err instanceof ConfigError) {
          process.stderr.write(`${err.message}\n`);
          process.exit(1);
        }
        throw err;
      }
      runtime.watch();
      log.info({ config: opts.config, listeners: Object.fromEntries(runtime.addresses()) }, "sluice running");
      stopOnSignals(() => runtime.close());
      return;
    }
    if (!opts.listen || !opts.upstream)
      program.error("--config, or --listen and --upstream, are required (or use `sluice demo`)");
    if (opts.mode !== "tcp" && opts.mode !== "http") program.error(`--mode ${opts.mode}: expected http or tcp`);
    if (opts.engine !== "splice" && opts.engine !== "buffered")
      program.error(`--engine ${opts.engine}: expected splice or buffered`);
    reportEngine();
    if (opts.mode === "http") {
      initTracing(undefined);
      const http = defaultHttpOptions(opts.listen, opts.upstream);
      http.engine = opts.engine;
      http.spliceThreshold = opts.spliceThreshold;
      http.pool.connectTimeoutMs = opts.connectTimeout;
      const proxy = await startHttpProxy(http);
      log.info(
        { listen: formatHostPort(proxy.address), upstream: formatHostPort(opts.upstream), engine: opts.engine },
        "http proxy listening",
      );
      stopOnSignals(proxy.close);
      return;
    }
    const fwd = await startTcpForwarder({
      listen: opts.listen,
      upstream: opts.upstream,
      connectTimeoutMs: opts.connectTimeout,
      idleTimeoutMs: opts.idleTimeout,
    });
    log.info({ listen: formatHostPort(fwd.address), upstream: formatHostPort(opts.upstream) }, "tcp forwarder listening");
    stopOnSignals(fwd.close);
  });

program
  .command("validate <file>")
  .description("check a config file; prints file:line:col for each problem, exits 0 or 1")
  .action((file: string) => {
    try {
      loadConfigFile(file);
      process.stdout.write(`${file}: ok\n`);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      process.stderr.write(`${err.message}\n`);
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
  .option("--sizes <list>", "response body sizes", sizeList, sizeList("1k,64k,1m,16m"))
  .option("--concurrency <n>", "requests in flight", positiveInt, 8)
  .option("--duration <ms>", "per body size and path", positiveInt, 2000)
  .option("--requests <n>", "at most this many requests per body size and path", positiveInt, 5000)
  .option(
    "--upstream <host:port>",
    "an upstream serving GET /bytes/N (default: the built-in demo upstream)",
    hostPort("--upstream"),
  )
  .option("--out <file>", "HTML chart to write", "sluice-compare.html")
  .action(async (o) => {
    const { runCompare } = await import("./compare.js");
    const table = await runCompare({
      sizes: o.sizes,
      concurrency: o.concurrency,
      durationMs: o.duration,
      maxRequests: o.requests,
      upstream: o.upstream ?? null,
      out: o.out,
      forward: process.env.OTEL_EXPORTER_OTLP_ENDPOINT ?? null,
    });
    process.stdout.write(`${table}\nchart: ${o.out}\n`);
  });

program
  .command("demo")
  .description("run a demo upstream and the proxy in front of it")
  .option("--port <port>", "proxy port", positiveInt, 8080)
  .option("--upstream-port <port>", "demo upstream port", positiveInt, 3000)
  .action(async (opts) => {
    reportEngine();
    const upstream = await startDemoUpstream({ host: "127.0.0.1", port: opts.upstreamPort });
    const fwd = await startHttpProxy(defaultHttpOptions({ host: "127.0.0.1", port: opts.port }, upstream.address));
    const at = formatHostPort(fwd.address);
    log.info({ listen: at, upstream: formatHostPort(upstream.address) }, "demo running");
    process.stdout.write(`\nsluice demo: try\n  curl -s http://${at}/bytes/1073741824 | sha256sum\n\n`);
    stopOnSignals(async () => {
      await fwd.close();
      await upstream.close();
    });
  });

program.parseAsync().catch((err: unknown) => {
  log.fatal({ err }, "sluice failed to start");
  process.exit(1);
});
