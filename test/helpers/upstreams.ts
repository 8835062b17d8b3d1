// Real upstreams for HTTP tests: nginx from Debian's packages, and Node servers that
// record what they receive or misbehave on purpose.
import { createHash } from "node:crypto";
import http from "node:http";
import net from "node:net";
import { listen } from "./net.js";

export { type Nginx, startNginx, writeTestFile } from "../../bench/peers.js";

export interface Recorded {
  method: string;
  url: string;
  httpVersion: string;
  rawHeaders: string[];
  headers: http.IncomingHttpHeaders;
  bodyHash: string;
  bodyBytes: number;
  trailers: string[];
}

/**
 * A Node upstream that records each request (headers, body hash) and answers with
 * JSON describing it. Special paths misbehave: /slow waits before answering.
 */
export async function startRecorder(): Promise<{
  port: number;
  requests: Recorded[];
  server: http.Server;
  close(): Promise<void>;
}> {
  const requests: Recorded[] = [];
  const server = http.createServer((req, res) => {
    const hash = createHash("sha256");
    let bytes = 0;
    req.on("data", (c: Buffer) => {
      hash.update(c);
      bytes += c.length;
    });
    req.on("end", () => {
      const rec: Recorded = {
        method: req.method ?? "",
        url: req.url ?? "",
        httpVersion: req.httpVersion,
        rawHeaders: req.rawHeaders,
        headers: req.headers,
        bodyHash: hash.digest("hex"),
        bodyBytes: bytes,
        trailers: req.rawTrailers,
      };
      requests.push(rec);
      const reply = () => {
        const body = JSON.stringify({ bodyHash: rec.bodyHash, bodyBytes: rec.bodyBytes, url: rec.url });
        res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
        res.end(body);
      };
      if (req.url === "/slow") setTimeout(reply, 1500);
      else reply();
    });
  });
  server.keepAliveTimeout = 30_000;
  const port = await listen(server as unknown as net.Server);
  return {
    port,
    requests,
    server,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** Sends raw bytes, returns everything the server sends until it closes (or `waitMs`). */
export function rawExchange(port: number, data: Buffer | string, waitMs = 2000): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const sock = net.connect(port, "127.0.0.1", () => sock.write(data));
    sock.on("data", (c: Buffer) => chunks.push(c));
    sock.on("error", () => undefined);
    const timer = setTimeout(() => {
      sock.destroy();
      resolve({ text: Buffer.concat(chunks).toString("latin1"), closed: false });
    }, waitMs);
    sock.on("close", () => {
      clearTimeout(timer);
      resolve({ text: Buffer.concat(chunks).toString("latin1"), closed: true });
    });
  });
}
