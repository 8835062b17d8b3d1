// The configuration file's shape, as config/sluice.schema.json defines it.
export type Duration = number | string;

export interface RouteFile {
  name?: string;
  match: {
    host?: string | string[];
    path?: { exact?: string; prefix?: string; regex?: string };
    method?: string | string[];
    headers?: Array<{ name: string; exact?: string; regex?: string; present?: boolean }>;
    client_certificate?: { present?: boolean; subject?: { exact?: string; regex?: string } };
  };
  forward?: {
    cluster: string;
    prefix_rewrite?: string;
    host_rewrite?: string;
    request_headers_add?: Record<string, string>;
    request_headers_remove?: string[];
    response_headers_add?: Record<string, string>;
    response_headers_remove?: string[];
    timeouts?: { first_byte?: Duration; body_idle?: Duration };
    engine?: "splice" | "buffered";
    retry?: { attempts?: number; on?: Array<"connect-failure" | "reset" | "timeout" | number> };
  };
  respond?: { status: number; body?: string; content_type?: string };
  redirect?: { status?: 301 | 302 | 303 | 307 | 308; location: string };
}

export interface ListenerFile {
  name: string;
  address: string;
  protocol?: "http" | "tcp";
  engine?: "splice" | "buffered";
  cluster?: string;
  routes?: RouteFile[];
  limits?: {
    max_head_bytes?: number;
    max_headers?: number;
    max_uri_bytes?: number;
    max_body_bytes?: number;
    max_connections?: number;
  };
  timeouts?: { head?: Duration; keep_alive?: Duration; first_byte?: Duration; body_idle?: Duration; idle?: Duration };
  forwarding?: { x_forwarded?: boolean; via?: string | false; request_id?: boolean };
  compare?: { buffered_ratio?: number };
  tls?: ListenerTlsFile;
}

export type TlsVersion = "TLSv1.2" | "TLSv1.3";

export interface ListenerTlsFile {
  certificates: Array<{ cert: string; key: string }>;
  min_version?: TlsVersion;
  ciphers?: string;
  client_certificate?: { ca: string; required?: boolean };
  handshake_timeout?: Duration;
  watch_interval?: Duration;
}

export interface ClusterTlsFile {
  server_name?: string;
  ca?: string;
  verify?: boolean;
  cert?: string;
  key?: string;
  min_version?: TlsVersion;
}

export interface ClusterFile {
  endpoints: Array<string | { address: string; weight?: number }>;
  lb?: "round_robin" | "least_request" | "random_two";
  connect_timeout?: Duration;
  pool?: { max_connections?: number; max_idle?: number; idle_timeout?: Duration; queue_timeout?: Duration };
  max_retries?: number;
  dns?: { refresh?: Duration; servers?: string[] };
  outlier_detection?: {
    consecutive_failures?: number;
    base_ejection?: Duration;
    max_ejection?: Duration;
    max_ejected_percent?: number;
  };
  health_check?: {
    path: string;
    host?: string;
    interval?: Duration;
    timeout?: Duration;
    healthy_threshold?: number;
    unhealthy_threshold?: number;
  };
  tls?: ClusterTlsFile;
}

export interface TelemetryFile {
  tracing?: {
    enabled?: boolean;
    endpoint?: string;
    protocol?: "http/protobuf" | "http/json";
    sampler_ratio?: number;
    service_name?: string;
    recorder?: "fast" | "sdk";
    export_thread?: "worker" | "main";
  };
}

/** What an access-log line can say, in the order `access_log: true` writes them. */
export const ACCESS_LOG_FIELDS = [
  "method",
  "path",
  "route",
  "status",
  "engine",
  "bytesIn",
  "bytesOut",
  "ms",
  "client",
  "upstream",
  "outcome",
  "phase",
  "detail",
  "tries",
  "requestId",
  "traceId",
  "userAgent",
  "tls",
  "clientCert",
] as const;
export type AccessLogField = (typeof ACCESS_LOG_FIELDS)[number];

export interface ConfigFile {
  workers?: "auto" | number;
  max_connections?: "auto" | number;
  drain_timeout?: Duration;
  access_log?: boolean | { fields: AccessLogField[] };
  telemetry?: TelemetryFile;
  admin?: { address: string; expose_config?: boolean };
  listeners: ListenerFile[];
  clusters?: Record<string, ClusterFile>;
  splice?: {
    threshold?: number;
    chunk_threshold?: number;
    pipe_size?: number;
    max_idle_pipes?: number;
    max_idle_bytes?: number;
    max_pipes?: number;
  };
}

export function durationMs(d: Duration | undefined, fallback: number): number {
  if (d === undefined) return fallback;
  if (typeof d === "number") return d;
  const m = /^(\d+)(ms|s|m|h)$/.exec(d);
  if (!m) return fallback;
  const n = Number(m[1]);
  return n * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const)[m[2] as "ms" | "s" | "m" | "h"];
}
