// Prometheus metrics, served by the admin listener at /metrics. Counters are updated on
// the request path with plain increments; gauges about pools and endpoints are read
// only when scraped.
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { spliceAddon } from "../transfer/native.js";
import { telemetryStats } from "./telemetry.js";

export const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: "sluice_" });

export type EngineLabel = "splice" | "copy" | "buffered" | "local";

const requestDuration = new Histogram({
  name: "sluice_http_request_duration_seconds",
  help: "Time from a request head to the end of its response, by engine, route and status class.",
  labelNames: ["engine", "route", "status_class"] as const,
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  registers: [registry],
});

const bodyBytes = new Counter({
  name: "sluice_body_bytes_total",
  help: "Body bytes moved, by engine, direction (request: client to upstream) and path (spliced or copied).",
  labelNames: ["engine", "direction", "path"] as const,
  registers: [registry],
});

export const activeConnections = new Gauge({
  name: "sluice_active_connections",
  help: "Client connections open, by listener.",
  labelNames: ["listener"] as const,
  registers: [registry],
});

export const activeTunnels = new Gauge({
  name: "sluice_active_tunnels",
  help: "Upgrade, CONNECT and TCP tunnels open.",
  registers: [registry],
});

export const spliceFallbacks = new Counter({
  name: "sluice_splice_fallbacks_total",
  help: "Transfers that were to be spliced but were copied because no pipe or descriptor could be had (EMFILE, ENFILE, EAGAIN: pool cap).",
  labelNames: ["reason"] as const,
  registers: [registry],
});

export const connectionsRefused = new Counter({
  name: "sluice_connections_refused_total",
  help: "Client connections answered 503 and closed at once, by listener and reason.",
  labelNames: ["listener", "reason"] as const,
  registers: [registry],
});

export const reloads = new Counter({
  name: "sluice_config_reloads_total",
  help: "Configuration reloads, by result.",
  labelNames: ["result"] as const,
  registers: [registry],
});

export const ejections = new Counter({
  name: "sluice_upstream_ejections_total",
  help: "Endpoints ejected by outlier detection.",
  labelNames: ["cluster", "endpoint"] as const,
  registers: [registry],
});

export const upstreamFailures = new Counter({
  name: "sluice_upstream_failures_total",
  help: "Upstream tries that failed before a response head reached the client, by cluster and kind (connect_failure, reset, timeout, status: a status listed for retry, stale: a pooled connection closed as it was reused).",
  labelNames: ["cluster", "kind"] as const,
  registers: [registry],
});

export const upstreamRetries = new Counter({
  name: "sluice_upstream_retries_total",
  help: "Requests sent again to another endpoint after a failed try, by cluster.",
  labelNames: ["cluster"] as const,
  registers: [registry],
});

/** What /metrics reports about clusters; the runtime registers a source. */
export interface EndpointView {
  cluster: string;
  endpoint: string;
  healthy: boolean;
  ejected: boolean;
}
let endpointSource: () => EndpointView[] = () => [];
export function setEndpointSource(fn: () => EndpointView[]): void {
  endpointSource = fn;
}

new Gauge({
  name: "sluice_upstream_endpoint_healthy",
  help: "1 when an endpoint passes health checks and is not ejected.",
  labelNames: ["cluster", "endpoint"] as const,
  registers: [registry],
  collect() {
    this.reset();
    for (const e of endpointSource()) this.set({ cluster: e.cluster, endpoint: e.endpoint }, e.healthy && !e.ejected ? 1 : 0);
  },
});

new Gauge({
  name: "sluice_pipe_pool_pipes",
  help: "Pipes of the splice engine's pool, in use or idle.",
  labelNames: ["state"] as const,
  registers: [registry],
  collect() {
    const s = spliceAddon()?.stats();
    this.set({ state: "in_use" }, s?.inUse ?? 0);
    this.set({ state: "idle" }, s?.idle ?? 0);
  },
});

new Gauge({
  name: "sluice_pipe_pool_acquire_failures",
  help: "Transfers that could not get a pipe and were copied instead (since start).",
  registers: [registry],
  collect() {
    this.set(spliceAddon()?.stats().acquireFailures ?? 0);
  },
});

new Gauge({
  name: "sluice_trace_spans_dropped",
  help: "Spans lost because the collector failed or could not keep up (since start).",
  registers: [registry],
  collect() {
    this.set(telemetryStats().dropped);
  },
});

export function recordRequest(engine: EngineLabel, route: string, status: number | null, seconds: number): void {
  const statusClass = status === null ? "aborted" : `${Math.floor(status / 100)}xx`;
  requestDuration.observe({ engine, route, status_class: statusClass }, seconds);
}

export function recordBytes(engine: EngineLabel, direction: "request" | "response", spliced: number, copied: number): void {
  if (spliced > 0) bodyBytes.inc({ engine, direction, path: "spliced" }, spliced);
  if (copied > 0) bodyBytes.inc({ engine, direction, path: "copied" }, copied);
}
