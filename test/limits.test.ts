// Resource limits and slow clients against a running sluice (the built CLI as a child
// process, so its descriptors can be counted and limited from outside with prlimit).
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { readdirSync, readlinkSync } from "node:fs";
import net from "node:net";
import { Agent, request } from "undici";
import { afterAll, beforeAll, expect, test, vi } from "vitest";
import { Admission } from "../proxy/session/admission.js";
import type { Listening } from "../proxy/session/listening.js";
import { demoBodySha256, startDemoUpstream } from "../proxy/tools/demo-upstream.js";
import { freePort, waitForPort } from "../proxy/tools/ports.js";
import { writeOneListenerConfig } from "./helpers/config.js";
import { hashStream } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";
import { rawExchange } from "./helpers/upstreams.js";

const dir = tempDir("limits");
let demo: Listening;

beforeAll(async () => {
  demo = await startDemoUpstream({ host: "127.0.0.1", port: 0 });
});
afterAll(() => demo.close());

async function startSluice(listenerExtra: string, top = ""): Promise<{ child: ChildProcess; port: number; admin: number }> {
  const { file, port, admin } = await writeOneListenerConfig(dir, {
    top,
    listener: listenerExtra,
    clusters: `  app:
    endpoints: ["127.0.0.1:${demo.address.port}"]
    pool: { max_idle: 0 }`,
  });
  const child = spawn(process.execPath, ["dist/proxy/cli.js", "--config", file], {
    env: { ...process.env, SLUICE_LOG_LEVEL: "error" },
    stdio: "ignore",
  });
  await waitForPort(port);
  await waitForPort(admin);
  return { child, port, admin };
}

const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
const fdList = (pid: number) =>
  readdirSync(`/proc/${pid}/fd`).map((f) => {
    try {
      return `${f}:${readlinkSync(`/proc/${pid}/fd/${f}`)}`;
    } catch {
      return f;
    }
  });
const settle = (ms = 200) => new Promise((r) => setTimeout(r, ms));

async function metric(admin: number, line: RegExp): Promise<number> {
  const r = await request(`http://127.0.0.1:${admin}/metrics`, { reset: true });
  const text = await r.body.text();
  return Number(line.exec(text)?.[1] ?? 0);
}

/** GET /bytes/n on a fresh connection; the body's sha256 and length. */
async function fetchBytes(port: number, n: number): Promise<{ status: number; hash: string; bytes: number }> {
  const r = await request(`http://127.0.0.1:${port}/bytes/${n}`, { reset: true });
  return { status: r.statusCode, ...(await hashStream(r.body)) };
}

test("out of descriptors for pipes (EMFILE), a transfer is copied, counted, and service goes on; splicing resumes when they are back", async () => {
  // No idle pipes kept: every spliced transfer needs new descriptors. A fixed connection limit,
  // so admission does not follow the descriptor limit and the EMFILE path behind it is what is tested.
  const s = await startSluice("", "max_connections: 1000\nsplice: { max_idle_pipes: 0 }");
  const pid = s.child.pid as number;
  const size = 1 << 20;
  const spliced = () =>
    metric(s.admin, /^sluice_body_bytes_total\{engine="splice",direction="response",path="spliced"\} (\d+)$/m);
  const emfile = () => metric(s.admin, /^sluice_splice_fallbacks_total\{reason="EMFILE"\} (\d+)$/m);
  try {
    expect(await fetchBytes(s.port, size)).toEqual({ status: 200, hash: demoBodySha256(size), bytes: size });
    const splicedBefore = await spliced();
    expect(splicedBefore).toBeGreaterThan(0);
    await settle();
    const base = fds(pid);
    // Room for the client and the upstream connection, none for a pipe and its polls.
    // Only the soft limit moves: raising a hard limit again is not permitted everywhere.
    const [soft] = execFileSync("prlimit", ["--pid", String(pid), "--nofile", "--output=SOFT", "--noheadings"], {
      encoding: "utf8",
    })
      .trim()
      .split(/\s+/);
    execFileSync("prlimit", ["--pid", String(pid), `--nofile=${base + 2}:`]);
    for (let i = 0; i < 5; i++)
      expect(await fetchBytes(s.port, size)).toEqual({ status: 200, hash: demoBodySha256(size), bytes: size });
    await settle();
    expect(await emfile()).toBe(5);
    expect(await spliced()).toBe(splicedBefore);

    execFileSync("prlimit", ["--pid", String(pid), `--nofile=${soft}:`]);
    expect(await fetchBytes(s.port, size)).toEqual({ status: 200, hash: demoBodySha256(size), bytes: size });
    expect(await spliced()).toBeGreaterThan(splicedBefore);
    expect(await emfile()).toBe(5);
    for (let i = 0; i < 30 && fds(pid) !== base; i++) await settle(100);
    expect(fds(pid)).toBe(base);
  } finally {
    s.child.kill("SIGKILL");
  }
});

test("out of descriptors for upstream connections (EMFILE): 503 with Retry-After, logged once, not blamed on the endpoint; service resumes", async () => {
  const { file, port, admin } = await writeOneListenerConfig(dir, {
    // Admission not derived from the descriptor limit: the EMFILE path behind it is what is tested.
    top: "max_connections: 1000",
    clusters: `  app:
    endpoints: ["127.0.0.1:${demo.address.port}"]
    pool: { max_idle: 0 }`,
  });
  let out = "";
  const child = spawn(process.execPath, ["dist/proxy/cli.js", "--config", file], {
    env: { ...process.env, SLUICE_LOG_LEVEL: "warn", SLUICE_LOG_FORMAT: "json" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  const pid = child.pid as number;
  try {
    await waitForPort(port);
    await waitForPort(admin);
    expect((await fetchBytes(port, 1000)).status).toBe(200);
    await settle();
    const [soft] = execFileSync("prlimit", ["--pid", String(pid), "--nofile", "--output=SOFT", "--noheadings"], {
      encoding: "utf8",
    })
      .trim()
      .split(/\s+/);
    // Room for the client's connection, none for the upstream one: the limit is on descriptor
    // numbers, and a new descriptor takes the lowest free number, so allow exactly one free slot.
    const used = new Set(readdirSync(`/proc/${pid}/fd`).map(Number));
    const free: number[] = [];
    for (let n = 0; free.length < 2; n++) if (!used.has(n)) free.push(n);
    execFileSync("prlimit", ["--pid", String(pid), `--nofile=${free[1]}:`]);
    for (let i = 0; i < 10; i++) {
      const r = await request(`http://127.0.0.1:${port}/bytes/1000`, { reset: true });
      expect(r.statusCode).toBe(503);
      expect(r.headers["retry-after"]).toBe("1");
      await r.body.dump();
    }
    execFileSync("prlimit", ["--pid", String(pid), `--nofile=${soft}:`]);
    expect((await fetchBytes(port, 1000)).status).toBe(200);
    // Said once (rate-limited), counted as sluice's own overload, never as the endpoint's failure.
    expect(out.match(/out of file descriptors/g)?.length).toBe(1);
    expect(await metric(admin, /^sluice_upstream_failures_total\{cluster="app",kind="connect_failure"\} (\d+)$/m)).toBe(0);
    expect(
      await metric(
        admin,
        /^sluice_http_request_duration_seconds_count\{engine="[a-z]+",route="app",status_class="5xx",outcome="overloaded"\} (\d+)$/m,
      ),
    ).toBe(10);
  } finally {
    child.kill("SIGKILL");
  }
});

/** Opens `n` connections that send nothing and waits until sluice counts them as served. */
async function holdConnections(port: number, admin: number, n: number, already = 0): Promise<net.Socket[]> {
  const held = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<net.Socket>((res) => {
          const s = net.connect(port, "127.0.0.1", () => res(s));
          s.on("error", () => undefined);
        }),
    ),
  );
  const active = () => metric(admin, /^sluice_active_connections\{listener="[^"]+"\} (\d+)$/m);
  for (let i = 0; i < 100 && (await active()) !== already + n; i++) await settle(50);
  expect(await active()).toBe(already + n);
  return held;
}

test("a fixed max_connections for the process: over it a connection waits and is served when room comes, or gets 503 with Retry-After", async () => {
  const s = await startSluice("", "max_connections: 3");
  try {
    const held = await holdConnections(s.port, s.admin, 3);
    // A fourth waits (paused, unread) and is served once one of the three goes.
    const fourth = rawExchange(s.port, "GET /bytes/10 HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n", 10_000);
    await settle(300);
    held[0]?.destroy();
    const served = await fourth;
    expect(served.text).toMatch(/^HTTP\/1\.1 200 /);
    expect(served.closed).toBe(true);
    // Full again, and no room comes: 503 with Retry-After once the wait is over, then closed.
    held.push(...(await holdConnections(s.port, s.admin, 1, 2)));
    const refused = await rawExchange(s.port, "GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n", 10_000);
    expect(refused.text).toMatch(/^HTTP\/1\.1 503 Service Unavailable\r\n/);
    expect(refused.text).toMatch(/^retry-after: 1\r$/im);
    expect(refused.closed).toBe(true);
    expect(await metric(s.admin, /^sluice_connections_refused_total\{listener="[^"]+",reason="process_limit"\} (\d+)$/m)).toBe(1);
    for (const c of held) c.destroy();
    expect((await fetchBytes(s.port, 1000)).status).toBe(200);
  } finally {
    s.child.kill("SIGKILL");
  }
});

test("admission counts again when max_connections changes between auto and a number: those in keep their place, the queue moves", async () => {
  // A descriptor limit of 77: 13 descriptors for clients, two HTTP connections (6 each) and one waiting.
  const admission = new Admission(() => 77, 60_000);
  const served: net.Socket[] = [];
  const refused: string[] = [];
  const server = net.createServer({ pauseOnConnect: true }, (s) =>
    admission.admit(
      s,
      "http",
      () => {
        // Served: read, so a client that leaves is seen to leave.
        served.push(s);
        s.resume();
      },
      (reason) => {
        refused.push(reason);
        s.destroy();
      },
    ),
  );
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const clients = await Promise.all(
    [0, 1, 2].map(
      () =>
        new Promise<net.Socket>((r) => {
          const c = net.connect(port, "127.0.0.1", () => r(c));
        }),
    ),
  );
  await vi.waitFor(() => expect(served.length + admission.queued()).toBe(3));
  expect(served).toHaveLength(2);
  expect(admission.inUse()).toBe(2 * 6 + 1);
  // Three connections allowed now, in connections: the one waiting comes in.
  admission.setLimit(3);
  expect(served).toHaveLength(3);
  expect(admission.inUse()).toBe(3);
  // Back to descriptors: 18 held, over the budget of 13: a fourth has no room even to wait.
  admission.setLimit("auto");
  expect(admission.inUse()).toBe(18);
  const fourth = net.connect(port, "127.0.0.1");
  fourth.on("error", () => undefined);
  await vi.waitFor(() => expect(refused).toEqual(["fd_limit"]));
  // Two leave: 6 held, room for a fifth at once.
  clients[0]?.destroy();
  clients[1]?.destroy();
  await vi.waitFor(() => expect(admission.inUse()).toBe(6));
  const fifth = net.connect(port, "127.0.0.1");
  await vi.waitFor(() => expect(served).toHaveLength(4));
  expect(admission.inUse()).toBe(12);
  for (const c of [...clients, fourth, fifth]) c.destroy();
  server.close();
});

test("under a low descriptor limit (ulimit -n 124), 40 parallel downloads are admitted ten at a time: each gets its whole body or a 503, none fails for want of a descriptor", async () => {
  const { file, port, admin } = await writeOneListenerConfig(dir, {
    clusters: `  app:
    endpoints: ["127.0.0.1:${demo.address.port}"]
    pool: { max_idle: 0 }`,
  });
  let out = "";
  // 124 - 64 kept aside = 60 descriptors: ten HTTP connections at 6 each.
  const child = spawn("prlimit", ["--nofile=124:124", process.execPath, "dist/proxy/cli.js", "--config", file], {
    env: { ...process.env, SLUICE_LOG_LEVEL: "warn", SLUICE_LOG_FORMAT: "json" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  try {
    await waitForPort(port);
    await waitForPort(admin);
    // The connections that found the port open are served at some point, maybe after the forty
    // below arrive, and then hold a share of the budget: one request, then no connection left.
    expect((await fetchBytes(port, 1000)).status).toBe(200);
    await vi.waitFor(async () => expect(await metric(admin, /^sluice_active_connections\{[^}]*\} (\d+)$/m)).toBe(0), {
      timeout: 10_000,
      interval: 50,
    });
    // Bodies larger than the sockets' buffers, read only once every answer's head has come: the
    // admitted downloads hold their connections while the rest arrive, so some must wait
    // however fast or slow this machine is (a fast transfer could otherwise end before the
    // next connection came, and nothing would wait).
    const size = 32 << 20;
    const answers = await Promise.all(
      Array.from({ length: 40 }, () => request(`http://127.0.0.1:${port}/bytes/${size}`, { reset: true })),
    );
    const results = await Promise.all(
      answers.map(async (r) => {
        if (r.statusCode === 503) {
          expect(r.headers["retry-after"]).toBe("1");
          await r.body.dump();
          return "refused";
        }
        expect(r.statusCode).toBe(200);
        expect(await hashStream(r.body)).toEqual({ hash: demoBodySha256(size), bytes: size });
        return "served";
      }),
    );
    const served = results.filter((r) => r === "served").length;
    expect(served, out).toBeGreaterThanOrEqual(10);
    // Nothing ran out: no pipe fallback, no upstream connection refused for want of a descriptor.
    expect(await metric(admin, /^sluice_splice_fallbacks_total\{reason="EMFILE"\} (\d+)$/m)).toBe(0);
    expect(out).not.toMatch(/out of file descriptors/);
    // Some waited: said once, and what was refused is counted.
    expect(out.match(/file descriptor limit \(ulimit -n\) is nearly reached/g)?.length).toBe(1);
    expect(await metric(admin, /^sluice_connections_refused_total\{listener="[^"]+",reason="fd_limit"\} (\d+)$/m)).toBe(
      40 - served,
    );
    expect((await fetchBytes(port, 1000)).status).toBe(200);
  } finally {
    child.kill("SIGKILL");
  }
});

test("a thousand idle connections do not stop service to others, and are cut by the head timeout; slowloris heads get 408", async () => {
  const s = await startSluice("    timeouts: { head: 2s }");
  const pid = s.child.pid as number;
  try {
    await settle();
    const base = fds(pid);
    const before = fdList(pid);
    const idle: net.Socket[] = [];
    const closedAt: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < 1000; i++) {
      const c = net.connect(s.port, "127.0.0.1");
      c.on("error", () => undefined);
      c.on("close", () => closedAt.push(performance.now() - t0));
      idle.push(c);
    }
    await Promise.all(idle.map((c) => new Promise((r) => (c.connecting ? c.once("connect", r) : r(null)))));
    // Service goes on meanwhile, at normal speed.
    for (let i = 0; i < 20; i++) {
      const t = performance.now();
      expect((await fetchBytes(s.port, 1000)).status).toBe(200);
      expect(performance.now() - t).toBeLessThan(500);
    }
    // A slowloris head, one byte every 200 ms, never completes within the head timeout.
    const slow = net.connect(s.port, "127.0.0.1");
    let answer = "";
    slow.on("data", (d: Buffer) => {
      answer += d.toString("latin1");
    });
    const slowClosed = new Promise((r) => slow.once("close", r));
    slow.on("error", () => undefined);
    const head = "GET /bytes/10 HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    const drip = setInterval(() => {
      const i = Number(slow.bytesWritten);
      if (i < head.length && !slow.destroyed) slow.write(head[i] as string);
    }, 200);
    await slowClosed;
    clearInterval(drip);
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);

    // Every idle connection is closed by the proxy within the head timeout (plus slack).
    for (let i = 0; i < 50 && closedAt.length < 1000; i++) await settle(100);
    expect(closedAt).toHaveLength(1000);
    expect(Math.max(...closedAt)).toBeLessThan(5000);
    for (let i = 0; i < 30 && fds(pid) !== base; i++) await settle(100);
    expect(fdList(pid).filter((f) => !before.includes(f))).toEqual([]);
    expect(fds(pid)).toBe(base);
  } finally {
    s.child.kill("SIGKILL");
  }
});

test("a request body that stalls is cut after body_idle, and nothing stays behind", async () => {
  // No idle pipes kept, so that any descriptor left is a leak.
  const s = await startSluice("    timeouts: { body_idle: 1s }", "splice: { max_idle_pipes: 0 }");
  const pid = s.child.pid as number;
  try {
    // One whole exchange first: what a process sets up once, on its first request, is not a leak.
    expect((await fetchBytes(s.port, 1000)).status).toBe(200);
    await settle();
    const base = fds(pid);
    const before = fdList(pid);
    const c = net.connect(s.port, "127.0.0.1");
    c.on("error", () => undefined);
    c.on("data", () => undefined);
    await new Promise((r) => c.once("connect", r));
    c.write(`POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: ${1 << 20}\r\n\r\n`);
    c.write(Buffer.alloc(10_000, 1));
    const t0 = performance.now();
    await new Promise((r) => c.once("close", r));
    const took = performance.now() - t0;
    expect(took).toBeGreaterThan(800);
    expect(took).toBeLessThan(4000);
    for (let i = 0; i < 30 && fds(pid) !== base; i++) await settle(100);
    // By name first, so a failure says what stayed.
    expect(fdList(pid).filter((f) => !before.includes(f))).toEqual([]);
    expect(fds(pid)).toBe(base);
  } finally {
    s.child.kill("SIGKILL");
  }
});

// Over the per-user pipe page limit (fs.pipe-user-pages-soft, 16384 pages: 64 pipes of 1 MiB)
// the kernel refuses to grow new pipes; a user without CAP_SYS_RESOURCE meets it with ~70
// concurrent spliced transfers. Needs root (to run sluice as another user) and python3.
const asRoot = process.getuid?.() === 0;
test.skipIf(!asRoot)(
  "over the per-user pipe page limit, pipes stay small and every transfer is still spliced intact",
  async () => {
    const port = await freePort();
    // A uid of its own: the limit counts every pipe of the user, and another process of a shared
    // user (nobody) would take pages from this one.
    const uid = 2_000_000_000 + (process.pid % 1_000_000);
    const child = spawn(
      "setpriv",
      [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", process.execPath, "dist/proxy/cli.js"],
      {
        env: {
          ...process.env,
          SLUICE_LOG_LEVEL: "error",
          SLUICE_LISTEN: `127.0.0.1:${port}`,
          SLUICE_UPSTREAM: `127.0.0.1:${demo.address.port}`,
        },
        stdio: "ignore",
      },
    );
    try {
      await waitForPort(port);
      const pipeSizes = () =>
        JSON.parse(execFileSync("python3", ["test/helpers/pipe-sizes.py", String(child.pid)], { encoding: "utf8" })) as Record<
          string,
          number
        >;
      const smallFds = (sizes: Record<string, number>) =>
        Object.entries(sizes)
          .filter(([s]) => Number(s) < 1 << 20)
          .reduce((a, [, c]) => a + c, 0);
      // Node's own pipes (signals, wake-ups) are there before any transfer.
      const own = smallFds(pipeSizes());
      const size = 16 << 20;
      const n = 100;
      const dispatcher = new Agent({ connections: n });
      // Every response is started and held unread, so each transfer keeps its pipe.
      const responses = await Promise.all(
        Array.from({ length: n }, () => request(`http://127.0.0.1:${port}/bytes/${size}`, { dispatcher })),
      );
      // Every transfer holds its pipe once it has started; on a slow machine that takes a while.
      const count = () => {
        const sizes = pipeSizes();
        // Pipes have two descriptors each: up to 64 grew to 1 MiB, the rest kept what the kernel gave.
        return { big: (sizes["1048576"] ?? 0) / 2, small: (smallFds(sizes) - own) / 2 };
      };
      let { big, small } = count();
      for (let i = 0; i < 600 && big + small < n; i++) {
        await settle(100);
        ({ big, small } = count());
      }
      expect(big + small).toBeGreaterThanOrEqual(n);
      expect(big).toBeGreaterThan(50);
      expect(big).toBeLessThanOrEqual(64);
      expect(small).toBeGreaterThan(10);
      const want = demoBodySha256(size);
      const got = await Promise.all(responses.map(async (r) => (await hashStream(r.body)).hash));
      expect(got.filter((g) => g !== want)).toEqual([]);
      await dispatcher.close();
    } finally {
      child.kill("SIGKILL");
    }
  },
  180_000,
);

test("idle pipes are bounded by the memory they hold (8 MiB by default) and given back over time", async () => {
  const s = await startSluice("");
  try {
    const idle = () => metric(s.admin, /^sluice_pipe_pool_pipes\{state="idle"\} (\d+)$/m);
    // 30 spliced downloads at once: 30 pipes in use, then back to the pool.
    const size = 2 << 20;
    const got = await Promise.all(Array.from({ length: 30 }, () => fetchBytes(s.port, size)));
    expect(got.filter((g) => g.hash !== demoBodySha256(size))).toEqual([]);
    const after = await idle();
    expect(after).toBeGreaterThan(0);
    // 1 MiB pipes: at most 8 stay idle, not the 30 that were in use.
    expect(after).toBeLessThanOrEqual(8);
    // With nothing to do, they are closed: half every 5 s.
    for (let i = 0; i < 120 && (await idle()) > 0; i++) await settle(500);
    expect(await idle()).toBe(0);
  } finally {
    s.child.kill("SIGKILL");
  }
}, 120_000);
