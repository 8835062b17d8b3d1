// The one record of a request's life, written as it goes and read once at its end by every
// observer (metrics, access log, spans). Both engines fill the same fields.
// Imported, not the global: Node 20's global `performance` is a getter run on every use.
import { performance } from "node:perf_hooks";
import type { Endpoint } from "../upstream/cluster.js";
import type { Outcome } from "./outcome.js";
import { newRequestId } from "./request-id.js";

/** Which engine serves the listener or route: the body path follows from it. */
export type ListenerEngine = "splice" | "buffered";

/** Body bytes one way, by how they moved: through a pipe (spliced) or through userspace (copied). */
export interface BodyCount {
  bytes: number;
  spliced: number;
  copied: number;
  /** Pipe capacity of the last spliced run; null when nothing was spliced. */
  pipeSize: number | null;
}

export const noBytes = (): BodyCount => ({ bytes: 0, spliced: 0, copied: 0, pipeSize: null });
/** No bytes yet, shared: a record's and a try's counts until replaced (counts are never changed in place but from noBytes()). */
export const NO_BYTES: BodyCount = Object.freeze(noBytes());

/** The `engine` label and `sluice.engine` attribute: buffered, or splice when any body byte went through a pipe, else copy. */
export function bodyPathOf(engine: ListenerEngine, request: BodyCount, response: BodyCount): "splice" | "copy" | "buffered" {
  if (engine === "buffered") return "buffered";
  return request.spliced + response.spliced > 0 ? "splice" : "copy";
}

/** One try of the request on one endpoint. Times are performance.now() milliseconds. */
export interface TryRecord {
  endpoint: Endpoint;
  /** 0 for the first try. */
  index: number;
  start: number;
  /** Each upstream connection the try got: one, or more when a pooled one was found closed. */
  connects: Array<{ at: number; reused: boolean }>;
  /** When pooled connections were found closed as the request went out (it went again on a new one). */
  staleAt: number[];
  responseHeadAt: number | null;
  status: number | null;
  firstBodyByteAt: number | null;
  end: number;
  request: BodyCount;
  response: BodyCount;
  tunnel: boolean;
  /** The upstream connection is TLS (its bodies are copied). */
  upstreamTls: boolean;
  /** null while running; `completed` for the try that answered. */
  outcome: Outcome | null;
}

/** Notes a connection the try got (an empty array pushed onto would get room for 17). */
export function addConnect(t: TryRecord, at: number, reused: boolean): void {
  if (t.connects.length === 0) t.connects = [{ at, reused }];
  else t.connects.push({ at, reused });
}

/** What the client connection's TLS said at its handshake. */
export interface ClientTls {
  protocol: string | null;
  cipher: string | null;
  /** The SNI name the client asked for. */
  serverName: string | null;
  /** The client certificate's subject ("CN=alice, O=Acme") when it was verified; else null. */
  clientSubject: string | null;
}

/** The client connection's addresses (a net.Socket has them, as getters that ask the socket each time). */
export interface ClientAddresses {
  remoteAddress?: string | undefined;
  remotePort?: number | undefined;
  localAddress?: string | undefined;
  localPort?: number | undefined;
}

/** A connection's addresses read once, to be given to each of its requests' records. */
export function addressesOf(socket: ClientAddresses): ClientAddresses {
  return {
    remoteAddress: socket.remoteAddress,
    remotePort: socket.remotePort,
    localAddress: socket.localAddress,
    localPort: socket.localPort,
  };
}

/** A request's fields as its record reads them. */
export interface RequestFields {
  /** Every field as [name, value], in order (a head the splice engine parsed makes these strings on the first read). */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  /** The values of the fields named `name` (lower case), in order (the splice engine's head finds them without the other fields' strings). */
  valuesOf(name: string): readonly string[];
}

/** Fields held as a list already (node:http's, the buffered engine's): looked up by name in it. */
export function listedFields(headers: ReadonlyArray<readonly [string, string]>): RequestFields {
  return {
    headers,
    valuesOf: (name) => headers.filter(([n]) => n.length === name.length && n.toLowerCase() === name).map(([, v]) => v),
  };
}

/** A request that had no fields (its head never came whole). */
export const NO_FIELDS = listedFields([]);

export interface RequestInit {
  engine: ListenerEngine;
  /** Generate an X-Request-Id when the request has none (or an unusable one), and send it upstream. */
  requestIds?: boolean;
  method: string;
  path: string;
  version: "1.0" | "1.1";
  host: string | null;
  fields: RequestFields;
  client: ClientAddresses;
  /** The client connection's TLS; null or absent: plain TCP. */
  tls?: ClientTls | null;
}

/** A request id is kept as given when it is 1 to 128 visible ASCII characters (Envoy keeps what it is given too). */
const USABLE_REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

/** The first X-Request-Id field's value, if usable. */
function requestIdOf(fields: RequestFields): string | null {
  const v = fields.valuesOf("x-request-id")[0];
  return v !== undefined && USABLE_REQUEST_ID.test(v) ? v : null;
}

export class RequestRecord {
  route: string | null = null;
  cluster: string | null = null;
  /** Written by startTry only. */
  tries: TryRecord[] = [];
  /** Status of the response head sent to the client; null when none went out. */
  status: number | null = null;
  request: BodyCount = NO_BYTES;
  response: BodyCount = NO_BYTES;
  tunnel = false;
  end = 0;
  outcome: Outcome | null = null;

  readonly engine: ListenerEngine;
  readonly method: string;
  /** The normalised path with its query, as routed ("" when the head could not be parsed). */
  readonly path: string;
  readonly version: "1.0" | "1.1";
  readonly host: string | null;
  /** The request's fields: read through valuesOf where a name is known (see RequestFields). */
  readonly fields: RequestFields;
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly localAddress: string;
  readonly localPort: number;
  /** When the request head was complete (or found malformed). */
  readonly start: number;
  /** The request's X-Request-Id: the client's, or one made here; null when none and none made. */
  readonly requestId: string | null;
  /** True when requestId was made here: it is added to (or replaces the unusable one in) the request sent upstream. */
  readonly requestIdGenerated: boolean;
  readonly tls: ClientTls | null;

  /** How the client reached the proxy: X-Forwarded-Proto, the span's url.scheme. */
  get scheme(): "http" | "https" {
    return this.tls === null ? "http" : "https";
  }

  constructor(init: RequestInit) {
    this.tls = init.tls ?? null;
    this.engine = init.engine;
    this.method = init.method;
    this.path = init.path;
    this.version = init.version;
    this.host = init.host;
    this.fields = init.fields;
    this.clientAddress = init.client.remoteAddress ?? "";
    this.clientPort = init.client.remotePort ?? 0;
    this.localAddress = init.client.localAddress ?? "";
    this.localPort = init.client.localPort ?? 0;
    this.start = performance.now();
    const given = requestIdOf(init.fields);
    this.requestIdGenerated = given === null && init.requestIds === true;
    this.requestId = this.requestIdGenerated ? newRequestId() : given;
  }

  startTry(endpoint: Endpoint): TryRecord {
    const t: TryRecord = {
      endpoint,
      index: this.tries.length,
      start: performance.now(),
      connects: [],
      staleAt: [],
      responseHeadAt: null,
      status: null,
      firstBodyByteAt: null,
      end: 0,
      request: NO_BYTES,
      response: NO_BYTES,
      tunnel: false,
      upstreamTls: false,
      outcome: null,
    };
    // Pushed onto an empty array, the first try would get room for 17.
    if (this.tries.length === 0) this.tries = [t];
    else this.tries.push(t);
    return t;
  }

  /** The try whose bytes the client saw (the last one). */
  get lastTry(): TryRecord | null {
    return this.tries[this.tries.length - 1] ?? null;
  }

  /** How the body bytes moved, for the `engine` metric label: splice, copy, buffered, or local. */
  get bodyPathLabel(): "splice" | "copy" | "buffered" | "local" {
    if (this.tries.length === 0) return "local";
    return bodyPathOf(this.engine, this.request, this.response);
  }

  /** Body bytes copied because a leg is TLS (splice engine; the buffered one copies everything anyway). */
  get copiedForTls(): number {
    if (this.engine !== "splice" || (this.tls === null && !this.lastTry?.upstreamTls)) return 0;
    return this.request.copied + this.response.copied;
  }

  /** Every field as [name, value] (for a parsed head, made on this first read). */
  get headers(): ReadonlyArray<readonly [string, string]> {
    return this.fields.headers;
  }

  /** The client's User-Agent, if it sent one. */
  get userAgent(): string | null {
    return this.fields.valuesOf("user-agent")[0] ?? null;
  }

  get seconds(): number {
    return (this.end - this.start) / 1000;
  }
}
