// One try of the splice engine: the request head and body to an upstream connection, the
// response back, in order. Cut at its joints: get a connection, send the request, await the
// final response head, relay the response, settle the connection. It writes what happened
// into the try's record and turns every failure into a RequestFailure with its outcome.
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import { warnRateLimited } from "../base/log.js";
import type { HttpProxyOptions } from "../config/http-options.js";
import { HttpError } from "../http1/errors.js";
import {
  clientResponseHeaders,
  plainRequestHead,
  plainResponseHead,
  serializeRequestHead,
  serializeResponseHead,
  upstreamRequestHeaders,
} from "../http1/forward-headers.js";
import { sameName } from "../http1/grammar.js";
import {
  type BodyFraming,
  type Header,
  parseResponseHead,
  type RequestHead,
  type ResponseHead,
  responseFraming,
} from "../http1/head.js";
import { isIdempotent } from "../http1/methods.js";
import { PeerClosed, type SocketReader } from "../http1/socket-reader.js";
import { causeOfCode, clientCodeForStatus, codeFor, outcome, type Phase, RequestFailure } from "../request/outcome.js";
import { addConnect, type RequestRecord, type TryRecord } from "../request/record.js";
import type { ForwardPlan } from "../routing/decision.js";
import { isTlsError } from "../tls/origination.js";
import { writeHead } from "../transfer/head-write.js";
import { TransferError, tunnel } from "../transfer/transfer.js";
import { PoolError, type UpstreamConnection } from "../upstream/pool.js";
import { BodyError, movesByTransfer, relayBody } from "./body-relay.js";
import { readerOf } from "./upstream-connector.js";

/** The client side of the exchange: its socket and reader, the listener's options. */
export interface ClientSide {
  client: Socket;
  reader: SocketReader;
  opts: HttpProxyOptions;
  /** True while the listener drains: the response says `Connection: close`. */
  closing(): boolean;
  /** Tunnels open (a gauge). */
  tunnels: { inc(): void; dec(): void };
}

/** What the session does next with the client connection. */
export type SessionNext = "keep-alive" | "close" | "consumed";

/** Lower-case names to remove, by length: a field is compared only with the names as long as its own. */
type NamesByLength = ReadonlyArray<readonly string[] | undefined>;
const byLength = new WeakMap<ReadonlySet<string>, NamesByLength>();
function namesByLength(remove: ReadonlySet<string>): NamesByLength {
  let table = byLength.get(remove);
  if (!table) {
    const t: string[][] = [];
    for (const n of remove) {
      const same = t[n.length] ?? [];
      same.push(n);
      t[n.length] = same;
    }
    table = t;
    byLength.set(remove, table);
  }
  return table;
}

function editHeaders(headers: Header[], remove: ReadonlySet<string>, add: Header[]): Header[] {
  let out = headers;
  if (remove.size) {
    // Without lower-casing every name: most fields are as long as none of the names removed.
    const table = namesByLength(remove);
    out = headers.filter(([n]) => {
      const names = table[n.length];
      return names === undefined || !names.some((lower) => sameName(n, lower));
    });
  }
  return add.length ? [...out, ...add] : out;
}

/** How many times a request that found its pooled connection closed goes again on a new one (connectAndSend). */
const MAX_STALE = 2;

/** How a failed body relay ends the request, by the side that failed. */
function bodyFailure(err: unknown, phase: Phase, source: "client" | "upstream", status: number | null): RequestFailure {
  if (err instanceof HttpError) {
    const code = source === "client" ? clientCodeForStatus(err.status) : codeFor("upstream", "protocol");
    return new RequestFailure(outcome(code, phase, err.message), source === "client" ? err.status : status, true);
  }
  if (err instanceof BodyError) {
    const party = err.side === "source" ? source : source === "client" ? "upstream" : "client";
    return new RequestFailure(outcome(codeFor(party, causeOfCode(err.code)), phase, err.code), status, true);
  }
  return new RequestFailure(outcome("proxy_internal", phase, String(err)), status, true);
}

/**
 * One try of a request on `t`'s endpoint. Not an async function: the common case (an idle pooled
 * connection) goes straight on to onConnection, whose promise is the try's, one promise and one
 * turn of the queue fewer per request. A throw here is a rejection to forward(), which awaits it.
 */
export function spliceTry(
  side: ClientSide,
  rec: RequestRecord,
  req: RequestHead,
  plan: ForwardPlan,
  t: TryRecord,
  traceHeaders: Header[] | null,
  lastTry: boolean,
): Promise<SessionNext> {
  const { opts } = side;
  if (req.framing.kind === "length" && opts.limits.maxBodyBytes > 0 && req.framing.length > opts.limits.maxBodyBytes) {
    throw new RequestFailure(outcome("client_limit", "request_body", "request body too large"), 413);
  }
  const forwarding = plan.hostRewrite === null ? opts.forwarding : { ...opts.forwarding, hostRewrite: plan.hostRewrite };
  const target = req.method === "CONNECT" ? req.target : plan.path;
  // With tracing, the client's trace fields are replaced by this try's, after the route's edits
  // (a new array for each try: extended here, not copied).
  const after: Header[] = traceHeaders ?? [];
  // A request id made here fills the gap, or replaces an unusable one (rare: then the client's
  // is filtered out of the fields, below).
  const replacesId = rec.requestIdGenerated && rec.fields.valuesOf("x-request-id").length > 0;
  if (rec.requestIdGenerated) after.push(["X-Request-Id", rec.requestId as string]);
  // Without the route's edits, most heads are their kept lines and the proxy's fields: written
  // without the list of fields in between (plainRequestHead).
  const unedited = plan.requestHeadersRemove.size === 0 && plan.requestHeadersAdd.length === 0 && !replacesId;
  let headText = unedited
    ? plainRequestHead(req, target, rec.clientAddress, rec.scheme, forwarding, traceHeaders !== null, after)
    : null;
  if (headText === null) {
    let headers = editHeaders(
      upstreamRequestHeaders(req, rec.clientAddress, rec.scheme, forwarding, traceHeaders !== null),
      plan.requestHeadersRemove,
      plan.requestHeadersAdd,
    );
    if (replacesId) headers = headers.filter(([n]) => !sameName(n, "x-request-id"));
    headText = serializeRequestHead(req.method, target, [...headers, ...after], req);
  }
  const sending: Sending = { side, rec, req, headText, plan, t, lastTry };
  // An idle pooled connection (the usual case) is taken at once, without a promise.
  const idle = t.endpoint.pool.takeIdle();
  return idle ? onConnection(sending, idle, 0) : connectAndSend(sending, 0);
}

/** What a try sends, on whichever connection it gets. */
interface Sending {
  side: ClientSide;
  rec: RequestRecord;
  req: RequestHead;
  headText: string;
  plan: ForwardPlan;
  t: TryRecord;
  lastTry: boolean;
}

/**
 * Sends on a connection from the pool, waiting for one. `stale`: how many pooled connections
 * were found closed as the request went out; a bodiless idempotent request that met one is
 * sent again on a new connection (the upstream may have acted on anything else before it closed).
 */
async function connectAndSend(s: Sending, stale: number): Promise<SessionNext> {
  let up: UpstreamConnection;
  try {
    up = await s.t.endpoint.pool.acquire(stale > 0);
  } catch (err) {
    throw connectFailure(err);
  }
  return onConnection(s, up, stale);
}

/** Nothing was sent: whatever the method, another endpoint may take it. */
function connectFailure(err: unknown): RequestFailure {
  if (!(err instanceof PoolError)) return new RequestFailure(outcome("proxy_internal", "connect", String(err)), 502);
  switch (err.kind) {
    case "queue_timeout":
      return new RequestFailure(outcome("overloaded", "connect", err.message), 503);
    case "connect_timeout":
      return new RequestFailure(outcome("upstream_timeout", "connect", err.message), 504);
    case "connect_failed":
      return new RequestFailure(outcome("upstream_refused", "connect", err.message), 502);
    case "tls_failed":
      // Verification or handshake: another try would meet the same certificate; never retried.
      return new RequestFailure(outcome("upstream_tls", "connect", err.message), 502);
    case "no_resources":
      // Not the endpoint's fault: no outlier feedback, no retry elsewhere (the shortage is here); 503 and try again later.
      warnRateLimited("no_resources", { err: err.message }, "out of file descriptors or memory: requests are refused with 503");
      return new RequestFailure(outcome("overloaded", "connect", err.message), 503);
  }
}

/**
 * A request body on its way upstream while the response head is awaited: relayBody's run and
 * what became of it. Made only for a body that does not leave with the head.
 */
class BodySend {
  state: "running" | "done" | "failed" = "running";
  /** The client broke its own request: the upstream can't get a complete one now. */
  clientFault: unknown = null;
  readonly abort = new AbortController();
  readonly done: Promise<void>;

  constructor(
    framing: BodyFraming,
    reader: SocketReader,
    up: UpstreamConnection,
    t: TryRecord,
    opts: HttpProxyOptions,
    plan: ForwardPlan,
  ) {
    this.done = relayBody(framing, reader, up.socket, {
      spliceThreshold: opts.spliceThreshold,
      spliceChunkThreshold: opts.spliceChunkThreshold,
      idleTimeoutMs: plan.bodyIdleMs,
      maxBytes: opts.limits.maxBodyBytes,
      signal: this.abort.signal,
    }).then(
      (stats) => {
        this.state = "done";
        t.request = stats;
      },
      (error: unknown) => {
        this.state = "failed";
        if (error instanceof BodyError) t.request = error.stats;
        if (error instanceof HttpError || (error instanceof BodyError && error.side === "source")) {
          this.clientFault = error;
          up.socket.destroy();
        }
      },
    );
  }
}

/** Where a try's request body stands: none to send (or it left with the head) is done. */
function bodyStateOf(body: BodySend | null): BodySend["state"] {
  return body === null ? "done" : body.state;
}

/**
 * Stops a request body still on its way, then destroys the upstream connection, then waits for
 * the body's relay to end (at once without one).
 */
async function abandon(body: BodySend | null, up: UpstreamConnection): Promise<void> {
  body?.abort.abort();
  up.socket.destroy();
  if (body !== null) await body.done;
}

async function onConnection(s: Sending, up: UpstreamConnection, stale: number): Promise<SessionNext> {
  const { side, rec, req, headText, plan, t, lastTry } = s;
  const { client, reader, opts } = side;
  addConnect(t, performance.now(), up.reused);
  const upReader = readerOf(up);
  // A small body already read with the head (a POST of a few hundred bytes, say) leaves with it, in one write.
  const reqWhole = bodyWithHead(reader, req.framing, opts.limits.maxBodyBytes);
  writeHead(up.socket, headText, reqWhole);

  // Send the request: the body runs while the response head is awaited, since an upstream
  // may answer early (413, 100 Continue), and it must be able to. Null when there is none to
  // run (nothing to await then: each await is a promise and a turn of the queue).
  let body: BodySend | null = null;
  if (reqWhole) t.request = { bytes: reqWhole.length, spliced: 0, copied: reqWhole.length, pipeSize: null };
  else if (req.framing.kind !== "none") body = new BodySend(req.framing, reader, up, t, opts, plan);

  // Await the final response head. The first-byte timeout counts from the end of the request
  // (on the upstream reader's own timer: one per connection, not one per request).
  let timedOut = false;
  let awaitingHead = true;
  const armFirstByte = () =>
    upReader.setDeadline(plan.firstByteMs, () => {
      timedOut = true;
      up.socket.destroy();
    });
  if (body === null) armFirstByte();
  // A response may come before the request's body ends (an early 413): then there is nothing to time.
  else void body.done.then(() => awaitingHead && bodyStateOf(body) === "done" && !up.socket.destroyed && armFirstByte());

  let res: ResponseHead;
  try {
    // The wait for the answer's first bytes, here rather than in readFinalHead: nearly always
    // the whole head comes in them, and is taken without another async function's promise.
    if (upReader.bufferedBytes === 0) await upReader.waitForData(0);
    res = takeFinalHead(side, req, upReader) ?? (await readFinalHead(side, req, upReader));
  } catch (err) {
    awaitingHead = false;
    upReader.clearDeadline();
    if (body !== null) {
      body.abort.abort();
      await body.done;
    }
    up.socket.destroy();
    const bodySent = req.framing.kind !== "none";
    const clientFault = body?.clientFault;
    if (clientFault) {
      if (clientFault instanceof HttpError)
        throw new RequestFailure(
          outcome(clientCodeForStatus(clientFault.status), "request_body", clientFault.message),
          clientFault.status,
          true,
        );
      const code = clientFault instanceof BodyError ? clientFault.code : "EOF";
      throw new RequestFailure(outcome(codeFor("client", causeOfCode(code)), "request_body", "client went away"), null, true);
    }
    if (timedOut)
      throw new RequestFailure(outcome("upstream_timeout", "response_head", "upstream did not answer in time"), 504, bodySent);
    if (err instanceof HttpError)
      throw new RequestFailure(outcome("upstream_protocol", "response_head", err.message), 502, bodySent);
    if (err instanceof PeerClosed && err.clean && up.reused && req.framing.kind === "none" && isIdempotent(req.method)) {
      t.staleAt.push(performance.now());
      if (stale >= MAX_STALE)
        throw new RequestFailure(outcome("upstream_closed", "response_head", "upstream closed the connection"), 502);
      return connectAndSend(s, stale + 1);
    }
    const reason = (err as { code?: string }).code ?? (err as Error).message;
    // A TLS alert after the handshake (an upstream that wanted a client certificate, TLS 1.3) is TLS's failure too.
    const code = isTlsError({ code: reason } as NodeJS.ErrnoException)
      ? "upstream_tls"
      : err instanceof PeerClosed && reason === "EOF"
        ? "upstream_closed"
        : "upstream_reset";
    const phase = bodyStateOf(body) === "done" ? "response_head" : "request_body";
    throw new RequestFailure(outcome(code, phase, `upstream failed before the response head (${reason})`), 502, bodySent);
  } finally {
    awaitingHead = false;
    upReader.clearDeadline();
  }
  t.responseHeadAt = performance.now();
  t.status = res.status;

  if (!lastTry && plan.retry.statuses.has(res.status) && isIdempotent(req.method) && req.framing.kind === "none") {
    // This answer is not passed on: the connection can't be reused without reading it.
    await abandon(body, up);
    throw new RequestFailure(outcome("upstream_status", "response_head", `upstream answered ${res.status}`), 502, false);
  }

  // Upgrades and CONNECT become a tunnel once the upstream agreed.
  const upgraded =
    (res.status === 101 && req.upgrade !== null) || (req.method === "CONNECT" && res.status >= 200 && res.status < 300);
  if (upgraded) return relayTunnel(side, rec, req, res, up, plan, t, body?.done ?? null);
  if (res.status === 101) {
    up.socket.destroy();
    throw new RequestFailure(outcome("upstream_protocol", "response_head", "upstream switched protocols unasked"), 502);
  }

  // Relay the response.
  let framing: BodyFraming;
  try {
    framing = responseFraming(req, res);
  } catch (err) {
    up.socket.destroy();
    throw new RequestFailure(outcome("upstream_protocol", "response_head", (err as Error).message), 502);
  }
  const dechunk = framing.kind === "chunked" && req.version === "1.0";
  let keepClient = req.keepAlive && framing.kind !== "close" && !dechunk && bodyStateOf(body) === "done" && !side.closing();
  // The proxy's own framing and connection fields, after the upstream's kept ones and any edits.
  const own: Header[] = [];
  if (framing.kind === "chunked" && !dechunk) own.push(["Transfer-Encoding", "chunked"]);
  if (!keepClient) own.push(["Connection", "close"]);
  else if (req.version === "1.0") own.push(["Connection", "keep-alive"]);
  // Without the route's edits, most heads are their kept lines and the proxy's fields: written
  // without the list of fields in between (plainResponseHead).
  const unedited = plan.responseHeadersRemove.size === 0 && plan.responseHeadersAdd.length === 0;
  const headOut =
    (unedited ? plainResponseHead(res, opts.forwarding, own) : null) ??
    serializeResponseHead(
      res.status,
      res.reason,
      [...editHeaders(clientResponseHeaders(res, opts.forwarding), plan.responseHeadersRemove, plan.responseHeadersAdd), ...own],
      res,
    );
  // A small body already read with the head (the common case) leaves with it, in one buffer.
  const whole = bodyWithHead(upReader, framing);
  rec.status = res.status;
  if (whole) {
    t.firstBodyByteAt = performance.now();
    writeHead(client, headOut, whole);
    // Written on (or copied by writeHead): the read they came in can be given back.
    upReader.releaseLent();
    t.response = { bytes: whole.length, spliced: 0, copied: whole.length, pipeSize: null };
  } else {
    // Otherwise the head still shares a write with the body's first bytes (one syscall instead
    // of two). A body handed to transfer() takes the head along and sends both (straight to the
    // kernel when it can); for the others the socket is corked until those bytes are written,
    // or until the next turn of the loop if they are slow to come.
    const lead = movesByTransfer(framing, upReader, opts.spliceThreshold) ? headOut : undefined;
    const release = framing.kind !== "none" && lead === undefined ? corkBriefly(client) : null;
    if (lead === undefined) client.write(headOut, "latin1");
    if (framing.kind !== "none") t.firstBodyByteAt = performance.now();
    try {
      t.response = await relayBody(framing, upReader, client, {
        spliceThreshold: opts.spliceThreshold,
        spliceChunkThreshold: opts.spliceChunkThreshold,
        idleTimeoutMs: plan.bodyIdleMs,
        maxBytes: 0,
        dechunk,
        lead,
      });
      release?.();
    } catch (err) {
      release?.();
      if (err instanceof BodyError) t.response = err.stats;
      await abandon(body, up);
      throw bodyFailure(err, "response_body", "upstream", null);
    }
  }

  // Settle: the response is complete. A request body still on its way can't finish usefully now.
  if (body !== null) {
    if (body.state === "running") {
      keepClient = false;
      body.abort.abort();
    }
    await body.done;
  }
  const upstreamKeepAlive =
    bodyStateOf(body) === "done" &&
    framing.kind !== "close" &&
    !res.connection.includes("close") &&
    (res.version === "1.1" || res.connection.includes("keep-alive"));
  // Bodies copied through here are written on once nothing is queued on the client; if some
  // still is, the next exchange on this connection (another client's, maybe) must not give
  // back the reads those bytes lie in.
  upReader.settleLent(client);
  // The same for the request's bytes read from the client (a chunked upload's last reads), on
  // the upstream connection before it goes back to the pool.
  reader.settleLent(up.socket);
  t.endpoint.pool.release(up, upstreamKeepAlive, res.keepAliveTimeoutMs);
  if (bodyStateOf(body) === "failed") keepClient = false;
  return keepClient ? "keep-alive" : "close";
}

async function relayTunnel(
  side: ClientSide,
  rec: RequestRecord,
  req: RequestHead,
  res: ResponseHead,
  up: UpstreamConnection,
  plan: ForwardPlan,
  t: TryRecord,
  bodyDone: Promise<void> | null,
): Promise<SessionNext> {
  const { client, reader, opts } = side;
  if (bodyDone) await bodyDone;
  const headersOut = editHeaders(
    clientResponseHeaders(res, opts.forwarding),
    plan.responseHeadersRemove,
    plan.responseHeadersAdd,
  );
  if (res.status === 101) headersOut.push(["Connection", "upgrade"], ["Upgrade", req.upgrade as string]);
  rec.status = res.status;
  client.write(serializeResponseHead(res.status, res.reason, headersOut, res), "latin1");
  t.tunnel = true;
  side.tunnels.inc();
  try {
    const r = await tunnel(client, up.socket, {
      prefixAtoB: reader.takeBuffered(),
      prefixBtoA: readerOf(up).takeBuffered(),
      idleTimeoutMs: plan.bodyIdleMs,
    });
    const count = (n: number) =>
      r.pump === "splice"
        ? { bytes: n, spliced: n, copied: 0, pipeSize: null }
        : { bytes: n, spliced: 0, copied: n, pipeSize: null };
    t.request = count(r.aToB);
    t.response = count(r.bToA);
  } catch (err) {
    // A tunnel ends when either side ends it; a reset or an idle timeout is how it ended, not a fault of the proxy.
    if (err instanceof TransferError) {
      const party = err.side === "destination" ? "upstream" : "client";
      throw new RequestFailure(outcome(codeFor(party, causeOfCode(err.code)), "tunnel", err.code), null);
    }
    throw err;
  } finally {
    side.tunnels.dec();
  }
  return "consumed";
}

/** Bodies up to this size share the head's write; below the socket's high-water mark, so writes never wait. */
const SMALL_BODY = 8 * 1024;

/**
 * A Content-Length body of at most SMALL_BODY bytes (and at most `limit`, when it is not 0)
 * that `reader` already holds, taken to leave in its head's write; null otherwise.
 */
function bodyWithHead(reader: SocketReader, framing: BodyFraming, limit = 0): Buffer | null {
  if (framing.kind !== "length" || framing.length > SMALL_BODY || (limit > 0 && framing.length > limit)) return null;
  return reader.takeIfBuffered(framing.length);
}

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

/** The reader's faults speak for clients (400, 431); from an upstream the same faults are a 502. */
function upstreamHeadError(err: unknown): unknown {
  return err instanceof HttpError ? new HttpError(502, `malformed response head from upstream: ${err.message}`) : err;
}

/**
 * The final response head if the reader already holds it whole, passing 1xx interim responses
 * it holds on to the client; null when more must be read (readFinalHead does that).
 */
function takeFinalHead(side: ClientSide, req: RequestHead, upReader: SocketReader): ResponseHead | null {
  const max = side.opts.limits.maxHeadBytes;
  while (upReader.bufferedBytes > 0) {
    let head: Buffer | null;
    try {
      head = upReader.takeHead(max, max);
    } catch (err) {
      throw upstreamHeadError(err);
    }
    if (head === null) return null;
    const res = finalOrInterim(side, req, head, upReader.headText);
    if (res !== null) return res;
  }
  return null;
}

/** A response head, parsed: the final one, or null for an interim (1xx) one, passed on. */
function finalOrInterim(side: ClientSide, req: RequestHead, head: Buffer, text: string | null): ResponseHead | null {
  const res = parseResponseHead(head, text);
  if (res.status >= 200 || res.status === 101) return res;
  passInterim(side, req, res);
  return null;
}

/** HTTP/1.0 clients don't know interim responses; others get them as they come. */
function passInterim(side: ClientSide, req: RequestHead, res: ResponseHead): void {
  if (req.version !== "1.1") return;
  side.client.write(
    serializeResponseHead(res.status, res.reason, clientResponseHeaders(res, side.opts.forwarding), res),
    "latin1",
  );
}

/** Reads response heads, passing 1xx interim responses to the client, until a final one. */
async function readFinalHead(side: ClientSide, req: RequestHead, upReader: SocketReader): Promise<ResponseHead> {
  const max = side.opts.limits.maxHeadBytes;
  for (;;) {
    // What is buffered first, without a promise; readHead's wait and loop only for a head still to come.
    const taken = takeFinalHead(side, req, upReader);
    if (taken !== null) return taken;
    let head: Buffer;
    try {
      head = await upReader.readHead(max, max, 0);
    } catch (err) {
      throw upstreamHeadError(err);
    }
    const res = finalOrInterim(side, req, head, upReader.headText);
    if (res !== null) return res;
  }
}
