// Retries, passive outlier ejection and active health checks with real upstreams.
import { writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import { request } from "undici";
import { expect, test, vi } from "vitest";
import { freePort } from "../bench/peers.js";
import { Runtime } from "../proxy/control/runtime.js";
import { metricValue } from "./helpers/metrics.js";
import { listen } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

const dir = tempDir("resilience");
let n = 0;

/** One listener routing everything to cluster `c` with `endpoints` and extra cluster settings. */
function oneCluster(ports: number[], extra: string): string {
  return `listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: {}, forward: { cluster: c } }]
clusters:
  c:
    endpoints: [${ports.map((p) => `"127.0.0.1:${p}"`).join(", ")}]
    ${extra}
`;
}

async function runtimeWith(yaml: string): Promise<{ runtime: Runtime; base: string }> {
  const file = join(dir, `c${n++}.yaml`);
  writeFileSync(file, yaml);
  const runtime = new Runtime({ file });
  await runtime.start();
  return { runtime, base: `http://${runtime.addresses().get("main")}` };
}

/** An HTTP upstream that answers with its name; `status` and `healthy` can be changed. */
async function upstream(name: string) {
  const state = { status: 200, healthy: true, seen: 0 };
  const server = http.createServer((req, res) => {
    if (req.url === "/healthz") {
      res.statusCode = state.healthy ? 200 : 500;
      return res.end();
    }
    state.seen++;
    res.statusCode = state.status;
    res.setHeader("x-upstream", name);
    res.end(name);
  });
  const port = await listen(server as unknown as net.Server);
  return { port, state, close: () => new Promise<void>((r) => server.close(() => r())), server };
}

/** Reads a request head, then resets the connection; counts what it saw by method. */
async function resetter() {
  const seen: string[] = [];
  const server = net.createServer((s) => {
    s.once("data", (d: Buffer) => {
      seen.push(d.toString("latin1").split(" ")[0] as string);
      s.resetAndDestroy();
    });
  });
  const port = await listen(server);
  return { port, seen, close: () => new Promise<void>((r) => server.close(() => r())) };
}

async function get(url: string, method = "GET") {
  const res = await request(url, { method });
  const body = await res.body.text();
  return { status: res.statusCode, body };
}

test("a reset is retried on another endpoint for GET, never for POST", async () => {
  const bad = await resetter();
  const good = await upstream("good");
  const { runtime, base } = await runtimeWith(`listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: {}, forward: { cluster: c, retry: { attempts: 1, on: [reset] } } }]
clusters:
  c:
    endpoints: ["127.0.0.1:${bad.port}", "127.0.0.1:${good.port}"]
    outlier_detection: { consecutive_failures: 1000 }
`);
  const [resets0, retries0] = [
    await metricValue(runtime.sinks.metrics, "sluice_upstream_failures_total", { cluster: "c", kind: "reset" }),
    await metricValue(runtime.sinks.metrics, "sluice_upstream_retries_total", { cluster: "c" }),
  ];
  for (let i = 0; i < 6; i++) expect(await get(`${base}/g${i}`)).toEqual({ status: 200, body: "good" });
  const posts = [];
  for (let i = 0; i < 4; i++) posts.push((await get(`${base}/p${i}`, "POST")).status);
  // Round robin sends every other POST to the resetting endpoint; those are not retried.
  expect(posts.filter((s) => s === 502)).toHaveLength(bad.seen.filter((m) => m === "POST").length);
  expect(posts.filter((s) => s === 502).length).toBeGreaterThan(0);
  expect(bad.seen.filter((m) => m === "GET").length).toBeGreaterThan(0);
  // Every reset is counted, and every GET that met one was sent again.
  expect(
    (await metricValue(runtime.sinks.metrics, "sluice_upstream_failures_total", { cluster: "c", kind: "reset" })) - resets0,
  ).toBe(bad.seen.length);
  expect((await metricValue(runtime.sinks.metrics, "sluice_upstream_retries_total", { cluster: "c" })) - retries0).toBe(
    bad.seen.filter((m) => m === "GET").length,
  );
  await runtime.close();
  await Promise.all([bad.close(), good.close()]);
});

test("connect failures are retried for any method; listed statuses only for idempotent requests", async () => {
  const good = await upstream("good");
  const busy = await upstream("busy");
  busy.state.status = 503;
  // A port just freed: nothing listens there, connects are refused.
  const dead = await freePort();
  const { runtime, base } = await runtimeWith(`listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - match: { path: { prefix: /dead } }
        forward: { cluster: dead, retry: { attempts: 2, on: [connect-failure] } }
      - match: {}
        forward: { cluster: busy, retry: { attempts: 1, on: [503] } }
clusters:
  dead:
    endpoints: ["127.0.0.1:${dead}", "127.0.0.1:${good.port}"]
    outlier_detection: { consecutive_failures: 1000 }
  busy:
    endpoints: ["127.0.0.1:${busy.port}", "127.0.0.1:${good.port}"]
    outlier_detection: { consecutive_failures: 1000 }
`);
  for (let i = 0; i < 4; i++) {
    expect(await get(`${base}/dead/${i}`)).toEqual({ status: 200, body: "good" });
    expect((await get(`${base}/dead/${i}`, "POST")).status).toBe(200);
  }
  for (let i = 0; i < 4; i++) expect(await get(`${base}/g${i}`)).toEqual({ status: 200, body: "good" });
  const posts = [];
  for (let i = 0; i < 4; i++) posts.push((await get(`${base}/p${i}`, "POST")).status);
  expect(posts.sort()).toEqual([200, 200, 503, 503]);
  await runtime.close();
  await Promise.all([good.close(), busy.close()]);
});

test("an endpoint killed mid-test is ejected and traffic continues on the others", async () => {
  const a = await upstream("a");
  const b = await upstream("b");
  const { runtime, base } = await runtimeWith(
    oneCluster([a.port, b.port], "outlier_detection: { consecutive_failures: 2, base_ejection: 30s }\n    pool: { max_idle: 0 }"),
  );
  for (let i = 0; i < 10; i++) expect((await get(`${base}/${i}`)).status).toBe(200);
  b.server.closeAllConnections();
  await b.close();
  const statuses: number[] = [];
  for (let i = 0; i < 30; i++) statuses.push((await get(`${base}/after${i}`)).status);
  // Two failures eject it; everything after goes to a.
  expect(statuses.filter((s) => s === 502).length).toBeLessThanOrEqual(2);
  expect(statuses.slice(-25).every((s) => s === 200)).toBe(true);
  await runtime.close();
  await a.close();
});

test("active health checks take an unhealthy endpoint out of rotation and bring it back", async () => {
  const a = await upstream("a");
  const b = await upstream("b");
  const { runtime, base } = await runtimeWith(
    oneCluster(
      [a.port, b.port],
      "health_check: { path: /healthz, interval: 50ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }",
    ),
  );
  const spread = async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 10; i++) seen.add((await get(`${base}/`)).body);
    return [...seen].sort();
  };
  expect(await spread()).toEqual(["a", "b"]);
  b.state.healthy = false;
  await vi.waitFor(async () => expect(await spread()).toEqual(["a"]), { timeout: 3000, interval: 100 });
  b.state.healthy = true;
  await vi.waitFor(async () => expect(await spread()).toEqual(["a", "b"]), { timeout: 3000, interval: 100 });
  await runtime.close();
  await Promise.all([a.close(), b.close()]);
});

test("endpoints named by DNS follow the name's addresses as they change", async () => {
  const { startDnsServer } = await import("./helpers/dns-server.js");
  // Two upstreams on the same port, on two loopback addresses.
  const probe = net.createServer();
  const port = await listen(probe);
  await new Promise((r) => probe.close(r));
  const servers = await Promise.all(
    ["127.0.0.2", "127.0.0.3"].map(
      (host) =>
        new Promise<http.Server>((resolve) => {
          const s = http.createServer((_req, res) => res.end(host));
          s.listen(port, host, () => resolve(s));
        }),
    ),
  );
  const dns = await startDnsServer(["127.0.0.2"]);
  const { runtime, base } = await runtimeWith(`listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: {}, forward: { cluster: svc } }]
clusters:
  svc:
    endpoints: ["app.svc.cluster.test:${port}"]
    dns: { refresh: 100ms, servers: ["127.0.0.1:${dns.port}"] }
`);
  const seen = async () => {
    const s = new Set<string>();
    for (let i = 0; i < 6; i++) s.add((await get(`${base}/`)).body);
    return [...s].sort();
  };
  expect(await seen()).toEqual(["127.0.0.2"]);
  dns.set(["127.0.0.2", "127.0.0.3"]);
  await vi.waitFor(async () => expect(await seen()).toEqual(["127.0.0.2", "127.0.0.3"]), { timeout: 3000, interval: 100 });
  dns.set(["127.0.0.3"]);
  await vi.waitFor(async () => expect(await seen()).toEqual(["127.0.0.3"]), { timeout: 3000, interval: 100 });
  await runtime.close();
  dns.close();
  for (const s of servers) s.close();
});
