// Client connections are lent 64 KiB reads while their bytes stream in (a chunked upload), and a
// connection that stops sending keeps the buffer armed for its next read: clients can be many and
// stop on purpose, so how many hold one at once is bounded (read-buffers.ts, 256), and a closed
// one gives its buffer back. Clients (and an upstream that reads and never answers) in a child
// process of their own, so that this process's descriptors stay few.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { afterAll, expect, test } from "vitest";
import { responseBuffers } from "../proxy/transfer/read-buffers.js";
import { proxyTo } from "./helpers/proxy.js";

const CLIENTS = 300;
const BOUND = 256;

// Prints the upstream's port, reads the proxy's from stdin, then opens CLIENTS connections that
// each send a chunked POST's head and a 48 KiB chunk in one write, and never the rest.
const CHILD = `
const net = require("node:net");
const up = net.createServer((s) => { s.on("data", () => {}); s.on("error", () => {}); });
up.listen(0, "127.0.0.1", () => process.stdout.write(up.address().port + "\\n"));
process.stdin.once("data", (d) => {
  const port = Number(String(d).trim());
  const chunk = Buffer.alloc(48 * 1024, 120);
  const head = "POST /u HTTP/1.1\\r\\nHost: x\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n" + chunk.length.toString(16) + "\\r\\n";
  let open = 0;
  for (let i = 0; i < ${CLIENTS}; i++) {
    const c = net.connect(port, "127.0.0.1", () => {
      c.write(Buffer.concat([Buffer.from(head, "latin1"), chunk]));
      if (++open === ${CLIENTS}) process.stdout.write("sent\\n");
    });
    c.on("error", () => {});
  }
});
`;

let child: ChildProcess | null = null;
afterAll(() => {
  child?.kill("SIGKILL");
});

async function until(what: () => boolean, ms: number): Promise<boolean> {
  for (const end = performance.now() + ms; performance.now() < end; await new Promise((r) => setTimeout(r, 20)))
    if (what()) return true;
  return what();
}

test(`${CLIENTS} clients that stop mid-upload hold at most ${BOUND} armed reads, and give them back when they close`, async () => {
  const c = spawn(process.execPath, ["-e", CHILD], { stdio: ["pipe", "pipe", "inherit"] });
  child = c;
  const lines: string[] = [];
  let partial = "";
  c.stdout?.setEncoding("latin1").on("data", (d: string) => {
    partial += d;
    const parts = partial.split("\n");
    partial = parts.pop() as string;
    lines.push(...parts);
  });
  expect(await until(() => lines.length >= 1, 10_000)).toBe(true);
  const p = await proxyTo({ host: "127.0.0.1", port: Number(lines[0]) });
  try {
    const before = responseBuffers().clientsArmed;
    c.stdin?.write(`${p.port}\n`);
    expect(await until(() => lines.includes("sent"), 20_000)).toBe(true);
    // Each connection's reads fill the shared 16 KiB buffer, so each asks for a 64 KiB one for
    // its next read: the bound is reached, and held while they wait.
    expect(await until(() => responseBuffers().clientsArmed - before >= BOUND, 20_000)).toBe(true);
    await new Promise((r) => setTimeout(r, 200));
    expect(responseBuffers().clientsArmed).toBe(BOUND);
    // Closed, each connection's armed buffer comes back.
    c.kill("SIGKILL");
    await once(c, "exit");
    expect(await until(() => responseBuffers().clientsArmed === before, 20_000)).toBe(true);
  } finally {
    await p.close();
  }
}, 60_000);
