// Settings of the HTTP engine, with the defaults a sidecar should start from.
import type { HostPort } from "../base/address.js";
import type { ForwardingOptions } from "../http1/forward-headers.js";
import type { HeadLimits } from "../http1/head.js";
import type { PoolOptions } from "../upstream/pool.js";

export interface HttpProxyOptions {
  listen: HostPort;
  upstream: HostPort;
  engine: "splice" | "buffered";
  /** Bodies and chunk payloads of at least this many bytes are spliced; smaller are copied. */
  spliceThreshold: number;
  limits: HeadLimits & { maxBodyBytes: number; maxConnections: number };
  timeouts: {
    /** From the first byte of a request to the end of its head. */
    headMs: number;
    /** Between requests on a keep-alive client connection. */
    keepAliveMs: number;
    /** From the end of the request to the response head. */
    firstByteMs: number;
    /** No body byte moved for this long. */
    bodyIdleMs: number;
  };
  pool: PoolOptions;
  forwarding: ForwardingOptions;
  /** Share of new client connections served by the buffered engine (splice listeners). */
  bufferedRatio: number;
}

export function defaultHttpOptions(listen: HostPort, upstream: HostPort): HttpProxyOptions {
  return {
    listen,
    upstream,
    engine: "splice",
    spliceThreshold: 256 * 1024,
    limits: { maxHeadBytes: 32 * 1024, maxHeaders: 100, maxUriBytes: 8 * 1024, maxBodyBytes: 0, maxConnections: 10_000 },
    timeouts: { headMs: 10_000, keepAliveMs: 60_000, firstByteMs: 60_000, bodyIdleMs: 60_000 },
    pool: { maxConnections: 1024, maxIdle: 128, idleTimeoutMs: 30_000, connectTimeoutMs: 5_000, queueTimeoutMs: 5_000 },
    forwarding: { xForwarded: true, via: "1.1 sluice", hostRewrite: null },
    bufferedRatio: 0,
  };
}
