// A running sluice built from a config file: listeners, clusters and splice tuning,
// and the reload that swaps them for new requests while transfers in flight finish
// on what they started with.
import { createHash } from "node:crypto";
import { type FSWatcher, readFileSync, watch } from "node:fs";
import { basename, dirname } from "node:path";
import { formatHostPort, parseHostPort } from "../base/address.js";
import { log } from "../base/log.js";
import { defaultHttpOptions, type HttpProxyOptions } from "../config/http-options.js";
import { ConfigError, loadConfigText } from "../config/load.js";
import { type ConfigFile, durationMs, type ListenerFile } from "../config/types.js";
import { Metrics } from "../observe/metrics.js";
import type { Sinks } from "../observe/observation.js";
import { Tracing } from "../observe/telemetry.js";
import { RouteTable } from "../routing/route-table.js";
import { startHttpListener } from "../session/http-listener.js";
import type { HttpListenerState, RunningProxy } from "../session/listener-state.js";
import type { Listening } from "../session/listening.js";
import { type RunningForwarder, startTcpForwarder } from "../session/tcp-listener.js";
import { httpConnector } from "../session/upstream-connector.js";
import { spliceAddon } from "../transfer/native.js";
import { Cluster } from "../upstream/cluster.js";
import { startAdmin } from "./admin.js";
import { DEFAULT_DRAIN_MS, drainThenClose } from "./shutdown.js";

interface ListenerEntry {
  /** Listeners with the same key can take a new state in place. */
  key: string;
  running: RunningProxy | RunningForwarder;
  http: HttpListenerState | null;
  tcpCluster: Cluster | null;
}

export interface ReloadStatus {
  at: Date;
  ok: boolean;
  errors: string[];
}

function httpOptions(l: ListenerFile, cfg: ConfigFile): HttpProxyOptions {
  const address = parseHostPort(l.address, "address");
  const o = defaultHttpOptions(address, address);
  o.engine = l.engine ?? "splice";
  if (cfg.splice?.threshold !== undefined) o.spliceThreshold = cfg.splice.threshold;
  const lim = l.limits ?? {};
  o.limits = {
    maxHeadBytes: lim.max_head_bytes ?? o.limits.maxHeadBytes,
    maxHeaders: lim.max_headers ?? o.limits.maxHeaders,
    maxUriBytes: lim.max_uri_bytes ?? o.limits.maxUriBytes,
    maxBodyBytes: lim.max_body_bytes ?? o.limits.maxBodyBytes,
    maxConnections: lim.max_connections ?? o.limits.maxConnections,
  };
  const t = l.timeouts ?? {};
  o.timeouts = {
    headMs: durationMs(t.head, o.timeouts.headMs),
    keepAliveMs: durationMs(t.keep_alive, o.timeouts.keepAliveMs),
    firstByteMs: durationMs(t.first_byte, o.timeouts.firstByteMs),
    bodyIdleMs: durationMs(t.body_idle, o.timeouts.bodyIdleMs),
  };
  o.bufferedRatio = l.compare?.buffered_ratio ?? 0;
  o.forwarding = {
    xForwarded: l.forwarding?.x_forwarded ?? o.forwarding.xForwarded,
    via: l.forwarding?.via === false ? null : (l.forwarding?.via ?? o.forwarding.via),
    hostRewrite: null,
  };
  return o;
}

const listenerKey = (l: ListenerFile) => `${l.protocol ?? "http"}|${l.engine ?? "splice"}|${l.address}`;

/**
 * How this process takes part: `single` does everything; with workers, the `primary` keeps
 * the file, the watch and the admin port and tells `worker`s (which hold the listeners) to reload.
 */
export type RuntimeRole =
  | { kind: "single" }
  | { kind: "worker" }
  | {
      kind: "primary";
      /** Applies a config that loaded cleanly to the workers; throws when one refuses it. */
      apply(cfg: ConfigFile): Promise<void>;
      /** True once every worker is serving. */
      ready(): boolean;
      metrics(): Promise<{ contentType: string; text: string }>;
    };

export class Runtime {
  private listeners = new Map<string, ListenerEntry>();
  private clusters = new Map<string, Cluster>();
  private watcher: FSWatcher | null = null;
  private readonly onHangup = () => void this.reload();
  private lastHash = "";
  private reloading: Promise<ReloadStatus> | null = null;
  private config: ConfigFile | null = null;
  private admin: { address: string; running: Listening } | null = null;
  private draining = false;
  lastReload: ReloadStatus | null = null;
  /** Where this runtime's requests are observed; nothing is shared with another runtime. */
  readonly sinks: Sinks = { metrics: new Metrics(), tracing: null, accessLog: false };

  /** `accessLog`: on from the command line, whatever the file says. */
  constructor(
    readonly file: string,
    private readonly role: RuntimeRole = { kind: "single" },
    private readonly accessLogFlag = false,
  ) {}

  /** Loads the file and opens its listeners; a bad file throws ConfigError. */
  async start(): Promise<void> {
    const text = readFileSync(this.file, "utf8");
    const cfg = loadConfigText(text, this.file);
    if (this.role.kind === "primary") {
      // Workers open the listeners; this process only serves the admin port.
      this.config = cfg;
      await this.applyAdmin(cfg);
      this.lastHash = createHash("sha256").update(text).digest("hex");
      this.record(true, []);
      return;
    }
    // Telemetry settings are read once, at start.
    this.sinks.tracing = Tracing.fromConfig(cfg.telemetry);
    this.sinks.metrics.setSources({
      endpoints: () => {
        const now = Date.now();
        return [...this.clusters.values()].flatMap((c) =>
          c.endpoints.map((e) => ({ cluster: c.name, endpoint: e.label, healthy: e.healthy, ejected: e.ejectedUntil > now })),
        );
      },
      spansDropped: () => this.sinks.tracing?.stats().dropped ?? 0,
    });
    await this.apply(cfg);
    this.lastHash = createHash("sha256").update(text).digest("hex");
    this.record(true, []);
  }

  addresses(): Map<string, string> {
    return new Map([...this.listeners].map(([name, e]) => [name, formatHostPort(e.running.address)]));
  }

  adminAddress(): string | null {
    return this.admin ? formatHostPort(this.admin.running.address) : null;
  }

  /** Opens, moves or closes the admin listener as the config says. */
  private async applyAdmin(cfg: ConfigFile): Promise<void> {
    const want = cfg.admin?.address ?? null;
    if (this.admin && this.admin.address === want) return;
    await this.admin?.running.close();
    this.admin = null;
    if (want === null) return;
    const at = parseHostPort(want, "admin.address");
    // Status and metrics are read-only, but they say a lot about the traffic: say so when exposed.
    if (!/^(127\.|::1$|localhost$)/.test(at.host))
      log.warn({ admin: want }, "admin listener is reachable from the network, not only from this host");
    const running = await startAdmin(at, {
      config: () => this.config,
      lastReload: () => this.lastReload,
      accepting: () => !this.draining && (this.role.kind !== "primary" || this.role.ready()),
      metrics:
        this.role.kind === "primary"
          ? this.role.metrics
          : async () => ({
              contentType: this.sinks.metrics.registry.contentType,
              text: await this.sinks.metrics.registry.metrics(),
            }),
    });
    this.admin = { address: want, running };
  }

  /** Re-reads the file: valid, it applies to new requests; invalid, the old config stays. */
  reload(): Promise<ReloadStatus> {
    // Reloads never overlap; a change during one is picked up by the next.
    const run = async (): Promise<ReloadStatus> => {
      let text: string;
      try {
        text = readFileSync(this.file, "utf8");
      } catch (err) {
        return this.record(false, [`${this.file}: cannot read: ${(err as NodeJS.ErrnoException).code}`]);
      }
      const hash = createHash("sha256").update(text).digest("hex");
      if (hash === this.lastHash) return this.lastReload ?? this.record(true, []);
      let cfg: ConfigFile;
      try {
        cfg = loadConfigText(text, this.file);
      } catch (err) {
        if (err instanceof ConfigError) return this.record(false, err.message.split("\n"));
        throw err;
      }
      try {
        await this.apply(cfg);
      } catch (err) {
        return this.record(false, [`applying ${this.file}: ${(err as Error).message}`]);
      }
      this.lastHash = hash;
      return this.record(true, []);
    };
    const next = (this.reloading ?? Promise.resolve()).then(run, run);
    this.reloading = next;
    return next;
  }

  private record(ok: boolean, errors: string[]): ReloadStatus {
    this.lastReload = { at: new Date(), ok, errors };
    this.sinks.metrics.reloads.inc({ result: ok ? "success" : "failure" });
    if (ok) log.info({ file: this.file }, "configuration loaded");
    else log.error({ file: this.file, errors }, "configuration rejected, keeping the previous one");
    return this.lastReload;
  }

  /** Marks the process as draining: /readyz answers 503 from now on. */
  startDraining(): void {
    this.draining = true;
    this.stopWatching();
  }

  /** Reloads on SIGHUP and when the file changes (the directory is watched: editors and ConfigMaps replace files). */
  watch(): void {
    process.on("SIGHUP", this.onHangup);
    let timer: NodeJS.Timeout | undefined;
    const name = basename(this.file);
    this.watcher = watch(dirname(this.file), (_event, changed) => {
      if (changed !== null && changed !== name && !changed.startsWith("..")) return;
      clearTimeout(timer);
      timer = setTimeout(() => void this.reload(), 100);
    });
  }

  private async apply(cfg: ConfigFile): Promise<void> {
    if (this.role.kind === "primary") {
      await this.role.apply(cfg);
      this.config = cfg;
      return this.applyAdmin(cfg);
    }
    const addon = spliceAddon();
    if (addon && cfg.splice) {
      const s = addon.stats();
      addon.configure(
        cfg.splice.pipe_size ?? s.pipeSize,
        cfg.splice.max_idle_pipes ?? s.maxIdle,
        cfg.splice.max_pipes ?? s.maxPipes,
      );
    }
    const defaults = defaultHttpOptions({ host: "127.0.0.1", port: 0 }, { host: "127.0.0.1", port: 0 }).pool;
    const hooks = {
      connector: httpConnector,
      onEjection: (cluster: string, endpoint: string) => this.sinks.metrics.ejections.inc({ cluster, endpoint }),
    };
    const clusters = new Map(
      Object.entries(cfg.clusters ?? {}).map(([name, c]) => [name, Cluster.fromFile(name, c, defaults, hooks)]),
    );
    try {
      await Promise.all([...clusters.values()].map((c) => c.resolve()));
    } catch (err) {
      for (const c of clusters.values()) c.close();
      throw err;
    }
    const next = new Map<string, ListenerEntry>();
    const opened: ListenerEntry[] = [];
    try {
      for (const l of cfg.listeners) {
        const key = listenerKey(l);
        const old = this.listeners.get(l.name);
        const http =
          (l.protocol ?? "http") === "http"
            ? { opts: httpOptions(l, cfg), routes: new RouteTable(l.routes ?? []), clusters }
            : null;
        const tcpCluster = l.cluster !== undefined ? (clusters.get(l.cluster) ?? null) : null;
        if (old && old.key === key) {
          // Same socket, new state: the listener's state source reads the entry.
          old.http = http;
          old.tcpCluster = tcpCluster;
          next.set(l.name, old);
          continue;
        }
        const holder = this.findByAddress(l.address);
        if (holder) await holder.running.stopAccepting();
        const entry: ListenerEntry = { key, running: null as unknown as RunningProxy, http, tcpCluster };
        const address = parseHostPort(l.address, "address");
        if (http)
          entry.running = await startHttpListener(
            address,
            l.engine ?? "splice",
            () => entry.http as HttpListenerState,
            this.sinks,
          );
        else {
          entry.running = await startTcpForwarder({
            listen: address,
            upstream: () => (entry.tcpCluster as Cluster).pick()?.address ?? null,
            tunnels: this.sinks.metrics.activeTunnels,
            connectTimeoutMs: defaults.connectTimeoutMs,
            idleTimeoutMs: 3_600_000,
          });
        }
        opened.push(entry);
        next.set(l.name, entry);
      }
    } catch (err) {
      // The new set could not be opened: close what was opened, keep the old set running.
      for (const e of opened) await e.running.close();
      for (const c of clusters.values()) c.close();
      throw err;
    }
    for (const [name, e] of this.listeners) {
      if (next.get(name) !== e) await e.running.stopAccepting().catch(() => undefined);
    }
    const oldClusters = this.clusters;
    this.listeners = next;
    this.clusters = clusters;
    this.config = cfg;
    this.sinks.accessLog = this.accessLogFlag || (cfg.access_log ?? false);
    if (this.role.kind === "single")
      await this.applyAdmin(cfg).catch((err: Error) => log.error({ err: err.message }, "admin listener could not be opened"));
    // Idle pooled connections go; those in use finish their exchange and are closed then.
    for (const c of oldClusters.values()) c.close();
  }

  private findByAddress(address: string): ListenerEntry | undefined {
    if (address.endsWith(":0")) return undefined;
    for (const e of this.listeners.values()) if (e.key.endsWith(`|${address}`)) return e;
    return undefined;
  }

  /** Drain timeout from the file (`drain_timeout`), or the default. */
  drainTimeoutMs(): number {
    return durationMs(this.config?.drain_timeout, DEFAULT_DRAIN_MS);
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
