// An upstream cluster: endpoints with weights, each with its own connection pool; the
// load-balancing policy that picks one per request; active health checks and passive
// outlier ejection that take failing endpoints out of the picking, never all of them.
import { request } from "undici";
import { formatHostPort, type HostPort, parseHostPort } from "./address.js";
import type { ClusterFile } from "./config/types.js";
import { durationMs } from "./config/types.js";
import { type PoolOptions, UpstreamPool } from "./http/upstream-pool.js";
import { log } from "./log.js";

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

export interface ClusterOptions {
  policy: LbPolicy;
  pool: PoolOptions;
  maxRetries: number;
  outlier: OutlierOptions;
  healthCheck: HealthCheckOptions | null;
}

export const DEFAULT_OUTLIER: OutlierOptions = {
  consecutiveFailures: 5,
  baseEjectionMs: 30_000,
  maxEjectionMs: 300_000,
  maxEjectedPercent: 50,
};

export class Cluster {
  readonly endpoints: Endpoint[];
  readonly policy: LbPolicy;
  retriesInFlight = 0;
  private timers: NodeJS.Timeout[] = [];

  constructor(
    readonly name: string,
    endpoints: Array<{ address: HostPort; weight: number }>,
    readonly opts: ClusterOptions,
  ) {
    this.policy = opts.policy;
    this.endpoints = endpoints.map((e) => ({
      ...e,
      label: formatHostPort(e.address),
      pool: new UpstreamPool(e.address, opts.pool),
      active: 0,
      current: 0,
      healthy: true,
      checkStreak: 0,
      consecutiveFailures: 0,
      ejectedUntil: 0,
      ejections: 0,
    }));
    if (opts.healthCheck) for (const e of this.endpoints) this.startChecks(e, opts.healthCheck);
  }

  static fromFile(name: string, file: ClusterFile, defaults: PoolOptions): Cluster {
    const endpoints = file.endpoints.map((e) =>
      typeof e === "string"
        ? { address: parseHostPort(e, "endpoint"), weight: 1 }
        : { address: parseHostPort(e.address, "endpoint"), weight: e.weight ?? 1 },
    );
    const o = file.outlier_detection ?? {};
    const h = file.health_check;
    return new Cluster(name, endpoints, {
      policy: file.lb ?? "round_robin",
      pool: {
        maxConnections: file.pool?.max_connections ?? defaults.maxConnections,
        maxIdle: file.pool?.max_idle ?? defaults.maxIdle,
        idleTimeoutMs: durationMs(file.pool?.idle_timeout, defaults.idleTimeoutMs),
        connectTimeoutMs: durationMs(file.connect_timeout, defaults.connectTimeoutMs),
        queueTimeoutMs: durationMs(file.pool?.queue_timeout, defaults.queueTimeoutMs),
      },
      maxRetries: file.max_retries ?? 3,
      outlier: {
        consecutiveFailures: o.consecutive_failures ?? DEFAULT_OUTLIER.consecutiveFailures,
        baseEjectionMs: durationMs(o.base_ejection, DEFAULT_OUTLIER.baseEjectionMs),
        maxEjectionMs: durationMs(o.max_ejection, DEFAULT_OUTLIER.maxEjectionMs),
        maxEjectedPercent: o.max_ejected_percent ?? DEFAULT_OUTLIER.maxEjectedPercent,
      },
      healthCheck: h
        ? {
            path: h.path,
            host: h.host ?? null,
            intervalMs: durationMs(h.interval, 5000),
            timeoutMs: durationMs(h.timeout, 1000),
            healthyThreshold: h.healthy_threshold ?? 2,
            unhealthyThreshold: h.unhealthy_threshold ?? 3,
          }
        : null,
    });
  }

  /** Single-endpoint cluster for the no-file sidecar form. */
  static single(address: HostPort, pool: PoolOptions): Cluster {
    return new Cluster("upstream", [{ address, weight: 1 }], {
      policy: "round_robin",
      pool,
      maxRetries: 3,
      outlier: DEFAULT_OUTLIER,
      healthCheck: null,
    });
  }

  private startChecks(e: Endpoint, hc: HealthCheckOptions): void {
    const check = async () => {
      let ok = false;
      try {
        const res = await request(`http://${e.label}${hc.path}`, {
          method: "GET",
          headers: hc.host ? { host: hc.host } : {},
          signal: AbortSignal.timeout(hc.timeoutMs),
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
    this.timers.push(timer);
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
    log.warn(
      { cluster: this.name, endpoint: e.label, forMs: e.ejectedUntil - now },
      "endpoint ejected after consecutive failures",
    );
  }

  /** Endpoints eligible now: healthy and not ejected; if none, healthy ones; if none, all (panic). */
  private candidates(exclude: ReadonlySet<Endpoint>): Endpoint[] {
    const now = Date.now();
    const pool = this.endpoints.filter((e) => !exclude.has(e));
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

  /** Picks an endpoint, avoiding `exclude` (those already tried) when another exists. */
  pick(exclude: ReadonlySet<Endpoint> = new Set()): Endpoint {
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
    for (const t of this.timers) clearInterval(t);
    for (const e of this.endpoints) e.pool.close();
  }
}
