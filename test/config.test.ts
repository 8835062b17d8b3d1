// The config file: examples load, bad files name file:line:col and the field, the
// validate command answers 0 or 1, ${ENV} interpolation.
import { execFile, execFileSync } from "node:child_process";
import { readdirSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { request } from "undici";
import { expect, test } from "vitest";
import { compileConfig, configFromFlags } from "../proxy/config/compile.js";
import { DEFAULTS } from "../proxy/config/defaults.js";
import { ConfigError, loadConfigFile, loadConfigText, MAX_CONFIG_BYTES } from "../proxy/config/load.js";
import { isLoopback, redact } from "../proxy/control/redact.js";
import { Runtime } from "../proxy/control/runtime.js";
import { tempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const dir = tempDir("config");

function problems(text: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    loadConfigText(text, "t.yaml", env);
  } catch (err) {
    if (err instanceof ConfigError) return err.message.split("\n");
    throw err;
  }
  return [];
}

test.each(readdirSync("config").filter((f) => f.endsWith(".yaml")))("example config/%s loads", async (f) => {
  const cfg = await loadConfigFile(join("config", f), {});
  expect(cfg.listeners.length).toBeGreaterThan(0);
});

test("several problems at once, each with line, column, field path and what was expected", () => {
  const text = [
    "listeners:", // 1
    "  - name: public", // 2
    "    address: 127.0.0.1:80x", // 3
    "    protocoll: http", // 4
    "    routes:", // 5
    "      - match: { path: { prefix: / } }", // 6
    "        respond: { status: 99 }", // 7
    "    timeouts: { head: 10 seconds }", // 8
    "clusters:", // 9
    "  app:", // 10
    "    endpoints: []", // 11
    "    lb: fastest", // 12
  ].join("\n");
  expect(problems(text)).toEqual([
    "t.yaml:3:14: listeners[0].address: must be host:port, with a port from 0 to 65535",
    't.yaml:4:5: listeners[0].protocoll: unknown key "protocoll" (did you mean "protocol"?)',
    "t.yaml:7:28: listeners[0].routes[0].respond.status: must be >= 200",
    "t.yaml:8:23: listeners[0].timeouts.head: must be a duration like 500ms, 10s or 2m, or milliseconds",
    "t.yaml:11:16: clusters.app.endpoints: must NOT have fewer than 1 items",
    't.yaml:12:9: clusters.app.lb: must be one of "round_robin", "least_request", "random_two"',
  ]);
});

test("references, regexes, duplicates and header values are checked with their places", () => {
  const text = `listeners:
  - name: a
    address: 127.0.0.1:8080
    routes:
      - match: { path: { regex: "([" } }
        forward: { cluster: missing }
      - match: {}
        forward: { cluster: app, request_headers_add: { x-evil: "a\\r\\nInjected: 1" } }
      - match: {}
        forward: { cluster: app, prefix_rewrite: "/x HTTP/1.1\\r\\nX-Injected: 1\\r\\n\\r\\nGET /" }
  - name: a
    address: 127.0.0.1:8080
    routes: []
clusters:
  app: { endpoints: ["127.0.0.1:1"] }
`;
  // All in one pass: what the schema says and what it can't.
  const ps = problems(text);
  expect(ps).toEqual([
    "t.yaml:5:33: listeners[0].routes[0].match.path.regex: invalid regular expression: Invalid regular expression: /([/: Unterminated character class",
    't.yaml:6:29: listeners[0].routes[0].forward.cluster: no cluster named "missing"',
    "t.yaml:8:65: listeners[0].routes[1].forward.request_headers_add.x-evil: must not contain CR, LF or other control characters",
    "t.yaml:10:50: listeners[0].routes[2].forward.prefix_rewrite: must be a path starting with /, without spaces or control characters",
    't.yaml:11:11: listeners[1].name: listener name "a" is used twice',
    "t.yaml:12:14: listeners[1].address: address 127.0.0.1:8080 is used by two listeners",
  ]);
  const fixed = text.replace('"a\\r\\nInjected: 1"', "ok").replace(/prefix_rewrite: ".*"/, "prefix_rewrite: /x");
  expect(problems(fixed)).toEqual([
    "t.yaml:5:33: listeners[0].routes[0].match.path.regex: invalid regular expression: Invalid regular expression: /([/: Unterminated character class",
    't.yaml:6:29: listeners[0].routes[0].forward.cluster: no cluster named "missing"',
    't.yaml:11:11: listeners[1].name: listener name "a" is used twice',
    "t.yaml:12:14: listeners[1].address: address 127.0.0.1:8080 is used by two listeners",
  ]);
});

test("YAML syntax errors and duplicate keys point at their place", () => {
  expect(problems("listeners:\n  - name: a\n    name: b\n")[0]).toMatch(/^t\.yaml:3:5: Map keys must be unique/);
  expect(problems("listeners: [\n")[0]).toMatch(/^t\.yaml:\d+:\d+: /);
});

test("environment interpolation with and without defaults, typed when a scalar is one reference", () => {
  const text = `listeners:
  - name: a
    address: \${LISTEN:-127.0.0.1:8080}
    limits:
      max_connections: \${MAXC}
    routes: [{ match: { host: "\${HOST}.example" }, respond: { status: 200, body: "\${MISSING:-}" } }]
`;
  const cfg = loadConfigText(text, "t.yaml", { MAXC: "42", HOST: "api" });
  expect(cfg.listeners[0]?.address).toBe("127.0.0.1:8080");
  expect(cfg.listeners[0]?.limits?.max_connections).toBe(42);
  expect(cfg.listeners[0]?.routes?.[0]?.match.host).toBe("api.example");
  expect(problems(text, { HOST: "x" })).toEqual([
    "t.yaml:5:24: listeners[0].limits.max_connections: environment variable MAXC is not set and has no default",
  ]);
});

test("validate refuses what start refuses; start errors are one line; help, --version; a name that does not resolve yet is not fatal", async () => {
  const cli = (args: string[]) =>
    run(process.execPath, ["dist/proxy/cli.js", ...args]).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
  const file = (name: string, text: string) => {
    const f = join(dir, name);
    writeFileSync(f, text);
    return f;
  };
  // A port out of range: refused by validate as by start, with its place.
  const port = file("port.yaml", "listeners:\n  - name: a\n    address: 127.0.0.1:99999\n    routes: []\n");
  for (const args of [
    ["validate", port],
    ["--config", port],
  ])
    expect(await cli(args)).toMatchObject({
      code: 1,
      stderr: `${port}:3:14: listeners[0].address: must be host:port, with a port from 0 to 65535\n`,
    });
  // The admin port taken: start fails, in one line (no JSON, no stack), rather than run without probes.
  const busy = net.createServer();
  await new Promise<void>((r) => busy.listen(0, "127.0.0.1", () => r()));
  const taken = (busy.address() as net.AddressInfo).port;
  const admin = file(
    "admin.yaml",
    `admin: { address: "127.0.0.1:${taken}" }\nlisteners:\n  - name: a\n    address: 127.0.0.1:0\n    routes: []\n`,
  );
  const started = await cli(["--config", admin]);
  busy.close();
  expect(started.code).toBe(1);
  expect(started.stderr).toBe(`sluice: cannot start: admin listener 127.0.0.1:${taken}: EADDRINUSE\n`);
  expect(await cli(["help", "validate"])).toMatchObject({ code: 0, stdout: expect.stringMatching(/^Usage: sluice validate/) });
  expect((await cli(["--version"])).stdout).toMatch(
    new RegExp(
      `^sluice \\d+\\.\\d+\\.\\d+ \\(Node ${process.version.replace(/\./g, "\\.")}, linux-${process.arch}; splice addon loaded\\)\n$`,
    ),
  );
});

test("an endpoint name that does not resolve yet: sluice starts, answers 503 meanwhile, and is ready", async () => {
  // A DNS server on loopback that does not answer (nothing listens there): no query leaves this host.
  const file = join(dir, "dns.yaml");
  writeFileSync(
    file,
    `listeners:
  - name: a
    address: 127.0.0.1:0
    routes: [{ name: app, match: {}, forward: { cluster: app } }]
clusters:
  app:
    endpoints: ["not-yet.example:80"]
    dns: { servers: ["127.0.0.1:9"] }
`,
  );
  const runtime = new Runtime({ file });
  await runtime.start();
  const r = await request(`http://${runtime.addresses().get("a")}/`);
  expect(r.statusCode).toBe(503);
  await r.body.dump();
  await runtime.close();
});

test("sluice validate exits 0 for a good file and 1 with the messages for a bad one", async () => {
  const good = await run(process.execPath, ["dist/proxy/cli.js", "validate", "config/sidecar.yaml"]);
  expect(good.stdout).toBe("config/sidecar.yaml: ok\n");
  const bad = join(dir, "bad.yaml");
  writeFileSync(bad, "listeners:\n  - name: x\n    address: nowhere\n    routes: []\n");
  const err = await run(process.execPath, ["dist/proxy/cli.js", "validate", bad]).catch(
    (e: { code: number; stderr: string }) => e,
  );
  expect(err).toMatchObject({
    code: 1,
    stderr: `${bad}:3:14: listeners[0].address: must be host:port, with a port from 0 to 65535\n`,
  });
});

test("the sidecar form from environment variables, and --config, both serve", async () => {
  const { spawn } = await import("node:child_process");
  const { freePort, waitForPort } = await import("../bench/peers.js");
  const { startRecorder } = await import("./helpers/upstreams.js");
  const { curl } = await import("./helpers/proxy.js");
  const rec = await startRecorder();
  const p1 = await freePort();
  const sidecar = spawn(process.execPath, ["dist/proxy/cli.js"], {
    env: { ...process.env, SLUICE_LISTEN: `127.0.0.1:${p1}`, SLUICE_UPSTREAM: `127.0.0.1:${rec.port}` },
    stdio: "ignore",
  });
  const p2 = await freePort();
  const file = join(dir, "run.yaml");
  writeFileSync(
    file,
    `listeners:\n  - name: m\n    address: 127.0.0.1:${p2}\n    routes: [{ match: {}, forward: { cluster: r } }]\nclusters:\n  r: { endpoints: ["127.0.0.1:${rec.port}"] }\n`,
  );
  const fromFile = spawn(process.execPath, ["dist/proxy/cli.js", "--config", file], { stdio: "ignore" });
  try {
    await Promise.all([waitForPort(p1), waitForPort(p2)]);
    for (const port of [p1, p2]) {
      const r = await curl(["-s", `http://127.0.0.1:${port}/via-${port}`]);
      expect(JSON.parse(r.out.toString()).url).toBe(`/via-${port}`);
    }
  } finally {
    sidecar.kill();
    fromFile.kill();
    await rec.close();
  }
});

test("flags and a file compile through the same table of defaults: the same listener, route and cluster specs", () => {
  const fromFile = compileConfig(
    loadConfigText(
      `listeners:
  - { name: main, address: "127.0.0.1:8080", routes: [{ name: all, match: {}, forward: { cluster: upstream } }] }
  - { name: raw, address: "127.0.0.1:9000", protocol: tcp, cluster: upstream }
clusters:
  upstream: { endpoints: ["127.0.0.1:3000"] }
`,
      "t.yaml",
      {},
    ),
  );
  const http = compileConfig(
    configFromFlags({ listen: "127.0.0.1:8080", upstream: "127.0.0.1:3000", mode: "http", engine: "splice" }),
  );
  const tcp = compileConfig(
    configFromFlags({ listen: "127.0.0.1:9000", upstream: "127.0.0.1:3000", mode: "tcp", engine: "splice" }),
  );
  expect(http.listeners[0]).toEqual(fromFile.listeners[0]);
  expect(http.clusters).toEqual(fromFile.clusters);
  // One TCP idle timeout, whichever way sluice was started (it was 300 s from flags, 3600 s from a file).
  expect(tcp.listeners[0]?.tcpIdleTimeoutMs).toBe(DEFAULTS.tcp.idleTimeoutMs);
  expect(fromFile.listeners[1]?.tcpIdleTimeoutMs).toBe(DEFAULTS.tcp.idleTimeoutMs);
  expect(http.drainTimeoutMs).toBe(DEFAULTS.drainTimeoutMs);
  expect(http.listeners[0]?.http?.timeouts).toEqual(DEFAULTS.http.timeouts);
  // What runs can't be changed behind the config's back.
  expect(Object.isFrozen(http.listeners[0]?.http?.timeouts)).toBe(true);
});

test("an environment value is data, never YAML; an alias bomb is refused with its place, not thrown", () => {
  const text = `listeners:
  - name: a
    address: 127.0.0.1:8080
    routes:
      - match: {}
        respond:
          status: 200
          body: \${BODY}
    limits:
      max_connections: \${MAXC}
`;
  // Values that are YAML syntax stay strings (or are refused by the schema with a position).
  for (const body of ["[", "*x", "{a: 1}", "&anchor x", "!!binary x"]) {
    const cfg = loadConfigText(text, "t.yaml", { BODY: body, MAXC: "7" });
    expect(cfg.listeners[0]?.routes?.[0]?.respond?.body).toBe(body);
  }
  // One reference still takes the plain types a scalar can have.
  expect(loadConfigText(text, "t.yaml", { BODY: "x", MAXC: "7" }).listeners[0]?.limits?.max_connections).toBe(7);
  expect(problems(text, { BODY: "x", MAXC: "[1]" })).toEqual([
    "t.yaml:10:24: listeners[0].limits.max_connections: must be integer",
  ]);
  // A billion laughs: expansion is bounded, the file is refused.
  const bomb = `a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
listeners: [*f]
`;
  const bombProblems = problems(bomb);
  expect(bombProblems.length).toBeGreaterThan(0);
  expect(bombProblems[0]).toMatch(/^t\.yaml:\d+:\d+: .*alias/i);
});

test("durations and sizes are bounded by what the runtime can honour, and 0 is refused where it would expire at once", () => {
  const listener = (timeouts: string, limits = "") => `drain_timeout: 0
listeners:
  - name: a
    address: 127.0.0.1:8080
    timeouts: { ${timeouts} }
    ${limits}
    routes: [{ match: {}, respond: { status: 200 } }]
`;
  expect(problems(listener("first_byte: 600h"))).toEqual([
    "t.yaml:5:29: listeners[0].timeouts.first_byte: must be at most 2147483647ms (about 24 days): Node's timers can't wait longer",
  ]);
  expect(problems(listener("first_byte: 0"))[0]).toMatch(/^t\.yaml:5:29: listeners\[0\]\.timeouts\.first_byte: must be >= 1/);
  expect(problems(listener("body_idle: 0s"))[0]).toMatch(/body_idle: must be at least 1ms/);
  expect(problems(listener("head: 3000000000"))[0]).toMatch(/head: must be <= 2147483647/);
  expect(problems(listener("head: .inf"))[0]).toMatch(/^t\.yaml:5:23: listeners\[0\]\.timeouts\.head: /);
  expect(problems(listener("head: 24h"))).toEqual([]);
  expect(problems(listener("head: 1s", "limits: { max_head_bytes: 1099511627776 }"))[0]).toMatch(
    /max_head_bytes: must be <= 1048576/,
  );
  expect(
    problems(`listeners: [{ name: a, address: "127.0.0.1:1", routes: [] }]\nsplice: { pipe_size: 4294967296 }\n`)[0],
  ).toMatch(/splice\.pipe_size: must be <= 1073741824/);
});

test("/config shows only what is known to be harmless: header values of an allow-list, URLs without credentials or query values, body lengths", () => {
  const cfg = loadConfigText(
    `admin: { address: "127.0.0.1:9901" }
telemetry: { tracing: { endpoint: "https://u:p4ss@otel.example:4318/v1?api_key=k1" } }
listeners:
  - name: main
    address: 127.0.0.1:8080
    routes:
      - match: { headers: [{ name: x-hub-signature, exact: sig-s3cret }, { name: accept, exact: text/html }] }
        respond: { status: 200, body: "-----BEGIN PRIVATE KEY-----s3cret" }
      - match: { path: { exact: "/cb?token=t0k" } }
        redirect: { location: "https://login.example/cb?access_token=t0k&state=s" }
      - match: {}
        forward:
          cluster: app
          request_headers_add: { x-access-key: s3cret, x-signing-key: s3cret, x-client-creds: s3cret, x-session-id: s3cret, content-type: text/plain }
clusters:
  app: { endpoints: ["127.0.0.1:1"], health_check: { path: "/healthz?token=t0k" } }
`,
    "t.yaml",
    {},
  );
  const text = JSON.stringify(redact(cfg));
  for (const secret of ["s3cret", "t0k", "p4ss", "k1", "BEGIN PRIVATE KEY"]) expect(text, secret).not.toContain(secret);
  for (const shown of [
    "text/html",
    "text/plain",
    "otel.example:4318/v1",
    "login.example/cb",
    "access_token=",
    "/healthz?token=",
    "127.0.0.1:8080",
  ])
    expect(text, shown).toContain(shown);
  expect(isLoopback("127.0.0.1")).toBe(true);
  expect(isLoopback("::ffff:127.0.0.5")).toBe(true);
  expect(isLoopback("::1")).toBe(true);
  expect(isLoopback("10.0.0.7")).toBe(false);
  expect(isLoopback("::ffff:10.0.0.7")).toBe(false);
});

test("a config path that is not a regular file, or is huge, is refused at once without blocking: the running proxy keeps serving", async () => {
  const fifo = join(dir, "fifo.yaml");
  execFileSync("mkfifo", [fifo]);
  const t0 = performance.now();
  await expect(loadConfigFile(fifo)).rejects.toThrow(/fifo\.yaml:0:0: not a regular file/);
  expect(performance.now() - t0).toBeLessThan(5000);
  await expect(loadConfigFile(dir)).rejects.toThrow(/not a regular file/);
  const big = join(dir, "big.yaml");
  writeFileSync(big, `# ${"x".repeat(MAX_CONFIG_BYTES)}\n`);
  await expect(loadConfigFile(big)).rejects.toThrow(/larger than the 4194304-byte limit/);
  // A running proxy whose file is swapped for a FIFO refuses the reload and goes on serving.
  const file = join(dir, "swap.yaml");
  writeFileSync(
    file,
    `listeners: [{ name: a, address: "127.0.0.1:0", routes: [{ match: {}, respond: { status: 200, body: ok } }] }]\n`,
  );
  const runtime = new Runtime({ file });
  await runtime.start();
  rmSync(file);
  execFileSync("mkfifo", [file]);
  const status = await runtime.reload();
  expect(status.ok).toBe(false);
  expect(status.errors[0]).toMatch(/not a regular file/);
  const r = await request(`http://${runtime.addresses().get("a")}/`);
  expect(await r.body.text()).toBe("ok");
  await runtime.close();
});
