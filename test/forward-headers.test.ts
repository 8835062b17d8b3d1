// The response head the client gets and the request head the upstream gets
// (http1/forward-headers.ts): fields passed on unchanged are copied from the head they came in
// as they came (runs of adjacent lines), the others written by the proxy. Over random heads (fields kept, hop-by-hop fields between them, Via, fields with
// blanks around their values), the head read back has exactly the fields of the head written
// field by field, and every kept line is there byte for byte.
import { expect, test } from "vitest";
import {
  clientResponseHeaders,
  plainRequestHead,
  plainResponseHead,
  serializeRequestHead,
  serializeResponseHead,
  upstreamRequestHeaders,
} from "../proxy/http1/forward-headers.js";
import { type Header, parseRequestHead, parseResponseHead } from "../proxy/http1/head.js";
import { prng } from "./helpers/corpus.js";

const forwarding = { xForwarded: true, via: "1.1 sluice", hostRewrite: null, requestId: true };

test("a response head passes kept field lines as they came, and reads back as the head written field by field", () => {
  const r = prng(11);
  let withVia = 0;
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)] as T;
  const kept = [
    "Server: nginx",
    "Date:   Wed, 02 Dec 2026 23:00:00 GMT  ",
    'ETag: "abc"',
    "X-A:\tb c\t",
    "x-empty:",
    "Cache-Control: no-cache",
  ];
  // x-hop is named in Connection: dropped in any case of its name.
  const dropped = ["Connection: keep-alive, x-hop", "Keep-Alive: timeout=5", "x-hop: 1", "X-Hop: 2", "Proxy-Connection: close"];
  for (let n = 0; n < 500; n++) {
    const lines: string[] = [];
    for (let k = Math.floor(r() * 8); k > 0; k--) lines.push(pick([...kept, ...kept, ...dropped, "Via: 1.0 other"]));
    lines.push("Content-Length: 0");
    // Status lines the proxy passes on as they came, and others (HTTP/1.0, no space before an empty reason).
    const statusLine = pick(["HTTP/1.1 200 OK", "HTTP/1.1 204 No Content", "HTTP/1.1 200 ", "HTTP/1.1 200", "HTTP/1.0 200 OK"]);
    const head = Buffer.from(`${statusLine}\r\n${lines.map((l) => `${l}\r\n`).join("")}\r\n`, "latin1");
    const res = parseResponseHead(head);
    // As the exchange does: the proxy's fields for the client, a route's edits (one removed, one added).
    const out: Header[] = clientResponseHeaders(res, forwarding).filter(([name]) => name !== "ETag");
    out.push(["x-served-by", "sluice"]);
    const fast = serializeResponseHead(res.status, res.reason, out, res);
    const plain = serializeResponseHead(res.status, res.reason, out);
    expect(parseResponseHead(Buffer.from(fast, "latin1")).headers, fast).toEqual(
      parseResponseHead(Buffer.from(plain, "latin1")).headers,
    );
    // Every kept field's own line, blanks and all.
    for (let i = 0; i < res.headers.length; i++) {
      if (!out.includes(res.headers[i] as Header)) continue;
      const end = i + 1 < res.lines.length ? res.lines[i + 1] : res.text.length - 2;
      expect(fast).toContain(res.text.slice(res.lines[i], end));
    }
    // Without a route's edits the exchange writes the head without the list of fields: the same
    // bytes as the list serialised, with the proxy's fields after it, or null when a Via came.
    for (const opts of [forwarding, { ...forwarding, via: null }]) {
      const own: Header[] =
        r() < 0.5
          ? [["Connection", "close"]]
          : [
              ["Transfer-Encoding", "chunked"],
              ["Connection", "keep-alive"],
            ];
      const direct = plainResponseHead(res, opts, own);
      const viaCame = res.headers.some(([name]) => name.toLowerCase() === "via");
      expect(direct === null, head.toString("latin1")).toBe(viaCame && opts.via !== null);
      if (direct !== null)
        expect(direct).toBe(serializeResponseHead(res.status, res.reason, [...clientResponseHeaders(res, opts), ...own], res));
      else withVia++;
    }
  }
  // Both kinds of head were met.
  expect(withVia).toBeGreaterThan(50);
});

const limits = { maxHeadBytes: 65536, maxUriBytes: 8192, maxHeaders: 100 };

test("a request head passes the client's kept field lines as they came, and reads back as the head written field by field", () => {
  const r = prng(12);
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)] as T;
  const kept = [
    "User-Agent: curl/7.88.1",
    "Accept:   */*  ",
    "Accept-Encoding: gzip, br",
    "X-A:\tb c\t",
    "x-empty:",
    "Cookie: a=1; b=2",
  ];
  // Hop-by-hop, and fields the proxy sets or appends to (Host is set in its place, X-Forwarded-For appended to).
  const rewritten = [
    "Connection: keep-alive, x-hop",
    "x-hop: 1",
    "TE: trailers",
    "X-Forwarded-For: 10.0.0.1",
    "X-Forwarded-Proto: https",
  ];
  for (let n = 0; n < 500; n++) {
    const lines: string[] = [];
    for (let k = Math.floor(r() * 8); k > 0; k--) lines.push(pick([...kept, ...kept, ...rewritten]));
    lines.splice(Math.floor(r() * (lines.length + 1)), 0, "Host: example.test");
    const head = Buffer.from(`GET /a?b=1 HTTP/1.1\r\n${lines.map((l) => `${l}\r\n`).join("")}\r\n`, "latin1");
    const req = parseRequestHead(head, limits);
    // As the exchange does: the proxy's fields, a route's edit (one removed), the request id.
    const out: Header[] = upstreamRequestHeaders(req, "127.0.0.1", "http", forwarding).filter(([name]) => name !== "Cookie");
    out.push(["X-Request-Id", "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"]);
    const fast = serializeRequestHead(req.method, req.path, out, req);
    const plain = serializeRequestHead(req.method, req.path, out);
    expect(parseRequestHead(Buffer.from(fast, "latin1"), limits).headers, fast).toEqual(
      parseRequestHead(Buffer.from(plain, "latin1"), limits).headers,
    );
    for (let i = 0; i < req.headers.length; i++) {
      if (!out.includes(req.headers[i] as Header)) continue;
      const end = i + 1 < req.lines.length ? req.lines[i + 1] : req.text.length - 2;
      expect(fast).toContain(req.text.slice(req.lines[i], end));
    }
  }
});

test("a request head written without the list of fields is the list's head, byte for byte, or null when the client sent forwarding fields", () => {
  const r = prng(13);
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)] as T;
  const lines = [
    "User-Agent: curl/7.88.1",
    "Accept:   */*  ",
    "X-A:\tb c\t",
    "x-empty:",
    "Connection: keep-alive, x-hop",
    "x-hop: 1",
    "TE: trailers",
    "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate: a=1",
    "Transfer-Encoding: chunked",
    "Connection: upgrade",
    "Upgrade: websocket",
    "X-Forwarded-For: 10.0.0.1",
    "X-Forwarded-Proto: https",
    "x-forwarded-host: a.test",
    "Via: 1.0 other",
  ];
  let written = 0;
  let declined = 0;
  for (let n = 0; n < 1000; n++) {
    const picked: string[] = [];
    for (let k = Math.floor(r() * 7); k > 0; k--) picked.push(pick(lines));
    // Host lines passed on as they came (one space, nothing after the value) and others.
    picked.splice(
      Math.floor(r() * (picked.length + 1)),
      0,
      pick(["Host: example.test", "host:  Example.Test ", "Host:\texample.test", "HOST: example.test", "Host: example.test "]),
    );
    // Empty lines before the request line are not passed on; an HTTP/1.0 request line is not either.
    const before = r() < 0.2 ? "\r\n\r\n" : "";
    const version = r() < 0.2 ? "HTTP/1.0" : "HTTP/1.1";
    // Absolute form: the host is the target's, whatever the Host field says.
    const target = pick(["/a?b=1", "/a?b=1", "/a?b=1", "http://example.test/a?b=1", "http://other.test/a?b=1"]);
    const head = Buffer.from(`${before}POST ${target} ${version}\r\n${picked.map((l) => `${l}\r\n`).join("")}\r\n`, "latin1");
    let req: ReturnType<typeof parseRequestHead>;
    try {
      req = parseRequestHead(head, limits);
    } catch {
      continue;
    }
    const opts = {
      xForwarded: r() < 0.7,
      via: r() < 0.7 ? "1.1 sluice" : null,
      // A rewritten host as long as the one sent, too: only its value tells the lines apart.
      hostRewrite: r() < 0.3 ? pick(["up.test", "elpmaxe.test"]) : null,
      requestId: true,
    };
    const ownTrace = r() < 0.5;
    const extra: Header[] = ownTrace ? [["traceparent", "00-1-2-01"]] : [];
    if (r() < 0.5) extra.push(["X-Request-Id", "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"]);
    const scheme = r() < 0.5 ? "http" : "https";
    // The target unchanged (the request line may go as it came) or routed elsewhere; clients
    // from two addresses (the forwarding lines are remade when it changes).
    const path = r() < 0.5 ? req.target : "/routed";
    const address = r() < 0.5 ? "127.0.0.9" : "::1";
    const direct = plainRequestHead(req, path, address, scheme, opts, ownTrace, extra);
    const forwardingSent = req.headers.some(([name]) => /^(x-forwarded-(for|proto|host)|via)$/i.test(name));
    expect(direct === null, head.toString("latin1")).toBe(forwardingSent);
    if (direct === null) {
      declined++;
      continue;
    }
    written++;
    const listed = [...upstreamRequestHeaders(req, address, scheme, opts, ownTrace), ...extra];
    expect(direct, head.toString("latin1")).toBe(serializeRequestHead(req.method, path, listed, req));
  }
  // Both kinds of head were met, and enough of them.
  expect(written).toBeGreaterThan(200);
  expect(declined).toBeGreaterThan(200);
});
