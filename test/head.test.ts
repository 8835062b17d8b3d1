// The head parser's field checks: one pass over a head's field lines reads and checks them all
// (head.ts scanFields), and a head it refuses is checked field by field. Such heads still get the
// error that names what is wrong, and the pass accepts exactly what the checks of each field
// accept and reads the same fields from them (random heads, compared with those checks written
// out here).

import { METHODS } from "node:http";
import { expect, test } from "vitest";
import { HttpError } from "../proxy/http1/errors.js";
import { HOST_VALUE, ORIGIN_FORM, TOKEN } from "../proxy/http1/grammar.js";
import {
  findHeadEnd,
  HEAD_TEXT_WINDOW,
  headTextAt,
  listTokens,
  parseRequestHead,
  parseResponseHead,
} from "../proxy/http1/head.js";
import { normalizePath } from "../proxy/http1/normalize-path.js";
import { prng } from "./helpers/corpus.js";

const limits = { maxHeadBytes: 65536, maxHeaders: 100, maxUriBytes: 8192 };
const request = (fields: string) => Buffer.from(`GET / HTTP/1.1\r\nHost: a\r\n${fields}\r\n`, "latin1");

function failure(f: () => unknown): { status: number; message: string } | null {
  try {
    f();
    return null;
  } catch (err) {
    if (!(err instanceof HttpError)) throw err;
    return { status: err.status, message: err.message };
  }
}

test("a bad field is refused with the error that names it, in requests (400) and responses (502)", () => {
  const cases: Array<[string, string]> = [
    ["Bad Name: x\r\n", "invalid header name (whitespace before the colon or a forbidden character)"],
    ["X-A: one\x01two\r\n", "control character in the value of X-A"],
    ["X-A: del\x7f\r\n", "control character in the value of X-A"],
    [" folded: x\r\n", "obsolete line folding"],
    ["no colon\r\n", "header line without a name and colon"],
    // The colon of the next line is not this line's.
    ["no colon\r\nX-B: c\r\n", "header line without a name and colon"],
    ["Content-Length:\t0\r\n", "tab in Content-Length"],
    [": empty name\r\n", "header line without a name and colon"],
  ];
  for (const [line, message] of cases) {
    expect(failure(() => parseRequestHead(request(line), limits))).toEqual({ status: 400, message });
    const response = Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: 0\r\n${line}\r\n`, "latin1");
    expect(failure(() => parseResponseHead(response))).toEqual({ status: 502, message });
  }
});

test("Transfer-Encoding in an HTTP/1.0 message is faulty framing (RFC 9112 §6.1): refused in requests (400) and responses (502)", () => {
  const req = Buffer.from("POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", "latin1");
  expect(failure(() => parseRequestHead(req, limits))).toEqual({
    status: 400,
    message: "Transfer-Encoding in an HTTP/1.0 request",
  });
  const res = Buffer.from("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "latin1");
  expect(failure(() => parseResponseHead(res))).toEqual({
    status: 502,
    message: "upstream sent Transfer-Encoding in an HTTP/1.0 response",
  });
  // The same response as HTTP/1.1 is chunked.
  expect(parseResponseHead(Buffer.from("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "latin1")).transferChunked).toBe(
    true,
  );
});

test("a tab in a later field is not the framing field's", () => {
  const head = parseRequestHead(request("Content-Length: 3\r\nX-T: a\tb\r\n"), limits);
  expect(head.framing).toEqual({ kind: "length", length: 3 });
  expect(head.headers.at(-1)).toEqual(["X-T", "a\tb"]);
  expect(
    parseResponseHead(Buffer.from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-T: a\tb\r\n\r\n", "latin1")).contentLength,
  ).toBe(0);
  expect(failure(() => parseRequestHead(Buffer.from("\r\n\r\n", "latin1"), limits))).toEqual({
    status: 400,
    message: "empty request",
  });
});

test("valid fields pass as they are: obs-text, tabs and spaces inside values, empty values, leading empty lines", () => {
  const head = parseRequestHead(
    Buffer.from("\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9\t ok\r\nX-Empty:\r\nX-Sp:   trimmed  \r\n\r\n", "latin1"),
    limits,
  );
  expect(head.headers).toEqual([
    ["Host", "a"],
    ["X-A", "caf\xe9\t ok"],
    ["X-Empty", ""],
    ["X-Sp", "trimmed"],
  ]);
  expect(parseResponseHead(Buffer.from("HTTP/1.1 204 No Content\r\n\r\n", "latin1")).headers).toEqual([]);
  // A response's field strings are made when first asked for: the same fields, and the same
  // array on every read (the fields passed on are known by their identity).
  const res = parseResponseHead(
    Buffer.from("HTTP/1.1 200 OK\r\nX-A: caf\xe9\t ok\r\nX-Empty:\r\nX-Sp:   trimmed  \r\nContent-Length: 0\r\n\r\n", "latin1"),
  );
  expect(res.headers).toEqual([
    ["X-A", "caf\xe9\t ok"],
    ["X-Empty", ""],
    ["X-Sp", "trimmed"],
    ["Content-Length", "0"],
  ]);
  expect(res.headers).toBe(res.headers);
});

test("a head's end: found past older bytes and at a blank line split across reads; a bare LF refused at once while the end is not there, and by the parser when it is", () => {
  const wire = (s: string) => Buffer.from(s, "latin1");
  const req = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  // A store holding an earlier head before `start` and stale bytes after `end`.
  const store = wire(`${req}${req}GET /stale HTTP/1.1\r\n\r\n`);
  expect(findHeadEnd(store, req.length, req.length, 2 * req.length)).toBe(2 * req.length);
  expect(findHeadEnd(store, req.length, req.length, 2 * req.length - 1)).toBe(-1);
  // Searched again from three bytes before what was scanned: a blank line split across reads.
  expect(findHeadEnd(wire(req), 0, req.length - 5)).toBe(req.length);
  // Incomplete heads with a bare LF: refused without waiting for more.
  for (const partial of ["GET / HTTP/1.1\nHost: a", "\nGET /", "GET / HTTP/1.1\r\nHost: a\n"])
    expect(
      failure(() => findHeadEnd(wire(partial))),
      JSON.stringify(partial),
    ).toEqual({ status: 400, message: "bare LF in head" });
  // Whole heads with a bare LF somewhere before their blank line: the parser refuses each.
  const bareRequests = [
    "GET / HTTP/1.1\nHost: a\r\n\r\n",
    "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\nX-B: b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\n\nX-B: b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-B: b\n\r\n\r\n",
    "GET /\n HTTP/1.1\r\nHost: a\r\n\r\n",
  ];
  for (const text of bareRequests) {
    const head = wire(text);
    expect(findHeadEnd(head)).toBe(head.length);
    expect(failure(() => parseRequestHead(head, limits))?.status, JSON.stringify(text)).toBe(400);
  }
  for (const text of ["HTTP/1.1 200 OK\nServer: x\r\n\r\n", "HTTP/1.1 200 OK\r\nServer: x\nY: z\r\n\r\n"]) {
    const head = wire(text);
    expect(findHeadEnd(head)).toBe(head.length);
    expect(failure(() => parseResponseHead(head))?.status, JSON.stringify(text)).toBe(502);
  }
});

test("a head found in text: only within the bytes given and the window, the same text the bytes make", () => {
  const wire = (s: string) => Buffer.from(s, "latin1");
  const req = "GET / HTTP/1.1\r\nHost: a\r\nX-Obs: \xe9\xff\r\n\r\n";
  // Older bytes before `start`, a body after the head, stale bytes with a blank line past `end`.
  const store = wire(`${req}${req}body\r\n\r\nstale`);
  expect(headTextAt(store, req.length, store.length - 5)).toBe(req);
  expect(headTextAt(store, req.length, 2 * req.length)).toBe(req);
  expect(headTextAt(store, req.length, 2 * req.length - 1)).toBeNull();
  expect(headTextAt(wire(`${req.slice(0, -2)}stale\r\n\r\n`), 0, req.length - 2)).toBeNull();
  // The window: a head ending at its last byte is found; one whose blank line it cuts is not, nor a longer one.
  const padded = (size: number) => `GET / HTTP/1.1\r\nX-Pad: ${"p".repeat(size - 27)}\r\n\r\n`;
  expect(padded(HEAD_TEXT_WINDOW).length).toBe(HEAD_TEXT_WINDOW);
  expect(headTextAt(wire(`${padded(HEAD_TEXT_WINDOW)}more`), 0, HEAD_TEXT_WINDOW + 4)).toBe(padded(HEAD_TEXT_WINDOW));
  for (const size of [HEAD_TEXT_WINDOW + 1, HEAD_TEXT_WINDOW + 2, 3 * HEAD_TEXT_WINDOW]) {
    const b = wire(padded(size));
    expect(headTextAt(b, 0, b.length)).toBeNull();
    expect(findHeadEnd(b, 0, 0, b.length)).toBe(size);
  }
  const text = headTextAt(wire(req), 0, req.length) as string;
  expect(parseRequestHead(wire(req), limits, text)).toEqual(parseRequestHead(wire(req), limits));
});

test("heads larger than the one-pass scan's buffer are read and refused the same way, and the heads after them too", () => {
  const big = { ...limits, maxHeadBytes: 1 << 20 };
  const cookie = "c=".padEnd(100 * 1024, "x");
  const large = parseRequestHead(request(`Cookie: ${cookie}\r\nX-B:  b \r\n`), big);
  expect(large.headers).toEqual([
    ["Host", "a"],
    ["Cookie", cookie],
    ["X-B", "b"],
  ]);
  expect(failure(() => parseRequestHead(request(`Cookie: ${cookie}\r\nX-B: \x00\r\n`), big))).toEqual({
    status: 400,
    message: "control character in the value of X-B",
  });
  // Shorter heads after longer ones: each is read from its own bytes only.
  expect(parseRequestHead(request(`X-A: ${"y".repeat(3000)}\r\n`), limits).headers).toHaveLength(2);
  expect(parseRequestHead(request("X-C: c\r\n"), limits).headers).toEqual([
    ["Host", "a"],
    ["X-C", "c"],
  ]);
  expect(failure(() => parseRequestHead(request("X-C: c\r\nX-D\r\n"), limits))?.status).toBe(400);
});

test("random field lines: accepted exactly when each field passes the field-by-field checks", () => {
  // A small alphabet with the characters that matter: token characters, separators, blanks, controls, obs-text.
  const good = "aZ-!~0aZ-!~0aZ-!~0aZ-!~0aZ-!~0".split("");
  const alphabet = [...good, ...good, ":", " ", "\t", "\x00", "\x7f", "\xe9", "(", '"'];
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
  const lineOk = (line: string) => {
    const colon = line.indexOf(":");
    return colon > 0 && TOKEN.test(line.slice(0, colon)) && VALUE.test(line.slice(colon + 1));
  };
  const r = prng(7);
  const next = () => Math.floor(r() * 2 ** 31);
  let accepted = 0;
  for (let n = 0; n < 3000; n++) {
    const lines: string[] = [];
    const some = (max: number) => {
      let out = "";
      for (let k = next() % (max + 1); k > 0; k--) out += alphabet[next() % alphabet.length];
      return out;
    };
    // Mostly name, colon, value: each part sometimes holding a character that is not allowed there.
    for (let l = 1 + (next() % 3); l > 0; l--) lines.push(next() % 8 === 0 ? some(8) : `X${some(3)}:${some(6)}`);
    const expected = lines.every(lineOk);
    const text = request(lines.map((l) => `${l}\r\n`).join(""));
    const got = failure(() => parseRequestHead(text, limits));
    expect(got === null, JSON.stringify(lines)).toBe(expected);
    if (!expected) continue;
    accepted++;
    // Each field as written: the name before the first colon, the value without the blanks around it.
    const fields = lines.map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1).replace(/^[ \t]+|[ \t]+$/g, "")]);
    expect(parseRequestHead(text, limits).headers).toEqual([["Host", "a"], ...fields]);
  }
  // Both kinds of head were met.
  expect(accepted).toBeGreaterThan(100);
  expect(accepted).toBeLessThan(2900);
});

test("a request's fields by name: the same values before and after its fields were made as strings, in heads read in one pass or line by line", () => {
  const r = prng(17);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(r() * xs.length)] as T;
  // Names of a kind (looked up by kind) and others (looked up in the strings), in any case.
  const names = ["x-request-id", "user-agent", "traceparent", "tracestate", "te", "via", "accept", "x-a", "cookie"];
  const anyCase = (s: string) => [...s].map((c) => (r() < 0.5 ? c.toUpperCase() : c)).join("");
  let repeated = 0;
  for (let n = 0; n < 400; n++) {
    const fields: Array<[string, string]> = [];
    for (let k = Math.floor(r() * 8); k > 0; k--) fields.push([anyCase(pick(names)), pick(["v", " two words ", "", "\tz"])]);
    // Past 64 KiB the head is read line by line (its strings made at once).
    if (r() < 0.2) fields.push(["X-Pad", "a".repeat(70_000)]);
    const head = request(fields.map(([name, v]) => `${name}:${v}\r\n`).join(""));
    const big = { ...limits, maxHeadBytes: 1 << 20 };
    // Asked before anything made the strings, then from the strings themselves.
    const lazy = parseRequestHead(head, big);
    const asked = names.map((name) => [...lazy.valuesOf(name)]);
    const made = parseRequestHead(head, big);
    const byHand = names.map((name) => made.headers.filter(([f]) => f.toLowerCase() === name).map(([, v]) => v));
    expect(asked, head.toString("latin1").slice(0, 300)).toEqual(byHand);
    expect(names.map((name) => [...made.valuesOf(name)])).toEqual(byHand);
    expect(lazy.headers).toEqual(made.headers);
    if (byHand.some((v) => v.length > 1)) repeated++;
  }
  expect(repeated).toBeGreaterThan(50);
});

test("every byte at every place of a value, the value at every alignment: accepted exactly when it is a field-value character", () => {
  // Values are checked four bytes at a time from a word's start (head.ts scanFields): a byte
  // that ends or spoils a value must be found whichever byte of a word it is.
  const isValueByte = (b: number) => b === 9 || (b >= 0x20 && b !== 0x7f);
  let checked = 0;
  for (let b = 0; b < 256; b++) {
    const ch = String.fromCharCode(b);
    for (let at = 0; at < 12; at++) {
      // Names of one to four characters put the value's first byte at each place of a word.
      for (let nameLength = 1; nameLength <= 4; nameLength++) {
        const name = "XYZW".slice(0, nameLength);
        const value = `${"v".repeat(at)}${ch}${"w".repeat(11 - at)}`;
        const expected = isValueByte(b);
        const req = failure(() => parseRequestHead(request(`${name}:${value}\r\n`), limits));
        expect(req === null, `byte ${b} at ${at}, name ${name}`).toBe(expected);
        const res = Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: 0\r\n${name}:${value}\r\n\r\n`, "latin1");
        const parsed = failure(() => parseResponseHead(res));
        expect(parsed === null, `response: byte ${b} at ${at}, name ${name}`).toBe(expected);
        if (expected) {
          const trimmed = value.replace(/^[ \t]+|[ \t]+$/g, "");
          expect(parseResponseHead(res).headers[1]).toEqual([name, trimmed]);
          expect(parseRequestHead(request(`${name}:${value}\r\n`), limits).headers[1]).toEqual([name, trimmed]);
        } else expect(parsed?.status).toBe(502);
        checked++;
      }
    }
  }
  expect(checked).toBe(256 * 12 * 4);
});

/** `count` random strings of up to `max` characters from `alphabet` (seeded). */
function randomStrings(seed: number, alphabet: string[], count: number, max: number): string[] {
  const r = prng(seed);
  const next = () => Math.floor(r() * 2 ** 31);
  const out: string[] = [];
  for (let n = 0; n < count; n++) {
    let s = "";
    for (let k = next() % (max + 1); k > 0; k--) s += alphabet[next() % alphabet.length];
    out.push(s);
  }
  return out;
}

test("status lines: accepted exactly when the grammar's expression matches, with its code, version and reason", () => {
  // The status line as RFC 9112 §4 has it (the parser checks it byte by byte), with a status
  // that does not begin with 0 (RFC 9110 §15: as a number it would be written back in two digits).
  const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d{2})(?: ([\t\x20-\x7e\x80-\xff]*))?$/;
  const alphabet = [..."HTTP/1.0 200 OK", ..."HTTP/1.1 404 ", "9", "x", "\t", "\x00", "\x7f", "\xe9", "\n", "/", "."];
  const lines = [
    "HTTP/1.1 200 OK",
    "HTTP/1.0 404 Not Found",
    "HTTP/1.1 200",
    "HTTP/1.1 200 ",
    "HTTP/1.1 200 \xe9t\xe9\tok",
    "HTTP/1.1 20 OK",
    "HTTP/1.1 2000 OK",
    "HTTP/1.1 099 Odd",
    "HTTP/1.2 200 OK",
    "HTTP/2.0 200 OK",
    "http/1.1 200 OK",
    "HTTP/1.1  200 OK",
    "HTTP/1.1 200OK",
    "HTTP/1.1 200 O\x7fK",
    ...randomStrings(12, alphabet, 1000, 20),
  ];
  // Mostly near-valid: a version, a code and a reason, each sometimes off.
  const r = prng(11);
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)] as T;
  const reasons = randomStrings(16, alphabet, 3000, 6);
  for (const reason of reasons)
    lines.push(
      `HTTP/1.${pick(["0", "1", "1", "1", "2", "x", ""])}${pick([" ", " ", " ", "", "\t"])}${pick(["200", "404", "999", "20", "2000", "2x0", "000"])}${pick(["", " ", " ", "", "\t"])}${reason}`,
    );
  let accepted = 0;
  for (const line of lines) {
    const m = STATUS_LINE.exec(line);
    const head = Buffer.from(`${line}\r\nContent-Length: 0\r\n\r\n`, "latin1");
    const got = failure(() => parseResponseHead(head));
    expect(got === null, JSON.stringify(line)).toBe(m !== null);
    if (m === null) {
      expect(got).toEqual({ status: 502, message: "malformed status line from upstream" });
      continue;
    }
    accepted++;
    const res = parseResponseHead(head);
    expect([res.version, res.status, res.reason]).toEqual([m[1] === "0" ? "1.0" : "1.1", Number(m[2]), m[3] ?? ""]);
  }
  expect(accepted).toBeGreaterThan(50);
});

test("request lines, targets and Host values: accepted exactly when the grammar's expressions match", () => {
  // Mostly valid characters, with the ones that are not and the escapes that may be either.
  const okTarget = [..."/az09-._~!$&'()*+,;=:@?"];
  const okHost = [..."az09-._~!$&'()*+,;="];
  const targetAlphabet = [
    ...okTarget,
    ...okTarget,
    ...okTarget,
    "%",
    "%2f",
    "%zz",
    " ",
    "#",
    "\xe9",
    "\\",
    "[",
    "\t",
    "//",
    "/.",
  ];
  const hostAlphabet = [...okHost, ...okHost, ...okHost, ":", ":8080", "%41", "%g", "[::1]", "[", "@", "/", "\xe9", " "];
  const methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get", "FOO", "G@T", "BREW", "M-SEARCH"];
  const versions = ["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "HTTP/1.10", "HTTP/11", "http/1.1", "HTTP/1.1 "];
  const r = prng(13);
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)] as T;
  const targets = randomStrings(14, targetAlphabet, 3000, 12).map((s) => `/${s}`);
  const hosts = randomStrings(15, hostAlphabet, 3000, 8);
  // Ports at the length limit and past it, and other edges the random ones may miss.
  hosts.splice(0, 8, "a:12345", "a:123456", "a:", ":80", "[::1]:80", "a:8a", "a%41b", "a%4");
  let accepted = 0;
  let asIs = 0;
  for (let n = 0; n < targets.length; n++) {
    // The edge hosts come with a valid request line, so that their check is reached.
    const edge = n < 8;
    const [method, target, version, host] = [
      edge ? "GET" : pick(methods),
      edge ? "/" : (targets[n] as string),
      edge ? "HTTP/1.1" : pick(versions),
      hosts[n] as string,
    ];
    const head = Buffer.from(`${method} ${target} ${version}\r\nHost: ${host}\r\n\r\n`, "latin1");
    const got = failure(() => parseRequestHead(head, limits));
    // What the request line's checks say, in the parser's order (the path's own normalisation aside).
    // The line splits at its first and last spaces.
    const line = `${method} ${target} ${version}`;
    const [sp1, sp2] = [line.indexOf(" "), line.lastIndexOf(" ")];
    const [m, t, v] = [line.slice(0, sp1), line.slice(sp1 + 1, sp2), line.slice(sp2 + 1)];
    const vm = /^HTTP\/(\d)\.(\d)$/.exec(v);
    let expected: { status: number; message: string } | null = null;
    if (sp1 <= 0 || sp1 === sp2) expected = { status: 400, message: "malformed request line" };
    else if (!METHODS.includes(m))
      expected = TOKEN.test(m)
        ? { status: 501, message: `method ${m} is not supported` }
        : { status: 400, message: "invalid method" };
    else if (v !== "HTTP/1.1" && v !== "HTTP/1.0")
      expected = vm
        ? { status: 505, message: `HTTP/${vm[1]}.${vm[2]} is not supported` }
        : { status: 400, message: "invalid HTTP version" };
    else if (!ORIGIN_FORM.test(t)) expected = { status: 400, message: "invalid request target" };
    else if (!HOST_VALUE.test(host.trim())) expected = { status: 400, message: "invalid Host" };
    if (got?.message.startsWith("path climbs") || got?.message.startsWith("NUL")) continue;
    expect(got, JSON.stringify([method, target, version, host])).toEqual(expected);
    if (got !== null) continue;
    accepted++;
    // The path routed and sent on is normalizePath's, whether or not the parser's check of the
    // bytes let it skip normalizePath.
    expect(parseRequestHead(head, limits).path, target).toBe(normalizePath(t));
    if (normalizePath(t) === t) asIs++;
  }
  expect(accepted).toBeGreaterThan(100);
  expect(
    [asIs, accepted - asIs].every((n) => n > 20),
    `${asIs} paths already normal`,
  ).toBe(true);
});

test("list values become lower-cased tokens: the common spellings answered without splitting, every other value split, trimmed and lower-cased", () => {
  const byHand = (values: string[]) =>
    values.flatMap((v) => v.split(",")).flatMap((p) => (p.trim() ? [p.trim().toLowerCase()] : []));
  const cases = [
    [],
    ["keep-alive"],
    ["Keep-Alive"],
    ["close"],
    ["Close"],
    ["KEEP-ALIVE"],
    ["CLOSE"],
    [" keep-alive "],
    ["keep-alive, Upgrade"],
    ["Upgrade"],
    ["upgrade, close"],
    [""],
    [" , ,"],
    ["keep-alive", "close"],
    ["close", "Keep-Alive"],
    ["te,\tclose"],
  ];
  for (const values of cases) expect(listTokens(values), JSON.stringify(values)).toEqual(byHand(values));
  // The same through the parser: what a request's Connection says decides whether it keeps the connection.
  const keeps = (version: string, connection: string) =>
    parseRequestHead(Buffer.from(`GET / HTTP/${version}\r\nHost: a\r\nConnection: ${connection}\r\n\r\n`, "latin1"), limits)
      .keepAlive;
  expect([keeps("1.0", "keep-alive"), keeps("1.0", "Keep-Alive"), keeps("1.0", "close"), keeps("1.0", "Close")]).toEqual([
    true,
    true,
    false,
    false,
  ]);
  expect([keeps("1.1", "keep-alive"), keeps("1.1", "close"), keeps("1.1", "Close"), keeps("1.1", "TE, close")]).toEqual([
    true,
    false,
    false,
    false,
  ]);
});

test("Content-Length: one to fifteen digits, nothing else", () => {
  const request = (cl: string) =>
    failure(() => parseRequestHead(Buffer.from(`POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ${cl}\r\n\r\n`, "latin1"), limits));
  const response = (cl: string) =>
    failure(() => parseResponseHead(Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${cl}\r\n\r\n`, "latin1")));
  for (const ok of ["0", "7", "1024", "9".repeat(15), "0".repeat(15)]) {
    expect(request(ok), ok).toBeNull();
    expect(response(ok), ok).toBeNull();
  }
  expect(
    parseResponseHead(Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${"9".repeat(15)}\r\n\r\n`, "latin1")).contentLength,
  ).toBe(999_999_999_999_999);
  for (const bad of ["1".repeat(16), "+1", "-1", "1a", "a1", "0x10", "1.0", "1e3", "1,1", "١"]) {
    expect(request(bad), bad).toEqual({ status: 400, message: "invalid Content-Length" });
    expect(response(bad), bad).toEqual({ status: 502, message: "invalid Content-Length" });
  }
});
