// An upstream cluster: endpoints with weights, each with its own connection pool, and
// the load-balancing policy that picks one per request.
import { formatHostPort, type HostPort, parseHostPort } from "./address.js";
import type { ClusterFile } from "./config/types.js";
import { durationMs } from "./config/types.js";
import { type PoolOptions, UpstreamPool } from "./http/upstream-pool.js";

export interface Endpoint {
  address: HostPort;
  label: string;
  weight: number;
  pool: UpstreamPool;
  /** Requests in flight, for least_request and random_two. */
  active: number;
  /** Smooth weighted round robin state. */
  current: number;
}

export type LbPolicy = "round_robin" | "least_request" | "random_two";

export class Cluster {
  readonly endpoints: Endpoint[];
  private readonly totalWeight: number;

  constructor(
    readonly name: string,
    readonly policy: LbPolicy,
    endpoints: Array<{ address: HostPort; weight: number }>,
    pool: PoolOptions,
  ) {
    this.endpoints = endpoints.map((e) => ({
      ...e,
      label: formatHostPort(e.address),
      pool: new UpstreamPool(e.address, pool),
      active: 0,
      current: 0,
    }));
    this.totalWeight = this.endpoints.reduce((s, e) => s + e.weight, 0);
  }

  static fromFile(name: string, file: ClusterFile, defaults: PoolOptions): Cluster {
    const endpoints = file.endpoints.map((e) =>
      typeof e === "string"
        ? { address: parseHostPort(e, "endpoint"), weight: 1 }
        : { address: parseHostPort(e.address, "endpoint"), weight: e.weight ?? 1 },
    );
    const pool: PoolOptions = {
      maxConnections: file.pool?.max_connections ?? defaults.maxConnections,
      maxIdle: file.pool?.max_idle ?? defaults.maxIdle,
      idleTimeoutMs: durationMs(file.pool?.idle_timeout, defaults.idleTimeoutMs),
      connectTimeoutMs: durationMs(file.connect_timeout, defaults.connectTimeoutMs),
      queueTimeoutMs: durationMs(file.pool?.queue_timeout, defaults.queueTimeoutMs),
    };
    return new Cluster(name, file.lb ?? "round_robin", endpoints, pool);
  }

  /** nginx's smooth weighted round robin: even spread, weights respected. */
  private roundRobin(): Endpoint {
    let best = this.endpoints[0] as Endpoint;
    for (const e of this.endpoints) {
      e.current += e.weight;
      if (e.current > best.current) best = e;
    }
    best.current -= this.totalWeight;
    return best;
  }

  private weightedRandom(): Endpoint {
    let r = Math.random() * this.totalWeight;
    for (const e of this.endpoints) {
      r -= e.weight;
      if (r < 0) return e;
    }
    return this.endpoints[this.endpoints.length - 1] as Endpoint;
  }

  pick(): Endpoint {
    if (this.endpoints.length === 1) return this.endpoints[0] as Endpoint;
    switch (this.policy) {
      case "round_robin":
        return this.roundRobin();
      case "least_request": {
        // Fewest in flight relative to weight; round robin among equals.
        let min = Number.POSITIVE_INFINITY;
        for (const e of this.endpoints) min = Math.min(min, e.active / e.weight);
        const rr = this.roundRobin();
        if (rr.active / rr.weight === min) return rr;
        return this.endpoints.find((e) => e.active / e.weight === min) as Endpoint;
      }
      case "random_two": {
        const a = this.weightedRandom();
        const b = this.weightedRandom();
        return b.active / b.weight < a.active / a.weight ? b : a;
      }
    }
  }

  close(): void {
    for (const e of this.endpoints) e.pool.close();
  }
}
