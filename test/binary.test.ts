// The standalone binary (`npm run build:binary`): copied alone into an empty directory and
// run with an empty environment (no PATH to node, no node_modules), it validates a config,
// proxies a spliced 100 MiB body with the addon it carries, runs workers, and drains on SIGTERM.
import { execFile, spawn } from "node:child_process";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { request } from "undici";
import { afterAll, beforeAll, expect, test, vi } from "vitest";
import type { Listening } from "../proxy/session/listening.js";
import { demoBodySha256, startDemoUpstream } from "../proxy/tools/demo-upstream.js";
import { waitForPort } from "../proxy/tools/ports.js";
import { writeOneListenerConfig } from "./helpers/config.js";
import { hashStream } from "./helpers/net.js";
import { hasPodman, makeBaseImages, podman, startContainer } from "./helpers/podman.js";
import { tempDir } from "./helpers/tmp.js";
import { spanCounter } from "./helpers/traced-proxy.js";

const run = promisify(execFile);
const dir = tempDir("binary");
const bin = join(dir, "sluice");
const scratch = join(dir, "tmp");
let demo: Listening;

beforeAll(async () => {
  await run("npm", ["run", "build:binary"], { timeout: 300_000 });
  copyFileSync("dist/sluice", bin);
  mkdirSync(scratch);
  demo = await startDemoUpstream({ host: "127.0.0.1", port: 0 });
}, 300_000);

afterAll(() => demo.close());

// Nothing from this machine's Node set-up: no PATH, no NODE_* variables, a private TMPDIR.
const bare = { TMPDIR: scratch, SLUICE_LOG_FORMAT: "json" };

function config(top = ""): Promise<{ file: string; port: number; admin: number }> {
  return writeOneListenerConfig(dir, { top, clusters: `  app: { endpoints: ["127.0.0.1:${demo.address.port}"] }` });
}

test("it knows its version and validates configs with the schema it carries", async () => {
  const pkg = JSON.parse(readFileSync("package.json", "utf8"));
  // The version, Node's, the platform, and that the addon it carries loads.
  expect((await run(bin, ["--version"], { env: bare, cwd: dir })).stdout.trim()).toBe(
    `sluice ${pkg.version} (Node ${process.version}, linux-${process.arch}; splice addon loaded)`,
  );
  const { file } = await config();
  expect((await run(bin, ["validate", file], { env: bare, cwd: dir })).stdout).toBe(`${file}: ok\n`);
  const bad = join(dir, "bad.yaml");
  writeFileSync(bad, "listeners:\n  - name: x\n    address: nowhere\n");
  const err = await run(bin, ["validate", bad], { env: bare, cwd: dir }).catch((e: { code: number; stderr: string }) => e);
  expect(err).toMatchObject({ code: 1 });
  expect((err as { stderr: string }).stderr).toMatch(
    /bad\.yaml:3:14: listeners\[0\]\.address: must be host:port, with a port from 0 to 65535/,
  );
});

test("alone in a directory it proxies a spliced 100 MiB body, with workers too, and exits 0 on SIGTERM leaving nothing in TMPDIR", async () => {
  for (const workers of ["1", "2"]) {
    const { file, port, admin } = await config();
    let logs = "";
    const child = spawn(bin, ["--config", file, "--workers", workers], {
      env: bare,
      cwd: dir,
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.on("data", (d: Buffer) => {
      logs += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      logs += d.toString();
    });
    const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
    await waitForPort(port);
    await waitForPort(admin);

    const size = 100 << 20;
    const r = await request(`http://127.0.0.1:${port}/bytes/${size}`);
    expect(await hashStream(r.body)).toEqual({ hash: demoBodySha256(size), bytes: size });

    const metrics = await (await request(`http://127.0.0.1:${admin}/metrics`)).body.text();
    const spliced = Number(
      /^sluice_body_bytes_total\{engine="splice",direction="response",path="spliced"\} (\d+)$/m.exec(metrics)?.[1],
    );
    expect(spliced).toBeGreaterThan(size * 0.99);

    child.kill("SIGTERM");
    expect(await exited).toBe(0);
    expect(logs).not.toMatch(/splice unavailable|Warning/);
    expect(logs.match(/"msg":"splice engine loaded"/g)).toHaveLength(Number(workers));
    // The addon was written to a private directory only long enough to be loaded.
    expect(readdirSync(scratch)).toEqual([]);
  }
});

test("its span export worker, carried inside, sends every span to the collector", async () => {
  const collector = await spanCounter();
  const { file, port, admin } = await config(
    `telemetry:\n  tracing: { endpoint: "http://127.0.0.1:${collector.port}", sampler_ratio: 1 }\n`,
  );
  let logs = "";
  const child = spawn(bin, ["--config", file], { env: bare, cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  for (const s of [child.stdout, child.stderr])
    s.on("data", (d: Buffer) => {
      logs += d.toString();
    });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  try {
    await waitForPort(port);
    await waitForPort(admin);
    for (let i = 0; i < 20; i++) await (await request(`http://127.0.0.1:${port}/bytes/1024`)).body.arrayBuffer();
    // A server and a client span per request, sent from the worker within its batch delay.
    await vi.waitFor(() => expect(collector.spans()).toBe(40), { timeout: 10_000 });
    expect(logs).toMatch(/"exportThread":"worker"/);
  } finally {
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
    collector.close();
  }
  expect(logs).not.toMatch(/span export worker (stopped|failed)/);
});

test.skipIf(!hasPodman)(
  "on a read-only root filesystem with no /tmp it says once how to splice; given SLUICE_ADDON_DIR (an exec-allowed tmpfs) it splices",
  async () => {
    // The slim base image (made from Debian's packages where it can't be pulled), read-only,
    // no /tmp; /dev/shm is noexec there as in most pods. The binary and the config come in read-only.
    await makeBaseImages();
    const base = "docker.io/library/node:20-bookworm-slim";
    const name = `sluice-ro-${process.pid}`;
    const size = 10 << 20;
    for (const withDir of [false, true]) {
      const { file, port, admin } = await config();
      const args = [
        "--read-only",
        "--read-only-tmpfs=false",
        "--user",
        "1000:1000",
        "-v",
        `${bin}:/opt/sluice:ro`,
        "-v",
        `${file}:/etc/sluice.yaml:ro`,
        "-e",
        "SLUICE_LOG_FORMAT=json",
        ...(withDir ? ["--tmpfs", "/run/sluice:rw,exec,size=16m,mode=1777", "-e", "SLUICE_ADDON_DIR=/run/sluice"] : []),
        base,
        "/opt/sluice",
        "--config",
        "/etc/sluice.yaml",
      ];
      await startContainer(name, args);
      try {
        await waitForPort(port, 600);
        await waitForPort(admin, 600);
        const r = await request(`http://127.0.0.1:${port}/bytes/${size}`);
        expect(await hashStream(r.body)).toEqual({ hash: demoBodySha256(size), bytes: size });
        const metrics = await (await request(`http://127.0.0.1:${admin}/metrics`)).body.text();
        const spliced = Number(
          /^sluice_body_bytes_total\{engine="splice",direction="response",path="spliced"\} (\d+)$/m.exec(metrics)?.[1] ?? 0,
        );
        const logs = await podman(["logs", name]);
        if (withDir) {
          expect(spliced).toBeGreaterThan(size * 0.99);
          expect(logs).not.toMatch(/splice unavailable/);
        } else {
          // Copied, and said once, with what to do.
          expect(spliced).toBe(0);
          expect(logs.match(/splice unavailable/g)).toHaveLength(1);
          expect(logs).toMatch(/set SLUICE_ADDON_DIR/);
        }
      } finally {
        await podman(["rm", "-f", name]).catch(() => undefined);
      }
    }
  },
  900_000,
);
