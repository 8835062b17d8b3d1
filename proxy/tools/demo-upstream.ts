// A small HTTP server to proxy to when nothing else is running: `sluice demo`.
import { createHash } from "node:crypto";
import http from "node:http";
import type { HostPort } from "../base/address.js";
import { httpServerHooks, type Listening, startListening } from "../session/listening.js";

const BLOCK = Buffer.alloc(64 * 1024, "sluice demo body\n");

/** The sha256 of what GET /bytes/n answers: tests and benchmarks check bodies against it. */
export function demoBodySha256(n: number): string {
  const h = createHash("sha256");
  for (let left = n; left > 0; left -= BLOCK.length) h.update(BLOCK.subarray(0, Math.min(left, BLOCK.length)));
  return h.digest("hex");
}

function sendBytes(res: http.ServerResponse, n: number): void {
  res.writeHead(200, { "content-type": "application/octet-stream", "content-length": String(n) });
  let left = n;
  const more = () => {
    while (left > 0) {
      const chunk = BLOCK.subarray(0, Math.min(left, BLOCK.length));
      left -= chunk.length;
      if (!res.write(chunk)) return void res.once("drain", more);
    }
    res.end();
  };
  more();
}

export async function startDemoUpstream(at: HostPort): Promise<Listening> {
  const server = http.createServer((req, res) => {
    const bytes = /^\/bytes\/(\d{1,12})$/.exec(req.url ?? "");
    if (req.method === "GET" && bytes) return sendBytes(res, Number(bytes[1]));
    if (req.method === "POST" && req.url === "/echo") {
      res.writeHead(200, { "content-type": req.headers["content-type"] ?? "application/octet-stream" });
      req.pipe(res);
      return;
    }
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("sluice demo upstream\n  GET /bytes/N   N bytes\n  POST /echo     the request body back\n");
  });
  return startListening(server, at, httpServerHooks(server));
}
