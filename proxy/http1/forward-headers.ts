// What crosses the proxy in heads: hop-by-hop fields are dropped (RFC 9110 §7.6.1),
// forwarding fields are added, and heads are serialised back to bytes.
import {
  HOST,
  isHopByHop,
  KIND_NAMES,
  TRACEPARENT,
  TRACESTATE,
  VIA,
  X_FORWARDED_FOR,
  X_FORWARDED_HOST,
  X_FORWARDED_PROTO,
} from "./field-kind.js";
import { sameName } from "./grammar.js";
import type { Header, RequestHead, ResponseHead } from "./head.js";

export interface ForwardingOptions {
  /** Add X-Forwarded-For/-Proto/-Host. */
  xForwarded: boolean;
  /** Value appended to Via, e.g. "1.1 sluice"; null to not add Via. */
  via: string | null;
  /** Replace the Host header sent upstream. */
  hostRewrite: string | null;
  /** Give each request an X-Request-Id when it has none, sent upstream and logged (Envoy's default too). */
  requestId: boolean;
}

/** The fields that are hop-by-hop by their name (RFC 9110 §7.6.1 and §7.8, RFC 7230's Keep-Alive, Proxy-*). */
export const HOP_BY_HOP_NAMES: readonly string[] = KIND_NAMES.filter((_, kind) => isHopByHop(kind));

/**
 * Hop-by-hop: by its name, or named in the message's Connection field (lower-cased tokens).
 * The name is compared with each token in place (there is nearly always one, keep-alive or
 * close): lower-casing it to look it up made a string and hashed it for every field.
 */
function dropped(name: string, kind: number, connection: readonly string[]): boolean {
  if (isHopByHop(kind)) return true;
  for (let i = 0; i < connection.length; i++) if (sameName(name, connection[i] as string)) return true;
  return false;
}

/**
 * The Connection tokens that may name a field not dropped by its kind already: none for the
 * commonest Connection, keep-alive (itself the name of a hop-by-hop field), so that
 * droppedLine reads no field's name then.
 */
function namingTokens(connection: readonly string[]): readonly string[] {
  if (connection.length === 0 || (connection.length === 1 && connection[0] === "keep-alive")) return NO_TOKENS;
  return connection.filter((token) => !HOP_BY_HOP_NAMES.includes(token));
}
const NO_TOKENS: readonly string[] = [];

/** dropped() for the field whose line begins at `start` in `text`, its name read there; `connection` as namingTokens gives it. */
function droppedLine(text: string, start: number, kind: number, connection: readonly string[]): boolean {
  if (isHopByHop(kind)) return true;
  for (let i = 0; i < connection.length; i++) if (nameAt(text, start, connection[i] as string)) return true;
  return false;
}

/** Whether the field line at `start` in `text` has the name `lower`, in any case (a name ends at its colon). */
function nameAt(text: string, start: number, lower: string): boolean {
  const n = lower.length;
  if (text.charCodeAt(start + n) !== 58) return false;
  for (let i = 0; i < n; i++) {
    let c = text.charCodeAt(start + i);
    if (c >= 65 && c <= 90) c += 32;
    if (c !== lower.charCodeAt(i)) return false;
  }
  return true;
}

/**
 * Where the proxy puts its own value of a field in the fields it forwards: `set` replaces the
 * field's value in the place of its first occurrence (order is part of the message) and drops
 * the others; `append` makes one list of all occurrences, in order, then its own value.
 * Absent, the field is added at the end.
 */
class OwnFields {
  // Where each kind's first occurrence went in `out`, by kind (field-kind.ts: small numbers):
  // an array of the kinds, not a Map, which cost an allocation and a hash lookup per field.
  private readonly at: number[] = KIND_NAMES.map(() => -1);
  constructor(readonly out: Header[]) {}

  /** Takes an occurrence of a field the proxy rewrites. */
  take(kind: number, field: Header, how: "set" | "append"): void {
    const i = this.at[kind] as number;
    if (i === -1) {
      this.at[kind] = this.out.length;
      this.out.push(field);
    } else if (how === "append") {
      const first = this.out[i] as Header;
      this.out[i] = [first[0], `${first[1]}, ${field[1]}`];
    }
  }

  /** The proxy's value, once all occurrences were taken. */
  finish(kind: number, name: string, value: string, how: "set" | "append"): void {
    const i = this.at[kind] as number;
    if (i === -1) this.out.push([name, value]);
    else {
      const first = this.out[i] as Header;
      this.out[i] = [first[0], how === "set" ? value : `${first[1]}, ${value}`];
    }
  }
}

/**
 * The fields forwarded upstream, with the proxy's forwarding fields. `clientScheme`: how the
 * client reached the proxy (`https` over a TLS listener), for X-Forwarded-Proto.
 * `ownTraceContext`: the proxy sends its own `traceparent`/`tracestate` (tracing is on), so
 * the client's are left out.
 */
export function upstreamRequestHeaders(
  req: RequestHead,
  clientAddress: string,
  clientScheme: "http" | "https",
  opts: ForwardingOptions,
  ownTraceContext = false,
): Header[] {
  const out: Header[] = [];
  const own = new OwnFields(out);
  const host = opts.hostRewrite ?? req.host;
  const xf = opts.xForwarded;
  const fields = req.headers;
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i] as Header;
    const kind = req.kinds[i] as number;
    if (dropped(field[0], kind, req.connection) || ((kind === TRACEPARENT || kind === TRACESTATE) && ownTraceContext)) continue;
    if (kind === HOST && host !== null) own.take(HOST, field, "set");
    else if (kind === X_FORWARDED_FOR && xf) own.take(kind, field, "append");
    else if (kind === X_FORWARDED_PROTO && xf) own.take(kind, field, "set");
    else if (kind === X_FORWARDED_HOST && xf && req.host !== null) own.take(kind, field, "set");
    else if (kind === VIA && opts.via) own.take(kind, field, "append");
    else out.push(field);
  }
  if (host !== null) own.finish(HOST, "Host", host, "set");
  if (xf) {
    own.finish(X_FORWARDED_FOR, "X-Forwarded-For", clientAddress, "append");
    own.finish(X_FORWARDED_PROTO, "X-Forwarded-Proto", clientScheme, "set");
    if (req.host !== null) own.finish(X_FORWARDED_HOST, "X-Forwarded-Host", req.host, "set");
  }
  if (opts.via) own.finish(VIA, "Via", opts.via, "append");
  if (req.framing.kind === "chunked") out.push(["Transfer-Encoding", "chunked"]);
  if (req.upgrade !== null) out.push(["Connection", "upgrade"], ["Upgrade", req.upgrade]);
  return out;
}

/**
 * The request head sent upstream when the client sent none of the forwarding fields the proxy
 * appends to or sets (X-Forwarded-*, Via): exactly what serializeRequestHead writes for
 * upstreamRequestHeaders(...) followed by `extra`, built without that list: the kept field
 * lines copied from the head as runs, with the request line and the Host line when they are
 * what the proxy would write, the proxy's forwarding lines as one piece (see forwardingLines).
 * The fewer the pieces, the cheaper the head: V8 flattens it into one string before it is
 * written, visiting every piece. Null otherwise, or when there is no host to send: the caller
 * builds the fields instead.
 */
export function plainRequestHead(
  req: RequestHead,
  path: string,
  clientAddress: string,
  clientScheme: "http" | "https",
  opts: ForwardingOptions,
  ownTraceContext: boolean,
  extra: readonly Header[],
): string | null {
  const host = opts.hostRewrite ?? req.host;
  if (host === null) return null;
  // Names and values are read in the head's text, not from req.headers: those strings are made only when asked for.
  const kinds = req.kinds;
  const text = req.text;
  const lines = req.lines;
  const n = kinds.length;
  const naming = namingTokens(req.connection);
  let s = "";
  // Where the run of the head's bytes not yet copied begins; -1 for none.
  let from = -1;
  // The parser took an HTTP/1.1 request line apart at its first and last spaces: it is exactly
  // method SP target SP HTTP/1.1 CRLF, so with the target unchanged it is the line the proxy
  // writes (it begins after any empty lines the client sent before it, which are not passed on).
  const lineEnd = n > 0 ? (lines[0] as number) : text.length - 2;
  if (req.version === "1.1" && path === req.target) from = lineEnd - req.method.length - path.length - 12;
  else s = `${req.method} ${path} HTTP/1.1\r\n`;
  let hostSent = false;
  for (let i = 0; i < n; i++) {
    const kind = kinds[i] as number;
    if (((OWN_MASK >>> kind) & 1) === 1) return null;
    const start = lines[i] as number;
    const kept = !droppedLine(text, start, kind, naming) && !(ownTraceContext && (kind === TRACEPARENT || kind === TRACESTATE));
    if (kept && (kind !== HOST || hostLineAsIs(text, lines, i, req.hostField, host))) {
      if (kind === HOST) hostSent = true;
      if (from === -1) from = lines[i] as number;
      continue;
    }
    if (from !== -1) s += text.slice(from, lines[i] as number);
    from = -1;
    // The Host line, in its place, with the host the proxy sends.
    if (kept) {
      s += `${text.slice(start, start + 4)}: ${host}\r\n`;
      hostSent = true;
    }
  }
  // The last field line ends where the blank line that ends the head begins.
  if (from !== -1) s += text.slice(from, text.length - 2);
  if (!hostSent) s += `Host: ${host}\r\n`;
  // The host keys the lines only when they name it: without X-Forwarded-*, a new host need not remake them.
  s += forwardingLines(opts.xForwarded, opts.via, clientAddress, clientScheme, opts.xForwarded ? req.host : null);
  if (req.framing.kind === "chunked") s += "Transfer-Encoding: chunked\r\n";
  if (req.upgrade !== null) s += `Connection: upgrade\r\nUpgrade: ${req.upgrade}\r\n`;
  return `${withLines(s, extra)}\r\n`;
}

/**
 * Whether field line `i` of a head, its Host field (whose value is `sent`), is `Host: host`
 * CRLF (the name in any case), the line the proxy writes for Host: the value the host, one
 * space after the colon and nothing after the value. The value is compared as a string: the
 * host the proxy sends is, unless rewritten or taken from the target, the same string (a
 * comparison of the line's characters in place cost about 50 instructions a character).
 */
function hostLineAsIs(text: string, lines: readonly number[], i: number, sent: string | null, host: string): boolean {
  if (sent !== host) return false;
  const end = i + 1 < lines.length ? (lines[i + 1] as number) : text.length - 2;
  // A Host field's name is four characters; the line is the name, the colon, the value and the blanks around it.
  const value = (lines[i] as number) + 6;
  return end - value === host.length + 2 && text.charCodeAt(value - 1) === 32;
}

/** The last forwarding lines made (see forwardingLines). */
let lastForwarding = { xf: false, via: null as string | null, address: "", scheme: "", host: null as string | null, lines: "" };

/**
 * The proxy's X-Forwarded-For, -Proto, -Host and Via lines, as one flat string made once for
 * the values it was last made for (the same from request to request of a client): one piece
 * of a head, not a dozen.
 */
function forwardingLines(xf: boolean, via: string | null, address: string, scheme: string, host: string | null): string {
  const m = lastForwarding;
  if (m.xf === xf && m.via === via && m.address === address && m.scheme === scheme && m.host === host) return m.lines;
  const parts: string[] = [];
  if (xf) {
    parts.push("X-Forwarded-For: ", address, "\r\nX-Forwarded-Proto: ", scheme, "\r\n");
    if (host !== null) parts.push("X-Forwarded-Host: ", host, "\r\n");
  }
  if (via) parts.push("Via: ", via, "\r\n");
  // join makes a flat string (concatenation would make a tree of pieces).
  lastForwarding = { xf, via, address, scheme, host, lines: parts.join("") };
  return lastForwarding.lines;
}

/** The forwarding fields a client may send that the proxy appends to or sets in their place. */
const OWN_MASK = (1 << X_FORWARDED_FOR) | (1 << X_FORWARDED_PROTO) | (1 << X_FORWARDED_HOST) | (1 << VIA);

export function clientResponseHeaders(res: ResponseHead, opts: ForwardingOptions): Header[] {
  const out: Header[] = [];
  const own = new OwnFields(out);
  const fields = res.headers;
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i] as Header;
    const kind = res.kinds[i] as number;
    if (dropped(field[0], kind, res.connection)) continue;
    if (kind === VIA && opts.via) own.take(VIA, field, "append");
    else out.push(field);
  }
  if (opts.via) own.finish(VIA, "Via", opts.via, "append");
  return out;
}

/**
 * The response head for the client when the proxy only drops the hop-by-hop fields and adds its
 * own Via (the upstream sent none) and `extra` after it: exactly what serializeResponseHead
 * writes for clientResponseHeaders(res, opts) followed by `extra`, built without that list: the
 * kept field lines copied from the head as runs, with the status line when it is the one the
 * proxy would write, and the Via line with the blank line after it as one piece (see
 * plainRequestHead for why pieces count). Null when the upstream sent a Via to append to: the
 * caller builds the fields instead.
 */
export function plainResponseHead(res: ResponseHead, opts: ForwardingOptions, extra: readonly Header[]): string | null {
  const kinds = res.kinds;
  const text = res.text;
  const lines = res.lines;
  const naming = namingTokens(res.connection);
  let s = "";
  // Where the run of the head's bytes not yet copied begins; -1 for none.
  let from = -1;
  // The status line as it came is HTTP/1.x SP 3DIGIT [SP reason] CRLF, its first digit not 0
  // (statusOf): the proxy's own line when it is HTTP/1.1 with the space before its reason.
  const lineEnd = kinds.length > 0 ? (lines[0] as number) - 2 : text.length - 4;
  if (res.version === "1.1" && lineEnd >= 13) from = 0;
  else s = `HTTP/1.1 ${res.status} ${res.reason}\r\n`;
  // Names are read in the head's text, not from res.headers: those strings are made only when asked for.
  for (let i = 0; i < kinds.length; i++) {
    const kind = kinds[i] as number;
    if (kind === VIA && opts.via) return null;
    const at = lines[i] as number;
    if (droppedLine(text, at, kind, naming)) {
      if (from !== -1) s += text.slice(from, at);
      from = -1;
    } else if (from === -1) from = at;
  }
  // The last field line ends where the blank line that ends the head begins.
  if (from !== -1) s += text.slice(from, text.length - 2);
  if (extra.length === 0) return s + (opts.via ? viaLines(opts.via).andEnd : "\r\n");
  if (opts.via) s += viaLines(opts.via).line;
  return `${withLines(s, extra)}\r\n`;
}

/** The Via line for the last value asked for, alone and with the blank line after it (flat strings: see forwardingLines). */
let lastVia = { via: "", line: "", andEnd: "" };
function viaLines(via: string): { line: string; andEnd: string } {
  if (lastVia.via !== via) lastVia = { via, line: ["Via: ", via, "\r\n"].join(""), andEnd: ["Via: ", via, "\r\n\r\n"].join("") };
  return lastVia;
}

/** A field line the proxy writes itself. */
const lineOf = (field: Header) => `${field[0]}: ${field[1]}\r\n`;

/** `s` and a line for each of `fields`. */
function withLines(s: string, fields: readonly Header[]): string {
  for (let i = 0; i < fields.length; i++) s += lineOf(fields[i] as Header);
  return s;
}

/** A head as received, for its field lines to be copied (see appendFields). */
export type ReceivedHead = Pick<ResponseHead, "headers" | "text" | "lines">;

/**
 * The request head sent upstream. As for a response, the client's field lines passed on
 * unchanged are copied as they came (see appendFields).
 */
export function serializeRequestHead(method: string, path: string, headers: Header[], from: ReceivedHead | null = null): string {
  return `${appendFields(`${method} ${path} HTTP/1.1\r\n`, headers, from)}\r\n`;
}

/**
 * The response head sent to the client, its fields as appendFields writes them.
 */
export function serializeResponseHead(
  status: number,
  reason: string,
  headers: Header[],
  from: ReceivedHead | null = null,
): string {
  return `${appendFields(`HTTP/1.1 ${status} ${reason}\r\n`, headers, from)}\r\n`;
}

/**
 * `s` and the field lines of `headers`. Fields of `from` (the head they came in) passed on
 * unchanged (the same Header objects, in their order) are copied as they came, a run of
 * adjacent lines in one piece: a head of a few pieces, not four per field, is cheaper to build
 * and to flatten into bytes. A field line differs from its re-serialised form only in the
 * optional whitespace around its value.
 */
function appendFields(s: string, headers: Header[], from: ReceivedHead | null): string {
  const src = from?.headers ?? [];
  // The source fields not yet passed: those kept come in order, so the search goes forward only.
  let next = 0;
  for (let k = 0; k < headers.length; ) {
    const field = headers[k] as Header;
    let i = next;
    while (i < src.length && src[i] !== field) i++;
    if (i === src.length) {
      s += lineOf(field);
      k++;
      continue;
    }
    let end = i + 1;
    k++;
    while (k < headers.length && end < src.length && headers[k] === src[end]) {
      end++;
      k++;
    }
    const f = from as ReceivedHead;
    // The last field line ends where the blank line that ends the head begins.
    s += f.text.slice(f.lines[i] as number, end < src.length ? (f.lines[end] as number) : f.text.length - 2);
    next = end;
  }
  return s;
}
