// A proxy listener accepts on several descriptors of its one listening socket (libuv accepts one
// connection per descriptor per turn of the event loop): every descriptor serves, and stopping
// the listener closes them all, so the port is free again.
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, expect, test } from "vitest";
import { Runtime } from "../proxy/control/runtime.js";
import { ACCEPTORS } from "../proxy/session/listening.js";
import { startDemoUpstream } from "../proxy/tools/demo-upstream.js";
import { listen } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

const dir = tempDir("listening");

/** This process's descriptors open on the listening socket of 127.0.0.1:`port`. */
function listeningFds(port: number): number {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  const inodes = readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[1] === `0100007F:${hex}` && f[3] === "0A")
    .map((f) => f[9]);
  let n = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      const target = readlinkSync(join("/proc/self/fd", fd));
      if (inodes.some((i) => target === `socket:[${i}]`)) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

const refused = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(false);
    });
    s.once("error", (err: NodeJS.ErrnoException) => resolve(err.code === "ECONNREFUSED"));
  });

let upstream: Awaited<ReturnType<typeof startDemoUpstream>>;
let tcpUpstream: net.Server;
beforeAll(async () => {
  upstream = await startDemoUpstream({ host: "127.0.0.1", port: 0 });
  tcpUpstream = net.createServer((s) => s.end("tcp ok"));
  await listen(tcpUpstream);
});
afterAll(async () => {
  await upstream.close();
  tcpUpstream.close();
});

test("an HTTP and a TCP listener each accept on ACCEPTORS descriptors of one socket; each connection of a burst is served; closing frees the port", async () => {
  expect(ACCEPTORS).toBeGreaterThan(1);
  const file = join(dir, "sluice.yaml");
  const tcpPort = (tcpUpstream.address() as net.AddressInfo).port;
  writeFileSync(
    file,
    `listeners:
  - name: web
    address: 127.0.0.1:0
    routes: [{ name: all, match: {}, forward: { cluster: app } }]
  - { name: raw, address: "127.0.0.1:0", protocol: tcp, cluster: rawapp }
clusters:
  app: { endpoints: ["${upstream.address.host}:${upstream.address.port}"] }
  rawapp: { endpoints: ["127.0.0.1:${tcpPort}"] }
`,
  );
  const runtime = new Runtime({ file });
  await runtime.start();
  const port = (name: string) => Number(runtime.addresses().get(name)?.split(":").pop());
  const [web, raw] = [port("web"), port("raw")];
  try {
    expect(listeningFds(web)).toBe(ACCEPTORS);
    expect(listeningFds(raw)).toBe(ACCEPTORS);
    // A burst of new connections: every one answered, whichever descriptor accepted it.
    const answers = await Promise.all(
      Array.from({ length: 64 }, async () => {
        const r = await request(`http://127.0.0.1:${web}/bytes/100`, { reset: true });
        return { status: r.statusCode, bytes: (await r.body.arrayBuffer()).byteLength };
      }),
    );
    expect(answers.every((a) => a.status === 200 && a.bytes === 100)).toBe(true);
    const tcp = await Promise.all(
      Array.from(
        { length: 32 },
        () =>
          new Promise<string>((resolve, reject) => {
            let got = "";
            const s = net.connect(raw, "127.0.0.1");
            s.on("data", (d) => {
              got += d;
            });
            s.on("end", () => resolve(got));
            s.on("error", reject);
          }),
      ),
    );
    expect(tcp.every((t) => t === "tcp ok")).toBe(true);
  } finally {
    await runtime.close();
  }
  // Every descriptor closed: nothing listens on either port any more.
  expect(listeningFds(web)).toBe(0);
  expect(listeningFds(raw)).toBe(0);
  expect(await refused(web)).toBe(true);
  expect(await refused(raw)).toBe(true);
});
