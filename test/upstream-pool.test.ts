// The upstream keep-alive pool against a real TCP upstream: reuse, idle timeout (fresh for
// each idle period), idle connections that the upstream breaks, the idle cap, and the
// upstream's own Keep-Alive timeout.

import http from "node:http";
import net from "node:net";
import { request } from "undici";
import { afterAll, beforeAll, expect, test } from "vitest";
import { parseResponseHead } from "../proxy/http1/head.js";
import { httpConnector } from "../proxy/session/upstream-connector.js";
import { UpstreamPool } from "../proxy/upstream/pool.js";
import { proxyTo } from "./helpers/proxy.js";

/** Upstream-side sockets, in accept order, each with the time it closed (or null). */
const accepted: Array<{ socket: net.Socket; closedAt: number | null }> = [];
let server: net.Server;
let port: number;

beforeAll(async () => {
  server = net.createServer((socket) => {
    const entry = { socket, closedAt: null as number | null };
    accepted.push(entry);
    socket.on("error", () => undefined);
    socket.on("close", () => {
      entry.closedAt = performance.now();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  port = (server.address() as net.AddressInfo).port;
});

afterAll(() => {
  for (const a of accepted) a.socket.destroy();
  server.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function pool(idleTimeoutMs: number, maxIdle = 8): UpstreamPool {
  return new UpstreamPool(
    { host: "127.0.0.1", port },
    { maxConnections: 8, maxIdle, idleTimeoutMs, connectTimeoutMs: 1000, queueTimeoutMs: 1000 },
    httpConnector,
  );
}

test("a released connection is reused, and closed after idling for the idle timeout; each idle period starts afresh", async () => {
  const p = pool(400);
  const first = accepted.length;
  const c1 = await p.acquire();
  expect(c1.reused).toBe(false);
  p.release(c1, true);
  await sleep(250);
  // Reused within the timeout: the same connection, and its idle clock restarts on release.
  const c2 = await p.acquire();
  expect(c2).toBe(c1);
  expect(c2.reused).toBe(true);
  await sleep(100);
  const releasedAt = performance.now();
  p.release(c2, true);
  await sleep(250);
  // 600 ms after the first release, but only 250 ms into this idle period: still open.
  expect(accepted.length).toBe(first + 1);
  expect(accepted[first]?.closedAt).toBeNull();
  expect(p.stats().idle).toBe(1);
  await sleep(400);
  const closedAt = accepted[first]?.closedAt;
  expect(closedAt).not.toBeNull();
  expect((closedAt as number) - releasedAt).toBeGreaterThanOrEqual(380);
  expect(p.stats()).toEqual({ open: 0, idle: 0, waiting: 0 });
  p.close();
});

test("an idle connection the upstream writes to or closes is dropped; the next request gets a new one", async () => {
  const p = pool(10_000);
  const first = accepted.length;
  const c1 = await p.acquire();
  p.release(c1, true);
  await sleep(50);
  // A stray byte from an idle upstream: the connection can't be trusted any more.
  accepted[first]?.socket.write("x");
  await sleep(100);
  expect(c1.socket.destroyed).toBe(true);
  expect(p.stats().idle).toBe(0);
  const c2 = await p.acquire();
  expect(c2).not.toBe(c1);
  expect(c2.reused).toBe(false);
  p.release(c2, true);
  await sleep(50);
  accepted[first + 1]?.socket.end();
  await sleep(100);
  expect(c2.socket.destroyed).toBe(true);
  expect(p.stats()).toEqual({ open: 0, idle: 0, waiting: 0 });
  p.close();
});

test("no more than max_idle connections stay open; a connection not reusable is closed at once", async () => {
  const p = pool(10_000, 2);
  const conns = await Promise.all([p.acquire(), p.acquire(), p.acquire()]);
  expect(p.stats().open).toBe(3);
  for (const c of conns) p.release(c, true);
  await sleep(50);
  expect(p.stats()).toMatchObject({ open: 2, idle: 2 });
  const c = await p.acquire();
  p.release(c, false);
  await sleep(50);
  expect(c.socket.destroyed).toBe(true);
  expect(p.stats()).toMatchObject({ open: 1, idle: 1 });
  p.close();
  await sleep(50);
  expect(p.stats()).toMatchObject({ open: 0, idle: 0 });
});

test("an upstream's Keep-Alive timeout shortens the idle time to a second less; a timeout of 1 s or less means no reuse", async () => {
  const p = pool(5000);
  const c1 = await p.acquire();
  const releasedAt = performance.now();
  p.release(c1, true, 1400); // the upstream keeps it 1.4 s: sluice closes it after 0.4 s
  await sleep(250);
  expect(c1.socket.destroyed).toBe(false);
  await sleep(300);
  expect(c1.socket.destroyed).toBe(true);
  expect(performance.now() - releasedAt).toBeLessThan(5000);

  const c2 = await p.acquire();
  expect(c2.reused).toBe(false);
  p.release(c2, true, 1000);
  expect(c2.socket.destroyed).toBe(true);

  // A shorter limit than the timer running from an earlier idle period takes effect.
  const c3 = await p.acquire();
  p.release(c3, true);
  await sleep(100);
  expect(await p.acquire()).toBe(c3);
  p.release(c3, true, 1300);
  await sleep(450);
  expect(c3.socket.destroyed).toBe(true);
  p.close();
});

test("behind sluice, a Node upstream's keep-alive timeout is honoured: its idle connection is closed by sluice first", async () => {
  const app = http.createServer((_req, res) => res.end("ok"));
  app.keepAliveTimeout = 3000; // Node announces Keep-Alive: timeout=3
  const closedBy: string[] = [];
  app.on("connection", (s: net.Socket) => {
    // Whoever closes first: sluice's FIN arrives as 'end' before Node's own timeout fires.
    s.once("end", () => closedBy.push("sluice"));
    s.once("timeout", () => closedBy.push("upstream"));
  });
  const appPort = await new Promise<number>((r) => app.listen(0, "127.0.0.1", () => r((app.address() as net.AddressInfo).port)));
  const proxy = await proxyTo({ host: "127.0.0.1", port: appPort });
  try {
    const first = await request(`${proxy.url}/a`);
    expect(await first.body.text()).toBe("ok");
    // Keep-Alive is hop-by-hop: sluice reads it and does not pass it on.
    expect(first.headers["keep-alive"]).toBeUndefined();
    await sleep(2500);
    expect(closedBy).toEqual(["sluice"]);
    const second = await request(`${proxy.url}/b`);
    expect(await second.body.text()).toBe("ok");
  } finally {
    await proxy.close();
    app.closeAllConnections();
    app.close();
  }
});

test.each([
  ["Keep-Alive: timeout=5, max=1000", 5000],
  ["keep-alive: max=100,timeout=7", 7000],
  ["KEEP-ALIVE: Timeout = 2", 2000],
  ["Keep-Alive: max=5", null],
  ["X-Keep-Alive: timeout=5", null],
])("the keep-alive timeout in %j is %j ms", (field, ms) => {
  const head = parseResponseHead(Buffer.from(`HTTP/1.1 200 OK\r\n${field}\r\ncontent-length: 0\r\n\r\n`, "latin1"));
  expect(head.keepAliveTimeoutMs).toBe(ms);
});
