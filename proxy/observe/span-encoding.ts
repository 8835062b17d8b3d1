// A request's two kinds of span written as OTLP protobuf from the fields of its record: the
// server span and a client span per try, the same as the SDK path makes (request-trace.ts;
// test/otlp.test.ts decodes both and compares them). Shared by the export worker, which reads
// the fields from the span ring (span-ring.ts), and by main-thread encoding, which reads them
// from the records themselves. Most of a span's bytes repeat from one request to the next
// (attribute keys, the method, addresses, engine, route, event names): the start of the last
// span of each kind is kept with its inputs and copied, its ids and times set in, while the
// inputs stay the same (SpanTemplate); otherwise it is written from smaller groups encoded
// once and copied while their inputs stay the same (Remembered), and events as bytes encoded
// once with their time set in. What changes per request (status, ports, byte counts, path)
// follows the start, so a span's fields are not in field-number order (protobuf allows any).
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
  varintSize,
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

/**
 * The start of a span as written last time (its place, name, times, the attributes that repeat,
 * its events), with the inputs it was written from and where its ids and times are in it: while
 * the next span's inputs are the same, it starts as a copy of these bytes with its own ids and
 * times set in. The attributes that change with every request (counts, status, path, ports) are
 * written after it each time.
 */
class SpanTemplate {
  bytes: Uint8Array | null = null;
  traceIdAt = 0;
  spanIdAt = 0;
  parentIdAt = 0;
  startAt = 0;
  endAt = 0;
  traceState: string | null = null;
  remote = false;
}

class TryTemplate extends SpanTemplate {
  /** Where each event's time is, in the order they are written. */
  readonly eventAt: number[] = [];
  shape = -1;
  method = "";
  host = "";
  port = 0;
  index = 0;
  upstreamTls = false;
  path: string | null = null;
  tunnel = false;
  copyReason: string | null = null;
  pipe: number | null = null;
}

class ServerTemplate extends SpanTemplate {
  hasParent = false;
  method = "";
  route: string | null = null;
  version = "";
  clientAddress = "";
  serverAddress = "";
  port = 0;
  engine = "";
  outcomeCode: string | null = null;
  outcomePhase: string | null = null;
  tls = false;
  tlsProtocol: string | null = null;
  tlsCipher: string | null = null;
  tlsServerName: string | null = null;
  tlsClientSubject: string | null = null;
}

/** A try's four byte-count attributes as last written, and where their values' varints are. */
class CountsTemplate {
  bytes: Uint8Array | null = null;
  /** The four varints' lengths, four bits each. */
  lengths = -1;
  readonly valueAt = [0, 0, 0, 0];
}

/**
 * Which events a try's span has, as one number (connections, whether each was reused and was
 * found closed, the response head and first body byte); -1 when there are too many connections
 * to say (the span is then written in full).
 */
function eventShape(t: SpanTry): number {
  const n = t.connects.length;
  if (n > 8) return -1;
  let shape = n | (t.responseHeadAt !== null ? 16 : 0) | (t.firstBodyByteAt !== null ? 32 : 0);
  for (let i = 0; i < n; i++) {
    if ((t.connects[i] as { reused: boolean }).reused) shape |= 64 << i;
    if (t.staleAt[i] !== undefined) shape |= 16384 << i;
  }
  return shape;
}

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
  private readonly serverPath = new Remembered();
  /** The last Host field split into the server's address and port (most requests repeat it). */
  private readonly host = { field: "", localPort: -1, localAddress: "", port: 0, serverAddress: "" };
  private readonly tryKept = new TryTemplate();
  private readonly countsKept = new CountsTemplate();
  private readonly serverKept = new ServerTemplate();

  /** A try's client span. */
  writeTrySpan(w: ProtoWriter, p: SpanPlace, rec: SpanRequest, t: SpanTry, origin: number): void {
    const o = t.outcome;
    const completed = o !== null && o.code === "completed";
    const host = t.endpoint.address.host;
    const port = t.endpoint.address.port;
    const path = completed ? bodyPathOf(rec.engine, t.request, t.response) : null;
    // Why a body on the splice engine was copied, when the reason is TLS (docs/tls.md).
    const copyReason =
      completed && rec.engine === "splice" && (rec.tls || t.upstreamTls) && t.request.copied + t.response.copied > 0
        ? rec.tls
          ? "tls_client"
          : "tls_upstream"
        : null;
    const pipe = t.response.pipeSize ?? t.request.pipeSize;
    // Only completed tries are kept as templates (the common case; a failure's span is written in full).
    const shape = completed ? eventShape(t) : -1;
    const s = w.beginWide(2);
    const k = this.tryKept;
    if (
      shape >= 0 &&
      k.bytes !== null &&
      k.shape === shape &&
      k.traceState === p.traceState &&
      k.remote === p.remoteParent &&
      k.method === rec.method &&
      k.host === host &&
      k.port === port &&
      k.index === t.index &&
      k.upstreamTls === t.upstreamTls &&
      k.path === path &&
      k.tunnel === t.tunnel &&
      k.copyReason === copyReason &&
      k.pipe === pipe
    ) {
      const at = w.encoded(k.bytes);
      w.patch(at + k.traceIdAt, p.traceId);
      w.patch(at + k.spanIdAt, p.spanId);
      w.patch(at + k.parentIdAt, p.parentId as Uint8Array);
      w.timeAt(at + k.startAt, origin + t.start);
      w.timeAt(at + k.endAt, origin + t.end);
      // The events' times, in the order writeTryFixed writes the events.
      const ev = k.eventAt;
      let e = 0;
      const connects = t.connects;
      for (let i = 0; i < connects.length; i++) {
        w.timeAt(at + (ev[e++] as number), origin + (connects[i] as { at: number }).at);
        const stale = t.staleAt[i];
        if (stale !== undefined) w.timeAt(at + (ev[e++] as number), origin + stale);
      }
      if (t.responseHeadAt !== null) w.timeAt(at + (ev[e++] as number), origin + t.responseHeadAt);
      if (t.firstBodyByteAt !== null) w.timeAt(at + (ev[e++] as number), origin + t.firstBodyByteAt);
      w.timeAt(at + (ev[e] as number), origin + t.end);
    } else {
      // The offsets noted while writing are for the bytes kept now, or for none.
      k.bytes = null;
      const from = w.pos;
      this.writeTryFixed(w, p, rec, t, origin, path, copyReason, pipe, shape >= 0 ? from : -1);
      if (shape >= 0) {
        k.bytes = w.keep(from);
        k.shape = shape;
        k.traceState = p.traceState;
        k.remote = p.remoteParent;
        k.method = rec.method;
        k.host = host;
        k.port = port;
        k.index = t.index;
        k.upstreamTls = t.upstreamTls;
        k.path = path;
        k.tunnel = t.tunnel;
        k.copyReason = copyReason;
        k.pipe = pipe;
      }
    }
    // What changes from one request to the next, written each time.
    if (t.responseHeadAt !== null && t.status !== null) w.kvUint(SPAN.attributes, K_HTTP_RESPONSE_STATUS_CODE, t.status);
    if (completed) {
      this.writeCounts(w, t.request.spliced, t.request.copied, t.response.spliced, t.response.copied);
    } else if (o) {
      this.writeOutcome(w, this.tryOutcome, o);
      writeError(w, "UpstreamError", outcomeMessage(o), origin + t.end);
    }
    w.endWide(s);
  }

  /**
   * The try's four byte counts: copied from the last ones written when each value's varint is as
   * long as it was there, the values written over them.
   */
  private writeCounts(w: ProtoWriter, a: number, b: number, c: number, d: number): void {
    const k = this.countsKept;
    const la = varintSize(a);
    const lb = varintSize(b);
    const lc = varintSize(c);
    const ld = varintSize(d);
    const lengths = la | (lb << 4) | (lc << 8) | (ld << 12);
    const v = k.valueAt;
    if (k.bytes !== null && k.lengths === lengths) {
      const at = w.encoded(k.bytes);
      w.varintAt(at + (v[0] as number), a);
      w.varintAt(at + (v[1] as number), b);
      w.varintAt(at + (v[2] as number), c);
      w.varintAt(at + (v[3] as number), d);
      return;
    }
    const from = w.pos;
    w.kvUint(SPAN.attributes, K_SLUICE_REQUEST_BYTES_SPLICED, a);
    v[0] = w.pos - la - from;
    w.kvUint(SPAN.attributes, K_SLUICE_REQUEST_BYTES_COPIED, b);
    v[1] = w.pos - lb - from;
    w.kvUint(SPAN.attributes, K_SLUICE_RESPONSE_BYTES_SPLICED, c);
    v[2] = w.pos - lc - from;
    w.kvUint(SPAN.attributes, K_SLUICE_RESPONSE_BYTES_COPIED, d);
    v[3] = w.pos - ld - from;
    k.bytes = w.keep(from);
    k.lengths = lengths;
  }

  /**
   * A try span's fields that a template keeps: its place, name, times, the attributes that
   * repeat, and its events. `from` >= 0: where the template starts, whose ids', times' and
   * events' places are noted in tryKept.
   */
  private writeTryFixed(
    w: ProtoWriter,
    p: SpanPlace,
    rec: SpanRequest,
    t: SpanTry,
    origin: number,
    path: string | null,
    copyReason: string | null,
    pipe: number | null,
    from: number,
  ): void {
    const k = this.tryKept;
    this.writePlace(w, p, k, from);
    let at = w.pos;
    if (!this.tryName.reuse(w, rec.method)) {
      w.string(SPAN.name, rec.method);
      w.uint(SPAN.kind, KIND.client);
      this.tryName.keep(w, at);
    }
    w.time(SPAN.start, origin + t.start);
    k.startAt = w.pos - 8 - from;
    w.time(SPAN.end, origin + t.end);
    k.endAt = w.pos - 8 - from;
    const host = t.endpoint.address.host;
    const port = t.endpoint.address.port;
    at = w.pos;
    if (!this.tryFixed.reuse(w, rec.method, host, port, t.index, t.upstreamTls)) {
      w.kvFew(F_HTTP_REQUEST_METHOD, rec.method);
      w.kvFew(F_SERVER_ADDRESS, host);
      w.kvUint(SPAN.attributes, K_SERVER_PORT, port);
      w.kvUint(SPAN.attributes, K_SLUICE_RETRY_COUNT, t.index);
      w.kvFew(F_URL_SCHEME, t.upstreamTls ? "https" : "http");
      this.tryFixed.keep(w, at);
    }
    if (path !== null) {
      at = w.pos;
      if (!this.tryBody.reuse(w, path, t.tunnel, copyReason, pipe)) {
        w.kvFew(F_SLUICE_ENGINE, path);
        w.kvBool(SPAN.attributes, K_SLUICE_TUNNEL, t.tunnel);
        if (copyReason !== null) w.kvFew(F_SLUICE_BODY_COPY_REASON, copyReason);
        if (pipe !== null) w.kvUint(SPAN.attributes, K_SLUICE_PIPE_SIZE, pipe);
        this.tryBody.keep(w, at);
      }
    }
    const ev = k.eventAt;
    ev.length = 0;
    const timed = (bytes: Uint8Array, ms: number) => {
      w.timed(bytes, EVENT_TIME_AT, origin + ms);
      ev.push(w.pos - bytes.length + EVENT_TIME_AT - from);
    };
    const connects = t.connects;
    for (let i = 0; i < connects.length; i++) {
      const c = connects[i] as { at: number; reused: boolean };
      timed(c.reused ? EV_CONNECTED_REUSED : EV_CONNECTED_NEW, c.at);
      const stale = t.staleAt[i];
      if (stale !== undefined) timed(EV_STALE, stale);
    }
    if (t.responseHeadAt !== null) timed(EV_RESPONSE_HEAD, t.responseHeadAt);
    if (t.firstBodyByteAt !== null) timed(EV_FIRST_BODY_BYTE, t.firstBodyByteAt);
    if (path !== null) timed(EV_LAST_BODY_BYTE, t.end);
  }

  /** A span's ids, trace state and flags; their places noted in `k` (relative to `from`). */
  private writePlace(w: ProtoWriter, p: SpanPlace, k: SpanTemplate, from: number): void {
    w.id(SPAN.traceId, p.traceId);
    k.traceIdAt = w.pos - 16 - from;
    w.id(SPAN.spanId, p.spanId);
    k.spanIdAt = w.pos - 8 - from;
    if (p.traceState) w.string(SPAN.traceState, p.traceState);
    if (p.parentId) {
      w.id(SPAN.parentSpanId, p.parentId);
      k.parentIdAt = w.pos - 8 - from;
    }
    w.fixed32(SPAN.flags, 1 | FLAG_HAS_IS_REMOTE | (p.remoteParent ? FLAG_IS_REMOTE : 0));
  }

  /** The request's server span. */
  writeServerSpan(w: ProtoWriter, p: SpanPlace, rec: SpanRequest, origin: number): void {
    const hostField = rec.host ?? "";
    const h = this.host;
    if (h.field !== hostField || h.localPort !== rec.localPort || h.localAddress !== rec.localAddress) {
      // The Host field's name and port: split at a last colon followed only by digits.
      const colon = hostField.lastIndexOf(":");
      let portDigits = colon >= 0 && colon < hostField.length - 1;
      for (let k = colon + 1; portDigits && k < hostField.length; k++) {
        const c = hostField.charCodeAt(k);
        portDigits = c >= 48 && c <= 57;
      }
      const host = portDigits ? hostField.slice(0, colon) : hostField;
      h.field = hostField;
      h.localPort = rec.localPort;
      h.localAddress = rec.localAddress;
      h.port = portDigits ? Number(hostField.slice(colon + 1)) : rec.localPort;
      h.serverAddress = host || rec.localAddress;
    }
    const port = h.port;
    const serverAddress = h.serverAddress;
    const tls = rec.tls;
    const o = rec.outcome;
    const s = w.beginWide(2);
    const k = this.serverKept;
    if (
      k.bytes !== null &&
      k.traceState === p.traceState &&
      k.hasParent === (p.parentId !== null) &&
      k.remote === p.remoteParent &&
      k.method === rec.method &&
      k.route === rec.route &&
      k.version === rec.version &&
      k.clientAddress === rec.clientAddress &&
      k.serverAddress === serverAddress &&
      k.port === port &&
      k.engine === rec.engine &&
      k.outcomeCode === (o === null ? null : o.code) &&
      k.outcomePhase === (o === null ? null : o.phase) &&
      (tls === null
        ? !k.tls
        : k.tls &&
          k.tlsProtocol === tls.protocol &&
          k.tlsCipher === tls.cipher &&
          k.tlsServerName === tls.serverName &&
          k.tlsClientSubject === tls.clientSubject)
    ) {
      const at = w.encoded(k.bytes);
      w.patch(at + k.traceIdAt, p.traceId);
      w.patch(at + k.spanIdAt, p.spanId);
      if (p.parentId) w.patch(at + k.parentIdAt, p.parentId);
      w.timeAt(at + k.startAt, origin + rec.start);
      w.timeAt(at + k.endAt, origin + rec.end);
    } else {
      const from = w.pos;
      this.writeServerFixed(w, p, rec, origin, serverAddress, port, from);
      k.bytes = w.keep(from);
      k.traceState = p.traceState;
      k.hasParent = p.parentId !== null;
      k.remote = p.remoteParent;
      k.method = rec.method;
      k.route = rec.route;
      k.version = rec.version;
      k.clientAddress = rec.clientAddress;
      k.serverAddress = serverAddress;
      k.port = port;
      k.engine = rec.engine;
      k.outcomeCode = o === null ? null : o.code;
      k.outcomePhase = o === null ? null : o.phase;
      k.tls = tls !== null;
      k.tlsProtocol = tls?.protocol ?? null;
      k.tlsCipher = tls?.cipher ?? null;
      k.tlsServerName = tls?.serverName ?? null;
      k.tlsClientSubject = tls?.clientSubject ?? null;
    }
    // What changes from one request to the next, written each time.
    const a = SPAN.attributes;
    const ua = rec.userAgent;
    const from = w.pos;
    if (!this.serverPath.reuse(w, rec.path, ua)) {
      const query = rec.path.indexOf("?");
      w.kvStr(a, K_URL_PATH, query < 0 ? rec.path : rec.path.slice(0, query));
      if (ua !== null) w.kvStr(a, K_USER_AGENT_ORIGINAL, ua);
      this.serverPath.keep(w, from);
    }
    w.kvUint(a, K_CLIENT_PORT, rec.clientPort);
    if (rec.status !== null) w.kvUint(a, K_HTTP_RESPONSE_STATUS_CODE, rec.status);
    const failed = o !== null && OUTCOMES[o.code].party !== null && o.code !== "local" && o.code !== "no_route";
    if (failed || (rec.status !== null && rec.status >= 500))
      writeError(w, "ProxyError", failed && o ? outcomeMessage(o) : undefined, origin + rec.end);
    w.endWide(s);
  }

  /** A server span's fields that a template keeps (as writeTryFixed for a try's). */
  private writeServerFixed(
    w: ProtoWriter,
    p: SpanPlace,
    rec: SpanRequest,
    origin: number,
    serverAddress: string,
    port: number,
    from: number,
  ): void {
    const k = this.serverKept;
    this.writePlace(w, p, k, from);
    let at = w.pos;
    if (!this.serverName.reuse(w, rec.method, rec.route)) {
      w.string(SPAN.name, rec.route !== null ? `${rec.method} ${rec.route}` : rec.method);
      w.uint(SPAN.kind, KIND.server);
      this.serverName.keep(w, at);
    }
    w.time(SPAN.start, origin + rec.start);
    k.startAt = w.pos - 8 - from;
    w.time(SPAN.end, origin + rec.end);
    k.endAt = w.pos - 8 - from;
    const a = SPAN.attributes;
    const tls = rec.tls;
    at = w.pos;
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
      this.serverFixed.keep(w, at);
    }
    if (tls) {
      at = w.pos;
      if (!this.serverTls.reuse(w, tls.protocol, tls.cipher, tls.serverName, tls.clientSubject)) {
        w.kvFew(F_TLS_PROTOCOL_NAME, "tls");
        if (tls.protocol) w.kvFew(F_TLS_PROTOCOL_VERSION, tls.protocol.replace(/^TLSv/, ""));
        if (tls.cipher) w.kvFew(F_TLS_CIPHER, tls.cipher);
        if (tls.serverName) w.kvStr(a, K_TLS_CLIENT_SERVER_NAME, tls.serverName);
        if (tls.clientSubject) w.kvStr(a, K_TLS_CLIENT_SUBJECT, tls.clientSubject);
        this.serverTls.keep(w, at);
      }
    }
    const o = rec.outcome;
    if (o) this.writeOutcome(w, this.serverOutcome, o);
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
