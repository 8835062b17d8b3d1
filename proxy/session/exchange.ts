// One request/response exchange: request head and body to an upstream connection, the
// response back, in order, with every failure mapped to what the client should see.
import type { Socket } from "node:net";
import type { HttpProxyOptions } from "../config/http-options.js";
import { HttpError } from "../http1/errors.js";
import {
  clientResponseHeaders,
  serializeRequestHead,
  serializeResponseHead,
  upstreamRequestHeaders,
} from "../http1/forward-headers.js";
import { type Header, parseResponseHead, type RequestHead, type ResponseHead, responseFraming } from "../http1/head.js";
import { isIdempotent } from "../http1/methods.js";
import { PeerClosed, type SocketReader } from "../http1/socket-reader.js";
import { activeTunnels } from "../observe/metrics.js";
import { closeGracefully } from "../transfer/socket-handoff.js";
import { tunnel } from "../transfer/transfer.js";
import type { UpstreamConnection, UpstreamPool } from "../upstream/pool.js";
import { BodyError, type BodyStats, relayBody } from "./body-relay.js";

export interface ClientContext {
  client: Socket;
  reader: SocketReader;
  clientAddress: string;
  opts: HttpProxyOptions;
  engine: "auto" | "copy";
  /** True while the listener drains: the response says `Connection: close`. */
  closing?: () => boolean;
}

/** Where and how one request goes upstream, as its route decided. */
export interface ForwardPlan {
  pool: UpstreamPool;
  /** Statuses that end this try with a retry instead of being passed on (empty on the last try). */
  retryOnStatus: ReadonlySet<number>;
  /** Told the final response status, for outlier detection. */
  onResponseHead?: (status: number) => void;
  /** Sees the exchange's milestones and byte counts (tracing). */
  observer?: ExchangeObserver;
  path: string;
  hostRewrite: string | null;
  requestHeadersAdd: Header[];
  requestHeadersRemove: ReadonlySet<string>;
  responseHeadersAdd: Header[];
  responseHeadersRemove: Set<string>;
  firstByteMs: number;
  bodyIdleMs: number;
}

export interface ExchangeObserver {
  connected(reused: boolean): void;
  /** The pooled connection closed as the request went out on it; the request goes out again on a new one. */
  staleConnection(): void;
  responseHead(status: number): void;
  responseBodyStart(): void;
  /** Bytes of the request body (client → upstream) and the response body (upstream → client). */
  finished(request: BodyStats, response: BodyStats, tunnel: boolean): void;
}

function editHeaders(headers: Header[], remove: ReadonlySet<string>, add: Header[]): Header[] {
  const out = remove.size ? headers.filter(([n]) => !remove.has(n.toLowerCase())) : headers;
  return add.length ? [...out, ...add] : out;
}

/** What the connection loop does next. */
export type Outcome = "keep-alive" | "close" | "consumed";

/** Thrown once the response head reached the client: the only honest end is an abort. */
export class AbortAfterHead extends Error {
  constructor(readonly reason: string) {
    super(`aborted after the response head: ${reason}`);
    this.name = "AbortAfterHead";
  }
}

type RequestBodyState = { state: "running" } | { state: "done"; stats: BodyStats } | { state: "failed"; error: unknown };

const MAX_ATTEMPTS = 3;

export async function proxyExchange(ctx: ClientContext, req: RequestHead, plan: ForwardPlan): Promise<Outcome> {
  const { opts } = ctx;
  if (req.framing.kind === "length" && opts.limits.maxBodyBytes > 0 && req.framing.length > opts.limits.maxBodyBytes) {
    throw new HttpError(413, "request body too large");
  }
  const forwarding = plan.hostRewrite === null ? opts.forwarding : { ...opts.forwarding, hostRewrite: plan.hostRewrite };
  const headers = editHeaders(
    upstreamRequestHeaders(req, ctx.clientAddress, forwarding),
    plan.requestHeadersRemove,
    plan.requestHeadersAdd,
  );
  const headText = serializeRequestHead(req.method, req.method === "CONNECT" ? req.target : plan.path, headers);
  // A bodiless idempotent request that met a stale keep-alive connection is sent again on a
  // new one; the upstream may have acted on anything else before it closed.
  for (let attempt = 1; ; attempt++) {
    let up: UpstreamConnection;
    try {
      up = await plan.pool.acquire(attempt > 1);
    } catch (err) {
      // Nothing was sent: whatever the method, another endpoint may take it.
      if (err instanceof HttpError && err.status !== 503) throw new UpstreamFailure("connect-failure", err, false);
      throw err;
    }
    plan.observer?.connected(up.reused);
    try {
      return await onConnection(ctx, req, headText, up, plan);
    } catch (err) {
      const stale = err instanceof StaleConnection;
      if (!stale || attempt >= MAX_ATTEMPTS) throw stale ? new HttpError(502, "upstream closed the connection") : err;
      plan.observer?.staleConnection();
    }
  }
}

class StaleConnection extends Error {}

/**
 * The upstream failed before anything reached the client: the caller may try another
 * endpoint (a retry) or answer with `error`. `bodyStarted` says whether request body
 * bytes may already have gone upstream (a streamed body can't be sent twice).
 */
export class UpstreamFailure extends Error {
  constructor(
    readonly kind: "connect-failure" | "reset" | "timeout" | "status",
    readonly error: HttpError,
    readonly bodyStarted: boolean,
  ) {
    super(error.message);
    this.name = "UpstreamFailure";
  }
}

async function onConnection(
  ctx: ClientContext,
  req: RequestHead,
  headText: string,
  up: UpstreamConnection,
  plan: ForwardPlan,
): Promise<Outcome> {
  const { client, reader, opts } = ctx;
  up.socket.write(headText, "latin1");

  // The request body runs while the response head is awaited: an upstream may answer
  // early (413, 100 Continue), and it must be able to.
  const bodyAbort = new AbortController();
  let body: RequestBodyState = { state: "done", stats: { bytes: 0, spliced: 0, copied: 0, pipeSize: null } };
  // Read through a function: the body's callbacks change it behind TypeScript's back.
  const bodyState = () => body.state;
  let bodyDone: Promise<void> = Promise.resolve();
  let clientFault: unknown = null;
  if (req.framing.kind !== "none") {
    body = { state: "running" };
    bodyDone = relayBody(req.framing, reader, up.socket, {
      spliceThreshold: opts.spliceThreshold,
      idleTimeoutMs: plan.bodyIdleMs,
      maxBytes: opts.limits.maxBodyBytes,
      signal: bodyAbort.signal,
      engine: ctx.engine,
    }).then(
      (stats) => {
        body = { state: "done", stats };
      },
      (error: unknown) => {
        body = { state: "failed", error };
        // The client broke its own request: the upstream can't get a complete one now.
        if (error instanceof HttpError || (error instanceof BodyError && error.side === "source")) {
          clientFault = error;
          up.socket.destroy();
        }
      },
    );
  }

  // First-byte timeout counts from the end of the request.
  let timedOut = false;
  let firstByteTimer: NodeJS.Timeout | undefined;
  const armFirstByte = () => {
    firstByteTimer = setTimeout(() => {
      timedOut = true;
      up.socket.destroy();
    }, plan.firstByteMs);
  };
  if (bodyState() === "done") armFirstByte();
  else void bodyDone.then(() => bodyState() === "done" && !up.socket.destroyed && armFirstByte());

  let res: ResponseHead;
  try {
    res = await readFinalHead(ctx, req, up);
  } catch (err) {
    clearTimeout(firstByteTimer);
    bodyAbort.abort();
    await bodyDone;
    up.socket.destroy();
    if (clientFault) {
      if (clientFault instanceof HttpError) throw clientFault;
      throw new ClientGone();
    }
    const bodyStarted = req.framing.kind !== "none";
    if (timedOut) throw new UpstreamFailure("timeout", new HttpError(504, "upstream did not answer in time"), bodyStarted);
    if (err instanceof HttpError) throw err;
    if (err instanceof PeerClosed && err.clean && up.reused && req.framing.kind === "none" && isIdempotent(req.method))
      throw new StaleConnection();
    const reason = (err as { code?: string }).code ?? (err as Error).message;
    throw new UpstreamFailure("reset", new HttpError(502, `upstream failed before the response head (${reason})`), bodyStarted);
  } finally {
    clearTimeout(firstByteTimer);
  }

  if (plan.retryOnStatus.has(res.status)) {
    // This answer is not passed on: the connection can't be reused without reading it.
    bodyAbort.abort();
    up.socket.destroy();
    await bodyDone;
    throw new UpstreamFailure("status", new HttpError(502, `upstream answered ${res.status}`), req.framing.kind !== "none");
  }
  plan.onResponseHead?.(res.status);
  plan.observer?.responseHead(res.status);

  // Upgrades and CONNECT become a tunnel once the upstream agreed.
  const upgraded =
    (res.status === 101 && req.upgrade !== null) || (req.method === "CONNECT" && res.status >= 200 && res.status < 300);
  if (upgraded) {
    await bodyDone;
    const headersOut = editHeaders(
      clientResponseHeaders(res, opts.forwarding),
      plan.responseHeadersRemove,
      plan.responseHeadersAdd,
    );
    if (res.status === 101) headersOut.push(["Connection", "upgrade"], ["Upgrade", req.upgrade as string]);
    client.write(serializeResponseHead(res.status, res.reason, headersOut), "latin1");
    activeTunnels.inc();
    const t = await tunnel(client, up.socket, {
      prefixAtoB: reader.takeBuffered(),
      prefixBtoA: up.reader.takeBuffered(),
      idleTimeoutMs: plan.bodyIdleMs,
      engine: ctx.engine,
    }).catch(() => null);
    activeTunnels.dec();
    if (t && plan.observer) {
      const share = (n: number) =>
        t.engine === "splice" ? { bytes: n, spliced: n, copied: 0 } : { bytes: n, spliced: 0, copied: n };
      plan.observer.finished({ ...share(t.aToB), pipeSize: null }, { ...share(t.bToA), pipeSize: null }, true);
    }
    return "consumed";
  }
  if (res.status === 101) {
    up.socket.destroy();
    throw new HttpError(502, "upstream switched protocols unasked");
  }

  const framing = responseFraming(req, res);
  const dechunk = framing.kind === "chunked" && req.version === "1.0";
  let keepClient = req.keepAlive && framing.kind !== "close" && !dechunk && bodyState() === "done" && !ctx.closing?.();
  const headersOut = editHeaders(
    clientResponseHeaders(res, opts.forwarding),
    plan.responseHeadersRemove,
    plan.responseHeadersAdd,
  );
  if (framing.kind === "chunked" && !dechunk) headersOut.push(["Transfer-Encoding", "chunked"]);
  if (!keepClient) headersOut.push(["Connection", "close"]);
  else if (req.version === "1.0") headersOut.push(["Connection", "keep-alive"]);
  const headOut = serializeResponseHead(res.status, res.reason, headersOut);
  const small = framing.kind === "length" && framing.length <= SMALL_BODY ? framing.length : 0;
  // A small body already read with the head (the common case) leaves with it, in one buffer.
  const whole = small > 0 ? up.reader.takeIfBuffered(small) : null;
  let responseStats: BodyStats;
  if (whole) {
    const out = Buffer.allocUnsafe(headOut.length + small);
    out.write(headOut, 0, "latin1");
    whole.copy(out, headOut.length);
    plan.observer?.responseBodyStart();
    client.write(out);
    responseStats = { bytes: small, spliced: 0, copied: small, pipeSize: null };
  } else {
    // Otherwise a small body still shares the head's write (one syscall instead of two): the
    // socket is corked until the body is written, or until the next turn of the loop if it is slow.
    const release = small > 0 ? corkBriefly(client) : null;
    client.write(headOut, "latin1");
    plan.observer?.responseBodyStart();
    try {
      responseStats = await relayBody(framing, up.reader, client, {
        spliceThreshold: opts.spliceThreshold,
        idleTimeoutMs: plan.bodyIdleMs,
        maxBytes: 0,
        engine: ctx.engine,
        dechunk,
      });
      release?.();
    } catch (err) {
      release?.();
      bodyAbort.abort();
      up.socket.destroy();
      await bodyDone;
      throw new AbortAfterHead(err instanceof Error ? err.message : String(err));
    }
  }

  // The response is complete. A request body still on its way can't finish usefully now.
  if (bodyState() === "running") {
    keepClient = false;
    bodyAbort.abort();
  }
  await bodyDone;
  const upstreamKeepAlive =
    bodyState() === "done" &&
    framing.kind !== "close" &&
    !res.connection.has("close") &&
    (res.version === "1.1" || res.connection.has("keep-alive"));
  plan.pool.release(up, upstreamKeepAlive, res.keepAliveTimeoutMs);
  if (bodyState() === "failed") keepClient = false;
  if (plan.observer) {
    const b = body as RequestBodyState;
    plan.observer.finished(
      b.state === "done" ? b.stats : { bytes: 0, spliced: 0, copied: 0, pipeSize: null },
      responseStats,
      false,
    );
  }
  return keepClient ? "keep-alive" : "close";
}

/** Bodies up to this size share the head's write; below the socket's high-water mark, so writes never wait. */
const SMALL_BODY = 8 * 1024;

/** Corks `socket`; the returned function (or the next turn of the event loop) uncorks it, once. */
function corkBriefly(socket: Socket): () => void {
  socket.cork();
  let corked = true;
  const release = () => {
    if (!corked) return;
    corked = false;
    clearImmediate(timer);
    socket.uncork();
  };
  const timer = setImmediate(release);
  return release;
}

/** The client vanished while sending its request: nobody is left to answer. */
export class ClientGone extends Error {}

/** Reads response heads, passing 1xx interim responses to the client, until a final one. */
async function readFinalHead(ctx: ClientContext, req: RequestHead, up: UpstreamConnection): Promise<ResponseHead> {
  const max = ctx.opts.limits.maxHeadBytes;
  for (;;) {
    let head: Buffer;
    try {
      head = await up.reader.readHead(max, max, 0);
    } catch (err) {
      // The reader speaks for clients (400, 431); from an upstream the same faults are a 502.
      if (err instanceof HttpError) throw new HttpError(502, `malformed response head from upstream: ${err.message}`);
      throw err;
    }
    const res = parseResponseHead(head);
    if (res.status >= 200 || res.status === 101) return res;
    // HTTP/1.0 clients don't know interim responses.
    if (req.version === "1.1") {
      ctx.client.write(serializeResponseHead(res.status, res.reason, clientResponseHeaders(res, ctx.opts.forwarding)), "latin1");
    }
  }
}

export { closeGracefully };
