#!/usr/bin/env node
// Command line: `sluice demo` and the no-file sidecar form.
import { Command, InvalidArgumentError } from "commander";
import { formatHostPort, parseHostPort } from "./address.js";
import { startDemoUpstream } from "./demo-upstream.js";
import { defaultHttpOptions } from "./http/options.js";
import { startHttpProxy } from "./http/server.js";
import { log } from "./log.js";
import { spliceAddon, spliceUnavailableReason } from "./native.js";
import { startTcpForwarder } from "./tcp-forwarder.js";

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
    stop().then(() => process.exit(0));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
}

const program = new Command()
  .name("sluice")
  .description("Reverse proxy whose bodies cross with Linux splice()")
  .option("--listen <host:port>", "address to accept connections on", hostPort("--listen"))
  .option("--upstream <host:port>", "where to forward them", hostPort("--upstream"))
  .option("--mode <mode>", "http (reverse proxy) or tcp (raw tunnel per connection)", "http")
  .option("--engine <engine>", "http bodies: splice, or buffered (http-proxy-3)", "splice")
  .option("--splice-threshold <bytes>", "bodies and chunks of at least this size are spliced", positiveInt, 262144)
  .option("--connect-timeout <ms>", "upstream connect timeout", positiveInt, 5000)
  .option("--idle-timeout <ms>", "close a tunnel idle for this long", positiveInt, 300_000)
  .action(async (opts) => {
    if (!opts.listen || !opts.upstream) program.error("--listen and --upstream are required (or use `sluice demo`)");
    if (opts.mode !== "tcp" && opts.mode !== "http") program.error(`--mode ${opts.mode}: expected http or tcp`);
    if (opts.engine !== "splice" && opts.engine !== "buffered")
      program.error(`--engine ${opts.engine}: expected splice or buffered`);
    reportEngine();
    if (opts.mode === "http") {
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
