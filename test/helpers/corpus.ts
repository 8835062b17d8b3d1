// A deterministic corpus of HTTP/1.1 request byte strings: valid seeds and mutations
// of them (flips, insertions, deletions, duplicated and reordered lines, odd framing).

/** Small seeded PRNG (mulberry32) so a failing case can be reproduced by its index. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const SEEDS: string[] = [
  "GET / HTTP/1.1\r\nHost: example.test\r\nUser-Agent: seed\r\n\r\n",
  "POST /upload?x=1 HTTP/1.1\r\nHost: example.test\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
  "POST /chunks HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
  "GET /a HTTP/1.1\r\nHost: example.test\r\n\r\nPOST /b HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\nabc",
  "GET /old HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n",
  "GET /h HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nX-Obs: caf\xe9\r\nX-Empty:\r\nX-Many: a, b, c\r\nCookie: a=1; b=2\r\n\r\n",
  "OPTIONS * HTTP/1.1\r\nHost: example.test\r\n\r\n",
  "GET http://example.test/abs?q HTTP/1.1\r\nHost: example.test\r\n\r\n",
  "PUT /c HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\n0\r\n\r\n",
  "DELETE /d HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n\r\n",
];

const SPECIAL = [
  "\r",
  "\n",
  "\r\n",
  " ",
  "\t",
  ":",
  ",",
  ";",
  "\0",
  "\x7f",
  "\x80",
  "\xff",
  "0",
  "-",
  "+",
  '"',
  "\\",
  "/",
  "%",
  "%00",
  "\r\n ",
  " \r\n",
];
const LINES = [
  "Transfer-Encoding: chunked",
  "Transfer-Encoding: gzip",
  "Transfer-Encoding: chunked, gzip",
  "Transfer-Encoding: gzip, chunked",
  "Transfer-Encoding : chunked",
  "Content-Length: 0",
  "Content-Length: 5",
  "Content-Length: 11",
  "Content-Length: 5, 5",
  "Content-Length: +5",
  "Content-Length: 05",
  "Content-Length: 99999999999999999999",
  "Host: other.test",
  "Connection: close",
  "Connection: upgrade",
  // Framing fields named as hop-by-hop: the smuggling and response-splitting cases.
  "Connection: keep-alive, content-length",
  "Connection: Content-Length",
  "Connection: transfer-encoding",
  "Connection: close, host",
  "Expect: 100-continue",
  " folded",
  "X-A: b",
  "X-A:\tb\t",
];
const CHUNK_SIZES = ["ffffffffffffffffff", "1 ", " 1", "1;", '1;a="b', "0x1", "-1", "01", "1\t", "1;a b", "FFFFFFFFFFFFFFF"];

export function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)] as T;
}

/** One to three random edits of `seed`. */
export function mutate(seed: string, r: () => number): string {
  let s = seed;
  const ops = 1 + Math.floor(r() * 3);
  for (let k = 0; k < ops; k++) {
    const pos = Math.floor(r() * (s.length + 1));
    const lines = s.split("\r\n");
    switch (Math.floor(r() * 10)) {
      case 0:
        s = s.slice(0, pos) + String.fromCharCode(Math.floor(r() * 256)) + s.slice(pos + 1);
        break;
      case 1:
        s = s.slice(0, pos) + pick(r, SPECIAL) + s.slice(pos);
        break;
      case 2:
        s = s.slice(0, pos) + s.slice(Math.min(s.length, pos + 1 + Math.floor(r() * 4)));
        break;
      case 3: {
        const i = 1 + Math.floor(r() * Math.max(1, lines.length - 2));
        lines.splice(i, 0, lines[i] ?? "");
        s = lines.join("\r\n");
        break;
      }
      case 4: {
        const i = 1 + Math.floor(r() * Math.max(1, lines.length - 2));
        const j = 1 + Math.floor(r() * Math.max(1, lines.length - 2));
        [lines[i], lines[j]] = [lines[j] ?? "", lines[i] ?? ""];
        s = lines.join("\r\n");
        break;
      }
      case 5:
        s = s.slice(0, pos);
        break;
      case 6: {
        const i = 1 + Math.floor(r() * Math.max(1, lines.length - 2));
        lines.splice(i, 0, pick(r, LINES));
        s = lines.join("\r\n");
        break;
      }
      case 7:
        s = s.replace(/(\r\n)([0-9a-fA-F]+)(\r\n)/, (_m, a, _b, c) => `${a}${pick(r, CHUNK_SIZES)}${c}`);
        break;
      case 8:
        s = s.replace(/Content-Length: \d+/i, `Content-Length: ${pick(r, ["4", "12", "0", "1", " 11", "11 ", "1_1", "11\t"])}`);
        break;
      default: {
        const i = Math.floor(r() * lines.length);
        const line = lines[i] ?? "";
        lines[i] = r() < 0.5 ? line.toUpperCase() : line.replace(":", pick(r, [" :", ":", "::", ": ", "\t:"]));
        s = lines.join("\r\n");
      }
    }
  }
  return s;
}

/** `count` cases: every seed as is, then mutations. Strings are byte strings (latin1). */
export function corpus(count: number, seed = 20261126): string[] {
  const r = prng(seed);
  const out = [...SEEDS];
  while (out.length < count) out.push(mutate(pick(r, SEEDS), r));
  return out;
}

/** Valid responses to mutate: Content-Length, chunked with trailers, close-delimited, bodiless. */
export const RESPONSE_SEEDS: string[] = [
  "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
  "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the connection closes",
  "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
  'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10\r\n\r\n',
  "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nnope",
  "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
  "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nSet-Cookie: a=b\r\nSet-Cookie: c=d\r\n\r\n",
];

/** `count` responses: every seed, then mutations. */
export function responseCorpus(count: number, seed = 20261127): string[] {
  const r = prng(seed);
  const out = [...RESPONSE_SEEDS];
  while (out.length < count) out.push(mutate(pick(r, RESPONSE_SEEDS), r));
  return out;
}
