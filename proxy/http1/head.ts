// Strict HTTP/1.1 head parsing (RFC 9112) for requests from clients and responses from
// upstreams. Anything ambiguous is refused: the proxy never forwards a message whose
// framing two parsers could read differently.
import { METHODS as KNOWN_METHODS } from "node:http";
import { latin1Of } from "../base/buffer-calls.js";
import { HttpError } from "./errors.js";
import {
  CONNECTION,
  CONTENT_LENGTH,
  EXPECT,
  GATHERED_MASK,
  HOST,
  KEEP_ALIVE,
  kindAt,
  kindOfLower,
  kindOfName,
  OTHER,
  TRANSFER_ENCODING,
  UPGRADE,
} from "./field-kind.js";
import { ABSOLUTE_FORM, AUTHORITY_FORM, FIELD_VALUE, HOST_VALUE, METHOD, ORIGIN_FORM, sameName, TOKEN } from "./grammar.js";
import { normalizePath } from "./normalize-path.js";

// Module-local copies of the kinds scanFields compares with per field: an imported binding is a
// load and a check that it is initialised at each use in compiled code; a local constant is
// folded into it (about 40 instructions a field, callgrind).
const HOST_KIND = HOST;
const CONTENT_LENGTH_KIND = CONTENT_LENGTH;
const TRANSFER_ENCODING_KIND = TRANSFER_ENCODING;
const GATHERED = GATHERED_MASK;

// Methods outside llhttp's list would be refused by a Node upstream's parser; sluice
// answers them 501 itself rather than forward what its peers can't read.
const METHODS = new Set(KNOWN_METHODS);

export type Header = [name: string, value: string];

export type BodyFraming = { kind: "none" } | { kind: "length"; length: number } | { kind: "chunked" } | { kind: "close" };

export interface HeadLimits {
  maxHeadBytes: number;
  maxHeaders: number;
  maxUriBytes: number;
}

export interface RequestHead {
  method: string;
  /** The target as received; `path` (normalised, see normalize-path.ts) is what is routed and goes upstream. */
  target: string;
  path: string;
  version: "1.0" | "1.1";
  /** The fields as strings, made on the first read (the same array on every read); kinds and lines say as much without them. */
  readonly headers: Header[];
  /** Each field's kind (field-kind.ts), by its place in `headers`. */
  kinds: number[];
  host: string | null;
  /** The Host field's value, null without one: `host`, unless the target was in absolute form. */
  hostField: string | null;
  framing: BodyFraming;
  /** Lower-cased tokens of the Connection header (a list: nearly always one token, read without hashing). */
  connection: readonly string[];
  keepAlive: boolean;
  /** The Upgrade header when the client asked for one with Connection: upgrade. */
  upgrade: string | null;
  expectContinue: boolean;
  /** The head as Latin-1, and where the line of each of `headers` begins in it: fields passed on unchanged are copied from it. */
  text: string;
  lines: number[];
  /**
   * The values of the fields named `name` (lower case), in order: for a field of a kind
   * (field-kind.ts), without making the other fields' strings.
   */
  valuesOf(name: string): readonly string[];
}

export interface ResponseHead {
  version: "1.0" | "1.1";
  status: number;
  reason: string;
  /** The fields as strings, made on the first read (the same array on every read); kinds and lines say as much without them. */
  readonly headers: Header[];
  /** Each field's kind (field-kind.ts), by its place in `headers`. */
  kinds: number[];
  /** The head as Latin-1, and where the line of each of `headers` begins in it: fields passed on unchanged are copied from it. */
  text: string;
  lines: number[];
  /** Lower-cased tokens of the Connection header. */
  connection: readonly string[];
  /** Framing before the request method is considered (see responseFraming). */
  transferChunked: boolean;
  transferOther: boolean;
  contentLength: number | null;
  /** The idle timeout the upstream announces in `Keep-Alive: timeout=N`, in ms; null if none. */
  keepAliveTimeoutMs: number | null;
}

const BLANK_LINE = Buffer.from("\r\n\r\n", "latin1");

/**
 * Index just past the blank line ending a head that begins at `start` in `buf`, -1 if it is not
 * in `buf` before `end` yet; the search begins at `from` (what was searched before is not again).
 * Bounds rather than a view of the bytes: a reader's buffered bytes are a part of its store,
 * and a view (a new Buffer object) per look cost more than the look. A head that came whole is
 * found with one search for its blank line (a search per line cost 1.8k instructions a
 * request); a bare LF in it is the parser's to refuse, as it refuses any line that does not end
 * in CRLF. While the end is not there, a LF without CR before it is refused at once rather than
 * waited on.
 */
export function findHeadEnd(buf: Buffer, start = 0, from = start, end = buf.length): number {
  // The store may hold older bytes past `end`: a blank line there is not this head's.
  const blank = buf.indexOf(BLANK_LINE, from);
  if (blank !== -1 && blank + 4 <= end) return blank + 4;
  let i = buf.indexOf(10, from);
  while (i !== -1 && i < end) {
    if (i === start || buf[i - 1] !== 13) throw new HttpError(400, "bare LF in head");
    i = buf.indexOf(10, i + 1);
  }
  return -1;
}

/** How many bytes from a head's start headTextAt turns into text: a request with its cookies, a response, nearly always. */
export const HEAD_TEXT_WINDOW = 2048;
/**
 * The window a connection's first head is looked for in: most heads fit in it, and the bytes
 * after a head (the body read with it, 64 KiB ahead of a splice) are turned into text up to the
 * window's end for nothing (a 2 KiB window cost about 1k instructions a spliced response). A
 * connection whose head did not fit uses HEAD_TEXT_WINDOW from then on (socket-reader.ts).
 */
export const FIRST_HEAD_TEXT_WINDOW = 512;

/**
 * The head that begins at `start` in `buf` as Latin-1 text, when its blank line is among its
 * first `window` bytes before `end`; null otherwise (its end not there yet, or a longer
 * head: findHeadEnd searches the bytes). The parser needs this text anyway, and one search of
 * it costs less than Buffer#indexOf, whose JavaScript wrapper (argument checks, generic
 * property loads) and call into C++ cost about 1.7k instructions a head (callgrind, 2026-12-03).
 */
export function headTextAt(buf: Buffer, start: number, end: number, window = HEAD_TEXT_WINDOW): string | null {
  const text = latin1Of(buf, start, end - start < window ? end : start + window);
  const blank = text.indexOf("\r\n\r\n");
  if (blank === -1) return null;
  return blank + 4 === text.length ? text : text.slice(0, blank + 4);
}

/** The fields of a head, with the values of those that frame, route or pace the message gathered on the way. */
interface Fields {
  /** The fields as strings; left empty by a lazy scan (lazyFields makes them from the lines when asked). */
  headers: Header[];
  /** Whether `headers` was left empty (see scanFields). */
  lazy: boolean;
  /** Each field's kind (field-kind.ts). */
  kinds: number[];
  /** Where each field's line begins. */
  lines: number[];
  contentLength: string[];
  transferEncoding: string[];
  connection: string[];
  keepAlive: string[];
  host: string[];
  upgrade: string[];
  expect: string[];
  /** The (last) Host value's bytes passed plainHostAt (so HOST_VALUE holds for it); false when not looked at. */
  plainHost: boolean;
}

/**
 * The list of a field the head does not have: one shared empty array, never added to (withValue
 * makes a list of its own). Most heads have none of most gathered fields, and an array of their
 * own for each, grown by its first push, was 7 allocations and a builtin call or two a head.
 * Made by taking an element out so that it holds strings like the lists that replace it, and
 * the code reading either sees one kind of array.
 */
const NONE: string[] = [""];
NONE.pop();

/** `list` with `value` added: a new one-element list in place of NONE. */
function withValue(list: string[], value: string): string[] {
  if (list === NONE) return [value];
  list.push(value);
  return list;
}

const newFields = (lazy: boolean, kinds: number[] = [], lines: number[] = []): Fields => ({
  headers: [],
  lazy,
  kinds,
  lines,
  contentLength: NONE,
  transferEncoding: NONE,
  connection: NONE,
  keepAlive: NONE,
  host: NONE,
  upgrade: NONE,
  expect: NONE,
  plainHost: false,
});

const isBlank = (c: number) => c === 32 || c === 9;

/** Character classes of field lines by Latin-1 code, taken from grammar.ts's own definitions. */
const NAME_CHAR = 1;
const VALUE_CHAR = 2;
const FIELD_CHARS = new Uint8Array(256);
for (let c = 0; c < 256; c++) {
  const ch = String.fromCharCode(c);
  FIELD_CHARS[c] = (TOKEN.test(ch) ? NAME_CHAR : 0) | (FIELD_VALUE.test(ch) ? VALUE_CHAR : 0);
}

/**
 * Bytes that are valid anywhere in an origin-form target and in a host name ("%" is not one:
 * it must begin an escape): when every byte is one of them, ORIGIN_FORM or HOST_VALUE holds
 * without running it; otherwise the regular expression decides.
 */
const PATH_CHARS = charTable(/^[A-Za-z0-9\-._~!$&'()*+,;=:@/?]$/);
const HOST_CHARS = charTable(/^[A-Za-z0-9\-._~!$&'()*+,;=]$/);

function charTable(re: RegExp): Uint8Array {
  const t = new Uint8Array(256);
  for (let c = 0; c < 256; c++) t[c] = re.test(String.fromCharCode(c)) ? 1 : 0;
  return t;
}

/**
 * Whether the origin-form target in bytes[from, to) is valid and already what normalizePath
 * would make of it: every byte in PATH_CHARS (so no escape), and before the query no slash
 * followed by a slash or a dot (no empty or dot segment). One pass over the bytes in place of
 * normalizePath's four searches of the string (about 650 instructions a request).
 */
function normalOriginForm(bytes: Uint8Array, from: number, to: number): boolean {
  let query = false;
  for (let i = from; i < to; i++) {
    const c = bytes[i] as number;
    if (PATH_CHARS[c] === 0) return false;
    if (query) continue;
    if (c === 63) query = true;
    else if (c === 47 && i + 1 < to && (bytes[i + 1] === 47 || bytes[i + 1] === 46)) return false;
  }
  return true;
}

/** Whether every byte of bytes[from, to) is in `table`. */
function allOf(bytes: Uint8Array, from: number, to: number, table: Uint8Array): boolean {
  for (let i = from; i < to; i++) if (table[bytes[i] as number] === 0) return false;
  return true;
}

/**
 * Whether SCAN[a, b) is a host name of HOST_CHARS with an optional port of up to five digits
 * (so HOST_VALUE holds), read while the scan has the bytes there: the value as a string is a
 * slice of the head's text, whose charCodeAt cost about 50 instructions a character. SCAN
 * itself, not the scan's `bytes` passed in: see SCAN.
 */
function plainHostAt(a: number, b: number): boolean {
  let i = a;
  while (i < b && HOST_CHARS[SCAN[i] as number] === 1) i++;
  if (i === b) return true;
  if (SCAN[i] !== 58 || b - i - 1 > 5) return false;
  for (i++; i < b; i++) if (!isDigit(SCAN[i] as number)) return false;
  return true;
}

/** Whether SCAN[from, to) holds a tab. */
function hasTab(from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (SCAN[i] === 9) return true;
  return false;
}

/**
 * For the field whose line begins at `start` in `text` (its colon, its value text[a, b)), once
 * the caller has recorded its line and kind and checked its tabs: its strings, unless the
 * scan is lazy (see lazyFields), and the value of a field that frames, routes or paces the message
 * (GATHERED_MASK) for the parser's checks. `value`: the value's string when the caller has made it.
 */
function addField(
  f: Fields,
  kind: number,
  text: string,
  start: number,
  colon: number,
  a: number,
  b: number,
  value: string | null = null,
): void {
  if (!f.lazy) {
    value ??= text.slice(a, b);
    f.headers.push([text.slice(start, colon), value]);
  }
  // Most fields are none of those gathered: told by one mask before the switch.
  if (((GATHERED >>> kind) & 1) === 0) return;
  gather(f, kind, value ?? text.slice(a, b));
}

/** Framing fields get no benefit of the doubt: llhttp refuses tabs around them (the callers look for one). */
function refuseTab(text: string, start: number, colon: number, status: number): never {
  throw new HttpError(status, `tab in ${text.slice(start, colon)}`);
}

/**
 * Where scanFields reads a head's bytes: a copy in this one buffer, not the head itself. In the
 * compiled loops over a typed array passed in, V8 checks the array's map and loads its data
 * pointer again for every byte (about 18 instructions a byte, callgrind on 2026-12-03); a module
 * constant's are fixed in the code. The copy (TypedArray#set, about 300 instructions a head)
 * costs less than those checks did. Heads larger than it go to checkedFields, which reads them
 * line by line.
 */
const SCAN_MEMORY = new ArrayBuffer(64 * 1024);
const SCAN = new Uint8Array(SCAN_MEMORY);
/** The same bytes as 32-bit words: a value's bytes are checked four at a time (see scanFields). */
const SCAN_WORDS = new Int32Array(SCAN_MEMORY);

/**
 * Where scanFields notes each line's start and kind as it goes; the head's own arrays are made
 * at its end, of its length (pushed onto from empty, each array got room for 17 numbers).
 */
const SCAN_LINES: number[] = [];
const SCAN_KINDS: number[] = [];
/** A scan's Fields' lists until its end, never added to: replaced by SCAN_LINES' and SCAN_KINDS' copies. */
const SCANNING: number[] = [];

/**
 * Whether a word (four bytes of a head, in either byte order) may hold a byte that is not a
 * field-value character: one below 0x20 (controls, CR, LF; HTAB too, which the byte loop then
 * takes) or equal to 0x7F. Exact when it says no: (x - 0x20202020) & ~x & 0x80808080 is nonzero
 * exactly when some byte of x is below 0x20, and the same test of x ^ 0x7F7F7F7F for below 1
 * finds a 0x7F (the borrows between bytes only add bits when a byte already matched).
 */
const mayEndValue = (w: number): boolean => {
  const t = w ^ 0x7f7f7f7f;
  return (((((w - 0x20202020) | 0) & ~w) | (((t - 0x01010101) | 0) & ~t)) & 0x80808080) !== 0;
};

/**
 * The field lines of a head from `at` (where the line after the start line begins) to the blank
 * line that ends it, read and checked in one pass over its bytes (`text` is the same head as
 * Latin-1, one character per byte, for the names and values): a name of token characters, a
 * colon, a value of field-value characters, CRLF. Null as soon as a line is anything else:
 * checkedFields() then says what is wrong (or reads what this pass does not).
 */
function scanFields(
  head: Uint8Array,
  text: string,
  at: number,
  limits: HeadLimits | null,
  status: number,
  lazy: boolean,
): Fields | null {
  const n = head.length;
  // Every scan below stops at a CR, and the head ends with CRLF CRLF.
  if (n < at + 2 || head[n - 2] !== 13 || head[n - 1] !== 10) return null;
  // Scanned in a copy (see SCAN); a larger head is read by checkedFields.
  if (n > SCAN.length) return null;
  SCAN.set(head);
  const bytes = SCAN;
  // A local name for the words: read through the module constant, each word's load checked the array again (about 10 instructions a word).
  const words = SCAN_WORDS;
  const f = newFields(lazy, SCANNING, SCANNING);
  const chars = FIELD_CHARS;
  const maxFields = limits ? limits.maxHeaders : Number.MAX_SAFE_INTEGER;
  let count = 0;
  let i = at;
  for (;;) {
    let c = bytes[i] as number;
    // The blank line: the end of the head, nothing after it.
    if (c === 13) {
      if (i !== n - 2) return null;
      f.lines = SCAN_LINES.slice(0, count);
      f.kinds = SCAN_KINDS.slice(0, count);
      return f;
    }
    const start = i;
    while ((chars[c] as number) & NAME_CHAR) c = bytes[++i] as number;
    if (c !== 58 || i === start) return null;
    const colon = i;
    c = bytes[++i] as number;
    // A value byte by byte up to a word's start, then a word at a time while every byte of it
    // is a value character; the word where the value ends (its CR) is read byte by byte. A
    // word may reach past the head into older bytes only when the line's CR is in it.
    while ((chars[c] as number) & VALUE_CHAR) {
      i++;
      if ((i & 3) === 0) while (!mayEndValue(words[i >> 2] as number)) i += 4;
      c = bytes[i] as number;
    }
    if (c !== 13 || bytes[i + 1] !== 10) return null;
    const end = i;
    // Optional whitespace around the value is not part of it.
    let a = colon + 1;
    let b = end;
    while (a < b && isBlank(bytes[a] as number)) a++;
    while (b > a && isBlank(bytes[b - 1] as number)) b--;
    const kind = kindAt(bytes, start, colon - start);
    if (kind === HOST_KIND) f.plainHost = plainHostAt(a, b);
    SCAN_LINES[count] = start;
    SCAN_KINDS[count] = kind;
    if (++count > maxFields) throw new HttpError(431, "too many header fields");
    // A tab in a framing field's line: found in the bytes, not by a search of the text to its end.
    if ((kind === CONTENT_LENGTH_KIND || kind === TRANSFER_ENCODING_KIND) && hasTab(colon + 1, end))
      refuseTab(text, start, colon, status);
    addField(f, kind, text, start, colon, a, b);
    i = end + 2;
  }
}

/**
 * The same fields, each line checked on its own so that the error names what is wrong: for
 * heads the one-pass scan refused.
 */
function checkedFields(text: string, at: number, limits: HeadLimits | null, status: number): Fields {
  const f = newFields(false);
  // The head ends with CRLF CRLF: the last line before it is the blank line's predecessor.
  const last = text.length - 2;
  for (let start = at; start < last; ) {
    const end = text.indexOf("\r\n", start);
    if (end === start) throw new HttpError(status, "empty header line");
    if (isBlank(text.charCodeAt(start))) throw new HttpError(status, "obsolete line folding");
    const colon = text.indexOf(":", start);
    if (colon <= start || colon > end) throw new HttpError(status, "header line without a name and colon");
    const name = text.slice(start, colon);
    if (!TOKEN.test(name))
      throw new HttpError(status, "invalid header name (whitespace before the colon or a forbidden character)");
    let a = colon + 1;
    let b = end;
    while (a < b && isBlank(text.charCodeAt(a))) a++;
    while (b > a && isBlank(text.charCodeAt(b - 1))) b--;
    const value = text.slice(a, b);
    if (!FIELD_VALUE.test(value)) throw new HttpError(status, `control character in the value of ${name}`);
    const kind = kindOfName(name);
    f.lines.push(start);
    f.kinds.push(kind);
    if (limits && f.kinds.length > limits.maxHeaders) throw new HttpError(431, "too many header fields");
    if (kind === CONTENT_LENGTH || kind === TRANSFER_ENCODING) {
      const tab = text.indexOf("\t", colon);
      if (tab !== -1 && tab < end) refuseTab(text, start, colon, status);
    }
    addField(f, kind, text, start, colon, a, b, value);
    start = end + 2;
  }
  return f;
}

/**
 * The field lines of head `bytes` (`text` as Latin-1) from `at` (where the line after the start
 * line begins). `lazy`: the fields' strings may be left to lazyFields.
 */
function parseFields(
  bytes: Uint8Array,
  text: string,
  at: number,
  limits: HeadLimits | null,
  status: number,
  lazy = false,
): Fields {
  return scanFields(bytes, text, at, limits, status, lazy) ?? checkedFields(text, at, limits, status);
}

/**
 * A lazy scan's fields as strings, made from their lines (see Fields): the scan checked each
 * line, so its name ends at its first colon and blanks around the value are all it has to trim.
 * Found again here rather than kept by the scan for every head: three more numbers a field cost
 * the scan more than this costs the few heads whose fields are asked for as strings.
 */
function lazyFields(text: string, lines: readonly number[]): Header[] {
  const out: Header[] = [];
  for (let i = 0; i < lines.length; i++) {
    const start = lines[i] as number;
    const colon = text.indexOf(":", start);
    out.push([text.slice(start, colon), valueAt(text, lines, i, colon)]);
  }
  return out;
}

/** The value of a lazy scan's field `i` (see lazyFields), whose name ends at `colon`. */
function valueAt(text: string, lines: readonly number[], i: number, colon = text.indexOf(":", lines[i] as number)): string {
  let a = colon + 1;
  // The line's CRLF: just before the next line, or before the blank line that ends the head.
  let b = i + 1 < lines.length ? (lines[i + 1] as number) - 2 : text.length - 4;
  while (a < b && isBlank(text.charCodeAt(a))) a++;
  while (b > a && isBlank(text.charCodeAt(b - 1))) b--;
  return text.slice(a, b);
}

/** Adds a value to the list of its field, if it is one that frames, routes or paces the message. */
function gather(f: Fields, kind: number, value: string): void {
  switch (kind) {
    case HOST:
      f.host = withValue(f.host, value);
      break;
    case EXPECT:
      f.expect = withValue(f.expect, value);
      break;
    case UPGRADE:
      f.upgrade = withValue(f.upgrade, value);
      break;
    case CONNECTION:
      f.connection = withValue(f.connection, value);
      break;
    case KEEP_ALIVE:
      f.keepAlive = withValue(f.keepAlive, value);
      break;
    case CONTENT_LENGTH:
      f.contentLength = withValue(f.contentLength, value);
      break;
    case TRANSFER_ENCODING:
      f.transferEncoding = withValue(f.transferEncoding, value);
      break;
  }
}

/** listTokens's answers for the commonest values: shared, so never added to either. */
const KEEP_ALIVE_TOKEN: readonly string[] = ["keep-alive"];
const CLOSE_TOKEN: readonly string[] = ["close"];

/** Lower-cased, non-empty elements of comma-separated list values (NONE for none: not to be added to). */
export function listTokens(values: readonly string[]): readonly string[] {
  if (values.length === 0) return NONE;
  if (values.length === 1) {
    const v = values[0] as string;
    // The values nearly every Connection has, as most peers spell them: one comparison each,
    // not a search for a comma, a trim and a lower-casing (about 600 instructions a head).
    if (v === "keep-alive" || v === "Keep-Alive") return KEEP_ALIVE_TOKEN;
    if (v === "close" || v === "Close") return CLOSE_TOKEN;
    // One element: no split, no list grown by pushes.
    if (!v.includes(",")) {
      const t = v.trim().toLowerCase();
      return t ? [t] : NONE;
    }
  }
  const out: string[] = [];
  for (const v of values)
    for (const part of v.split(",")) {
      const t = part.trim().toLowerCase();
      if (t) out.push(t);
    }
  return out;
}

/**
 * Fields that frame or route the message can't be made hop-by-hop by naming them in
 * Connection (RFC 9110 §7.6.1 would have a proxy drop them): a peer that drops
 * Content-Length but still forwards the body smuggles that body in as the next message.
 * Such a message is refused, never forwarded with its framing edited.
 */
function refuseFramingInConnection(connection: readonly string[], names: readonly string[], status: number): void {
  for (const n of names)
    if (connection.includes(n)) throw new HttpError(status, `Connection names ${n}, a field that frames the message`);
}
const REQUEST_FRAMING = ["content-length", "transfer-encoding", "host"] as const;
const RESPONSE_FRAMING = ["content-length", "transfer-encoding"] as const;

/** The same rule for heads parsed by node:http (the buffered engine): the error to answer with, or null. */
export function framingNamedInConnection(connection: string | undefined, message: "request" | "response"): HttpError | null {
  if (connection === undefined) return null;
  try {
    refuseFramingInConnection(
      listTokens([connection]),
      message === "request" ? REQUEST_FRAMING : RESPONSE_FRAMING,
      message === "request" ? 400 : 502,
    );
    return null;
  } catch (err) {
    return err as HttpError;
  }
}

/**
 * What the strict parser refuses and node:http (llhttp) lets through, for heads the buffered
 * engine gets from node:http: a version other than 1.0 and 1.1 (505), a target with characters
 * no target may have (400), more than one Host or one no host can be (400), Transfer-Encoding in an HTTP/1.0 request (400, RFC 9112 §6.1: its framing is faulty),
 * or a transfer coding besides the final chunked (501). The error to answer with, or null.
 */
export function strictRequestRefusal(
  httpVersion: string,
  method: string,
  target: string,
  rawHeaders: readonly string[],
): HttpError | null {
  if (httpVersion !== "1.1" && httpVersion !== "1.0") return new HttpError(505, `HTTP/${httpVersion} is not supported`);
  // llhttp takes `#`, `\` and other characters no target may have; absolute-form is checked where it is read.
  if (target.startsWith("/") ? !ORIGIN_FORM.test(target) : target === "*" && method !== "OPTIONS")
    return new HttpError(400, "invalid request target");
  let hosts = 0;
  let host = "";
  const te: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    if (sameName(name, "host")) {
      hosts++;
      host = rawHeaders[i + 1] as string;
    } else if (sameName(name, "transfer-encoding")) te.push(rawHeaders[i + 1] as string);
  }
  if (hosts > 1) return new HttpError(400, "more than one Host");
  if (hosts === 1 && !HOST_VALUE.test(host)) return new HttpError(400, "invalid Host");
  if (te.length === 0) return null;
  if (httpVersion === "1.0") return new HttpError(400, "Transfer-Encoding in an HTTP/1.0 request");
  const codings = listTokens(te);
  if (codings[codings.length - 1] !== "chunked") return new HttpError(400, "Transfer-Encoding does not end with chunked");
  if (codings.length !== 1) return new HttpError(501, "only the chunked transfer coding is supported");
  return null;
}

/**
 * The same for responses node:http read for the buffered engine (502): a status below 100 or a
 * reason with control characters, Transfer-Encoding in an HTTP/1.0 response, or a transfer
 * coding besides chunked on a response with a body (llhttp would read such a body until the
 * connection closes; the splice engine refuses it).
 */
export function strictResponseRefusal(
  httpVersion: string,
  rawHeaders: readonly string[],
  requestMethod: string,
  status: number,
  reason: string,
): HttpError | null {
  // llhttp reads any three digits and a reason with control characters; statusOf refuses a code
  // below 100 and such a reason, and node:http throws when asked to write either.
  if (status < 100 || !FIELD_VALUE.test(reason)) return new HttpError(502, "malformed status line from upstream");
  const te: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2)
    if (sameName(rawHeaders[i] as string, "transfer-encoding")) te.push(rawHeaders[i + 1] as string);
  if (te.length === 0) return null;
  if (httpVersion === "1.0") return new HttpError(502, "upstream sent Transfer-Encoding in an HTTP/1.0 response");
  const bodiless = requestMethod === "HEAD" || (status >= 100 && status < 200) || status === 204 || status === 304;
  const codings = listTokens(te);
  if (!bodiless && !(codings.length === 1 && codings[0] === "chunked"))
    return new HttpError(502, "upstream used a transfer coding other than chunked");
  return null;
}

/** The error for a request line's version other than HTTP/1.0 and HTTP/1.1: 400 if it is not a version at all. */
function unsupportedVersion(versionText: string): never {
  const vm = /^HTTP\/(\d)\.(\d)$/.exec(versionText);
  if (!vm) throw new HttpError(400, "invalid HTTP version");
  throw new HttpError(505, `HTTP/${vm[1]}.${vm[2]} is not supported`);
}

/** A single Content-Length, or null; several fields or list values are refused. */
function contentLength(values: string[], status: number): number | null {
  if (values.length === 0) return null;
  if (values.length > 1) throw new HttpError(status, "more than one Content-Length");
  const v = values[0] as string;
  // One to fifteen digits (no sign, no blanks), told by a loop: a regular expression's call costs more than the whole check.
  const n = v.length;
  if (n === 0 || n > 15) throw new HttpError(status, "invalid Content-Length");
  for (let i = 0; i < n; i++) if (!isDigit(v.charCodeAt(i))) throw new HttpError(status, "invalid Content-Length");
  return Number(v);
}

/**
 * `known`: the head as Latin-1 when the caller has it already (SocketReader#headText); else it
 * is made here.
 */
export function parseRequestHead(head: Buffer, limits: HeadLimits, known: string | null = null): RequestHead {
  // latin1 maps bytes 1:1, so obs-text survives the round trip unchanged.
  const text = known ?? head.toString("latin1");
  // RFC 9112 §2.2: a server SHOULD ignore empty lines before the request-line.
  let lineAt = 0;
  while (text.startsWith("\r\n", lineAt)) lineAt += 2;
  // Only empty lines: the blank line that ends a head was among them.
  if (lineAt >= text.length - 2) throw new HttpError(400, "empty request");
  const lineEnd = text.indexOf("\r\n", lineAt);
  const requestLine = text.slice(lineAt, lineEnd);
  const sp1 = requestLine.indexOf(" ");
  // The last space, found in the bytes (lastIndexOf on a string is a runtime call).
  let sp2 = lineEnd - 1;
  while (sp2 >= lineAt && head[sp2] !== 32) sp2--;
  sp2 -= lineAt;
  if (sp1 <= 0 || sp2 === sp1) throw new HttpError(400, "malformed request line");
  const method = requestLine.slice(0, sp1);
  const target = requestLine.slice(sp1 + 1, sp2);
  const versionText = requestLine.slice(sp2 + 1);
  // A known method is a token: the grammar is checked only to tell a malformed method (400) from an unknown one (501).
  // GET first: a Set lookup hashes the new string.
  if (method !== "GET" && !METHODS.has(method)) {
    if (!METHOD.test(method)) throw new HttpError(400, "invalid method");
    throw new HttpError(501, `method ${method} is not supported`);
  }
  if (target.length > limits.maxUriBytes) throw new HttpError(414, "request target too long");
  const version = versionText === "HTTP/1.1" ? "1.1" : versionText === "HTTP/1.0" ? "1.0" : unsupportedVersion(versionText);
  if (head.length > limits.maxHeadBytes) throw new HttpError(431, "request head too large");
  // Lazy: a request passed on unedited is written from its lines (plainRequestHead).
  const fields = parseFields(head, text, lineEnd + 2, limits, 400, true);

  // Request target forms (RFC 9112 §3.2).
  let path = target;
  let authorityFromTarget: string | null = null;
  if (method === "CONNECT") {
    if (!AUTHORITY_FORM.test(target)) throw new HttpError(400, "CONNECT needs host:port");
  } else if (target === "*") {
    if (method !== "OPTIONS") throw new HttpError(400, "asterisk-form is only for OPTIONS");
  } else if (target.startsWith("/")) {
    if (!normalOriginForm(head, lineAt + sp1 + 1, lineAt + sp2)) {
      if (!allOf(head, lineAt + sp1 + 1, lineAt + sp2, PATH_CHARS) && !ORIGIN_FORM.test(target))
        throw new HttpError(400, "invalid request target");
      path = normalizePath(target);
    }
  } else {
    const m = ABSOLUTE_FORM.exec(target);
    if (!m) throw new HttpError(400, "invalid request target");
    authorityFromTarget = m[2] as string;
    path = normalizePath(m[3] || "/");
  }

  const hosts = fields.host;
  if (hosts.length > 1) throw new HttpError(400, "more than one Host");
  if (version === "1.1" && hosts.length === 0) throw new HttpError(400, "HTTP/1.1 request without Host");
  const host = authorityFromTarget ?? hosts[0] ?? null;
  // One Host (two were refused above): the scan checked its bytes; a host it did not pass, or a
  // head read line by line, goes to the expression.
  if (hosts[0] !== undefined && !fields.plainHost && !HOST_VALUE.test(hosts[0])) throw new HttpError(400, "invalid Host");
  if (authorityFromTarget !== null && !HOST_VALUE.test(authorityFromTarget)) throw new HttpError(400, "invalid authority");

  // Framing (RFC 9112 §6): Transfer-Encoding and Content-Length never together.
  const te = listTokens(fields.transferEncoding);
  const hasTe = fields.transferEncoding.length > 0;
  const cl = contentLength(fields.contentLength, 400);
  let framing: BodyFraming = { kind: "none" };
  if (hasTe) {
    if (cl !== null) throw new HttpError(400, "both Transfer-Encoding and Content-Length");
    if (version === "1.0") throw new HttpError(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (te[te.length - 1] !== "chunked") throw new HttpError(400, "Transfer-Encoding does not end with chunked");
    if (te.length !== 1) throw new HttpError(501, "only the chunked transfer coding is supported");
    framing = { kind: "chunked" };
  } else if (cl !== null && cl > 0) {
    framing = { kind: "length", length: cl };
  }

  // RFC 9110 §9.3.6: a CONNECT request has no content; framing on one is read differently by different parsers.
  if (method === "CONNECT" && (hasTe || cl !== null))
    throw new HttpError(400, "CONNECT with Content-Length or Transfer-Encoding");
  const connection = listTokens(fields.connection);
  if (connection.length > 0) refuseFramingInConnection(connection, REQUEST_FRAMING, 400);
  const keepAlive =
    version === "1.1" ? !connection.includes("close") : connection.includes("keep-alive") && !connection.includes("close");
  const upgradeValues = fields.upgrade;
  const upgrade = connection.includes("upgrade") && upgradeValues.length === 1 ? (upgradeValues[0] as string) : null;
  const expect = fields.expect;
  let expectContinue = false;
  if (expect.length > 0) {
    if (expect.length > 1 || (expect[0] as string).toLowerCase() !== "100-continue")
      throw new HttpError(417, "unsupported expectation");
    expectContinue = true;
  }
  return new ParsedRequest(
    method,
    target,
    path,
    version,
    fields.kinds,
    fields.lines,
    fields.lazy ? null : fields.headers,
    host,
    hosts[0] ?? null,
    framing,
    connection,
    keepAlive,
    upgrade,
    expectContinue,
    text,
  );
}

/**
 * A request head whose fields become strings only when asked for, as a response's (see
 * ParsedResponse): the splice engine writes the request upstream from its lines and reads the
 * few fields it needs by their kinds (an X-Request-Id, a traceparent). A name and a value
 * string for each field cost about 300 instructions a field (callgrind), and a browser sends a
 * dozen.
 */
class ParsedRequest implements RequestHead {
  constructor(
    readonly method: string,
    readonly target: string,
    readonly path: string,
    readonly version: "1.0" | "1.1",
    readonly kinds: number[],
    readonly lines: number[],
    /** The fields as strings, when the scan made them (see ParsedResponse). */
    private fields: Header[] | null,
    readonly host: string | null,
    readonly hostField: string | null,
    readonly framing: BodyFraming,
    readonly connection: readonly string[],
    readonly keepAlive: boolean,
    readonly upgrade: string | null,
    readonly expectContinue: boolean,
    readonly text: string,
  ) {}

  get headers(): Header[] {
    if (this.fields === null) this.fields = lazyFields(this.text, this.lines);
    return this.fields;
  }

  valuesOf(name: string): readonly string[] {
    const kind = kindOfLower(name);
    if (kind === OTHER) {
      const out: string[] = [];
      for (const [n, v] of this.headers) if (n.length === name.length && n.toLowerCase() === name) out.push(v);
      return out;
    }
    const kinds = this.kinds;
    let out = NONE;
    for (let i = 0; i < kinds.length; i++)
      if (kinds[i] === kind)
        out = withValue(out, this.fields ? (this.fields[i] as Header)[1] : valueAt(this.text, this.lines, i));
    return out;
  }
}

/** Upstream responses: malformed ones become 502 for the client. `known`: as for parseRequestHead. */
export function parseResponseHead(head: Buffer, known: string | null = null): ResponseHead {
  const text = known ?? head.toString("latin1");
  const lineEnd = text.indexOf("\r\n");
  const status = statusOf(head, lineEnd);
  const fields = parseFields(head, text, lineEnd + 2, null, 502, true);
  const te = listTokens(fields.transferEncoding);
  const hasTe = fields.transferEncoding.length > 0;
  const cl = contentLength(fields.contentLength, 502);
  if (hasTe && cl !== null) throw new HttpError(502, "upstream sent both Transfer-Encoding and Content-Length");
  const chunkedCount = te.filter((t) => t === "chunked").length;
  if (chunkedCount > 1 || (chunkedCount === 1 && te[te.length - 1] !== "chunked")) {
    throw new HttpError(502, "upstream Transfer-Encoding is malformed");
  }
  // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means its framing is faulty.
  if (hasTe && head[7] === 48) throw new HttpError(502, "upstream sent Transfer-Encoding in an HTTP/1.0 response");
  const connection = listTokens(fields.connection);
  if (connection.length > 0) refuseFramingInConnection(connection, RESPONSE_FRAMING, 502);
  return new ParsedResponse(
    head[7] === 48 ? "1.0" : "1.1",
    status,
    lineEnd > 13 ? text.slice(13, lineEnd) : "",
    fields,
    text,
    connection,
    chunkedCount === 1,
    hasTe && chunkedCount === 0,
    cl,
    fields.keepAlive.length > 0 ? keepAliveTimeoutMs(fields.keepAlive) : null,
  );
}

/**
 * A response head whose fields become strings only when asked for: a response passed on
 * unedited is written from its lines as they came (plainResponseHead), and making a name and a
 * value string for each field of nginx's eight cost 1-1.5k instructions a response (callgrind).
 */
class ParsedResponse implements ResponseHead {
  readonly kinds: number[];
  readonly lines: number[];
  private fields: Header[] | null;

  constructor(
    readonly version: "1.0" | "1.1",
    readonly status: number,
    readonly reason: string,
    parsed: Fields,
    readonly text: string,
    readonly connection: readonly string[],
    readonly transferChunked: boolean,
    readonly transferOther: boolean,
    readonly contentLength: number | null,
    readonly keepAliveTimeoutMs: number | null,
  ) {
    this.kinds = parsed.kinds;
    this.lines = parsed.lines;
    this.fields = parsed.lazy ? null : parsed.headers;
  }

  /** The same array on every read: appendFields knows the fields passed on by their identity. */
  get headers(): Header[] {
    this.fields ??= lazyFields(this.text, this.lines);
    return this.fields;
  }
}

/**
 * The status code of a status line (`lineEnd` bytes of `head`): `HTTP/1.0` or `HTTP/1.1`, a
 * space, three digits (the first not 0), then nothing or a space and a reason of field-value
 * characters.
 */
function statusOf(head: Buffer, lineEnd: number): number {
  let ok =
    lineEnd >= 12 &&
    // "HTTP/1."
    head[0] === 72 &&
    head[1] === 84 &&
    head[2] === 84 &&
    head[3] === 80 &&
    head[4] === 47 &&
    head[5] === 49 &&
    head[6] === 46 &&
    (head[7] === 48 || head[7] === 49) &&
    head[8] === 32 &&
    // A first digit of 0 is no status (RFC 9110 §15: 100 to 599, and 600 to 999 seen in use): as
    // a number it would be written back in two digits, a status line no parser reads.
    (head[9] as number) >= 49 &&
    (head[9] as number) <= 57 &&
    isDigit(head[10] as number) &&
    isDigit(head[11] as number) &&
    (lineEnd === 12 || head[12] === 32);
  for (let i = 13; ok && i < lineEnd; i++) ok = ((FIELD_CHARS[head[i] as number] as number) & VALUE_CHAR) !== 0;
  if (!ok) throw new HttpError(502, "malformed status line from upstream");
  return ((head[9] as number) - 48) * 100 + ((head[10] as number) - 48) * 10 + ((head[11] as number) - 48);
}

const isDigit = (c: number) => c >= 48 && c <= 57;

/** RFC 9112 §6.3: how the response body is delimited, given the request. */
export function responseFraming(req: { method: string }, res: ResponseHead): BodyFraming {
  if (req.method === "HEAD" || (res.status >= 100 && res.status < 200) || res.status === 204 || res.status === 304) {
    return { kind: "none" };
  }
  if (res.transferOther) throw new HttpError(502, "upstream used a transfer coding other than chunked");
  if (res.transferChunked) return { kind: "chunked" };
  if (res.contentLength !== null)
    return res.contentLength === 0 ? { kind: "none" } : { kind: "length", length: res.contentLength };
  return { kind: "close" };
}

/**
 * The idle timeout in `Keep-Alive: timeout=N` values (seconds; RFC 2068 §19.7.1.1, sent by
 * Node's http server among others), in milliseconds; null if none says.
 */
function keepAliveTimeoutMs(values: string[]): number | null {
  for (const value of values) {
    const m = /(?:^|[,;\s])timeout\s*=\s*"?(\d{1,9})/i.exec(value);
    if (m) return Number(m[1]) * 1000;
  }
  return null;
}
