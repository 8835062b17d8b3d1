// An upstream cluster: endpoints with weights, each with its own connection pool; the
// load-balancing policy that picks one per request; active health checks and passive
// outlier ejection that take failing endpoints out of the picking, never all of them.
import { lookup, Resolver } from "node:dns/promises";
import { isIP } from "node:net";
import { formatHostPort, type HostPort } from "../base/address.js";
import { log, warnRateLimited } from "../base/log.js";
import type { UpstreamTlsSpec } from "../tls/origination.js";
import { type Connector, type PoolOptions, UpstreamPool } from "./pool.js";

export interface Endpoint {
  address: HostPort;
  label: string;
  weight: number;
  pool: UpstreamPool;
  /** Requests in flight, for least_request and random_two. */
  active: number;
  /** Smooth weighted round robin state. */
  current: number;
  /** Active health checking's verdict (true until a check says otherwise). */
  healthy: boolean;
  checkStreak: number;
  consecutiveFailures: number;
  ejectedUntil: number;
  ejections: number;
}

export type LbPolicy = "round_robin" | "least_request" | "random_two";

/** What one exchange told about its endpoint. */
export type UpstreamResult = "success" | "connect-failure" | "reset" | "timeout" | "5xx";

export interface OutlierOptions {
  consecutiveFailures: number;
  baseEjectionMs: number;
  maxEjectionMs: number;
  maxEjectedPercent: number;
}

export interface HealthCheckOptions {
  path: string;
  host: string | null;
  intervalMs: number;
  timeoutMs: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
}

export interface DnsOptions {
  refreshMs: number;
  /** host:port of DNS servers; empty: the system resolver. */
  servers: string[];
}

export interface ClusterOptions {
  /** How connections are made and read (the session's). */
  connector: Connector;
  /** TLS options for a connection to an endpoint (health checks over TLS use them too). */
  tlsConnect?: (endpoint: HostPort) => import("node:tls").ConnectionOptions;
  /** Told when outlier detection ejects an endpoint (metrics). */
  onEjection?: (cluster: string, endpoint: string) => void;
  dns?: DnsOptions;
  policy: LbPolicy;
  pool: PoolOptions;
  maxRetries: number;
  outlier: OutlierOptions;
  healthCheck: HealthCheckOptions | null;
  /** TLS to the endpoints; null: plain TCP. */
  tls: UpstreamTlsSpec | null;
}

export type ClusterHooks = Pick<ClusterOptions, "connector" | "onEjection" | "tlsConnect">;

/** What a cluster is made from: its endpoints and options with every default applied (config/compile.ts). */
export interface ClusterSpec {
  name: string;
  endpoints: ReadonlyArray<{ address: HostPort; weight: number }>;
  options: Omit<ClusterOptions, "connector" | "onEjection" | "tlsConnect">;
}

export class Cluster {
  endpoints: Endpoint[] = [];
  readonly policy: LbPolicy;
  retriesInFlight = 0;
  private timers = new Map<Endpoint, NodeJS.Timeout>();
  /** undici agents of health checks over TLS, one per endpoint (its SNI and verification). */
  private checkAgents = new Map<Endpoint, import("undici").Dispatcher>();
  private dnsTimer: NodeJS.Timeout | undefined;
  private closed = false;

  readonly name: string;
  /** Connections to the endpoints are TLS. */
  readonly tls: boolean;
  private readonly specs: ReadonlyArray<{ address: HostPort; weight: number }>;
  readonly opts: ClusterOptions;

  /** Endpoints may name hosts: call resolve() before the first pick. */
  constructor(spec: ClusterSpec, hooks: ClusterHooks) {
    this.name = spec.name;
    this.tls = spec.options.tls !== null;
    this.specs = spec.endpoints;
    this.opts = { ...spec.options, ...hooks };
    this.policy = this.opts.policy;
    this.setEndpoints(this.specs.filter((s) => isIP(s.address.host) !== 0 || s.address.host === "localhost"));
  }

  private newEndpoint(address: HostPort, weight: number): Endpoint {
    const e: Endpoint = {
      address,
      weight,
      label: formatHostPort(address),
      pool: new UpstreamPool(address, this.opts.pool, this.opts.connector),
      active: 0,
      current: 0,
      healthy: true,
      checkStreak: 0,
      consecutiveFailures: 0,
      ejectedUntil: 0,
      ejections: 0,
    };
    if (this.opts.healthCheck) this.startChecks(e, this.opts.healthCheck);
    return e;
  }

  /** Replaces the endpoint set, keeping the state and pools of addresses that stay. */
  private setEndpoints(list: Array<{ address: HostPort; weight: number }>): void {
    const old = new Map(this.endpoints.map((e) => [`${e.label}|${e.weight}`, e]));
    const next: Endpoint[] = [];
    for (const s of list) {
      const key = `${formatHostPort(s.address)}|${s.weight}`;
      const kept = old.get(key);
      old.delete(key);
      next.push(kept ?? this.newEndpoint(s.address, s.weight));
    }
    this.endpoints = next;
    // Gone addresses: idle connections close now, busy ones after their exchange.
    for (const e of old.values()) this.retire(e);
  }

  private retire(e: Endpoint): void {
    clearInterval(this.timers.get(e));
    this.timers.delete(e);
    e.pool.close();
    void this.checkAgents.get(e)?.close();
    this.checkAgents.delete(e);
  }

  /** Resolves named endpoints (all addresses of each), then again every dns.refresh. */
  async resolve(): Promise<void> {
    if (this.specs.every((s) => isIP(s.address.host) !== 0 || s.address.host === "localhost")) return;
    await this.refresh();
    const dns = this.opts.dns;
    if (dns && dns.refreshMs > 0 && !this.dnsTimer) {
      this.dnsTimer = setInterval(() => void this.refresh().catch(() => undefined), dns.refreshMs);
      this.dnsTimer.unref();
    }
  }

  private async refresh(): Promise<void> {
    const dns = this.opts.dns;
    const resolver = dns?.servers.length ? new Resolver() : null;
    if (resolver && dns) resolver.setServers(dns.servers);
    const list: Array<{ address: HostPort; weight: number }> = [];
    for (const s of this.specs) {
      if (isIP(s.address.host) !== 0 || s.address.host === "localhost") {
        list.push(s);
        continue;
      }
      try {
        const ips = resolver
          ? await resolver.resolve4(s.address.host)
          : (await lookup(s.address.host, { all: true })).map((a) => a.address);
        for (const ip of [...new Set(ips)].sort()) list.push({ address: { host: ip, port: s.address.port }, weight: s.weight });
      } catch (err) {
        // A name that doesn't resolve now keeps the addresses it had.
        warnRateLimited(
          `dns:${this.name}:${s.address.host}`,
          { cluster: this.name, host: s.address.host, err: (err as Error).message },
          "DNS resolution failed",
          60_000,
        );
        for (const e of this.endpoints)
          if (e.address.port === s.address.port && e.weight === s.weight) list.push({ address: e.address, weight: e.weight });
      }
    }
    if (this.closed) return;
    // Nothing resolves yet (a Service not created yet, DNS not ready): like Envoy, run with no
    // endpoint, answer 503 meanwhile, and keep resolving.
    if (list.length === 0)
      warnRateLimited(
        `dns-empty:${this.name}`,
        { cluster: this.name },
        "no endpoint address resolves yet: requests to this cluster get 503 until one does",
        60_000,
      );
    this.setEndpoints(list);
  }

  private startChecks(e: Endpoint, hc: HealthCheckOptions): void {
    const check = async () => {
      let ok = false;
      try {
        // undici only where health checks run: it is not small.
        const undici = await import("undici");
        const tlsOptions = this.opts.tlsConnect?.(e.address);
        // Over TLS, the check verifies the endpoint's certificate as requests do.
        if (tlsOptions && !this.checkAgents.has(e)) {
          const { host: _h, port: _p, ...connect } = tlsOptions;
          this.checkAgents.set(e, new undici.Agent({ connect }));
        }
        const res = await undici.request(`${tlsOptions ? "https" : "http"}://${e.label}${hc.path}`, {
          method: "GET",
          headers: hc.host ? { host: hc.host } : {},
          signal: AbortSignal.timeout(hc.timeoutMs),
          ...(tlsOptions ? { dispatcher: this.checkAgents.get(e) } : {}),
        });
        await res.body.dump();
        ok = res.statusCode >= 200 && res.statusCode < 400;
      } catch {
        ok = false;
      }
      // A streak of the same verdict flips the state, so one blip changes nothing.
      if (ok === e.healthy) e.checkStreak = 0;
      else if (++e.checkStreak >= (ok ? hc.healthyThreshold : hc.unhealthyThreshold)) {
        e.healthy = ok;
        e.checkStreak = 0;
        log.warn({ cluster: this.name, endpoint: e.label, healthy: ok }, "health check changed an endpoint's state");
      }
    };
    const timer = setInterval(() => void check(), hc.intervalMs);
    timer.unref();
    this.timers.set(e, timer);
    void check();
  }

  /** Feeds passive outlier detection. */
  report(e: Endpoint, result: UpstreamResult): void {
    if (result === "success") {
      e.consecutiveFailures = 0;
      return;
    }
    const o = this.opts.outlier;
    if (++e.consecutiveFailures < o.consecutiveFailures) return;
    e.consecutiveFailures = 0;
    const now = Date.now();
    const ejected = this.endpoints.filter((x) => x.ejectedUntil > now).length;
    // Never eject past the allowed share, and never the last endpoint standing.
    if (ejected + 1 > Math.floor((this.endpoints.length * o.maxEjectedPercent) / 100) || ejected + 1 >= this.endpoints.length)
      return;
    e.ejections++;
    e.ejectedUntil = now + Math.min(o.baseEjectionMs * e.ejections, o.maxEjectionMs);
    this.opts.onEjection?.(this.name, e.label);
    log.warn(
      { cluster: this.name, endpoint: e.label, forMs: e.ejectedUntil - now },
      "endpoint ejected after consecutive failures",
    );
  }

  /** Endpoints eligible now: healthy and not ejected; if none, healthy ones; if none, all (panic). */
  private candidates(exclude: ReadonlySet<Endpoint> | null): Endpoint[] {
    const now = Date.now();
    const pool = exclude === null || exclude.size === 0 ? this.endpoints : this.endpoints.filter((e) => !exclude.has(e));
    const usable = pool.length ? pool : this.endpoints;
    const best = usable.filter((e) => e.healthy && e.ejectedUntil <= now);
    if (best.length) return best;
    const healthy = usable.filter((e) => e.healthy);
    return healthy.length ? healthy : usable;
  }

  /** nginx's smooth weighted round robin: even spread, weights respected. */
  private roundRobin(list: Endpoint[]): Endpoint {
    const total = list.reduce((s, e) => s + e.weight, 0);
    let best = list[0] as Endpoint;
    for (const e of list) {
      e.current += e.weight;
      if (e.current > best.current) best = e;
    }
    best.current -= total;
    return best;
  }

  private weightedRandom(list: Endpoint[]): Endpoint {
    const total = list.reduce((s, e) => s + e.weight, 0);
    let r = Math.random() * total;
    for (const e of list) {
      r -= e.weight;
      if (r < 0) return e;
    }
    return list[list.length - 1] as Endpoint;
  }

  /** Picks an endpoint, avoiding `exclude` (those already tried) when another exists; null when it has none. */
  pick(exclude: ReadonlySet<Endpoint> | null = null): Endpoint | null {
    // One endpoint is every policy's answer, healthy or not (as below, where the unhealthy are the last resort).
    if (this.endpoints.length <= 1) return this.endpoints[0] ?? null;
    const list = this.candidates(exclude);
    if (list.length === 1) return list[0] as Endpoint;
    switch (this.policy) {
      case "round_robin":
        return this.roundRobin(list);
      case "least_request": {
        // Fewest in flight relative to weight; round robin among equals.
        let min = Number.POSITIVE_INFINITY;
        for (const e of list) min = Math.min(min, e.active / e.weight);
        const rr = this.roundRobin(list);
        if (rr.active / rr.weight === min) return rr;
        return list.find((e) => e.active / e.weight === min) as Endpoint;
      }
      case "random_two": {
        const a = this.weightedRandom(list);
        const b = this.weightedRandom(list);
        return b.active / b.weight < a.active / a.weight ? b : a;
      }
    }
  }

  close(): void {
    this.closed = true;
    clearInterval(this.dnsTimer);
    for (const e of this.endpoints) this.retire(e);
  }
}
