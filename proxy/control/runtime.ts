// A running sluice: the one place where a config becomes listeners, clusters and splice
// tuning, whether it came from a file or from the command line's flags. A reload compiles the
// new config and swaps it in for new requests; transfers in flight finish on what they started with.
import { type FSWatcher, watch } from "node:fs";
import { basename, dirname } from "node:path";
import { formatHostPort, type HostPort, parseHostPort } from "../base/address.js";
import { log } from "../base/log.js";
import { type CompiledConfig, compileConfig, type ListenerSpec } from "../config/compile.js";
import { DEFAULTS } from "../config/defaults.js";
import { ConfigError, loadConfigFile, loadConfigText } from "../config/load.js";
import type { ConfigFile } from "../config/types.js";
import { ACCESS_LOG_FIELDS } from "../config/types.js";
import { Metrics } from "../observe/metrics.js";
import type { Sinks } from "../observe/observation.js";
import { Tracing } from "../observe/telemetry.js";
import { RouteTable } from "../routing/route-table.js";
import { Admission } from "../session/admission.js";
import { startHttpListener } from "../session/http-listener.js";
import type { HttpListenerState, RunningProxy } from "../session/listener-state.js";
import { checkAddressFree, type Listening } from "../session/listening.js";
import { type RunningForwarder, startTcpForwarder } from "../session/tcp-listener.js";
import { httpConnector, tlsConnector } from "../session/upstream-connector.js";
import { UpstreamTls } from "../tls/origination.js";
import { spliceAddon } from "../transfer/native.js";
import { Cluster } from "../upstream/cluster.js";
import { startAdmin } from "./admin.js";
import { drainThenClose } from "./shutdown.js";

interface ListenerEntry {
  spec: ListenerSpec;
  running: RunningProxy | RunningForwarder;
  http: HttpListenerState | null;
  tcpCluster: Cluster | null;
}

export interface ReloadStatus {
  at: Date;
  ok: boolean;
  errors: string[];
  /** Settings changed in the config that only a restart applies (they are read at start). */
  restartPending?: string[];
}

/** Top-level settings read once, at start: a reload that changes them says so. */
const RESTART_ONLY = ["workers", "telemetry"] as const;

/** Where the config comes from: a file (watched, reloaded), or the command line's flags (fixed). */
export type ConfigSource = { file: string } | { flags: ConfigFile };

/**
 * How this process takes part: `single` does everything; with workers, the `primary` keeps
 * the config, the watch and the admin port and sends the config to the `worker`s, which hold
 * the listeners and never read the file themselves.
 */
export type RuntimeRole =
  | { kind: "single" }
  | { kind: "worker" }
  | {
      kind: "primary";
      /** Runs a config that loaded cleanly on the workers; throws when one refuses it. */
      apply(cfg: CompiledConfig): Promise<void>;
      /** True while every worker serves the current config. */
      ready(): boolean;
      metrics(): Promise<{ contentType: string; text: string }>;
    };

/**
 * A primary's check of the listener addresses `next` adds to `running` (all of them at start):
 * its workers bind with SO_REUSEPORT, and would share a port with another sluice's workers
 * without a word; bound once here without the option, a port in use fails the start or the
 * reload as it would a single process's (checkAddressFree).
 */
async function checkNewAddresses(next: CompiledConfig, running: CompiledConfig | null): Promise<void> {
  const served = new Set(running?.listeners.map((l) => formatHostPort(l.address)) ?? []);
  for (const l of next.listeners) if (!served.has(formatHostPort(l.address))) await checkAddressFree(l.address);
}

export class Runtime {
  private listeners = new Map<string, ListenerEntry>();
  private clusters = new Map<string, Cluster>();
  private watcher: FSWatcher | null = null;
  private readonly onHangup = () => {
    if ("file" in this.source) void this.reload();
    else log.info("SIGHUP: started from flags, there is no file to reload");
  };
  private reloading: Promise<ReloadStatus> | null = null;
  /** The config read at start: restart-only settings are compared with it. */
  private startedWith: ConfigFile | null = null;
  private compiled: CompiledConfig | null = null;
  private admin: { address: string; running: Listening } | null = null;
  private draining = false;
  lastReload: ReloadStatus | null = null;
  /** Where this runtime's requests are observed; nothing is shared with another runtime. */
  readonly sinks: Sinks = { metrics: new Metrics(), tracing: null, accessLog: null };
  /** Connection admission for all of this process's listeners. */
  private readonly admission = new Admission();

  /** `accessLogFlag`: on from the command line, whatever the config says. */
  constructor(
    private readonly source: ConfigSource,
    private readonly role: RuntimeRole = { kind: "single" },
    private readonly accessLogFlag = false,
  ) {}

  /** What names the config in messages. */
  get origin(): string {
    return "file" in this.source ? this.source.file : "command line";
  }

  /** The config in force, compiled; null before the first. */
  get current(): CompiledConfig | null {
    return this.compiled;
  }

  /** Reads and checks the config from its source; a bad one throws ConfigError. */
  private async load(): Promise<ConfigFile> {
    if ("flags" in this.source) return loadConfigText(JSON.stringify(this.source.flags), this.origin);
    return loadConfigFile(this.source.file);
  }

  /**
   * Loads the config (or runs `given`, what a worker's primary sent) and opens its listeners;
   * a bad config throws ConfigError.
   */
  async start(given?: ConfigFile): Promise<void> {
    const compiled = compileConfig(given ?? (await this.load()));
    this.startedWith = compiled.source;
    // Telemetry settings are read once, at start.
    this.sinks.tracing = this.role.kind === "primary" ? null : await Tracing.fromConfig(compiled.source.telemetry);
    this.sinks.metrics.setSources({
      endpoints: () => {
        const now = Date.now();
        return [...this.clusters.values()].flatMap((c) =>
          c.endpoints.map((e) => ({ cluster: c.name, endpoint: e.label, healthy: e.healthy, ejected: e.ejectedUntil > now })),
        );
      },
      spansDropped: () => this.sinks.tracing?.stats().dropped ?? 0,
      exportWorkerRestarts: () => this.sinks.tracing?.stats().restarts ?? 0,
    });
    if (this.role.kind === "primary") {
      // Workers open the listeners; this process serves the admin port and hands them the config.
      await checkNewAddresses(compiled, null);
      this.compiled = compiled;
      await this.applyAdmin(compiled);
    } else await this.apply(compiled, true);
    this.record(true, []);
  }

  addresses(): Map<string, string> {
    return new Map([...this.listeners].map(([name, e]) => [name, formatHostPort(e.running.address)]));
  }

  adminAddress(): string | null {
    return this.admin ? formatHostPort(this.admin.running.address) : null;
  }

  /** Opens, moves or closes the admin listener as the config says. */
  private async applyAdmin(cfg: CompiledConfig): Promise<void> {
    const want = this.role.kind === "worker" ? null : cfg.admin;
    if (this.admin && this.admin.address === want) return;
    if (want === null) {
      await this.admin?.running.close();
      this.admin = null;
      return;
    }
    const at = parseHostPort(want, "admin.address");
    // Status and metrics are read-only, but they say a lot about the traffic: say so when exposed.
    if (!/^(127\.|::1$|localhost$)/.test(at.host))
      log.warn({ admin: want }, "admin listener is reachable from the network, not only from this host");
    const registry = this.sinks.metrics.registry;
    const running = await startAdmin(at, {
      config: () => this.compiled?.source ?? null,
      lastReload: () => this.lastReload,
      accepting: () => !this.draining && (this.role.kind !== "primary" || this.role.ready()),
      exposeConfig: () => this.compiled?.source.admin?.expose_config ?? false,
      metrics:
        this.role.kind === "primary"
          ? this.role.metrics
          : async () => ({ contentType: registry.contentType, text: await registry.metrics() }),
    }).catch((err: NodeJS.ErrnoException) => {
      throw new Error(`admin listener ${want}: ${err.code ?? err.message}`);
    });
    // The new one is bound: only now does the old one go.
    await this.admin?.running.close();
    this.admin = { address: want, running };
  }

  /** Re-reads the file: valid, it applies to new requests; invalid, the old config stays. */
  reload(): Promise<ReloadStatus> {
    // Reloads never overlap; a change during one is picked up by the next.
    const run = async (): Promise<ReloadStatus> => {
      let cfg: ConfigFile;
      try {
        cfg = await this.load();
      } catch (err) {
        if (err instanceof ConfigError) return this.record(false, err.message.split("\n"));
        return this.record(false, [
          `${this.origin}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        ]);
      }
      return this.run(cfg);
    };
    const next = (this.reloading ?? Promise.resolve()).then(run, run);
    this.reloading = next;
    return next;
  }

  /** Runs `cfg` (already checked) in place of the current config: a reload, or what a worker's primary sent. */
  async run(cfg: ConfigFile): Promise<ReloadStatus> {
    const compiled = compileConfig(cfg);
    if (compiled.hash === this.compiled?.hash) {
      log.info({ config: this.origin }, "configuration unchanged");
      return this.lastReload ?? this.record(true, []);
    }
    try {
      await this.apply(compiled);
    } catch (err) {
      return this.record(false, [`applying ${this.origin}: ${(err as Error).message}`]);
    }
    return this.record(true, [], this.restartPending(compiled.source));
  }

  /** The restart-only settings in which `cfg` differs from the config this process started with. */
  private restartPending(cfg: ConfigFile): string[] {
    const started = this.startedWith;
    if (started === null || this.role.kind === "worker") return [];
    return RESTART_ONLY.filter((k) => JSON.stringify(cfg[k] ?? null) !== JSON.stringify(started[k] ?? null));
  }

  private record(ok: boolean, errors: string[], restartPending: string[] = []): ReloadStatus {
    this.lastReload = { at: new Date(), ok, errors, ...(restartPending.length > 0 ? { restartPending } : {}) };
    this.sinks.metrics.reloads.inc({ result: ok ? "success" : "failure" });
    if (ok) this.sinks.metrics.restartPending.set(restartPending.length);
    if (ok) log.info({ config: this.origin }, "configuration loaded");
    else log.error({ config: this.origin, errors }, "configuration rejected, keeping the previous one");
    if (restartPending.length > 0)
      log.warn(
        { config: this.origin, settings: restartPending },
        "these settings changed but take effect only at the next restart",
      );
    return this.lastReload;
  }

  /** Marks the process as draining: /readyz answers 503 from now on. */
  startDraining(): void {
    this.draining = true;
    this.stopWatching();
  }

  /**
   * Reloads on SIGHUP and when the file changes (the directory is watched: editors and
   * ConfigMaps replace files). Started from flags, SIGHUP only says there is nothing to reload.
   */
  watch(): void {
    process.on("SIGHUP", this.onHangup);
    if (!("file" in this.source)) return;
    let timer: NodeJS.Timeout | undefined;
    const name = basename(this.source.file);
    this.watcher = watch(dirname(this.source.file), (_event, changed) => {
      if (changed !== null && changed !== name && !changed.startsWith("..")) return;
      clearTimeout(timer);
      timer = setTimeout(() => void this.reload(), 100);
    });
  }

  /** `atStart`: an admin port that can't be bound is fatal (probes would fail with no word why). */
  private async apply(cfg: CompiledConfig, atStart = false): Promise<void> {
    if (this.role.kind === "primary") {
      await checkNewAddresses(cfg, this.compiled);
      await this.role.apply(cfg);
      this.compiled = cfg;
      return this.applyAdmin(cfg);
    }
    const addon = spliceAddon();
    if (addon) {
      const s = addon.stats();
      const size = Math.min(cfg.splice.pipeSize ?? s.pipeSize, s.systemMaxPipeSize);
      // Idle pipes are bounded by the memory they hold, and by a count if one is given.
      const byBytes = Math.floor(cfg.splice.maxIdleBytes / size);
      const maxIdle = Math.min(byBytes, cfg.splice.maxIdlePipes ?? byBytes);
      addon.configure(size, maxIdle, cfg.splice.maxPipes ?? s.maxPipes);
    }
    const onEjection = (cluster: string, endpoint: string) => this.sinks.metrics.ejections.inc({ cluster, endpoint });
    // A cluster with TLS reads its CA and client certificate now: a file that can't be used fails the (re)load.
    const clusters = new Map<string, Cluster>();
    try {
      for (const spec of cfg.clusters) {
        if (!spec.options.tls) clusters.set(spec.name, new Cluster(spec, { connector: httpConnector, onEjection }));
        else {
          const upstreamTls = new UpstreamTls(spec.options.tls);
          const tlsConnect = (e: HostPort) => upstreamTls.connectOptions(e);
          clusters.set(spec.name, new Cluster(spec, { connector: tlsConnector(upstreamTls), onEjection, tlsConnect }));
        }
      }
      await Promise.all([...clusters.values()].map((c) => c.resolve()));
    } catch (err) {
      for (const c of clusters.values()) c.close();
      throw err;
    }
    // All or nothing: every new socket is opened before anything that runs is touched, and a
    // failure puts back what was there. First the listeners on addresses nobody holds; then
    // those that replace a running listener on its own address (which must stop accepting first).
    const next = new Map<string, ListenerEntry>();
    const kept: Array<[ListenerEntry, ListenerSpec, HttpListenerState | null, Cluster | null]> = [];
    const replacing: Array<[ListenerSpec, ListenerEntry]> = [];
    const fresh: ListenerSpec[] = [];
    for (const spec of cfg.listeners) {
      const old = this.listeners.get(spec.name);
      if (old && old.spec.key === spec.key)
        kept.push([old, spec, this.stateFor(spec, clusters), this.tcpClusterFor(spec, clusters)]);
      else {
        const holder = this.findByAddress(spec);
        if (holder) replacing.push([spec, holder]);
        else fresh.push(spec);
      }
    }
    const opened: ListenerEntry[] = [];
    const stopped: ListenerEntry[] = [];
    try {
      for (const spec of fresh) opened.push(await this.open(spec, clusters));
      for (const [spec, holder] of replacing) {
        await holder.running.stopAccepting();
        stopped.push(holder);
        opened.push(await this.open(spec, clusters));
      }
    } catch (err) {
      // The new set could not be opened: close what was opened, keep the old set running.
      for (const e of opened) await e.running.close();
      for (const e of stopped)
        await e.running.resumeAccepting().catch((e2: Error) => log.error({ err: e2.message }, "listener could not be resumed"));
      for (const c of clusters.values()) c.close();
      throw err;
    }
    // Commit: listeners that stay take their new state (their source reads the entry).
    for (const [entry, spec, http, tcpCluster] of kept) {
      entry.spec = spec;
      entry.http = http;
      entry.tcpCluster = tcpCluster;
      next.set(spec.name, entry);
    }
    for (const e of opened) next.set(e.spec.name, e);
    for (const [name, e] of this.listeners) {
      if (next.get(name) !== e) await e.running.stopAccepting().catch(() => undefined);
    }
    const oldClusters = this.clusters;
    this.listeners = next;
    this.clusters = clusters;
    this.compiled = cfg;
    this.admission.setLimit(cfg.maxConnections);
    // --access-log turns on every field, unless the file chose some.
    this.sinks.accessLog = cfg.accessLog ?? (this.accessLogFlag ? ACCESS_LOG_FIELDS : null);
    if (this.role.kind === "single" && atStart) await this.applyAdmin(cfg);
    else if (this.role.kind === "single")
      await this.applyAdmin(cfg).catch((err: Error) =>
        log.error({ err: err.message }, "the new admin address could not be bound: the admin listener stays where it was"),
      );
    // Idle pooled connections go; those in use finish their exchange and are closed then.
    for (const c of oldClusters.values()) c.close();
  }

  private stateFor(spec: ListenerSpec, clusters: Map<string, Cluster>): HttpListenerState | null {
    return spec.http ? { opts: spec.http, routes: new RouteTable(spec.routes), clusters } : null;
  }

  private tcpClusterFor(spec: ListenerSpec, clusters: Map<string, Cluster>): Cluster | null {
    return spec.cluster !== null ? (clusters.get(spec.cluster) ?? null) : null;
  }

  /** Opens a listener for `spec` on its address. */
  private async open(spec: ListenerSpec, clusters: Map<string, Cluster>): Promise<ListenerEntry> {
    const entry: ListenerEntry = {
      spec,
      running: null as unknown as RunningProxy,
      http: this.stateFor(spec, clusters),
      tcpCluster: this.tcpClusterFor(spec, clusters),
    };
    if (spec.http)
      entry.running = await startHttpListener(
        spec.address,
        spec.http.engine,
        () => entry.http as HttpListenerState,
        this.sinks,
        this.admission,
        spec.tls,
      );
    else
      entry.running = await startTcpForwarder({
        listen: spec.address,
        upstream: () => (entry.tcpCluster as Cluster).pick()?.address ?? null,
        tunnels: this.sinks.metrics.activeTunnels,
        admission: this.admission,
        refused: (reason) => this.sinks.metrics.connectionsRefused.inc({ listener: formatHostPort(spec.address), reason }),
        connectTimeoutMs: entry.tcpCluster?.opts.pool.connectTimeoutMs ?? DEFAULTS.cluster.pool.connectTimeoutMs,
        idleTimeoutMs: spec.tcpIdleTimeoutMs,
      });
    return entry;
  }

  private findByAddress(spec: ListenerSpec): ListenerEntry | undefined {
    if (spec.address.port === 0) return undefined;
    const at = formatHostPort(spec.address);
    for (const e of this.listeners.values()) if (formatHostPort(e.spec.address) === at) return e;
    return undefined;
  }

  /** Drain timeout from the config (`drain_timeout`), or the default. */
  drainTimeoutMs(): number {
    return this.compiled?.drainTimeoutMs ?? DEFAULTS.drainTimeoutMs;
  }

  /**
   * Graceful stop: /readyz turns 503 at once, listeners stop accepting, idle connections close,
   * in-flight exchanges and tunnels get until the drain timeout; then everything closes.
   */
  async drain(timeoutMs = this.drainTimeoutMs()): Promise<{ timedOut: boolean }> {
    this.startDraining();
    const result = await drainThenClose(
      [...this.listeners.values()].map((e) => e.running),
      timeoutMs,
    );
    await this.close();
    return result;
  }

  private stopWatching(): void {
    this.watcher?.close();
    this.watcher = null;
    process.off("SIGHUP", this.onHangup);
  }

  async close(): Promise<void> {
    this.stopWatching();
    await this.admin?.running.close();
    for (const e of this.listeners.values()) await e.running.close();
    for (const c of this.clusters.values()) c.close();
    this.listeners.clear();
    await this.sinks.tracing?.shutdown();
  }
}
