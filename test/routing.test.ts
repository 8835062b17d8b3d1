// Routes, clusters and reloads through a Runtime built from real files, with Node
// upstreams and undici/curl clients.

import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { compileCluster, compileRoute } from "../proxy/config/compile.js";
import type { RouteFile } from "../proxy/config/types.js";
import { Runtime } from "../proxy/control/runtime.js";
import { RouteTable, routeOf } from "../proxy/routing/route-table.js";
import { httpConnector } from "../proxy/session/upstream-connector.js";
import { Cluster } from "../proxy/upstream/cluster.js";
import { prng } from "./helpers/corpus.js";
import { listen } from "./helpers/net.js";
import { curl } from "./helpers/proxy.js";
import { tempDir } from "./helpers/tmp.js";
import { startRecorder } from "./helpers/upstreams.js";

const dir = tempDir("routing");
let fileSeq = 0;

/** Writes a config atomically (as editors and ConfigMaps do) and returns its path. */
function writeConfig(text: string, path = join(dir, `sluice-${fileSeq++}.yaml`)): string {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
  return path;
}

async function named(name: string) {
  const server = http.createServer((req, res) => {
    res.setHeader("x-upstream", name);
    res.end(JSON.stringify({ name, url: req.url, host: req.headers.host, headers: req.headers }));
  });
  const port = await listen(server as unknown as net.Server);
  return { port, close: () => new Promise<void>((r) => server.close(() => r())), server };
}

describe("matchers (first match wins, in file order)", () => {
  const table = new RouteTable(
    [
      { name: "exact", match: { path: { exact: "/x" } }, respond: { status: 200 } },
      { name: "wild", match: { host: "*.example.com" }, respond: { status: 200 } },
      { name: "host", match: { host: ["a.test", "B.test"], path: { prefix: "/api/" } }, respond: { status: 200 } },
      { name: "regex", match: { path: { regex: "/v[0-9]+/items" }, method: ["GET", "HEAD"] }, respond: { status: 200 } },
      {
        name: "hdr",
        match: {
          headers: [
            { name: "x-canary", exact: "1" },
            { name: "x-debug", present: false },
          ],
        },
        respond: { status: 200 },
      },
      { name: "hdr-re", match: { headers: [{ name: "x-user", regex: "u[0-9]+" }] }, respond: { status: 200 } },
    ].map(compileRoute),
  );
  const m = (path: string, host: string | null = null, method = "GET", headers: Array<[string, string]> = []) =>
    table.match({ method, path, host, headers })?.name ?? null;

  test.each([
    ["/x", null, "GET", [], "exact"],
    ["/x?q=1", null, "GET", [], "exact"],
    ["/y", "img.example.com:8080", "GET", [], "wild"],
    ["/y", "example.com", "GET", [], null],
    ["/api/1", "b.TEST", "GET", [], "host"],
    ["/api", "a.test", "GET", [], null],
    ["/v2/items", null, "HEAD", [], "regex"],
    ["/v2/items", null, "POST", [], null],
    ["/v2/items/more", null, "GET", [], null],
    ["/", null, "GET", [["X-Canary", "1"]], "hdr"],
    [
      "/",
      null,
      "GET",
      [
        ["x-canary", "1"],
        ["x-debug", "1"],
      ],
      null,
    ],
    ["/", null, "GET", [["x-user", "u42"]], "hdr-re"],
    ["/", null, "GET", [["x-user", "u42x"]], null],
  ] as const)("%s host=%s %s %j → %s", (path, host, method, headers, want) => {
    expect(m(path, host, method, headers as unknown as Array<[string, string]>)).toBe(want);
  });
});

describe("actions and clusters through a running config", () => {
  let a: Awaited<ReturnType<typeof named>>;
  let b: Awaited<ReturnType<typeof named>>;
  let rec: Awaited<ReturnType<typeof startRecorder>>;
  let runtime: Runtime;
  let base = "";

  beforeAll(async () => {
    a = await named("a");
    b = await named("b");
    rec = await startRecorder();
    const file = writeConfig(`listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - match: { path: { exact: /healthz } }
        respond: { status: 200, body: "fine\\n" }
      - match: { path: { prefix: /old/ } }
        redirect: { status: 308, location: /new/ }
      - match: { path: { prefix: /api/ } }
        forward:
          cluster: recorder
          prefix_rewrite: /v2/
          host_rewrite: api.internal
          request_headers_add: { x-route: api }
          request_headers_remove: [cookie]
          response_headers_add: { x-served-by: sluice }
          response_headers_remove: [content-type]
      - match: { path: { prefix: /weighted } }
        forward: { cluster: weighted }
      - match: { path: { prefix: /least } }
        forward: { cluster: least }
      - match: { path: { prefix: /p2c } }
        forward: { cluster: p2c }
clusters:
  recorder: { endpoints: ["127.0.0.1:${rec.port}"] }
  weighted: { endpoints: [{ address: "127.0.0.1:${a.port}", weight: 3 }, { address: "127.0.0.1:${b.port}", weight: 1 }] }
  least: { endpoints: ["127.0.0.1:${a.port}", "127.0.0.1:${b.port}"], lb: least_request }
  p2c: { endpoints: ["127.0.0.1:${a.port}", "127.0.0.1:${b.port}"], lb: random_two }
`);
    runtime = new Runtime({ file });
    await runtime.start();
    base = `http://${runtime.addresses().get("main")}`;
  });

  afterAll(async () => {
    await runtime.close();
    await Promise.all([a.close(), b.close(), rec.close()]);
  });

  test("direct response, redirect and 404 for an unmatched request, on one keep-alive connection", async () => {
    const r = await curl([
      "-s",
      "-w",
      "|%{http_code}|%{redirect_url}|%{num_connects}\\n",
      `${base}/healthz`,
      `${base}/old/x`,
      `${base}/nothing`,
    ]);
    const lines = r.out.toString().split("\n");
    expect(lines[0]).toBe("fine");
    expect(lines[1]).toBe(`|200||1`);
    expect(lines[2]).toBe(`|308|${base}/new/|0`);
    expect(lines[3]).toBe("404 Not Found: no route");
    expect(lines[4]).toBe("|404||0");
  });

  test("forward: prefix and host rewrite, request and response headers added and removed", async () => {
    const res = await request(`${base}/api/items?q=1`, { headers: { cookie: "secret=1", "x-keep": "yes" } });
    expect(res.statusCode).toBe(200);
    expect(res.headers["x-served-by"]).toBe("sluice");
    expect(res.headers["content-type"]).toBeUndefined();
    await res.body.text();
    const seen = rec.requests.at(-1);
    expect(seen?.url).toBe("/v2/items?q=1");
    expect(seen?.headers.host).toBe("api.internal");
    expect(seen?.headers["x-route"]).toBe("api");
    expect(seen?.headers.cookie).toBeUndefined();
    expect(seen?.headers["x-keep"]).toBe("yes");
  });

  test("weighted round robin spreads 400 requests 3:1 exactly", async () => {
    const counts = { a: 0, b: 0 };
    for (let i = 0; i < 400; i++) {
      const res = await request(`${base}/weighted`);
      counts[res.headers["x-upstream"] as "a" | "b"]++;
      await res.body.text();
    }
    expect(counts).toEqual({ a: 300, b: 100 });
  });

  test("least_request and random_two use both endpoints, within tolerance", async () => {
    for (const path of ["/least", "/p2c"]) {
      const counts = { a: 0, b: 0 };
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          for (let i = 0; i < 50; i++) {
            const res = await request(`${base}${path}`);
            counts[res.headers["x-upstream"] as "a" | "b"]++;
            await res.body.text();
          }
        }),
      );
      expect(counts.a + counts.b).toBe(400);
      expect(Math.min(counts.a, counts.b), `${path}: ${JSON.stringify(counts)}`).toBeGreaterThan(100);
    }
  });
});

describe("cluster picking", () => {
  test("least_request prefers the endpoint with fewer requests in flight", () => {
    const pool = { maxConnections: 1, maxIdle: 0, idleTimeoutMs: 1000, connectTimeoutMs: 1000, queueTimeoutMs: 1000 };
    const spec = compileCluster("c", { endpoints: ["127.0.0.1:1", "127.0.0.1:2"], lb: "least_request" });
    const c = new Cluster({ ...spec, options: { ...spec.options, pool } }, { connector: httpConnector });
    const [e1, e2] = c.endpoints;
    if (!e1 || !e2) throw new Error("two endpoints expected");
    e1.active = 5;
    for (let i = 0; i < 10; i++) expect(c.pick()).toBe(e2);
    c.close();
  });
});

describe("hot reload", () => {
  test("new requests use the new file while a spliced download and a WebSocket started before finish untouched; a bad file is refused", async () => {
    const a = await named("a");
    const b = await named("b");
    // A 1 GiB body, paced so the reloads happen mid-transfer.
    const big = http.createServer((_req, res) => {
      const size = 1 << 30;
      res.writeHead(200, { "content-length": size });
      const block = Buffer.alloc(1 << 20, 7);
      let left = size;
      const more = () => {
        while (left > 0) {
          left -= block.length;
          if (!res.write(block)) return void res.once("drain", () => setTimeout(more, 2));
        }
        res.end();
      };
      more();
    });
    const bigPort = await listen(big as unknown as net.Server);
    const wsServer = http.createServer();
    const wss = new WebSocketServer({ server: wsServer });
    wss.on("connection", (ws) => ws.on("message", (m, binary) => ws.send(m, { binary })));
    const wsPort = await listen(wsServer as unknown as net.Server);
    const config = (target: number) => `listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - match: { path: { prefix: /big } }
        forward: { cluster: big }
      - match: { path: { prefix: /ws } }
        forward: { cluster: ws }
      - match: {}
        forward: { cluster: app }
clusters:
  app: { endpoints: ["127.0.0.1:${target}"] }
  big: { endpoints: ["127.0.0.1:${bigPort}"] }
  ws: { endpoints: ["127.0.0.1:${wsPort}"] }
`;
    const file = writeConfig(config(a.port));
    const runtime = new Runtime({ file });
    await runtime.start();
    runtime.watch();
    const base = `http://${runtime.addresses().get("main")}`;
    const who = async () => {
      const res = await request(`${base}/who`);
      await res.body.text();
      return res.headers["x-upstream"];
    };
    expect(await who()).toBe("a");

    const out = join(dir, "big.out");
    const download = curl(["-s", "-o", out, "--limit-rate", "300M", `${base}/big`]);
    let downloadDone = false;
    void download.then(() => {
      downloadDone = true;
    });
    const ws = new WebSocket(`ws://${runtime.addresses().get("main")}/ws`);
    await new Promise((r, j) => ws.once("open", r).once("error", j));
    await new Promise((r) => setTimeout(r, 300));

    // Reload by file change: new requests go to b.
    writeConfig(config(b.port), file);
    await vi.waitFor(async () => expect(await who()).toBe("b"), { timeout: 5000, interval: 100 });
    expect(downloadDone, "the download must still be running when the reload took effect").toBe(false);

    // A bad file is refused and the running config stays.
    writeFileSync(file, "listeners: [ { name: main, address: nowhere } ]\n");
    await vi.waitFor(() => expect(runtime.lastReload?.ok).toBe(false), { timeout: 5000, interval: 50 });
    expect(
      runtime.lastReload?.errors.some((e) =>
        /:1:\d+: listeners\[0\]\.address: must be host:port, with a port from 0 to 65535$/.test(e),
      ),
    ).toBe(true);
    expect(await who()).toBe("b");

    // The WebSocket opened before both reloads still echoes.
    const echoed = new Promise<string>((r) => ws.once("message", (m: Buffer) => r(m.toString())));
    ws.send("still here");
    expect(await echoed).toBe("still here");
    ws.close();

    const got = await download;
    expect(got.code).toBe(0);
    const body = readFileSync(out);
    expect(body.length).toBe(1 << 30);
    expect(createHash("sha256").update(body).digest("hex")).toBe(
      createHash("sha256")
        .update(Buffer.alloc(1 << 30, 7))
        .digest("hex"),
    );

    await runtime.close();
    await Promise.all([a.close(), b.close()]);
    big.close();
    wss.close();
    wsServer.close();
  });

  test("changing a listener's address opens the new one and lets the old one's connections finish", async () => {
    const a = await named("a");
    const conf = (port: number) => `listeners:
  - name: main
    address: 127.0.0.1:${port}
    routes: [{ match: {}, forward: { cluster: app } }]
clusters:
  app: { endpoints: ["127.0.0.1:${a.port}"] }
`;
    const { freePort } = await import("../bench/peers.js");
    const p1 = await freePort();
    const p2 = await freePort();
    const file = writeConfig(conf(p1));
    const runtime = new Runtime({ file });
    await runtime.start();
    // A keep-alive connection on the old address, opened before the change.
    const agent = new (await import("undici")).Agent({ connections: 1 });
    const first = await request(`http://127.0.0.1:${p1}/1`, { dispatcher: agent });
    await first.body.text();
    writeConfig(conf(p2), file);
    expect((await runtime.reload()).ok).toBe(true);
    const again = await request(`http://127.0.0.1:${p1}/2`, { dispatcher: agent });
    expect(again.statusCode).toBe(200);
    await again.body.text();
    const moved = await request(`http://127.0.0.1:${p2}/3`);
    expect(moved.statusCode).toBe(200);
    await moved.body.text();
    const refused = await curl(["-s", "-o", "/dev/null", "-w", "%{http_code}", `http://127.0.0.1:${p1}/4`]);
    expect(refused.code).toBe(7); // curl: couldn't connect
    await agent.close();
    await runtime.close();
    await a.close();
  });
});

describe("reload is all or nothing", () => {
  test("a reload that can't open one of its listeners changes nothing: the running one keeps serving, on its old engine", async () => {
    const { freePort } = await import("../bench/peers.js");
    const [p1, busyPort] = [await freePort(), await freePort()];
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(busyPort, "127.0.0.1", () => r()));
    const conf = (engine: string, body: string, extra = "") => `listeners:
  - name: main
    address: 127.0.0.1:${p1}
    engine: ${engine}
    routes: [{ match: {}, respond: { status: 200, body: "${body}" } }]
${extra}`;
    const say = async () => {
      const r = await request(`http://127.0.0.1:${p1}/`, { reset: true });
      return { body: await r.body.text(), server: r.headers.via === undefined ? "splice" : "buffered" };
    };
    const file = writeConfig(conf("splice", "one"));
    const runtime = new Runtime({ file });
    await runtime.start();
    expect((await say()).body).toBe("one");
    // The engine change needs a new socket on the same address; the second listener's port is taken.
    writeConfig(
      conf(
        "buffered",
        "two",
        `  - name: second\n    address: 127.0.0.1:${busyPort}\n    routes: [{ match: {}, respond: { status: 200 } }]\n`,
      ),
      file,
    );
    const refused = await runtime.reload();
    expect(refused.ok).toBe(false);
    expect(refused.errors.join(" ")).toMatch(/EADDRINUSE/);
    // Still listening on the first port, still the old config.
    for (let i = 0; i < 5; i++) expect((await say()).body).toBe("one");
    // Without the clash the same change goes through.
    writeConfig(conf("buffered", "two"), file);
    expect((await runtime.reload()).ok).toBe(true);
    expect((await say()).body).toBe("two");
    await runtime.close();
    busy.close();
  });
});

describe("reload under load", () => {
  test("10 reloads while 8 clients send requests: no request fails, every body is whole", async () => {
    const a = await named("a");
    const b = await named("b");
    const conf = (target: number) => `listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: {}, forward: { cluster: app } }]
clusters:
  app: { endpoints: ["127.0.0.1:${target}"] }
`;
    const file = writeConfig(conf(a.port));
    const runtime = new Runtime({ file });
    await runtime.start();
    const base = `http://${runtime.addresses().get("main")}`;
    let stop = false;
    const failures: string[] = [];
    const counts = { a: 0, b: 0 };
    const clients = Array.from({ length: 8 }, async (_, c) => {
      for (let i = 0; !stop && i < 5000; i++) {
        try {
          const res = await request(`${base}/c${c}/${i}`);
          const body = JSON.parse(await res.body.text()) as { name: "a" | "b"; url: string };
          if (res.statusCode !== 200 || body.url !== `/c${c}/${i}`) failures.push(`${res.statusCode} ${body.url}`);
          counts[body.name]++;
        } catch (err) {
          failures.push(String(err));
        }
      }
    });
    for (let r = 0; r < 10; r++) {
      await new Promise((res) => setTimeout(res, 100));
      writeConfig(conf(r % 2 === 0 ? b.port : a.port), file);
      expect((await runtime.reload()).ok).toBe(true);
    }
    stop = true;
    await Promise.all(clients);
    expect(failures).toEqual([]);
    expect(counts.a).toBeGreaterThan(0);
    expect(counts.b).toBeGreaterThan(0);
    await runtime.close();
    await Promise.all([a.close(), b.close()]);
  });
});

describe("per-route engine", () => {
  test("a route with engine: buffered hands its connection to http-proxy-3; bodies still arrive whole", async () => {
    const { spliceAddon } = await import("../proxy/transfer/native.js");
    const size = 4 << 20;
    const body = Buffer.alloc(size, 3);
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { "content-length": size });
      res.end(body);
    });
    const port = await listen(server as unknown as net.Server);
    const file = writeConfig(`listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - match: { path: { prefix: /buffered } }
        forward: { cluster: app, engine: buffered }
      - match: {}
        forward: { cluster: app }
clusters:
  app: { endpoints: ["127.0.0.1:${port}"] }
`);
    const runtime = new Runtime({ file });
    await runtime.start();
    const base = `http://${runtime.addresses().get("main")}`;
    const moved = () => spliceAddon()?.stats().bytesMoved ?? 0;
    const hash = createHash("sha256").update(body).digest("hex");

    const m0 = moved();
    const spliced = await curl(["-s", `${base}/spliced`]);
    expect(createHash("sha256").update(spliced.out).digest("hex")).toBe(hash);
    expect(moved() - m0).toBeGreaterThan(size - (256 << 10));

    const m1 = moved();
    const viaBuffered = await curl(["-s", "-D", "-", "-o", "/dev/null", `${base}/buffered/a`]);
    expect(moved() - m1).toBe(0);
    // node:http answers for the buffered engine: its Connection field on a kept connection
    // (the splice engine sends none there), in http-proxy-3's lower case.
    expect(viaBuffered.out.toString()).toMatch(/\r\nconnection: keep-alive\r\n/);
    const again = await curl(["-s", "-w", "|%{num_connects}", `${base}/buffered/b`, `${base}/after`]);
    expect(again.out.length).toBe(2 * size + 4);
    await runtime.close();
    server.close();
  });
});

describe("admin listener", () => {
  test("health, readiness, the redacted config and a failed reload are reported", async () => {
    const conf = (body: string) => `admin: { address: 127.0.0.1:0 }
telemetry: { tracing: { enabled: false, endpoint: "https://tenant:pw-s3cret@collector.example:4318" } }
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - match: { headers: [{ name: x-api-key, exact: k3y-s3cret }] }
        respond: { status: 204 }
      - match: {}
        forward: { cluster: app, request_headers_add: { authorization: "Bearer s3cret", x-unknown: s3cret-too, cache-control: no-store } }
      - match: { path: { exact: /x } }
        respond: { status: 200, body: "${body}" }
clusters:
  app: { endpoints: ["127.0.0.1:1"] }
`;
    const file = writeConfig(conf("one"));
    const runtime = new Runtime({ file });
    await runtime.start();
    const admin = `http://${runtime.adminAddress()}`;
    const getJson = async (path: string) => {
      const res = await request(`${admin}${path}`);
      return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
    };
    expect(await getJson("/healthz")).toEqual({ status: 200, body: { status: "ok" } });
    expect((await getJson("/readyz")).status).toBe(200);
    const cfg = await getJson("/config");
    const text = JSON.stringify(cfg.body);
    expect(text).not.toContain("s3cret");
    expect(text).toContain("[redacted]");
    // Only values known to be harmless are shown: an unknown header's value is a secret until said otherwise.
    expect(text).toContain("no-store");
    expect(text).toContain("collector.example:4318");

    writeFileSync(file, conf("two").replace("127.0.0.1:1", "nowhere"));
    expect((await runtime.reload()).ok).toBe(false);
    const reload = await getJson("/reload");
    expect(reload.status).toBe(500);
    expect(String((reload.body.errors as string[])[0])).toMatch(
      /:14:\d+: clusters\.app\.endpoints\[0\]: must be host:port, with a port from 0 to 65535$/,
    );
    // Still serving the previous config, and still ready.
    expect((await getJson("/readyz")).status).toBe(200);
    expect(JSON.stringify((await getJson("/config")).body)).toContain("(3 bytes)");
    await runtime.close();
  });

  test("a reload that changes settings read only at start (workers, telemetry) applies the rest and says which wait for a restart", async () => {
    const conf = (top: string, body: string) => `admin: { address: 127.0.0.1:0 }
${top}
listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: {}, respond: { status: 200, body: "${body}" } }]
`;
    const file = writeConfig(conf("", "one"));
    const runtime = new Runtime({ file });
    await runtime.start();
    const admin = `http://${runtime.adminAddress()}`;
    const base = `http://${runtime.addresses().get("main")}`;
    const pending = async () => {
      const text = await (await request(`${admin}/metrics`)).body.text();
      return Number(/^sluice_config_restart_pending (\d+)$/m.exec(text)?.[1]);
    };
    writeFileSync(file, conf("workers: 2\ntelemetry: { tracing: { enabled: false } }", "two"));
    const status = await runtime.reload();
    expect(status).toMatchObject({ ok: true, restartPending: ["workers", "telemetry"] });
    // The rest of the file is in force; /reload and the metric say what waits.
    expect(await (await request(`${base}/`)).body.text()).toBe("two");
    const r = await request(`${admin}/reload`);
    expect(r.statusCode).toBe(200);
    expect(await r.body.json()).toMatchObject({ ok: true, restartPending: ["workers", "telemetry"] });
    expect(await pending()).toBe(2);
    // Back to what it started with: nothing waits any more.
    writeFileSync(file, conf("", "three"));
    expect((await runtime.reload()).restartPending).toBeUndefined();
    expect(await pending()).toBe(0);
    await runtime.close();
  });
});

describe("SIGHUP", () => {
  test("re-reads the file", async () => {
    const conf = (body: string) => `listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: {}, respond: { status: 200, body: "${body}" } }]
`;
    const file = writeConfig(conf("before"));
    const runtime = new Runtime({ file });
    await runtime.start();
    const base = `http://${runtime.addresses().get("main")}`;
    const say = async () => (await (await request(`${base}/`)).body.text()) as string;
    expect(await say()).toBe("before");
    // Changed before anything watches the file: only the signal can make it count.
    writeConfig(conf("after"), file);
    await new Promise((r) => setTimeout(r, 200));
    expect(await say()).toBe("before");
    runtime.watch();
    process.kill(process.pid, "SIGHUP");
    await vi.waitFor(async () => expect(await say()).toBe("after"), { timeout: 3000, interval: 50 });
    await runtime.close();
  });
});

describe("a ConfigMap volume", () => {
  test("the kubelet's update (a new timestamped directory, then ..data swapped to it) is reloaded", async () => {
    // The layout Kubernetes' atomic writer makes: sluice.yaml -> ..data/sluice.yaml,
    // ..data -> ..<timestamp>/; an update writes a new directory and renames a new ..data link over the old.
    const vol = join(dir, `configmap-${fileSeq++}`);
    const conf = (body: string) => `listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: {}, respond: { status: 200, body: "${body}" } }]
`;
    const publish = (version: string, body: string) => {
      mkdirSync(join(vol, `..${version}`), { recursive: true });
      writeFileSync(join(vol, `..${version}`, "sluice.yaml"), conf(body));
      symlinkSync(`..${version}`, join(vol, "..data_tmp"));
      renameSync(join(vol, "..data_tmp"), join(vol, "..data"));
    };
    publish("2026_11_26_10_00_00.1", "first");
    symlinkSync("..data/sluice.yaml", join(vol, "sluice.yaml"));
    const runtime = new Runtime({ file: join(vol, "sluice.yaml") });
    await runtime.start();
    runtime.watch();
    const base = `http://${runtime.addresses().get("main")}`;
    const say = async () => (await (await request(`${base}/`)).body.text()) as string;
    expect(await say()).toBe("first");
    publish("2026_11_26_10_01_00.2", "second");
    rmSync(join(vol, "..2026_11_26_10_00_00.1"), { recursive: true });
    await vi.waitFor(async () => expect(await say()).toBe("second"), { timeout: 3000, interval: 50 });
    expect(runtime.lastReload?.ok).toBe(true);
    await runtime.close();
  });
});

describe("path normalisation before routing", () => {
  test("a blocked prefix can't be reached through dot segments, escapes or doubled slashes", async () => {
    const rec = await startRecorder();
    const file = writeConfig(`listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - match: { path: { prefix: /admin } }
        respond: { status: 403, body: "no" }
      - match: {}
        forward: { cluster: app }
clusters:
  app: { endpoints: ["127.0.0.1:${rec.port}"] }
`);
    const runtime = new Runtime({ file });
    await runtime.start();
    const { rawExchange } = await import("./helpers/upstreams.js");
    const port = Number(runtime.addresses().get("main")?.split(":")[1]);
    for (const target of ["/admin", "/%61dmin", "/x/../admin", "/./admin/", "//admin", "/public/%2e%2e/admin"]) {
      const r = await rawExchange(port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      expect(r.text, target).toMatch(/^HTTP\/1\.1 403 /);
    }
    expect(rec.requests).toHaveLength(0);
    const above = await rawExchange(port, "GET /../etc HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(above.text).toMatch(/^HTTP\/1\.1 400 /);
    // What passes goes upstream in its normalised spelling.
    const ok = await rawExchange(port, "GET /a/./b/../%7euser HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    expect(ok.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(rec.requests.at(-1)?.url).toBe("/a/~user");
    await runtime.close();
    await rec.close();
  });
});

describe("the route index", () => {
  test("finds the same first match as a scan in file order, for 5000 random requests over 300 random routes", () => {
    const r = prng(42);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
    const hosts = ["a.test", "b.test", "x.a.test", "y.x.a.test", "A.Test", "c.test:8080", "other.example"];
    const paths = ["/", "/api", "/api/v1", "/api/v1/items", "/static/app.js", "/apix", "/api/v1?q=1", "/health"];
    const specs = Array.from({ length: 300 }, (_, i) => {
      const match: RouteFile["match"] = {};
      const h = r();
      if (h < 0.3) match.host = pick(["a.test", "b.test", "x.a.test", "A.TEST"]);
      else if (h < 0.45) match.host = pick(["*.a.test", "*.test", "*.x.a.test"]);
      else if (h < 0.55) match.host = [pick(["a.test", "*.a.test"]), pick(["b.test", "other.example"])];
      const p = r();
      if (p < 0.35) match.path = { exact: pick(["/", "/api", "/api/v1", "/health", "/static/app.js"]) };
      else if (p < 0.7) match.path = { prefix: pick(["/", "/api", "/api/", "/api/v1", "/static/", "/a"]) };
      else if (p < 0.8) match.path = { regex: pick(["/api/v[0-9]+.*", "/.*\\.js", "/h.*"]) };
      if (r() < 0.2) match.method = pick(["GET", ["GET", "HEAD"], "POST"]);
      if (r() < 0.1) match.headers = [{ name: "x-canary", exact: "1" }];
      return compileRoute({ name: `r${i}`, match, respond: { status: 200 } }, i);
    });
    const table = new RouteTable(specs);
    const scan = specs.map(routeOf);
    for (let i = 0; i < 5000; i++) {
      const req = {
        method: pick(["GET", "HEAD", "POST"]),
        path: pick(paths),
        host: r() < 0.1 ? null : pick(hosts),
        headers: r() < 0.3 ? ([["X-Canary", "1"]] as Array<[string, string]>) : [],
      };
      const want = scan.find((route) => route.matches(req))?.name ?? null;
      expect(table.match(req)?.name ?? null, JSON.stringify(req)).toBe(want);
    }
  });
});
