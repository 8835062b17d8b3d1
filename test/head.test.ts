// The head parser's field checks: one pass over a head's field lines reads and checks them all
// (head.ts scanFields), and a head it refuses is checked field by field. Such heads still get the
// error that names what is wrong, and the pass accepts exactly what the checks of each field
// accept and reads the same fields from them (random heads, compared with those checks written
// out here).
import { expect, test } from "vitest";
import { HttpError } from "../proxy/http1/errors.js";
import { parseRequestHead, parseResponseHead } from "../proxy/http1/head.js";
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
