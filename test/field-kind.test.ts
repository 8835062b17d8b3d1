// A field's kind (http1/field-kind.ts) is read from its name's bytes while a head is parsed, and
// from a name held as a string elsewhere: both must say the same for every name in any case, and
// the parser must keep each field's kind beside it, whichever way it read the head.
import { expect, test } from "vitest";
import { isHopByHop, KIND_NAMES, kindAt, kindOfName, OTHER } from "../proxy/http1/field-kind.js";
import { HOP_BY_HOP_NAMES } from "../proxy/http1/forward-headers.js";
import { parseRequestHead, parseResponseHead } from "../proxy/http1/head.js";
import { prng } from "./helpers/corpus.js";

const limits = { maxHeadBytes: 256 * 1024, maxHeaders: 100, maxUriBytes: 8192 };
const bytes = (s: string) => Buffer.from(s, "latin1");

/** `name` with each letter's case chosen by `r`. */
function anyCase(name: string, r: () => number): string {
  return [...name].map((c) => (r() < 0.5 ? c.toUpperCase() : c.toLowerCase())).join("");
}

test("every kind's name is found in any case, from bytes and from a string; names one character off are not", () => {
  const r = prng(3);
  const tokenChars = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  for (let kind = 1; kind < KIND_NAMES.length; kind++) {
    const lower = KIND_NAMES[kind] as string;
    for (let n = 0; n < 20; n++) {
      const name = anyCase(lower, r);
      expect(kindOfName(name), name).toBe(kind);
      // At an offset in a larger buffer, as in a head.
      expect(kindAt(bytes(`xx${name}:`), 2, name.length), name).toBe(kind);
      // One character changed to any other token character: another name, none of these
      // (unless the change is only of case).
      const k = Math.floor(r() * name.length);
      const c = tokenChars[Math.floor(r() * tokenChars.length)] as string;
      const other = name.slice(0, k) + c + name.slice(k + 1);
      const expected = other.toLowerCase() === lower ? kind : KIND_NAMES.indexOf(other.toLowerCase() as never);
      expect(kindOfName(other), other).toBe(expected === -1 ? OTHER : expected);
      expect(kindAt(bytes(other), 0, other.length), other).toBe(expected === -1 ? OTHER : expected);
    }
    // Longer and shorter: not this kind.
    expect(kindOfName(`${lower}s`)).not.toBe(kind);
    expect(kindOfName(lower.slice(1))).not.toBe(kind);
  }
  // The characters OR 0x20 could confuse ("^" and "~", "_" and DEL) change nothing.
  expect(kindOfName("^ia")).toBe(OTHER);
  expect(kindOfName("x_forwarded_for")).toBe(OTHER);
  expect(kindOfName("")).toBe(OTHER);
  // Names of a kind's length and first letter, and names longer than any.
  for (const name of ["Hose", "Connectiom", "keep-alivf", "X-Forwarded-Fox", "t".repeat(40)])
    expect(kindAt(bytes(name), 0, name.length), name).toBe(OTHER);
});

test("the hop-by-hop kinds, which the buffered engine drops by name too, are RFC 9110's and the older ones proxies drop", () => {
  // RFC 9110 §7.6.1 (Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding, Upgrade),
  // Trailer (§6.6.2 names trailer fields of this hop), and the proxy authentication pair (§11.7).
  const rfc = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
  ];
  expect(KIND_NAMES.filter((_, kind) => isHopByHop(kind)).sort()).toEqual([...rfc].sort());
  expect([...HOP_BY_HOP_NAMES].sort()).toEqual([...rfc].sort());
});

test("a parsed head keeps each field's kind beside it, read in one pass or field by field", () => {
  const r = prng(5);
  const names = [...KIND_NAMES.slice(1), "Server", "User-Agent", "X-Request-Id", "Accept", "x-a"];
  for (let n = 0; n < 300; n++) {
    const fields: Array<[string, string]> = [];
    for (let k = 1 + Math.floor(r() * 6); k > 0; k--) {
      const name = anyCase(names[Math.floor(r() * names.length)] as string, r);
      // Framing fields with values that do not frame anything here: only the kinds are looked at.
      if (/^(content-length|transfer-encoding|host|expect|upgrade|connection|keep-alive)$/i.test(name)) continue;
      fields.push([name, "v"]);
    }
    // A head over 64 KiB is read field by field (head.ts scanFields).
    if (r() < 0.3) fields.push(["X-Pad", "a".repeat(70_000)]);
    const lines = fields.map(([name, v]) => `${name}: ${v}\r\n`).join("");
    const req = parseRequestHead(bytes(`GET / HTTP/1.1\r\nHost: a\r\n${lines}\r\n`), limits);
    expect(req.kinds).toEqual(req.headers.map(([name]) => kindOfName(name)));
    expect(req.kinds[0]).toBe(KIND_NAMES.indexOf("host"));
    const res = parseResponseHead(bytes(`HTTP/1.1 200 OK\r\n${lines}Content-Length: 0\r\n\r\n`));
    expect(res.kinds).toEqual(res.headers.map(([name]) => kindOfName(name)));
  }
});
