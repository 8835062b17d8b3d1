// TLS on both legs, with real clients (curl, openssl s_client, undici) and certificates made
// by the openssl command line: termination with SNI, versions, ALPN and client certificates;
// certificates rotating during traffic; bad files refused with the old certificate kept;
// origination with verification (wrong name, expired, unknown CA: 502, outcome upstream_tls,
// never retried), mTLS and pooled reuse, through both engines. Bodies that cross a TLS leg are
// copied, and the metrics say so.
import { execFile } from "node:child_process";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type net from "node:net";
import { join } from "node:path";
import tls from "node:tls";
import { promisify } from "node:util";
import { Agent, request } from "undici";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { ConfigError, loadConfigFile } from "../proxy/config/load.js";
import { Runtime } from "../proxy/control/runtime.js";
import { makeCa, type Pair, selfSigned, type TestCa } from "./helpers/certs.js";
import { metricValue } from "./helpers/metrics.js";
import { hashStream, listen, openFds, settle } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const dir = tempDir("tls");
const BLOB = randomBytes(8 << 20);
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

let ca: TestCa;
let otherCa: TestCa;
let certs: Record<string, Pair>;

beforeAll(() => {
  ca = makeCa(dir);
  otherCa = makeCa(dir, "another CA");
  certs = {
    site: ca.issue("site", { san: ["DNS:site.test", "DNS:localhost", "IP:127.0.0.1"] }),
    a: ca.issue("a", { san: ["DNS:a.test"] }),
    wild: ca.issue("wild", { san: ["DNS:*.wild.test"] }),
    rotated: ca.issue("rotated", { san: ["DNS:site.test", "DNS:localhost", "IP:127.0.0.1"] }),
    up: ca.issue("up", { san: ["DNS:up.test", "IP:127.0.0.1"] }),
    expired: ca.issue("expired", { san: ["DNS:up.test", "IP:127.0.0.1"], expired: true }),
    alien: otherCa.issue("alien", { san: ["DNS:up.test", "IP:127.0.0.1"] }),
    self: selfSigned(dir, "self", ["DNS:up.test", "IP:127.0.0.1"]),
    alice: ca.issue("alice", { client: true, o: "Acme" }),
    mallory: otherCa.issue("mallory", { client: true }),
  };
});

/** What each upstream answers: bytes of BLOB, the request body's hash, or who the client is. */
function handler(req: http.IncomingMessage, res: http.ServerResponse): void {
  const m = /^\/blob\/(\d+)/.exec(req.url ?? "");
  const chunked = /^\/chunks\/(\d+)x(\d+)/.exec(req.url ?? "");
  hashStream(req).then(
    ({ hash, bytes }) => {
      if (chunked) {
        // Consecutive slices of BLOB, one chunk per write (a chunked body without a length).
        const [size, count] = [Number(chunked[1]), Number(chunked[2])];
        res.writeHead(200);
        for (let i = 0; i < count; i++) res.write(BLOB.subarray(i * size, (i + 1) * size));
        return res.end();
      }
      if (m) {
        const n = Number(m[1]);
        res.writeHead(200, { "content-length": n });
        return res.end(BLOB.subarray(0, n));
      }
      const peer = (req.socket as tls.TLSSocket).getPeerCertificate?.();
      const body = JSON.stringify({
        bodyHash: hash,
        bodyBytes: bytes,
        peerPort: req.socket.remotePort,
        clientCn: peer && "subject" in peer ? (peer.subject?.CN ?? null) : null,
      });
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
    },
    () => res.destroy(),
  );
}

async function httpsUpstream(pair: Pair, opts: { requireClientCert?: boolean } = {}) {
  const server = https.createServer(
    {
      cert: readFileSync(pair.cert),
      key: readFileSync(pair.key),
      ...(opts.requireClientCert ? { ca: readFileSync(ca.cert), requestCert: true, rejectUnauthorized: true } : {}),
    },
    (req, res) => {
      served++;
      handler(req, res);
    },
  );
  let served = 0;
  const port = await listen(server as unknown as net.Server);
  return {
    port,
    requests: () => served,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

async function plainUpstream() {
  const server = http.createServer(handler);
  const port = await listen(server as unknown as net.Server);
  return {
    port,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

async function startRuntime(name: string, yaml: string): Promise<{ runtime: Runtime; file: string }> {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, yaml);
  const runtime = new Runtime({ file });
  await runtime.start();
  return { runtime, file };
}

/** Two TLS listeners, named after their engines (splice, buffered), everything to cluster app. */
function bothEnginesOverTls(): string {
  const listener = (e: string) => `  - name: ${e}
    address: 127.0.0.1:0
    engine: ${e}
    routes: [{ name: app, match: {}, forward: { cluster: app } }]
    tls: { certificates: [{ cert: ${certs.site?.cert}, key: ${certs.site?.key} }] }`;
  return `listeners:\n${["splice", "buffered"].map(listener).join("\n")}`;
}

/** Both engines' TLS listeners in front of a plain upstream on `port`. */
async function bothEnginesToPlain(name: string, port: number): Promise<Runtime> {
  const yaml = `${bothEnginesOverTls()}\nclusters:\n  app: { endpoints: ["127.0.0.1:${port}"] }\n`;
  return (await startRuntime(name, yaml)).runtime;
}

const portOf = (runtime: Runtime, listener = "main") => Number(runtime.addresses().get(listener)?.split(":").pop());

/** openssl s_client's account of a handshake: exit status and what -brief printed. */
async function sClient(port: number, ...args: string[]): Promise<{ ok: boolean; out: string }> {
  // -brief prints no ALPN: the test that wants it asks for the full report ("-full").
  const full = args[0] === "-full";
  if (full) args.shift();
  const child = execFile("openssl", ["s_client", ...(full ? [] : ["-brief"]), "-connect", `127.0.0.1:${port}`, ...args], {
    timeout: 20_000,
  });
  child.stdin?.end();
  let out = "";
  child.stdout?.on("data", (d) => {
    out += d;
  });
  child.stderr?.on("data", (d) => {
    out += d;
  });
  const code = await new Promise<number | null>((r) => child.on("close", r));
  return { ok: code === 0 && (full || out.includes("CONNECTION ESTABLISHED")), out };
}

/** The CN of the certificate a TLS listener presents for `servername`. */
function servedCn(port: number, servername: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: "127.0.0.1", port, servername, ca: readFileSync(ca.cert) }, () => {
      const cert = s.getPeerX509Certificate();
      s.end();
      resolve(/CN=([^\n]+)/.exec(cert?.subject ?? "")?.[1] ?? "");
    });
    s.once("error", reject);
  });
}

/** Polls `cond` until it holds or 30 s have passed (a bound for a slow machine, not a measurement). */
async function eventually(cond: () => Promise<boolean>): Promise<void> {
  const until = performance.now() + 30_000;
  while (!(await cond()) && performance.now() < until) await new Promise((r) => setTimeout(r, 50));
}

/** sluice_tls_handshake_failures_total of one listener (by its port) and reason. */
const handshakeFailures = (runtime: Runtime, port: number, reason: string) =>
  metricValue(runtime.sinks.metrics, "sluice_tls_handshake_failures_total", { listener: `127.0.0.1:${port}`, reason });

describe("termination", () => {
  let runtime: Runtime;
  let port: number;
  let upstream: Awaited<ReturnType<typeof plainUpstream>>;

  beforeAll(async () => {
    upstream = await plainUpstream();
    ({ runtime } = await startRuntime(
      "terminate",
      `listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ name: app, match: {}, forward: { cluster: app } }]
    tls:
      certificates:
        - { cert: ${certs.site?.cert}, key: ${certs.site?.key} }
        - { cert: ${certs.a?.cert}, key: ${certs.a?.key} }
        - { cert: ${certs.wild?.cert}, key: ${certs.wild?.key} }
  - name: modern
    address: 127.0.0.1:0
    routes: [{ name: app, match: {}, forward: { cluster: app } }]
    tls:
      certificates: [{ cert: ${certs.site?.cert}, key: ${certs.site?.key} }]
      min_version: TLSv1.3
      handshake_timeout: 300ms
clusters:
  app: { endpoints: ["127.0.0.1:${upstream.port}"] }
splice: { threshold: 16384 }
`,
    ));
    port = portOf(runtime);
  });
  afterAll(async () => {
    await runtime.close();
    upstream.close();
  });

  test("curl --cacert gets an intact 4 MiB body and an intact upload; the bodies were copied, and the metrics say why", async () => {
    const n = 4 << 20;
    const down = await run("curl", ["-sS", "--cacert", ca.cert, "-o", "-", `https://localhost:${port}/blob/${n}`], {
      encoding: "buffer",
      maxBuffer: 64 << 20,
    });
    expect(down.stdout.length).toBe(n);
    expect(sha(down.stdout)).toBe(sha(BLOB.subarray(0, n)));
    const file = join(dir, "upload.bin");
    writeFileSync(file, BLOB.subarray(0, 3 << 20));
    const up = await run("curl", ["-sS", "--cacert", ca.cert, "--data-binary", `@${file}`, `https://localhost:${port}/echo`]);
    expect(JSON.parse(up.stdout)).toMatchObject({ bodyBytes: 3 << 20, bodyHash: sha(BLOB.subarray(0, 3 << 20)) });
    // A chunked upload, and an HTTP/1.0 download, over TLS too.
    const chunked = await run("curl", [
      ...["-sS", "--cacert", ca.cert, "-H", "transfer-encoding: chunked", "--data-binary", `@${file}`],
      `https://localhost:${port}/echo`,
    ]);
    expect(JSON.parse(chunked.stdout)).toMatchObject({ bodyBytes: 3 << 20, bodyHash: sha(BLOB.subarray(0, 3 << 20)) });
    const old = await run("curl", ["-sS", "--http1.0", "--cacert", ca.cert, `https://localhost:${port}/blob/300000`], {
      encoding: "buffer",
      maxBuffer: 1 << 20,
    });
    expect(sha(old.stdout)).toBe(sha(BLOB.subarray(0, 300000)));
    const m = runtime.sinks.metrics;
    expect(await metricValue(m, "sluice_body_bytes_total", { direction: "response", path: "spliced" })).toBe(0);
    expect(await metricValue(m, "sluice_tls_copied_body_bytes_total", { engine: "copy" })).toBeGreaterThanOrEqual(n + (3 << 20));
  });

  test("large chunks copied to a TLS client, several responses on one connection: every byte in order", async () => {
    // The copy reads in large buffers that are reused once written: a read that runs past a
    // chunk's payload holds the next chunk's size line (or the next response), which must
    // survive the buffer's reuse.
    const agent = new Agent({ connect: { ca: readFileSync(ca.cert), servername: "localhost" }, connections: 1 });
    try {
      for (const [size, count] of [
        [700_001, 9],
        [65_537, 100],
        [1_000_000, 8],
      ] as const) {
        const res = await request(`https://127.0.0.1:${port}/chunks/${size}x${count}`, { dispatcher: agent });
        expect(res.statusCode).toBe(200);
        const { hash, bytes } = await hashStream(res.body);
        expect(bytes).toBe(size * count);
        expect(hash).toBe(sha(BLOB.subarray(0, size * count)));
      }
      const blob = await request(`https://127.0.0.1:${port}/blob/${3 << 20}`, { dispatcher: agent });
      expect((await hashStream(blob.body)).hash).toBe(sha(BLOB.subarray(0, 3 << 20)));
    } finally {
      await agent.close();
    }
  });

  test("SNI picks the certificate: exact name, wildcard, and the first one by default (openssl s_client)", async () => {
    const a = await sClient(port, "-servername", "a.test", "-CAfile", ca.cert);
    expect(a.ok, a.out).toBe(true);
    expect(a.out).toMatch(/Peer certificate: CN ?= ?a\b/);
    expect(a.out).toMatch(/Verification: OK/);
    const w = await sClient(port, "-servername", "x.wild.test");
    expect(w.out).toMatch(/Peer certificate: CN ?= ?wild\b/);
    // A wildcard covers one label only.
    expect((await sClient(port, "-servername", "y.x.wild.test")).out).toMatch(/Peer certificate: CN ?= ?site\b/);
    expect((await sClient(port, "-servername", "unknown.test")).out).toMatch(/Peer certificate: CN ?= ?site\b/);
    expect((await sClient(port, "-noservername")).out).toMatch(/Peer certificate: CN ?= ?site\b/);
  });

  test("ALPN: http/1.1 preferred, http/1.0 accepted, h2 alone refused; TLS 1.2 and 1.3 by default; min_version TLSv1.3 refuses 1.2", async () => {
    const alpn = await sClient(port, "-full", "-alpn", "h2,http/1.1");
    expect(alpn.out).toMatch(/ALPN protocol: http\/1\.1/);
    expect((await sClient(port, "-full", "-alpn", "http/1.0")).out).toMatch(/ALPN protocol: http\/1\.0/);
    const h2 = await sClient(port, "-full", "-alpn", "h2");
    expect(h2.out).toMatch(/no application protocol/);
    expect((await sClient(port, "-tls1_2")).out).toMatch(/Protocol version: TLSv1\.2/);
    expect((await sClient(port, "-tls1_3")).out).toMatch(/Protocol version: TLSv1\.3/);
    const modern = portOf(runtime, "modern");
    expect((await sClient(modern, "-tls1_3")).ok).toBe(true);
    const old = await sClient(modern, "-tls1_2");
    expect(old.ok).toBe(false);
    expect(await handshakeFailures(runtime, modern, "protocol")).toBeGreaterThanOrEqual(1);
  });

  test("a client that never finishes its handshake is cut at handshake_timeout, counted, and leaves no descriptor", async () => {
    const modern = portOf(runtime, "modern");
    await settle();
    const before = openFds();
    const { connect } = await import("node:net");
    const silent = Array.from({ length: 5 }, () => connect(modern, "127.0.0.1"));
    await Promise.all(silent.map((s) => new Promise((r) => s.once("close", r))));
    await settle();
    expect(openFds()).toBe(before);
    expect(await handshakeFailures(runtime, modern, "timeout")).toBe(5);
  });

  test("plain HTTP sent to a TLS listener gets no HTTP answer, and is a failed handshake", async () => {
    const { text, closed } = await (await import("./helpers/upstreams.js")).rawExchange(
      port,
      "GET / HTTP/1.1\r\nhost: x\r\n\r\n",
    );
    expect(closed).toBe(true);
    expect(text).not.toMatch(/^HTTP\/1\.1 200/);
    expect(await handshakeFailures(runtime, port, "protocol")).toBeGreaterThanOrEqual(1);
  });
});

describe("client certificates", () => {
  let runtime: Runtime;
  let upstream: Awaited<ReturnType<typeof plainUpstream>>;

  beforeAll(async () => {
    upstream = await plainUpstream();
    const routes = `    routes:
      - { name: alice, match: { client_certificate: { subject: { exact: "CN=alice, O=Acme" } } }, respond: { status: 200, body: "hello alice\\n" } }
      - { name: verified, match: { client_certificate: { present: true } }, respond: { status: 200, body: "verified\\n" } }
      - { name: anonymous, match: { client_certificate: { present: false } }, respond: { status: 200, body: "anonymous\\n" } }`;
    ({ runtime } = await startRuntime(
      "mtls",
      `access_log: true
listeners:
  - name: main
    address: 127.0.0.1:0
${routes}
    tls:
      certificates: [{ cert: ${certs.site?.cert}, key: ${certs.site?.key} }]
      client_certificate: { ca: ${ca.cert} }
  - name: optional
    address: 127.0.0.1:0
${routes}
    tls:
      certificates: [{ cert: ${certs.site?.cert}, key: ${certs.site?.key} }]
      client_certificate: { ca: ${ca.cert}, required: false }
clusters:
  app: { endpoints: ["127.0.0.1:${upstream.port}"] }
`,
    ));
  });
  afterAll(async () => {
    await runtime.close();
    upstream.close();
  });

  const curl = (port: number, ...args: string[]) =>
    run("curl", ["-sS", "--cacert", ca.cert, ...args, `https://localhost:${port}/`]).then(
      (r) => ({ code: 0, out: r.stdout }),
      (e: { code: number; stderr: string }) => ({ code: e.code, out: e.stderr }),
    );

  test("required: a client without a certificate, or with one from another CA, is refused at the handshake", async () => {
    const port = portOf(runtime);
    const none = await curl(port);
    expect(none.code).not.toBe(0);
    expect(none.out).not.toMatch(/anonymous/);
    const wrong = await curl(port, "--cert", certs.mallory?.cert as string, "--key", certs.mallory?.key as string);
    expect(wrong.code).not.toBe(0);
    expect(await handshakeFailures(runtime, port, "no_client_certificate")).toBe(1);
    expect(await handshakeFailures(runtime, port, "bad_client_certificate")).toBe(1);
  });

  test("a verified certificate's subject is matched by routes (openssl s_client and curl)", async () => {
    const port = portOf(runtime);
    const alice = await curl(port, "--cert", certs.alice?.cert as string, "--key", certs.alice?.key as string);
    expect(alice).toEqual({ code: 0, out: "hello alice\n" });
    const s = await sClient(port, "-cert", certs.alice?.cert as string, "-key", certs.alice?.key as string);
    expect(s.ok, s.out).toBe(true);
  });

  test("optional: served without a certificate (present: false), and a wrong one is not taken as verified", async () => {
    const port = portOf(runtime, "optional");
    expect(await curl(port)).toEqual({ code: 0, out: "anonymous\n" });
    expect(await curl(port, "--cert", certs.mallory?.cert as string, "--key", certs.mallory?.key as string)).toEqual({
      code: 0,
      out: "anonymous\n",
    });
    expect(await curl(port, "--cert", certs.alice?.cert as string, "--key", certs.alice?.key as string)).toEqual({
      code: 0,
      out: "hello alice\n",
    });
  });
});

describe("rotation and bad files", () => {
  test("new files (a Secret's ..data swap): new handshakes get the new certificate, a download already going finishes intact", async () => {
    // The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> a timestamped directory.
    const secret = join(dir, "secret");
    const v1 = join(secret, "..v1");
    mkdirSync(v1, { recursive: true });
    copyFileSync(certs.site?.cert as string, join(v1, "tls.crt"));
    copyFileSync(certs.site?.key as string, join(v1, "tls.key"));
    symlinkSync("..v1", join(secret, "..data"));
    symlinkSync("..data/tls.crt", join(secret, "tls.crt"));
    symlinkSync("..data/tls.key", join(secret, "tls.key"));
    const upstream = await plainUpstream();
    const { runtime } = await startRuntime(
      "rotate",
      `listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ name: app, match: {}, forward: { cluster: app } }]
    tls:
      certificates: [{ cert: ${secret}/tls.crt, key: ${secret}/tls.key }]
      watch_interval: 100ms
clusters:
  app: { endpoints: ["127.0.0.1:${upstream.port}"] }
`,
    );
    const port = portOf(runtime);
    expect(await servedCn(port, "site.test")).toBe("site");

    // A download that starts now and is held (the client reads nothing) across the rotation.
    const n = 8 << 20;
    const client = tls.connect({ host: "127.0.0.1", port, servername: "site.test", ca: readFileSync(ca.cert) });
    await new Promise((r) => client.once("secureConnect", r));
    const heldCert = client.getPeerX509Certificate()?.subject;
    const chunks: Buffer[] = [];
    client.write(`GET /blob/${n} HTTP/1.1\r\nhost: site.test\r\nconnection: close\r\n\r\n`);
    await new Promise<void>((r) =>
      client.once("data", (c: Buffer) => {
        chunks.push(c);
        client.pause();
        r();
      }),
    );

    // What the kubelet does on a Secret update: a new directory, then the ..data link swapped.
    const swap = (version: string, cert: string, key: string) => {
      const v = join(secret, version);
      mkdirSync(v);
      copyFileSync(cert, join(v, "tls.crt"));
      copyFileSync(key, join(v, "tls.key"));
      symlinkSync(version, join(secret, "..data_tmp"));
      renameSync(join(secret, "..data_tmp"), join(secret, "..data"));
    };
    swap("..v2", certs.rotated?.cert as string, certs.rotated?.key as string);
    // Bounded by the watch interval, not by throughput.
    await eventually(async () => (await servedCn(port, "site.test")) === "rotated");
    expect(await servedCn(port, "site.test")).toBe("rotated");
    expect(await metricValue(runtime.sinks.metrics, "sluice_tls_certificate_reloads_total", { result: "ok" })).toBe(1);

    client.on("data", (c: Buffer) => chunks.push(c));
    client.resume();
    await new Promise((r) => client.once("close", r));
    const all = Buffer.concat(chunks);
    const body = all.subarray(all.indexOf("\r\n\r\n") + 4);
    expect(body.length).toBe(n);
    expect(sha(body)).toBe(sha(BLOB.subarray(0, n)));
    expect(heldCert).toMatch(/CN=site/);

    // Then a broken version (the key of another certificate): refused, the rotated one stays.
    swap("..v3", certs.site?.cert as string, certs.a?.key as string);
    await eventually(
      async () => (await metricValue(runtime.sinks.metrics, "sluice_tls_certificate_reloads_total", { result: "refused" })) > 0,
    );
    expect(await metricValue(runtime.sinks.metrics, "sluice_tls_certificate_reloads_total", { result: "refused" })).toBe(1);
    expect(await servedCn(port, "site.test")).toBe("rotated");
    await runtime.close();
    upstream.close();
  });

  test("a config naming a missing file or a key that doesn't match is refused with file, line, column and field; a running proxy keeps its certificate", async () => {
    const file = join(dir, "bad-files.yaml");
    const good = `listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: {}, respond: { status: 200, body: ok } }]
    tls:
      certificates:
        - cert: site.pem
          key: site.key
`;
    // Relative paths are the config file's directory's.
    writeFileSync(file, good);
    const runtime = new Runtime({ file });
    await runtime.start();
    const port = portOf(runtime);
    expect(await servedCn(port, "site.test")).toBe("site");

    writeFileSync(file, good.replace("key: site.key", "key: a.key"));
    const err = await loadConfigFile(file).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain(`${file}:8:`);
    expect((err as Error).message).toContain("listeners[0].tls.certificates[0].key");
    expect((err as Error).message).toMatch(/a\.key: this key does not belong to the certificate in .*site\.pem/);
    const status = await runtime.reload();
    expect(status.ok).toBe(false);
    expect(await servedCn(port, "site.test")).toBe("site");

    writeFileSync(file, good.replace("cert: site.pem", "cert: missing.pem"));
    const missing = await runtime.reload();
    expect(missing.ok).toBe(false);
    expect(missing.errors.join("\n")).toMatch(/:7:\d+.*missing\.pem: cannot read: ENOENT/);

    writeFileSync(file, good.replace("cert: site.pem", `cert: ${ca.key}`));
    expect((await runtime.reload()).errors.join("\n")).toMatch(/no certificate in it/);
    expect(await servedCn(port, "site.test")).toBe("site");
    await runtime.close();
  });
});

describe.each(["splice", "buffered"] as const)("origination (%s engine)", (engine) => {
  const ups: Record<string, Awaited<ReturnType<typeof httpsUpstream>>> = {};
  let runtime: Runtime;
  let base: string;

  beforeAll(async () => {
    ups.good = await httpsUpstream(certs.up as Pair);
    ups.expired = await httpsUpstream(certs.expired as Pair);
    ups.alien = await httpsUpstream(certs.alien as Pair);
    ups.self = await httpsUpstream(certs.self as Pair);
    ups.mtls = await httpsUpstream(certs.up as Pair, { requireClientCert: true });
    const cluster = (name: string, port: number, tlsBlock: string) =>
      `  ${name}: { endpoints: ["127.0.0.1:${port}"], max_retries: 3, tls: { ${tlsBlock} } }`;
    const route = (name: string) =>
      `      - { name: ${name}, match: { path: { prefix: /${name}/ } }, forward: { cluster: ${name}, prefix_rewrite: /, retry: { attempts: 2, on: [connect-failure, reset] } } }`;
    const names = ["good", "byip", "wrongname", "expired", "alien", "self", "mtls", "nocert"];
    ({ runtime } = await startRuntime(
      `originate-${engine}`,
      `listeners:
  - name: main
    address: 127.0.0.1:0
    engine: ${engine}
    routes:
${names.map(route).join("\n")}
clusters:
${cluster("good", ups.good.port, `server_name: up.test, ca: ${ca.cert}`)}
${cluster("byip", ups.good.port, `ca: ${ca.cert}`)}
${cluster("wrongname", ups.good.port, `server_name: other.test, ca: ${ca.cert}`)}
${cluster("expired", ups.expired.port, `server_name: up.test, ca: ${ca.cert}`)}
${cluster("alien", ups.alien.port, `server_name: up.test, ca: ${ca.cert}`)}
${cluster("self", ups.self.port, "server_name: up.test")}
${cluster("mtls", ups.mtls.port, `server_name: up.test, ca: ${ca.cert}, cert: ${certs.alice?.cert}, key: ${certs.alice?.key}`)}
${cluster("nocert", ups.mtls.port, `server_name: up.test, ca: ${ca.cert}`)}
`,
    ));
    base = `http://127.0.0.1:${portOf(runtime)}`;
  });
  afterAll(async () => {
    await runtime.close();
    for (const u of Object.values(ups)) u.close();
  });

  test("verified TLS to the upstream: bodies intact both ways, connections pooled and reused", async () => {
    const n = 5 << 20;
    const down = await request(`${base}/good/blob/${n}`);
    expect(down.statusCode).toBe(200);
    expect(sha(Buffer.from(await down.body.arrayBuffer()))).toBe(sha(BLOB.subarray(0, n)));
    const ports = new Set<number>();
    for (let i = 0; i < 5; i++) {
      const up = await request(`${base}/good/echo`, { method: "POST", body: BLOB.subarray(0, 1 << 20) });
      const j = (await up.body.json()) as { bodyHash: string; peerPort: number };
      expect(j.bodyHash).toBe(sha(BLOB.subarray(0, 1 << 20)));
      ports.add(j.peerPort);
    }
    expect(ports.size).toBe(1);
    // An IP endpoint with no server_name: the certificate must name the IP, and this one does.
    expect((await request(`${base}/byip/echo`)).statusCode).toBe(200);
    if (engine === "splice") {
      const m = runtime.sinks.metrics;
      expect(await metricValue(m, "sluice_body_bytes_total", { direction: "response", path: "spliced" })).toBe(0);
      expect(await metricValue(m, "sluice_tls_copied_body_bytes_total", { engine: "copy" })).toBeGreaterThanOrEqual(
        n + (5 << 20),
      );
    }
  });

  test.each([
    ["wrongname", /ERR_TLS_CERT_ALTNAME_INVALID|altname/i],
    ["expired", /CERT_HAS_EXPIRED|expired/i],
    ["alien", /UNABLE_TO_VERIFY_LEAF_SIGNATURE|unable to verify/i],
    ["self", /DEPTH_ZERO_SELF_SIGNED_CERT|self.signed/i],
    ["nocert", /./],
  ])("%s: 502, outcome upstream_tls, counted, never retried", async (name, detail) => {
    const server = ups[name === "wrongname" ? "good" : name === "nocert" ? "mtls" : name];
    const servedBefore = server?.requests() ?? 0;
    const r = await request(`${base}/${name}/echo`);
    const text = await r.body.text();
    expect(r.statusCode).toBe(502);
    if (name !== "nocert") expect(text).toMatch(detail);
    const m = runtime.sinks.metrics;
    expect(await metricValue(m, "sluice_upstream_failures_total", { cluster: name, kind: "tls" })).toBe(1);
    expect(await metricValue(m, "sluice_upstream_retries_total", { cluster: name })).toBe(0);
    const hist = await m.registry.getSingleMetric("sluice_http_request_duration_seconds")?.get();
    const count = hist?.values.find(
      (v) =>
        (v as { metricName?: string }).metricName === "sluice_http_request_duration_seconds_count" && v.labels.route === name,
    );
    expect(count?.labels.outcome).toBe("upstream_tls");
    // No request reached the upstream: nothing went out before verification, nor in plain text after it.
    expect(server?.requests()).toBe(servedBefore);
  });

  test("mTLS to the upstream: the client certificate is presented", async () => {
    const r = await request(`${base}/mtls/who`);
    expect(r.statusCode).toBe(200);
    expect(((await r.body.json()) as { clientCn: string }).clientCn).toBe("alice");
  });
});

test("undici through a TLS listener to a TLS upstream, both engines' listeners side by side", async () => {
  const up = await httpsUpstream(certs.up as Pair);
  const { runtime } = await startRuntime(
    "both-legs",
    `${bothEnginesOverTls()}
clusters:
  app: { endpoints: ["127.0.0.1:${up.port}"], tls: { server_name: up.test, ca: ${ca.cert} } }
`,
  );
  const dispatcher = new Agent({ connect: { ca: readFileSync(ca.cert), servername: "site.test" } });
  try {
    for (const e of ["splice", "buffered"]) {
      const n = 3 << 20;
      const r = await request(`https://127.0.0.1:${portOf(runtime, e)}/blob/${n}`, { dispatcher });
      expect(r.statusCode).toBe(200);
      expect(sha(Buffer.from(await r.body.arrayBuffer()))).toBe(sha(BLOB.subarray(0, n)));
    }
    expect(new X509Certificate(readFileSync(certs.site?.cert as string)).subject).toMatch(/CN=site/);
  } finally {
    await dispatcher.close();
    await runtime.close();
    up.close();
  }
});

test("a response cut short by the upstream reaches a TLS client as a reset (curl says so), not as an end, through both engines", async () => {
  // A head and part of the body, then the upstream resets.
  const up = http.createServer((req, res) => {
    res.writeHead(200, { "content-length": 100_000 });
    res.write(Buffer.alloc(10_000, 1), () => req.socket.resetAndDestroy());
  });
  const upPort = await listen(up as unknown as net.Server);
  const runtime = await bothEnginesToPlain("cut-short", upPort);
  try {
    for (const e of ["splice", "buffered"]) {
      const port = portOf(runtime, e);
      const curl = ["-sS", "-o", "/dev/null", "--cacert", ca.cert, "--resolve", `site.test:${port}:127.0.0.1`];
      const { stderr } = await promisify(execFile)("curl", [...curl, `https://site.test:${port}/cut`]).catch(
        (err: { stderr: string }) => err,
      );
      // A close without TLS's close_notify would say "unexpected eof".
      expect(stderr, e).toMatch(/reset by peer/i);
    }
  } finally {
    await runtime.close();
    up.closeAllConnections();
    up.close();
  }
});

test("X-Forwarded-Proto says https to the upstream of a TLS listener, whatever the client claimed, through both engines", async () => {
  let proto: unknown[] = [];
  const up = http.createServer((req, res) => {
    proto.push(req.headers["x-forwarded-proto"]);
    res.end("ok");
  });
  const upPort = await listen(up as unknown as net.Server);
  const runtime = await bothEnginesToPlain("forwarded-proto", upPort);
  const dispatcher = new Agent({ connect: { ca: readFileSync(ca.cert), servername: "site.test" } });
  try {
    for (const e of ["splice", "buffered"]) {
      proto = [];
      for (const claimed of [undefined, "http"]) {
        const r = await request(`https://127.0.0.1:${portOf(runtime, e)}/p`, {
          dispatcher,
          headers: claimed ? { "x-forwarded-proto": claimed } : {},
        });
        expect(await r.body.text(), e).toBe("ok");
      }
      expect(proto, e).toEqual(["https", "https"]);
    }
  } finally {
    await dispatcher.close();
    await runtime.close();
    up.closeAllConnections();
    up.close();
  }
});

test("health checks of a TLS cluster go over TLS and verify: the right name is healthy, a wrong one is not", async () => {
  const up = await httpsUpstream(certs.up as Pair);
  const hc = "health_check: { path: /who, interval: 100ms, timeout: 2s, healthy_threshold: 1, unhealthy_threshold: 1 }";
  const { runtime } = await startRuntime(
    "health-tls",
    `listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ name: app, match: {}, forward: { cluster: right } }]
clusters:
  right: { endpoints: ["127.0.0.1:${up.port}"], tls: { server_name: up.test, ca: ${ca.cert} }, ${hc} }
  wrong: { endpoints: ["127.0.0.1:${up.port}"], tls: { server_name: other.test, ca: ${ca.cert} }, ${hc} }
`,
  );
  const healthy = (cluster: string) =>
    metricValue(runtime.sinks.metrics, "sluice_upstream_endpoint_healthy", { cluster, endpoint: `127.0.0.1:${up.port}` });
  try {
    await eventually(async () => (await healthy("wrong")) === 0);
    expect(await healthy("wrong")).toBe(0);
    expect(await healthy("right")).toBe(1);
    // The checks that passed were served: over TLS, by the upstream itself.
    expect(up.requests()).toBeGreaterThan(0);
  } finally {
    await runtime.close();
    up.close();
  }
});

test("over the listener's max_connections a TLS connection is closed before any handshake work, and counted", async () => {
  const { runtime } = await startRuntime(
    "tls-limit",
    `listeners:
  - name: main
    address: 127.0.0.1:0
    limits: { max_connections: 1 }
    routes: [{ match: {}, respond: { status: 200, body: ok } }]
    tls: { certificates: [{ cert: ${certs.site?.cert}, key: ${certs.site?.key} }], handshake_timeout: 5s }
`,
  );
  const port = portOf(runtime);
  const { connect } = await import("node:net");
  // One connection holds the only place, still in its handshake (it sends nothing).
  const holder = connect(port, "127.0.0.1");
  await new Promise((r) => holder.once("connect", r));
  await settle();
  const second = await sClient(port, "-servername", "site.test");
  expect(second.ok).toBe(false);
  expect(second.out).not.toMatch(/503/);
  expect(await metricValue(runtime.sinks.metrics, "sluice_connections_refused_total", { reason: "max_connections" })).toBe(1);
  holder.destroy();
  await runtime.close();
});

test("the command line's simple form: --tls-cert and --tls-key terminate TLS; one without the other is refused", async () => {
  const upstream = await plainUpstream();
  const { freePort } = await import("../proxy/tools/ports.js");
  const port = await freePort();
  const { spawn } = await import("node:child_process");
  const child = spawn(
    process.execPath,
    [
      "dist/proxy/cli.js",
      ...["--listen", `127.0.0.1:${port}`, "--upstream", `127.0.0.1:${upstream.port}`],
      ...["--tls-cert", certs.site?.cert as string, "--tls-key", certs.site?.key as string],
    ],
    { stdio: "ignore" },
  );
  try {
    const { waitForPort } = await import("../proxy/tools/ports.js");
    await waitForPort(port);
    const n = 1 << 20;
    const r = await run("curl", ["-sS", "--cacert", ca.cert, `https://localhost:${port}/blob/${n}`], {
      encoding: "buffer",
      maxBuffer: 8 << 20,
    });
    expect(sha(r.stdout)).toBe(sha(BLOB.subarray(0, n)));
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
    upstream.close();
  }
  const half = await run(process.execPath, [
    "dist/proxy/cli.js",
    ...["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--tls-cert", certs.site?.cert as string],
  ]).then(
    () => "",
    (e: { stderr: string }) => e.stderr,
  );
  expect(half).toMatch(/--tls-cert and --tls-key go together/);
});

test("a WebSocket over a TLS listener (wss) is tunnelled, copied both ways, through both engines", async () => {
  const { WebSocket, WebSocketServer } = await import("ws");
  const wsServer = http.createServer();
  const wss = new WebSocketServer({ server: wsServer });
  wss.on("connection", (sock) => sock.on("message", (data, binary) => sock.send(data, { binary })));
  const upPort = await listen(wsServer as unknown as net.Server);
  const runtime = await bothEnginesToPlain("wss", upPort);
  try {
    for (const e of ["splice", "buffered"]) {
      const ws = new WebSocket(`wss://localhost:${portOf(runtime, e)}/ws`, { ca: readFileSync(ca.cert) });
      await new Promise((resolve, reject) => {
        ws.once("open", resolve);
        ws.once("error", reject);
      });
      for (const size of [10, 1 << 20]) {
        const msg = BLOB.subarray(0, size);
        const echoed = new Promise<Buffer>((resolve) => ws.once("message", (d) => resolve(d as Buffer)));
        ws.send(msg);
        expect(sha(await echoed), `${e} ${size}`).toBe(sha(msg));
      }
      ws.close();
      await new Promise((r) => ws.once("close", r));
    }
    // Nothing of the tunnels was spliced: a TLS leg is copied.
    expect(await metricValue(runtime.sinks.metrics, "sluice_body_bytes_total", { path: "spliced" })).toBe(0);
  } finally {
    await runtime.close();
    wss.close();
    wsServer.close();
  }
});

test("workers: 2 serve a TLS listener (each worker terminates with the same certificate)", async () => {
  const upstream = await plainUpstream();
  const { freePort, waitForPort } = await import("../proxy/tools/ports.js");
  const port = await freePort();
  const file = join(dir, "workers-tls.yaml");
  writeFileSync(
    file,
    `workers: 2
listeners:
  - name: main
    address: 127.0.0.1:${port}
    routes: [{ name: app, match: {}, forward: { cluster: app } }]
    tls: { certificates: [{ cert: ${certs.site?.cert}, key: ${certs.site?.key} }] }
clusters:
  app: { endpoints: ["127.0.0.1:${upstream.port}"] }
`,
  );
  const { spawn } = await import("node:child_process");
  const child = spawn(process.execPath, ["dist/proxy/cli.js", "--config", file], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, SLUICE_LOG_LEVEL: "info", SLUICE_LOG_FORMAT: "json" },
  });
  let out = "";
  child.stdout?.on("data", (d) => {
    out += d;
  });
  try {
    await waitForPort(port);
    // Both workers ready before the requests, so that both can take them.
    const until = performance.now() + 30_000;
    while ((out.match(/worker ready/g) ?? []).length < 2 && performance.now() < until)
      await new Promise((r) => setTimeout(r, 50));
    expect((out.match(/worker ready/g) ?? []).length).toBe(2);
    for (let i = 0; i < 8; i++) {
      const n = 256 << 10;
      const r = await run("curl", ["-sS", "--cacert", ca.cert, `https://localhost:${port}/blob/${n}`], {
        encoding: "buffer",
        maxBuffer: 4 << 20,
      });
      expect(sha(r.stdout)).toBe(sha(BLOB.subarray(0, n)));
    }
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
    upstream.close();
  }
});

test("a small request body that came with its head reaches a TLS upstream in the head's record, and a small response in one record to a TLS client", async () => {
  // A TLS upstream that keeps each connection's first record (Node hands a record's plaintext over as one chunk).
  const firsts: Buffer[] = [];
  const server = tls.createServer(
    { cert: readFileSync(certs.up?.cert as string), key: readFileSync(certs.up?.key as string) },
    (s) => {
      s.once("data", (chunk: Buffer) => {
        firsts.push(chunk);
        s.end("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n" + "r".repeat(1000));
      });
      s.on("error", () => undefined);
    },
  );
  const upPort = await listen(server as unknown as net.Server);
  const { runtime } = await startRuntime(
    "one-record",
    `listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ name: up, match: {}, forward: { cluster: up } }]
    tls: { certificates: [{ cert: ${certs.site?.cert}, key: ${certs.site?.key} }] }
clusters:
  up: { endpoints: ["127.0.0.1:${upPort}"], tls: { server_name: up.test, ca: ${ca.cert} } }
`,
  );
  try {
    const body = Buffer.alloc(300, "q");
    const head = `POST /form HTTP/1.1\r\nHost: site.test\r\nContent-Length: ${body.length}\r\n\r\n`;
    const client = tls.connect({ host: "127.0.0.1", port: portOf(runtime), servername: "site.test", ca: readFileSync(ca.cert) });
    await new Promise<void>((r) => client.once("secureConnect", () => r()));
    const chunks: Buffer[] = [];
    // The client connection stays open (keep-alive): done once the whole body has come.
    const answered = new Promise<void>((r) =>
      client.on("data", (c: Buffer) => {
        chunks.push(c);
        if (Buffer.concat(chunks).toString("latin1").endsWith("r".repeat(1000))) r();
      }),
    );
    client.write(Buffer.concat([Buffer.from(head, "latin1"), body]));
    await answered;
    // The upstream's first record: the whole request, the body after the head.
    const got = Buffer.concat(firsts).toString("latin1");
    expect(firsts.length).toBe(1);
    expect(got.startsWith("POST /form HTTP/1.1\r\n")).toBe(true);
    expect(got.endsWith(`\r\n\r\n${"q".repeat(300)}`)).toBe(true);
    // The client's first record: the whole response, head and body.
    const first = (chunks[0] as Buffer).toString("latin1");
    expect(first.startsWith("HTTP/1.1 200 OK\r\n")).toBe(true);
    expect(first.endsWith(`\r\n\r\n${"r".repeat(1000)}`)).toBe(true);
    client.destroy();
  } finally {
    await runtime.close();
    server.close();
  }
});
