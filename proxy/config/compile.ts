// A loaded config file compiled, once, into the specs the runtime runs: listeners, routes and
// clusters with every default applied (from defaults.ts) and every duration in milliseconds.
// Specs are frozen: what runs is exactly what was compiled, and /config shows its source.
import { createHash } from "node:crypto";
import { type HostPort, parseHostPort } from "../base/address.js";
import type { Header } from "../http1/head.js";
import type { UpstreamTlsSpec } from "../tls/origination.js";
import { DEFAULT_CIPHERS, type ListenerTlsSpec } from "../tls/termination.js";
import type { ClusterSpec } from "../upstream/cluster.js";
import { DEFAULTS } from "./defaults.js";
import type { HttpProxyOptions } from "./http-options.js";
import {
  ACCESS_LOG_FIELDS,
  type AccessLogField,
  type ClusterFile,
  type ClusterTlsFile,
  type ConfigFile,
  durationMs,
  type ListenerFile,
  type ListenerTlsFile,
  type RouteFile,
} from "./types.js";

export type { ClusterSpec };

export type RouteAction =
  | {
      kind: "forward";
      cluster: string;
      prefixRewrite: string | null;
      hostRewrite: string | null;
      requestHeadersAdd: Header[];
      requestHeadersRemove: ReadonlySet<string>;
      responseHeadersAdd: Header[];
      responseHeadersRemove: ReadonlySet<string>;
      /** null: the listener's. */
      firstByteMs: number | null;
      bodyIdleMs: number | null;
      engine: "splice" | "buffered" | null;
      /** Retries after the first try, and the failures that allow one. */
      retryAttempts: number;
      retryOn: ReadonlySet<string>;
      retryOnStatus: ReadonlySet<number>;
    }
  | { kind: "respond"; status: number; body: string; contentType: string }
  | { kind: "redirect"; status: number; location: string };

export interface RouteSpec {
  name: string;
  match: {
    hosts: readonly string[] | null;
    path: { exact: string } | { prefix: string } | { regex: string } | null;
    methods: readonly string[] | null;
    headers: ReadonlyArray<{ name: string; exact?: string; regex?: string; present?: boolean }>;
    /** The verified client certificate: present or not, its subject line exact or by regex. */
    clientCertificate: { present?: boolean; subject?: { exact?: string; regex?: string } } | null;
  };
  action: RouteAction;
}

export interface ListenerSpec {
  name: string;
  address: HostPort;
  /** Listeners with the same key can take a new state in place on a reload. */
  key: string;
  protocol: "http" | "tcp";
  /** http only. */
  http: HttpProxyOptions | null;
  routes: readonly RouteSpec[];
  /** tcp only: where every connection goes. */
  cluster: string | null;
  tcpIdleTimeoutMs: number;
  /** http only: TLS termination; null: plain. */
  tls: ListenerTlsSpec | null;
}

export interface CompiledConfig {
  /** The loaded file this was compiled from (what /config shows, redacted). */
  source: ConfigFile;
  /** sha256 of the source: workers and the primary can check they run the same thing. */
  hash: string;
  listeners: readonly ListenerSpec[];
  clusters: readonly ClusterSpec[];
  drainTimeoutMs: number;
  workers: "auto" | number;
  /** Client connections at once in each process: from the descriptor limit (auto), or this many. */
  maxConnections: "auto" | number;
  /** The access log's fields, in order; null: no access log. */
  accessLog: readonly AccessLogField[] | null;
  admin: string | null;
  splice: {
    threshold: number;
    chunkThreshold: number;
    pipeSize: number | null;
    maxIdlePipes: number | null;
    maxIdleBytes: number;
    maxPipes: number | null;
  };
}

const list = (v: string | string[] | undefined): string[] | null => (v === undefined ? null : Array.isArray(v) ? v : [v]);

export function compileRoute(r: RouteFile, index: number): RouteSpec {
  const p = r.match.path;
  const path =
    p?.exact !== undefined
      ? { exact: p.exact }
      : p?.prefix !== undefined
        ? { prefix: p.prefix }
        : p?.regex !== undefined
          ? { regex: p.regex }
          : null;
  let action: RouteAction;
  if (r.forward) {
    const f = r.forward;
    const on = f.retry?.on ?? DEFAULTS.route.retryOn;
    action = {
      kind: "forward",
      cluster: f.cluster,
      prefixRewrite: f.prefix_rewrite ?? null,
      hostRewrite: f.host_rewrite ?? null,
      requestHeadersAdd: Object.entries(f.request_headers_add ?? {}),
      requestHeadersRemove: new Set((f.request_headers_remove ?? []).map((n) => n.toLowerCase())),
      responseHeadersAdd: Object.entries(f.response_headers_add ?? {}),
      responseHeadersRemove: new Set((f.response_headers_remove ?? []).map((n) => n.toLowerCase())),
      firstByteMs: f.timeouts?.first_byte !== undefined ? durationMs(f.timeouts.first_byte, 0) : null,
      bodyIdleMs: f.timeouts?.body_idle !== undefined ? durationMs(f.timeouts.body_idle, 0) : null,
      engine: f.engine ?? null,
      retryAttempts: f.retry?.attempts ?? (f.retry ? DEFAULTS.route.retryAttempts : 0),
      retryOn: new Set<string>(on.flatMap((x) => (typeof x === "string" ? [x] : []))),
      retryOnStatus: new Set<number>(on.flatMap((x) => (typeof x === "number" ? [x] : []))),
    };
  } else if (r.respond) {
    action = {
      kind: "respond",
      status: r.respond.status,
      body: r.respond.body ?? "",
      contentType: r.respond.content_type ?? DEFAULTS.route.respondContentType,
    };
  } else {
    const rd = r.redirect as NonNullable<RouteFile["redirect"]>;
    action = { kind: "redirect", status: rd.status ?? DEFAULTS.route.redirectStatus, location: rd.location };
  }
  return {
    name: r.name ?? `route ${index}`,
    match: {
      hosts: list(r.match.host),
      path,
      methods: list(r.match.method)?.map((m) => m.toUpperCase()) ?? null,
      headers: (r.match.headers ?? []).map((h) => ({ ...h, name: h.name.toLowerCase() })),
      clientCertificate: r.match.client_certificate ?? null,
    },
    action,
  };
}

/** The HTTP options of a listener: the file's values over the defaults. */
export function listenerOptions(l: ListenerFile, cfg: ConfigFile): HttpProxyOptions {
  const d = DEFAULTS.http;
  const lim = l.limits ?? {};
  const t = l.timeouts ?? {};
  return {
    listen: parseHostPort(l.address, "address"),
    engine: l.engine ?? "splice",
    spliceThreshold: cfg.splice?.threshold ?? DEFAULTS.splice.threshold,
    spliceChunkThreshold: cfg.splice?.chunk_threshold ?? DEFAULTS.splice.chunkThreshold,
    limits: {
      maxHeadBytes: lim.max_head_bytes ?? d.limits.maxHeadBytes,
      maxHeaders: lim.max_headers ?? d.limits.maxHeaders,
      maxUriBytes: lim.max_uri_bytes ?? d.limits.maxUriBytes,
      maxBodyBytes: lim.max_body_bytes ?? d.limits.maxBodyBytes,
      maxConnections: lim.max_connections ?? d.limits.maxConnections,
    },
    timeouts: {
      headMs: durationMs(t.head, d.timeouts.headMs),
      keepAliveMs: durationMs(t.keep_alive, d.timeouts.keepAliveMs),
      firstByteMs: durationMs(t.first_byte, d.timeouts.firstByteMs),
      bodyIdleMs: durationMs(t.body_idle, d.timeouts.bodyIdleMs),
    },
    pool: { ...DEFAULTS.cluster.pool },
    forwarding: {
      xForwarded: l.forwarding?.x_forwarded ?? d.forwarding.xForwarded,
      via: l.forwarding?.via === false ? null : (l.forwarding?.via ?? d.forwarding.via),
      requestId: l.forwarding?.request_id ?? d.forwarding.requestId,
      hostRewrite: null,
    },
    bufferedRatio: l.compare?.buffered_ratio ?? d.bufferedRatio,
  };
}

export function compileListenerTls(t: ListenerTlsFile): ListenerTlsSpec {
  return {
    certificates: t.certificates.map((c) => ({ cert: c.cert, key: c.key })),
    minVersion: t.min_version ?? "TLSv1.2",
    ciphers: t.ciphers ?? DEFAULT_CIPHERS,
    clientCa: t.client_certificate?.ca ?? null,
    clientCertRequired: t.client_certificate ? (t.client_certificate.required ?? true) : false,
    handshakeTimeoutMs: durationMs(t.handshake_timeout, DEFAULTS.tls.handshakeTimeoutMs),
    watchIntervalMs: durationMs(t.watch_interval, DEFAULTS.tls.watchIntervalMs),
  };
}

export function compileClusterTls(t: ClusterTlsFile): UpstreamTlsSpec {
  return {
    serverName: t.server_name ?? null,
    ca: t.ca ?? null,
    verify: t.verify ?? true,
    cert: t.cert ?? null,
    key: t.key ?? null,
    minVersion: t.min_version ?? "TLSv1.2",
  };
}

/** `access_log: true` logs every field; `{ fields }` those, in that order. */
export function accessLogFields(v: ConfigFile["access_log"]): readonly AccessLogField[] | null {
  if (v === undefined || v === false) return null;
  return v === true ? ACCESS_LOG_FIELDS : v.fields;
}

export function compileCluster(name: string, file: ClusterFile): ClusterSpec {
  const d = DEFAULTS.cluster;
  const o = file.outlier_detection ?? {};
  const h = file.health_check;
  return {
    name,
    endpoints: file.endpoints.map((e) =>
      typeof e === "string"
        ? { address: parseHostPort(e, "endpoint"), weight: 1 }
        : { address: parseHostPort(e.address, "endpoint"), weight: e.weight ?? 1 },
    ),
    options: {
      policy: file.lb ?? d.lb,
      pool: {
        maxConnections: file.pool?.max_connections ?? d.pool.maxConnections,
        maxIdle: file.pool?.max_idle ?? d.pool.maxIdle,
        idleTimeoutMs: durationMs(file.pool?.idle_timeout, d.pool.idleTimeoutMs),
        connectTimeoutMs: durationMs(file.connect_timeout, d.pool.connectTimeoutMs),
        queueTimeoutMs: durationMs(file.pool?.queue_timeout, d.pool.queueTimeoutMs),
      },
      maxRetries: file.max_retries ?? d.maxRetries,
      dns: { refreshMs: durationMs(file.dns?.refresh, d.dnsRefreshMs), servers: file.dns?.servers ?? [] },
      outlier: {
        consecutiveFailures: o.consecutive_failures ?? d.outlier.consecutiveFailures,
        baseEjectionMs: durationMs(o.base_ejection, d.outlier.baseEjectionMs),
        maxEjectionMs: durationMs(o.max_ejection, d.outlier.maxEjectionMs),
        maxEjectedPercent: o.max_ejected_percent ?? d.outlier.maxEjectedPercent,
      },
      healthCheck: h
        ? {
            path: h.path,
            host: h.host ?? null,
            intervalMs: durationMs(h.interval, d.healthCheck.intervalMs),
            timeoutMs: durationMs(h.timeout, d.healthCheck.timeoutMs),
            healthyThreshold: h.healthy_threshold ?? d.healthCheck.healthyThreshold,
            unhealthyThreshold: h.unhealthy_threshold ?? d.healthCheck.unhealthyThreshold,
          }
        : null,
      tls: file.tls ? compileClusterTls(file.tls) : null,
    },
  };
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === "object" && !Object.isFrozen(o) && !(o instanceof Set)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}

/** Compiles a loaded (validated) config. */
export function compileConfig(cfg: ConfigFile): CompiledConfig {
  const listeners: ListenerSpec[] = cfg.listeners.map((l) => {
    const protocol = l.protocol ?? "http";
    return {
      name: l.name,
      address: parseHostPort(l.address, "address"),
      // A TLS change makes a new listener (its files are read and checked before it replaces the old one).
      key: `${protocol}|${l.engine ?? "splice"}|${l.address}|${JSON.stringify(l.tls ?? null)}`,
      protocol,
      http: protocol === "http" ? listenerOptions(l, cfg) : null,
      routes: (l.routes ?? []).map(compileRoute),
      cluster: l.cluster ?? null,
      tcpIdleTimeoutMs: durationMs(l.timeouts?.idle, DEFAULTS.tcp.idleTimeoutMs),
      tls: protocol === "http" && l.tls ? compileListenerTls(l.tls) : null,
    };
  });
  return deepFreeze({
    source: cfg,
    hash: createHash("sha256").update(JSON.stringify(cfg)).digest("hex"),
    listeners,
    clusters: Object.entries(cfg.clusters ?? {}).map(([name, c]) => compileCluster(name, c)),
    drainTimeoutMs: durationMs(cfg.drain_timeout, DEFAULTS.drainTimeoutMs),
    workers: cfg.workers ?? 1,
    maxConnections: cfg.max_connections ?? "auto",
    accessLog: accessLogFields(cfg.access_log),
    admin: cfg.admin?.address ?? null,
    splice: {
      threshold: cfg.splice?.threshold ?? DEFAULTS.splice.threshold,
      chunkThreshold: cfg.splice?.chunk_threshold ?? DEFAULTS.splice.chunkThreshold,
      pipeSize: cfg.splice?.pipe_size ?? null,
      maxIdlePipes: cfg.splice?.max_idle_pipes ?? null,
      maxIdleBytes: cfg.splice?.max_idle_bytes ?? DEFAULTS.splice.maxIdleBytes,
      maxPipes: cfg.splice?.max_pipes ?? null,
    },
  });
}

/** The command line's sidecar form as a config: one listener, everything to one upstream. */
export function configFromFlags(f: {
  listen: string;
  upstream: string;
  mode: "http" | "tcp";
  engine: "splice" | "buffered";
  spliceThreshold?: number;
  spliceChunkThreshold?: number;
  connectTimeoutMs?: number;
  /** tcp: a tunnel idle this long is closed. */
  idleTimeoutMs?: number;
  drainTimeoutMs?: number;
  accessLog?: boolean;
  workers?: "auto" | number;
  /** http: terminate TLS with this certificate and key. */
  tls?: { cert: string; key: string };
}): ConfigFile {
  const listener: ListenerFile =
    f.mode === "tcp"
      ? {
          name: "main",
          address: f.listen,
          protocol: "tcp",
          cluster: "upstream",
          ...(f.idleTimeoutMs !== undefined ? { timeouts: { idle: f.idleTimeoutMs } } : {}),
        }
      : {
          name: "main",
          address: f.listen,
          engine: f.engine,
          routes: [{ name: "all", match: {}, forward: { cluster: "upstream" } }],
          ...(f.tls ? { tls: { certificates: [f.tls] } } : {}),
        };
  return {
    listeners: [listener],
    clusters: {
      upstream: {
        endpoints: [f.upstream],
        ...(f.connectTimeoutMs !== undefined ? { connect_timeout: f.connectTimeoutMs } : {}),
      },
    },
    ...(f.spliceThreshold !== undefined || f.spliceChunkThreshold !== undefined
      ? {
          splice: {
            ...(f.spliceThreshold !== undefined ? { threshold: f.spliceThreshold } : {}),
            ...(f.spliceChunkThreshold !== undefined ? { chunk_threshold: f.spliceChunkThreshold } : {}),
          },
        }
      : {}),
    ...(f.drainTimeoutMs !== undefined ? { drain_timeout: f.drainTimeoutMs } : {}),
    ...(f.accessLog ? { access_log: true } : {}),
    ...(f.workers !== undefined ? { workers: f.workers } : {}),
  };
}
