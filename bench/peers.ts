// Peers shared by the benchmarks and the tests: nginx from Debian's packages on an
// ephemeral port, a Node upstream of chunked bodies, and test files whose blocks all differ.
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, waitForPort } from "../proxy/tools/ports.js";

export { freePort, waitForPort } from "../proxy/tools/ports.js";

export interface Nginx {
  port: number;
  pid: number;
  root: string;
  stop(): Promise<void>;
}

/** bench/chunked-upstream.ts in a process of its own, on an ephemeral port. */
export async function startChunkedUpstream(): Promise<{ port: number; pid: number; stop(): void }> {
  const port = await freePort();
  const script = new URL("./chunked-upstream.js", import.meta.url).pathname;
  const child = spawn(process.execPath, [script, String(port)], { stdio: "ignore" });
  await waitForPort(port);
  return { port, pid: child.pid as number, stop: () => void child.kill() };
}

/** nginx serving `root` on an ephemeral port, with /limited accepting at most 1 MiB bodies. */
export async function startNginx(): Promise<Nginx> {
  const dir = mkdtempSync(join(tmpdir(), "sluice-nginx-"));
  const root = join(dir, "www");
  mkdirSync(root);
  const port = await freePort();
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
  await waitForPort(port);
  return {
    pid: proc.pid as number,
    port,
    root,
    // Its directory goes with it: the files served from it can be GiB large.
    stop: () =>
      new Promise((resolve) => {
        proc.once("exit", () => {
          rmSync(dir, { recursive: true, force: true });
          resolve();
        });
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

/**
 * The global and defaults sections of HAProxy at its best as an anchor: splicing forced both
 * ways (`splice-auto` decides per transfer and often copies) with 1 MiB pipes, connections to
 * the upstream reused. `threads` 0 keeps HAProxy's default (one per CPU); `extra` adds global lines.
 */
export function haproxySplicing(threads: number, extra: string[] = []): string {
  return [
    "global",
    ...(threads > 0 ? [`  nbthread ${threads}`] : []),
    "  tune.pipesize 1048576",
    ...extra.map((l) => `  ${l}`),
    "defaults",
    "  mode http",
    "  timeout connect 5s",
    "  timeout client 60s",
    "  timeout server 60s",
    "  option splice-request",
    "  option splice-response",
    "  http-reuse always",
    "",
  ].join("\n");
}
