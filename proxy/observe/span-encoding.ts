// A request's two kinds of span written as OTLP protobuf from the fields of its record: the
// server span and a client span per try, the same as the SDK path makes (request-trace.ts;
// test/otlp.test.ts decodes both and compares them). Shared by the export worker, which reads
// the fields from the span ring (span-ring.ts), and by main-thread encoding, which reads them
// from the records themselves. Most of a span's bytes repeat from one request to the next
// (attribute keys, the method, addresses, engine, route, event names): they are written as
// groups encoded once and copied while their inputs stay the same (SpanEncoder), and events
// as bytes encoded once with their time set in; what changes per request (ids, times, path,
// ports, status, byte counts) is written each time.
import { OUTCOMES, type Outcome } from "../request/outcome.js";
import { type BodyCount, bodyPathOf, type ClientTls, type ListenerEngine } from "../request/record.js";
import {
  attrKey,
  EVENT,
  FLAG_HAS_IS_REMOTE,
  FLAG_IS_REMOTE,
  fewKey,
  KIND,
  ProtoWriter,
  SPAN,
  STATUS,
  STATUS_ERROR,
} from "./otlp-protobuf.js";

/** The fields of a request record that its spans show. RequestRecord has them all. */
export interface SpanRequest {
  readonly engine: ListenerEngine;
  readonly method: string;
  readonly path: string;
  readonly version: string;
  readonly host: string | null;
  readonly userAgent: string | null;
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly localAddress: string;
  readonly localPort: number;
  readonly tls: ClientTls | null;
  readonly route: string | null;
  readonly status: number | null;
  readonly outcome: Outcome | null;
  readonly start: number;
  readonly end: number;
}

/** The fields of a try that its span shows. TryRecord has them all. */
export interface SpanTry {
  readonly endpoint: { readonly address: { readonly host: string; readonly port: number } };
  readonly index: number;
  readonly start: number;
  readonly end: number;
  readonly connects: ReadonlyArray<{ readonly at: number; readonly reused: boolean }>;
  readonly staleAt: readonly number[];
  readonly responseHeadAt: number | null;
  readonly status: number | null;
  readonly firstBodyByteAt: number | null;
  readonly request: BodyCount;
  readonly response: BodyCount;
  readonly tunnel: boolean;
  readonly upstreamTls: boolean;
  readonly outcome: Outcome | null;
}

/**
 * A span's place in its trace. The encoder takes ids as bytes (SpanPlace); the main thread
 * keeps them as lower-case hex (SpanPlace<string>), which the span ring carries.
 */
export interface SpanPlace<Id = Uint8Array> {
  traceId: Id;
  spanId: Id;
  /** The parent span's id; null for a root span. */
  parentId: Id | null;
  remoteParent: boolean;
  traceState: string | null;
}

/** A lower-case hex id as bytes. */
export const idBytes = (hex: string): Uint8Array => Buffer.from(hex, "hex");

/** A place with hex ids as one with byte ids. */
export function placeBytes(p: SpanPlace<string>): SpanPlace {
  return {
    traceId: idBytes(p.traceId),
    spanId: idBytes(p.spanId),
    parentId: p.parentId === null ? null : idBytes(p.parentId),
    remoteParent: p.remoteParent,
    traceState: p.traceState,
  };
}

// Attribute keys, encoded once.
const K_EXCEPTION_TYPE = attrKey("exception.type");
const K_EXCEPTION_MESSAGE = attrKey("exception.message");
const F_HTTP_REQUEST_METHOD = fewKey(SPAN.attributes, "http.request.method");
const F_SERVER_ADDRESS = fewKey(SPAN.attributes, "server.address");
const K_SERVER_PORT = attrKey("server.port");
const K_SLUICE_RETRY_COUNT = attrKey("sluice.retry_count");
const F_URL_SCHEME = fewKey(SPAN.attributes, "url.scheme");
const K_HTTP_RESPONSE_STATUS_CODE = attrKey("http.response.status_code");
const F_SLUICE_ENGINE = fewKey(SPAN.attributes, "sluice.engine");
const K_SLUICE_REQUEST_BYTES_SPLICED = attrKey("sluice.request.bytes_spliced");
const K_SLUICE_REQUEST_BYTES_COPIED = attrKey("sluice.request.bytes_copied");
const K_SLUICE_RESPONSE_BYTES_SPLICED = attrKey("sluice.response.bytes_spliced");
const K_SLUICE_RESPONSE_BYTES_COPIED = attrKey("sluice.response.bytes_copied");
const K_SLUICE_TUNNEL = attrKey("sluice.tunnel");
const F_SLUICE_BODY_COPY_REASON = fewKey(SPAN.attributes, "sluice.body.copy_reason");
const K_SLUICE_PIPE_SIZE = attrKey("sluice.pipe_size");
const F_SLUICE_OUTCOME = fewKey(SPAN.attributes, "sluice.outcome");
const F_SLUICE_OUTCOME_PHASE = fewKey(SPAN.attributes, "sluice.outcome.phase");
const K_URL_PATH = attrKey("url.path");
const K_USER_AGENT_ORIGINAL = attrKey("user_agent.original");
const F_NETWORK_PROTOCOL_VERSION = fewKey(SPAN.attributes, "network.protocol.version");
const F_CLIENT_ADDRESS = fewKey(SPAN.attributes, "client.address");
const K_CLIENT_PORT = attrKey("client.port");
const F_SLUICE_LISTENER_ENGINE = fewKey(SPAN.attributes, "sluice.listener.engine");
const F_TLS_PROTOCOL_NAME = fewKey(SPAN.attributes, "tls.protocol.name");
const F_TLS_PROTOCOL_VERSION = fewKey(SPAN.attributes, "tls.protocol.version");
const F_TLS_CIPHER = fewKey(SPAN.attributes, "tls.cipher");
const K_TLS_CLIENT_SERVER_NAME = attrKey("tls.client.server_name");
const K_TLS_CLIENT_SUBJECT = attrKey("tls.client.subject");
const F_SLUICE_ROUTE = fewKey(SPAN.attributes, "sluice.route");
const K_SLUICE_CONNECTION_REUSED = attrKey("sluice.connection.reused");

/** Status and exception event of a failed span, as the SDK path records them (`at` in epoch milliseconds). */
function writeError(w: ProtoWriter, type: string, message: string | undefined, at: number): void {
  if (message !== undefined) {
    const ev = w.begin(SPAN.events);
    w.time(EVENT.time, at);
    w.string(EVENT.name, "exception");
    w.kvStr(EVENT.attributes, K_EXCEPTION_TYPE, type);
    w.kvStr(EVENT.attributes, K_EXCEPTION_MESSAGE, message);
    w.end(ev);
  }
  const st = w.begin(SPAN.status);
  if (message !== undefined) w.string(STATUS.message, message);
  w.uint(STATUS.code, STATUS_ERROR);
  w.end(st);
}

/** Where an event's time is in its bytes: the events field's key and one length byte, then the time's key. */
const EVENT_TIME_AT = 3;

/** An event whose name (and attribute) never change, encoded once with a zero time (written with w.timed()). */
function eventBytes(name: string, reused?: boolean): Uint8Array {
  const w = new ProtoWriter(256);
  const ev = w.begin(SPAN.events);
  w.time(EVENT.time, 0);
  w.string(EVENT.name, name);
  if (reused !== undefined) w.kvBool(EVENT.attributes, K_SLUICE_CONNECTION_REUSED, reused);
  w.end(ev);
  const bytes = w.keep(0);
  if ((bytes[1] as number) >= 128 || bytes[2] !== EVENT.time * 8 + 1) throw new Error(`event ${name}: not the expected shape`);
  return bytes;
}
const EV_CONNECTED_NEW = eventBytes("upstream connected", false);
const EV_CONNECTED_REUSED = eventBytes("upstream connected", true);
const EV_STALE = eventBytes("upstream closed the reused connection; sending again");
const EV_RESPONSE_HEAD = eventBytes("response head received");
const EV_FIRST_BODY_BYTE = eventBytes("first body byte");
const EV_LAST_BODY_BYTE = eventBytes("last body byte");

/** A try's place: a child of the request's server span, in the same trace. */
function tryPlace(server: SpanPlace, spanId: Uint8Array): SpanPlace {
  return { traceId: server.traceId, spanId, parentId: server.spanId, remoteParent: false, traceState: server.traceState };
}

const outcomeMessage = (o: Outcome) => (o.detail ? `${o.code}: ${o.detail}` : o.code);

/** Opens a Span message (field 2 of ScopeSpans) with its place in the trace; end it with w.endWide(). */
function beginSpan(w: ProtoWriter, p: SpanPlace): number {
  const s = w.beginWide(2);
  w.id(SPAN.traceId, p.traceId);
  w.id(SPAN.spanId, p.spanId);
  if (p.traceState) w.string(SPAN.traceState, p.traceState);
  if (p.parentId) w.id(SPAN.parentSpanId, p.parentId);
  w.fixed32(SPAN.flags, 1 | FLAG_HAS_IS_REMOTE | (p.remoteParent ? FLAG_IS_REMOTE : 0));
  return s;
}

/**
 * Encoded bytes kept with the inputs they were written from: while a group's inputs are the
 * same (by ===) as last time, its bytes are copied instead of encoded again. Up to eight
 * inputs; a group with fewer passes undefined for the rest.
 */
class Remembered {
  private a: unknown;
  private b: unknown;
  private c: unknown;
  private d: unknown;
  private e: unknown;
  private f: unknown;
  private g: unknown;
  private h: unknown;
  private bytes: Uint8Array | null = null;

  /**
   * Writes the kept bytes when the inputs are those they were written from. Otherwise
   * returns false and takes these inputs: write the group, then keep() it.
   */
  reuse(
    w: ProtoWriter,
    a: unknown,
    b?: unknown,
    c?: unknown,
    d?: unknown,
    e?: unknown,
    f?: unknown,
    g?: unknown,
    h?: unknown,
  ): boolean {
    if (
      this.bytes !== null &&
      this.a === a &&
      this.b === b &&
      this.c === c &&
      this.d === d &&
      this.e === e &&
      this.f === f &&
      this.g === g &&
      this.h === h
    ) {
      w.encoded(this.bytes);
      return true;
    }
    // Until keep(), nothing is kept: a group whose writing failed is not reused.
    this.bytes = null;
    this.a = a;
    this.b = b;
    this.c = c;
    this.d = d;
    this.e = e;
    this.f = f;
    this.g = g;
    this.h = h;
    return false;
  }

  /** Keeps what was written since `from` for the inputs the last reuse() took. */
  keep(w: ProtoWriter, from: number): void {
    this.bytes = w.keep(from);
  }
}

/** Epoch milliseconds of a record's time: the record's times are milliseconds after the recording thread's performance.timeOrigin. */
type Wall = (ms: number) => number;

/**
 * Writes requests' spans. Keeps the groups of bytes that repeat between requests (Remembered),
 * so one encoder per writing thread; the bytes it writes do not depend on what it wrote before
 * (test/span-encoding.test.ts compares them with a fresh encoder's for each request).
 */
export class SpanEncoder {
  private readonly tryName = new Remembered();
  private readonly tryFixed = new Remembered();
  private readonly tryBody = new Remembered();
  private readonly tryOutcome = new Remembered();
  private readonly serverName = new Remembered();
  private readonly serverFixed = new Remembered();
  private readonly serverTls = new Remembered();
  private readonly serverOutcome = new Remembered();

  /** A try's client span. */
  writeTrySpan(w: ProtoWriter, p: SpanPlace, rec: SpanRequest, t: SpanTry, origin: number): void {
    const wall: Wall = (ms) => origin + ms;
    const s = beginSpan(w, p);
    let from = w.pos;
    if (!this.tryName.reuse(w, rec.method)) {
      w.string(SPAN.name, rec.method);
      w.uint(SPAN.kind, KIND.client);
      this.tryName.keep(w, from);
    }
    w.time(SPAN.start, wall(t.start));
    w.time(SPAN.end, wall(t.end));
    const host = t.endpoint.address.host;
    const port = t.endpoint.address.port;
    from = w.pos;
    if (!this.tryFixed.reuse(w, rec.method, host, port, t.index, t.upstreamTls)) {
      w.kvFew(F_HTTP_REQUEST_METHOD, rec.method);
      w.kvFew(F_SERVER_ADDRESS, host);
      w.kvUint(SPAN.attributes, K_SERVER_PORT, port);
      w.kvUint(SPAN.attributes, K_SLUICE_RETRY_COUNT, t.index);
      w.kvFew(F_URL_SCHEME, t.upstreamTls ? "https" : "http");
      this.tryFixed.keep(w, from);
    }
    if (t.responseHeadAt !== null && t.status !== null) w.kvUint(SPAN.attributes, K_HTTP_RESPONSE_STATUS_CODE, t.status);
    const o = t.outcome;
    if (o?.code === "completed") {
      const path = bodyPathOf(rec.engine, t.request, t.response);
      const copyReason =
        rec.engine === "splice" && (rec.tls || t.upstreamTls) && t.request.copied + t.response.copied > 0
          ? rec.tls
            ? "tls_client"
            : "tls_upstream"
          : null;
      const pipe = t.response.pipeSize ?? t.request.pipeSize;
      from = w.pos;
      if (!this.tryBody.reuse(w, path, t.tunnel, copyReason, pipe)) {
        w.kvFew(F_SLUICE_ENGINE, path);
        w.kvBool(SPAN.attributes, K_SLUICE_TUNNEL, t.tunnel);
        // Why a body on the splice engine was copied, when the reason is TLS (docs/tls.md).
        if (copyReason !== null) w.kvFew(F_SLUICE_BODY_COPY_REASON, copyReason);
        if (pipe !== null) w.kvUint(SPAN.attributes, K_SLUICE_PIPE_SIZE, pipe);
        this.tryBody.keep(w, from);
      }
      w.kvUint(SPAN.attributes, K_SLUICE_REQUEST_BYTES_SPLICED, t.request.spliced);
      w.kvUint(SPAN.attributes, K_SLUICE_REQUEST_BYTES_COPIED, t.request.copied);
      w.kvUint(SPAN.attributes, K_SLUICE_RESPONSE_BYTES_SPLICED, t.response.spliced);
      w.kvUint(SPAN.attributes, K_SLUICE_RESPONSE_BYTES_COPIED, t.response.copied);
    } else if (o) this.writeOutcome(w, this.tryOutcome, o);
    const connects = t.connects;
    for (let i = 0; i < connects.length; i++) {
      const c = connects[i] as { at: number; reused: boolean };
      w.timed(c.reused ? EV_CONNECTED_REUSED : EV_CONNECTED_NEW, EVENT_TIME_AT, wall(c.at));
      const stale = t.staleAt[i];
      if (stale !== undefined) w.timed(EV_STALE, EVENT_TIME_AT, wall(stale));
    }
    if (t.responseHeadAt !== null) w.timed(EV_RESPONSE_HEAD, EVENT_TIME_AT, wall(t.responseHeadAt));
    if (t.firstBodyByteAt !== null) w.timed(EV_FIRST_BODY_BYTE, EVENT_TIME_AT, wall(t.firstBodyByteAt));
    if (o?.code === "completed") w.timed(EV_LAST_BODY_BYTE, EVENT_TIME_AT, wall(t.end));
    else if (o) writeError(w, "UpstreamError", outcomeMessage(o), wall(t.end));
    w.endWide(s);
  }

  /** The request's server span. */
  writeServerSpan(w: ProtoWriter, p: SpanPlace, rec: SpanRequest, origin: number): void {
    const wall: Wall = (ms) => origin + ms;
    const s = beginSpan(w, p);
    let from = w.pos;
    if (!this.serverName.reuse(w, rec.method, rec.route)) {
      w.string(SPAN.name, rec.route !== null ? `${rec.method} ${rec.route}` : rec.method);
      w.uint(SPAN.kind, KIND.server);
      this.serverName.keep(w, from);
    }
    w.time(SPAN.start, wall(rec.start));
    w.time(SPAN.end, wall(rec.end));
    // The Host field's name and port: split at a last colon followed only by digits.
    const hostField = rec.host ?? "";
    const colon = hostField.lastIndexOf(":");
    let portDigits = colon >= 0 && colon < hostField.length - 1;
    for (let k = colon + 1; portDigits && k < hostField.length; k++) {
      const c = hostField.charCodeAt(k);
      portDigits = c >= 48 && c <= 57;
    }
    const host = portDigits ? hostField.slice(0, colon) : hostField;
    const port = portDigits ? Number(hostField.slice(colon + 1)) : rec.localPort;
    const serverAddress = host || rec.localAddress;
    const a = SPAN.attributes;
    const tls = rec.tls;
    from = w.pos;
    if (
      !this.serverFixed.reuse(
        w,
        rec.method,
        tls !== null,
        rec.version,
        rec.clientAddress,
        serverAddress,
        port,
        rec.engine,
        rec.route,
      )
    ) {
      w.kvFew(F_HTTP_REQUEST_METHOD, rec.method);
      w.kvFew(F_URL_SCHEME, tls ? "https" : "http");
      w.kvFew(F_NETWORK_PROTOCOL_VERSION, rec.version);
      w.kvFew(F_CLIENT_ADDRESS, rec.clientAddress);
      w.kvFew(F_SERVER_ADDRESS, serverAddress);
      w.kvUint(a, K_SERVER_PORT, port);
      w.kvFew(F_SLUICE_LISTENER_ENGINE, rec.engine);
      if (rec.route !== null) w.kvFew(F_SLUICE_ROUTE, rec.route);
      this.serverFixed.keep(w, from);
    }
    const query = rec.path.indexOf("?");
    w.kvStr(a, K_URL_PATH, query < 0 ? rec.path : rec.path.slice(0, query));
    const ua = rec.userAgent;
    if (ua !== null) w.kvStr(a, K_USER_AGENT_ORIGINAL, ua);
    w.kvUint(a, K_CLIENT_PORT, rec.clientPort);
    if (tls) {
      from = w.pos;
      if (!this.serverTls.reuse(w, tls.protocol, tls.cipher, tls.serverName, tls.clientSubject)) {
        w.kvFew(F_TLS_PROTOCOL_NAME, "tls");
        if (tls.protocol) w.kvFew(F_TLS_PROTOCOL_VERSION, tls.protocol.replace(/^TLSv/, ""));
        if (tls.cipher) w.kvFew(F_TLS_CIPHER, tls.cipher);
        if (tls.serverName) w.kvStr(a, K_TLS_CLIENT_SERVER_NAME, tls.serverName);
        if (tls.clientSubject) w.kvStr(a, K_TLS_CLIENT_SUBJECT, tls.clientSubject);
        this.serverTls.keep(w, from);
      }
    }
    if (rec.status !== null) w.kvUint(a, K_HTTP_RESPONSE_STATUS_CODE, rec.status);
    const o = rec.outcome;
    if (o) this.writeOutcome(w, this.serverOutcome, o);
    const failed = o !== null && OUTCOMES[o.code].party !== null && o.code !== "local" && o.code !== "no_route";
    if (failed || (rec.status !== null && rec.status >= 500))
      writeError(w, "ProxyError", failed && o ? outcomeMessage(o) : undefined, wall(rec.end));
    w.endWide(s);
  }

  /** sluice.outcome and sluice.outcome.phase. */
  private writeOutcome(w: ProtoWriter, kept: Remembered, o: Outcome): void {
    const from = w.pos;
    if (kept.reuse(w, o.code, o.phase)) return;
    w.kvFew(F_SLUICE_OUTCOME, o.code);
    w.kvFew(F_SLUICE_OUTCOME_PHASE, o.phase);
    kept.keep(w, from);
  }

  /**
   * A finished request's spans into `batch`: a client span for tries[i] under id tryIds[i] for
   * each id (they ended first), then the server span at `place`. Times as for writeTrySpan.
   */
  writeRequestSpans(
    batch: SpanBatch,
    place: SpanPlace,
    rec: SpanRequest,
    tries: readonly SpanTry[],
    tryIds: readonly Uint8Array[],
    origin: number,
  ): void {
    for (let i = 0; i < tryIds.length && i < tries.length; i++) {
      const w = batch.writerForSpan();
      if (!w) continue;
      this.writeTrySpan(w, tryPlace(place, tryIds[i] as Uint8Array), rec, tries[i] as SpanTry, origin);
      batch.spanWritten();
    }
    const w = batch.writerForSpan();
    if (!w) return;
    this.writeServerSpan(w, place, rec, origin);
    batch.spanWritten();
  }
}

/** Where a request's spans are written: a batch that may refuse a span (it is then dropped and counted). */
export interface SpanBatch {
  writerForSpan(): ProtoWriter | null;
  spanWritten(): void;
}
