// Every default of sluice's configuration, in one table. The config file, the command-line
// flags and the HTTP options all start from here; docs/config.md lists the same values.

export const DEFAULTS = {
  /** SIGTERM/SIGINT: how long in-flight work may take. */
  drainTimeoutMs: 25_000,
  splice: {
    /**
     * A body is spliced when at least this many of its bytes are still to come after the read
     * that brought its head: one transfer per body, which costs less than copying 16 KiB
     * through Node (docs/BENCHMARKS.md, "Medium bodies").
     */
    threshold: 16 * 1024,
    /** The same for each chunk of a chunked body: a transfer per chunk pays only for larger ones. */
    chunkThreshold: 128 * 1024,
    /** Pipe capacity kept by idle pipes: 8 pipes of 1 MiB, 2048 of a user's 16384 pipe pages. */
    maxIdleBytes: 8 * 1024 * 1024,
  },
  http: {
    limits: { maxHeadBytes: 32 * 1024, maxHeaders: 100, maxUriBytes: 8 * 1024, maxBodyBytes: 0, maxConnections: 10_000 },
    timeouts: { headMs: 10_000, keepAliveMs: 60_000, firstByteMs: 60_000, bodyIdleMs: 60_000 },
    forwarding: { xForwarded: true, via: "1.1 sluice", requestId: true },
    bufferedRatio: 0,
  },
  tls: {
    /** Like the head timeout: a client that doesn't finish its handshake holds a connection for nothing. */
    handshakeTimeoutMs: 10_000,
    /** A Secret update reaches the pod within about a minute; a few seconds more is nothing. */
    watchIntervalMs: 5_000,
  },
  tcp: {
    /** A tunnel with no byte either way for this long is closed (Envoy's TCP proxy: 1 h). */
    idleTimeoutMs: 3_600_000,
  },
  cluster: {
    lb: "round_robin",
    // Idle connections up to the connection limit: a cap below the concurrency closes and reopens
    // connections on every request (1 KiB at 200 clients: 20.2k req/s at 1024, 13.8–15.8k at 128).
    pool: { maxConnections: 1024, maxIdle: 1024, idleTimeoutMs: 30_000, connectTimeoutMs: 5_000, queueTimeoutMs: 5_000 },
    /** Retries in flight at once, per cluster. */
    maxRetries: 3,
    dnsRefreshMs: 5000,
    outlier: { consecutiveFailures: 5, baseEjectionMs: 30_000, maxEjectionMs: 300_000, maxEjectedPercent: 50 },
    healthCheck: { intervalMs: 5000, timeoutMs: 1000, healthyThreshold: 2, unhealthyThreshold: 3 },
  },
  route: {
    /** A `retry` block without `attempts` allows one retry; without `on`, after connect failures only. */
    retryAttempts: 1,
    retryOn: ["connect-failure"],
    respondContentType: "text/plain; charset=utf-8",
    redirectStatus: 302,
  },
} as const;
