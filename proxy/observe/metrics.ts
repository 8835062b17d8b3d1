// Prometheus metrics, served by the admin listener at /metrics. One Metrics per running
// proxy (its own registry), so two proxies in one process don't share or overwrite counts.
// Request metrics are read from the request's record when it ends; gauges about pools,
// endpoints and spans are read only when scraped.
import { Counter, collectDefaultMetrics, Gauge, Registry } from "prom-client";
import type { RequestRecord, TryRecord } from "../request/record.js";
import { spliceAddon } from "../transfer/native.js";
import { spliceFallbackCounts } from "../transfer/transfer.js";
import { TalliedHistogram } from "./tallied-histogram.js";

/** What /metrics reports about clusters and spans; the runtime sets the sources. */
export interface EndpointView {
  cluster: string;
  endpoint: string;
  healthy: boolean;
  ejected: boolean;
}

export interface MetricSources {
  endpoints(): EndpointView[];
  spansDropped(): number;
  /** Times the span export worker died and was started again. */
  exportWorkerRestarts(): number;
}

/** Failure kinds of `sluice_upstream_failures_total`, from a failed try's outcome. */
function failureKind(t: TryRecord): string | null {
  switch (t.outcome?.code) {
    case undefined:
    case "completed":
      return null;
    case "upstream_refused":
      return "connect_failure";
    case "upstream_timeout":
      return t.outcome.phase === "connect" ? "connect_failure" : "timeout";
    case "upstream_status":
      return "status";
    case "upstream_tls":
      return "tls";
    case "upstream_reset":
    case "upstream_closed":
    case "upstream_protocol":
      return t.responseHeadAt === null ? "reset" : null;
    default:
      return null;
  }
}

interface BodyTally {
  requestSpliced: number;
  requestCopied: number;
  responseSpliced: number;
  responseCopied: number;
  tlsCopied: number;
}

/** status_class values by the status's first digit (a status the parser let through is 1xx to 5xx). */
const STATUS_CLASS = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx"];

export class Metrics {
  readonly registry = new Registry();
  private sources: MetricSources = { endpoints: () => [], spansDropped: () => 0, exportWorkerRestarts: () => 0 };

  private readonly requestDuration = new TalliedHistogram(
    "sluice_http_request_duration_seconds",
    "Time from a request head to the end of its response, by engine (how the body moved: splice, copy, buffered, local), route, status class and outcome (docs/failure-semantics.md).",
    ["engine", "route", "status_class", "outcome"],
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    this.registry,
  );

  /** Body bytes by engine, counted per request and read into the counters below when scraped. */
  private readonly bytesByEngine = new Map<string, BodyTally>();
  /** The last request's engine label and its tally (tallies are never dropped: the pair stays valid). */
  private lastEngine = "";
  private lastTally: BodyTally | undefined = undefined;

  readonly activeConnections = new Gauge({
    name: "sluice_active_connections",
    help: "Client connections open, by listener.",
    labelNames: ["listener"] as const,
    registers: [this.registry],
  });

  readonly activeTunnels = new Gauge({
    name: "sluice_active_tunnels",
    help: "Upgrade, CONNECT and TCP tunnels open.",
    registers: [this.registry],
  });

  readonly connectionsRefused = new Counter({
    name: "sluice_connections_refused_total",
    help: "Client connections refused (HTTP: answered 503 with Retry-After; TCP: closed), by listener and reason: max_connections (the listener's limit), fd_limit (the descriptor budget, max_connections: auto), process_limit (a fixed max_connections).",
    labelNames: ["listener", "reason"] as const,
    registers: [this.registry],
  });

  readonly tlsHandshakeFailures = new Counter({
    name: "sluice_tls_handshake_failures_total",
    help: "TLS handshakes with clients that failed (outcome client_tls), by listener and reason: timeout, closed, no_client_certificate, bad_client_certificate, protocol (no shared version, cipher or ALPN protocol; not TLS).",
    labelNames: ["listener", "reason"] as const,
    registers: [this.registry],
  });

  readonly tlsReloads = new Counter({
    name: "sluice_tls_certificate_reloads_total",
    help: "Listener certificates reloaded because their files changed, by result (ok; refused: the new files can't be used and the old certificates stay).",
    labelNames: ["listener", "result"] as const,
    registers: [this.registry],
  });

  readonly restartPending = new Gauge({
    name: "sluice_config_restart_pending",
    help: "Settings changed by the last reload that take effect only at the next restart (workers, telemetry).",
    registers: [this.registry],
  });

  readonly reloads = new Counter({
    name: "sluice_config_reloads_total",
    help: "Configuration reloads, by result.",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });

  readonly ejections = new Counter({
    name: "sluice_upstream_ejections_total",
    help: "Endpoints ejected by outlier detection.",
    labelNames: ["cluster", "endpoint"] as const,
    registers: [this.registry],
  });

  private readonly upstreamFailures = new Counter({
    name: "sluice_upstream_failures_total",
    help: "Upstream tries that failed before a response head reached the client, by cluster and kind (connect_failure, reset, timeout, status: a status listed for retry, stale: a pooled connection closed as it was reused, tls: the upstream's certificate failed verification or the handshake failed).",
    labelNames: ["cluster", "kind"] as const,
    registers: [this.registry],
  });

  private readonly upstreamRetries = new Counter({
    name: "sluice_upstream_retries_total",
    help: "Requests sent again to another endpoint after a failed try, by cluster.",
    labelNames: ["cluster"] as const,
    registers: [this.registry],
  });

  constructor() {
    // The event-loop lag is sampled every 100 ms, not every 10 (prom-client's default): an idle
    // sidecar's event loop then wakes about 10 times a second instead of 100. A stall shorter
    // than that can go unseen in sluice_nodejs_eventloop_lag_*; long ones cannot.
    collectDefaultMetrics({ register: this.registry, prefix: "sluice_", eventLoopMonitoringPrecision: 100 });
    const sources = () => this.sources;
    const tallies = this.bytesByEngine;
    new Counter({
      name: "sluice_body_bytes_total",
      help: "Body bytes moved, by engine, direction (request: client to upstream) and path (spliced or copied).",
      labelNames: ["engine", "direction", "path"] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [engine, t] of tallies) {
          const put = (direction: string, path: string, n: number) => {
            if (n > 0) this.inc({ engine, direction, path }, n);
          };
          put("request", "spliced", t.requestSpliced);
          put("request", "copied", t.requestCopied);
          put("response", "spliced", t.responseSpliced);
          put("response", "copied", t.responseCopied);
        }
      },
    });
    new Counter({
      name: "sluice_tls_copied_body_bytes_total",
      help: "Body bytes the splice engine copied instead of splicing because the client's or the upstream's connection is TLS (encrypted in userspace: nothing to splice). Also counted in sluice_body_bytes_total{path=\"copied\"}.",
      labelNames: ["engine"] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [engine, t] of tallies) if (t.tlsCopied > 0) this.inc({ engine }, t.tlsCopied);
      },
    });
    new Gauge({
      name: "sluice_upstream_endpoint_healthy",
      help: "1 when an endpoint passes health checks and is not ejected.",
      labelNames: ["cluster", "endpoint"] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const e of sources().endpoints())
          this.set({ cluster: e.cluster, endpoint: e.endpoint }, e.healthy && !e.ejected ? 1 : 0);
      },
    });
    new Gauge({
      name: "sluice_pipe_pool_pipes",
      help: "Pipes of the splice engine's pool, in use or idle.",
      labelNames: ["state"] as const,
      registers: [this.registry],
      collect() {
        const s = spliceAddon()?.stats();
        this.set({ state: "in_use" }, s?.inUse ?? 0);
        this.set({ state: "idle" }, s?.idle ?? 0);
      },
    });
    new Gauge({
      name: "sluice_pipe_pool_acquire_failures",
      help: "Transfers that could not get a pipe and were copied instead (since start).",
      registers: [this.registry],
      collect() {
        this.set(spliceAddon()?.stats().acquireFailures ?? 0);
      },
    });
    new Counter({
      name: "sluice_splice_fallbacks_total",
      help: "Transfers that were to be spliced but were copied because no pipe or descriptor could be had (EMFILE, ENFILE, EAGAIN: pool cap).",
      labelNames: ["reason"] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [reason, n] of spliceFallbackCounts) this.inc({ reason }, n);
      },
    });
    new Counter({
      name: "sluice_trace_spans_dropped_total",
      help: "Spans lost because the collector failed or could not keep up (since start).",
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(sources().spansDropped());
      },
    });
    new Counter({
      name: "sluice_trace_export_worker_restarts_total",
      help: "Times the span export worker thread died and another was started (the spans it held are counted as dropped).",
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(sources().exportWorkerRestarts());
      },
    });
  }

  setSources(sources: MetricSources): void {
    this.sources = sources;
  }

  /** A request ended: its duration by outcome, and the body bytes it moved. */
  requestEnded(rec: RequestRecord): void {
    const engine = rec.bodyPathLabel;
    const statusClass = rec.status === null ? "aborted" : (STATUS_CLASS[Math.floor(rec.status / 100)] ?? "other");
    this.requestDuration.observe([engine, rec.route ?? "none", statusClass, rec.outcome?.code ?? "proxy_internal"], rec.seconds);
    if (engine === "local") return;
    // The engine of the request before, nearly always: its tally without a lookup.
    let t = engine === this.lastEngine ? this.lastTally : this.bytesByEngine.get(engine);
    if (t === undefined) {
      t = { requestSpliced: 0, requestCopied: 0, responseSpliced: 0, responseCopied: 0, tlsCopied: 0 };
      this.bytesByEngine.set(engine, t);
    }
    this.lastEngine = engine;
    this.lastTally = t;
    t.requestSpliced += rec.request.spliced;
    t.requestCopied += rec.request.copied;
    t.responseSpliced += rec.response.spliced;
    t.responseCopied += rec.response.copied;
    t.tlsCopied += rec.copiedForTls;
  }

  /** A try ended: failures and stale connections it met, and whether another try follows. */
  tryEnded(rec: RequestRecord, t: TryRecord, retried: boolean): void {
    const cluster = rec.cluster ?? "none";
    if (t.staleAt.length > 0) this.upstreamFailures.inc({ cluster, kind: "stale" }, t.staleAt.length);
    const kind = failureKind(t);
    if (kind) this.upstreamFailures.inc({ cluster, kind });
    if (retried) this.upstreamRetries.inc({ cluster });
  }
}
