// Settings of an HTTP listener, compiled from the config file (compile.ts) or made from the
// defaults (tests and tools); the defaults themselves are in defaults.ts.
import type { HostPort } from "../base/address.js";
import type { ForwardingOptions } from "../http1/forward-headers.js";
import type { HeadLimits } from "../http1/head.js";
import type { PoolOptions } from "../upstream/pool.js";
import { DEFAULTS } from "./defaults.js";

export interface HttpProxyOptions {
  listen: HostPort;
  engine: "splice" | "buffered";
  /** Bodies with at least this many bytes still to read after their head are spliced; others are copied. */
  spliceThreshold: number;
  /** The same for each chunk payload of a chunked body. */
  spliceChunkThreshold: number;
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
  /** The buffered engine's agent limits (the splice engine's pools are per cluster). */
  pool: PoolOptions;
  forwarding: ForwardingOptions;
  /** Share of new client connections served by the buffered engine (splice listeners). */
  bufferedRatio: number;
}

/** A listener on `listen` with every default. */
export function defaultHttpOptions(listen: HostPort): HttpProxyOptions {
  const d = DEFAULTS.http;
  return {
    listen,
    engine: "splice",
    spliceThreshold: DEFAULTS.splice.threshold,
    spliceChunkThreshold: DEFAULTS.splice.chunkThreshold,
    limits: { ...d.limits },
    timeouts: { ...d.timeouts },
    pool: { ...DEFAULTS.cluster.pool },
    forwarding: { ...d.forwarding, hostRewrite: null },
    bufferedRatio: d.bufferedRatio,
  };
}
