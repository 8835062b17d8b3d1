// Real upstreams for HTTP tests: nginx from Debian's packages, and Node servers that
// record what they receive or misbehave on purpose.
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, mkdirSync, mkdtempSync, openSync, writeFileSync, writeSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { listen } from "./net.js";

export interface Nginx {
  port: number;
  root: string;
  stop(): Promise<void>;
}

/** nginx serving `root` on an ephemeral port, with /limited accepting at most 1 MiB bodies. */
export async function startNginx(): Promise<Nginx> {
  const dir = mkdtempSync(join(tmpdir(), "sluice-nginx-"));
  const root = join(dir, "www");
  mkdirSync(root);
  const probe = net.createServer();
  const port = await listen(probe);
  await new Promise((r) => probe.close(r));
  const temp = (n: string) => `${n}_temp_path ${join(dir, n)};`;
  const user = process.getuid?.() === 0 ? "user root;" : "";
  writeFileSync(
    join(dir, "nginx.conf"),
    `${user}
worker_processes 1;
daemon off;
pid ${join(dir, "nginx.pid")};
error_log ${join(dir, "error.log")} warn;
events { worker_connections 1024; }
http {
  access_log off;
  ${temp("client_body")} ${temp("proxy")} ${temp("fastcgi")} ${temp("uwsgi")} ${temp("scgi")}
  sendfile on;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:${port};
    root ${root};
    location /limited { client_max_body_size 1m; }
    location /nocontent { return 204; }
  }
}
`,
  );
  const proc: ChildProcess = spawn("nginx", ["-p", dir, "-c", join(dir, "nginx.conf")], { stdio: "ignore" });
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (up) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    root,
    stop: () =>
      new Promise((resolve) => {
        proc.once("exit", () => resolve());
        proc.kill("SIGQUIT");
      }),
  };
}

/** Writes a file of `size` bytes whose 1 MiB blocks differ; returns its sha256. */
export function writeTestFile(path: string, size: number): string {
  const block = Buffer.alloc(1 << 20);
  for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((i * 2654435761) >>> 0, i);
  const hash = createHash("sha256");
  const fd = openSync(path, "w");
  let left = size;
  let n = 0;
  while (left > 0) {
    block.writeUInt32LE(n++, 0);
    const piece = block.subarray(0, Math.min(left, block.length));
    writeSync(fd, piece);
    hash.update(piece);
    left -= piece.length;
  }
  closeSync(fd);
  return hash.digest("hex");
}

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
