// What a field is to the proxy, known from its name in any case: the fields that frame, route
// or pace a message, the hop-by-hop ones (RFC 9110 §7.6.1), those the proxy writes itself and
// those a request's record reads (X-Request-Id, User-Agent).
// The head parser finds each field's kind once, from the name's bytes while it reads them
// (kindAt), and keeps the kinds beside the fields, so that later steps look a number up instead
// of comparing the name with a dozen others again: compared as strings, a name cost about 50
// instructions a character (each charCodeAt dispatches on the string's representation).

export const OTHER = 0;
export const HOST = 1;
export const CONTENT_LENGTH = 2;
export const TRANSFER_ENCODING = 3;
export const CONNECTION = 4;
export const KEEP_ALIVE = 5;
export const UPGRADE = 6;
export const EXPECT = 7;
export const TE = 8;
export const TRAILER = 9;
export const PROXY_CONNECTION = 10;
export const PROXY_AUTHENTICATE = 11;
export const PROXY_AUTHORIZATION = 12;
export const X_FORWARDED_FOR = 13;
export const X_FORWARDED_PROTO = 14;
export const X_FORWARDED_HOST = 15;
export const VIA = 16;
export const TRACEPARENT = 17;
export const TRACESTATE = 18;
export const X_REQUEST_ID = 19;
export const USER_AGENT = 20;

/** Each kind's name in lower case, by kind. */
export const KIND_NAMES = [
  "",
  "host",
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "upgrade",
  "expect",
  "te",
  "trailer",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  "via",
  "traceparent",
  "tracestate",
  "x-request-id",
  "user-agent",
] as const;

/** Bit `kind` set for each hop-by-hop kind (below). */
const HOP_BY_HOP_MASK =
  (1 << CONNECTION) |
  (1 << KEEP_ALIVE) |
  (1 << TRANSFER_ENCODING) |
  (1 << UPGRADE) |
  (1 << TE) |
  (1 << TRAILER) |
  (1 << PROXY_CONNECTION) |
  (1 << PROXY_AUTHENTICATE) |
  (1 << PROXY_AUTHORIZATION);

/**
 * A field that describes one connection, never the message: dropped by a proxy whatever
 * Connection says. One mask, not a comparison per kind: in another module each kind's constant
 * is a load with a check that it is initialised.
 */
export function isHopByHop(kind: number): boolean {
  return ((HOP_BY_HOP_MASK >>> kind) & 1) === 1;
}

/** Bit `kind` set for each kind whose values the head parser gathers (they frame, route or pace the message). */
export const GATHERED_MASK =
  (1 << HOST) |
  (1 << CONTENT_LENGTH) |
  (1 << TRANSFER_ENCODING) |
  (1 << CONNECTION) |
  (1 << KEEP_ALIVE) |
  (1 << UPGRADE) |
  (1 << EXPECT);

/**
 * No two kinds' names have the same length and first letter, so those two say which kind a
 * name can be: KIND_BY_SLOT[(length << 5) | (first & 31)] (the first byte's low five bits, the
 * same in either case). Most fields are told apart by this one load; a name that may be one of
 * these is then compared byte by byte with that kind's (NAME_BYTES from NAME_AT[kind]).
 */
const KIND_BY_SLOT = new Uint8Array(32 << 5);
const NAME_AT = new Uint8Array(KIND_NAMES.length);
const NAME_BYTES = new Uint8Array(KIND_NAMES.reduce((n, name) => n + name.length, 0));
for (let kind = 1, at = 0; kind < KIND_NAMES.length; kind++) {
  const name = KIND_NAMES[kind] as string;
  const slot = (name.length << 5) | (name.charCodeAt(0) & 31);
  if (KIND_BY_SLOT[slot] !== 0) throw new Error(`field kinds ${KIND_BY_SLOT[slot]} and ${kind} share a slot`);
  KIND_BY_SLOT[slot] = kind;
  NAME_AT[kind] = at;
  for (let k = 0; k < name.length; k++) NAME_BYTES[at++] = name.charCodeAt(k);
}

/**
 * The kind of the field whose name (a token) is bytes[at, at + length). OR-ing 0x20 lower-cases
 * a letter, keeps "-", and makes no other token character into a lower-case letter or "-".
 */
export function kindAt(bytes: Uint8Array, at: number, length: number): number {
  if (length >= 32) return OTHER;
  const kind = KIND_BY_SLOT[(length << 5) | ((bytes[at] as number) & 31)] as number;
  if (kind === OTHER) return OTHER;
  const from = NAME_AT[kind] as number;
  for (let k = 0; k < length; k++) if (((bytes[at + k] as number) | 0x20) !== NAME_BYTES[from + k]) return OTHER;
  return kind;
}

const KIND_OF_LOWER = new Map<string, number>(KIND_NAMES.map((name, kind) => [name, kind]));
KIND_OF_LOWER.delete("");

/** The kind of a field named `name` in lower case (a name a caller asks for, not one received): one lookup. */
export function kindOfLower(name: string): number {
  return KIND_OF_LOWER.get(name) ?? OTHER;
}

/** The kind of a field named `name` (a token), for names held as strings. */
export function kindOfName(name: string): number {
  const n = name.length;
  // kindAt reads the first byte and takes no name of 32 or more.
  if (n === 0 || n >= 32) return OTHER;
  const bytes = new Uint8Array(n);
  for (let k = 0; k < n; k++) {
    const c = name.charCodeAt(k);
    // Beyond ASCII: in no token, and in none of these names.
    if (c > 0x7e) return OTHER;
    bytes[k] = c;
  }
  return kindAt(bytes, 0, n);
}
