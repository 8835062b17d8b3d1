// What crosses the proxy in heads: hop-by-hop fields are dropped (RFC 9110 §7.6.1),
// forwarding fields are added, and heads are serialised back to bytes.
import type { Header, RequestHead, ResponseHead } from "./head.js";

/** Fields that describe one connection, never the message (plus Connection's own list). */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "proxy-authenticate",
  "proxy-authorization",
]);

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

function endToEnd(headers: Header[], connection: Set<string>): Header[] {
  return headers.filter(([n]) => {
    const l = n.toLowerCase();
    return !HOP_BY_HOP.has(l) && !connection.has(l);
  });
}

function appendList(headers: Header[], lname: string, name: string, value: string): void {
  const i = headers.findIndex(([n]) => n.toLowerCase() === lname);
  if (i === -1) headers.push([name, value]);
  else {
    const existing = headers[i] as Header;
    headers[i] = [existing[0], `${existing[1]}, ${value}`];
    // Later duplicates are folded into the first so the list stays one field.
    for (let j = headers.length - 1; j > i; j--) {
      const h = headers[j] as Header;
      if (h[0].toLowerCase() === lname) {
        headers[i] = [existing[0], `${(headers[i] as Header)[1]}, ${h[1]}`];
        headers.splice(j, 1);
      }
    }
  }
}

/** Sets a field in the place it had (order is part of the message), or appends it. */
function setField(headers: Header[], lname: string, name: string, value: string): void {
  const i = headers.findIndex(([n]) => n.toLowerCase() === lname);
  if (i === -1) {
    headers.push([name, value]);
    return;
  }
  headers[i] = [(headers[i] as Header)[0], value];
  for (let j = headers.length - 1; j > i; j--) if ((headers[j] as Header)[0].toLowerCase() === lname) headers.splice(j, 1);
}

export function upstreamRequestHeaders(req: RequestHead, clientAddress: string, opts: ForwardingOptions): Header[] {
  const out = endToEnd(req.headers, req.connection);
  if (opts.hostRewrite !== null || req.host !== null) setField(out, "host", "Host", opts.hostRewrite ?? (req.host as string));
  if (opts.xForwarded) {
    appendList(out, "x-forwarded-for", "X-Forwarded-For", clientAddress);
    setField(out, "x-forwarded-proto", "X-Forwarded-Proto", "http");
    if (req.host !== null) setField(out, "x-forwarded-host", "X-Forwarded-Host", req.host);
  }
  if (opts.via) appendList(out, "via", "Via", opts.via);
  if (req.framing.kind === "chunked") out.push(["Transfer-Encoding", "chunked"]);
  if (req.upgrade !== null) out.push(["Connection", "upgrade"], ["Upgrade", req.upgrade]);
  return out;
}

export function clientResponseHeaders(res: ResponseHead, opts: ForwardingOptions): Header[] {
  const out = endToEnd(res.headers, res.connection);
  if (opts.via) appendList(out, "via", "Via", opts.via);
  return out;
}

export function serializeRequestHead(method: string, path: string, headers: Header[]): string {
  let s = `${method} ${path} HTTP/1.1\r\n`;
  for (const [n, v] of headers) s += `${n}: ${v}\r\n`;
  return `${s}\r\n`;
}

export function serializeResponseHead(status: number, reason: string, headers: Header[]): string {
  let s = `HTTP/1.1 ${status} ${reason}\r\n`;
  for (const [n, v] of headers) s += `${n}: ${v}\r\n`;
  return `${s}\r\n`;
}
