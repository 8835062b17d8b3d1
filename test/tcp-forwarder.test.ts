// Raw TCP mode end to end: curl → sluice (spliced tunnel) → an HTTP upstream.

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, expect, test } from "vitest";
import { formatHostPort } from "../proxy/base/address.js";
import { Metrics } from "../proxy/observe/metrics.js";
import { Admission } from "../proxy/session/admission.js";
import { type RunningForwarder, startTcpForwarder } from "../proxy/session/tcp-listener.js";
import { startDemoUpstream } from "../proxy/tools/demo-upstream.js";
import { spliceAddon } from "../proxy/transfer/native.js";
import { openFds, settle } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
let upstream: Awaited<ReturnType<typeof startDemoUpstream>>;
let fwd: RunningForwarder;
let base = "";

beforeAll(async () => {
  upstream = await startDemoUpstream({ host: "127.0.0.1", port: 0 });
  fwd = await startTcpForwarder({
    listen: { host: "127.0.0.1", port: 0 },
    upstream: upstream.address,
    connectTimeoutMs: 2000,
    tunnels: new Metrics().activeTunnels,
    refused: () => undefined,
    admission: new Admission(),
    idleTimeoutMs: 10_000,
  });
  base = `http://${formatHostPort(fwd.address)}`;
});

afterAll(async () => {
  await fwd.close();
  await upstream.close();
});

async function curl(args: string[]): Promise<Buffer> {
  const { stdout } = await run("curl", ["-sS", "--fail", ...args], { encoding: "buffer", maxBuffer: 256 << 20 });
  return stdout;
}

test("a 100 MiB download through the tunnel matches the upstream's bytes", async () => {
  const size = 100 << 20;
  const [proxied, direct] = await Promise.all([
    curl([`${base}/bytes/${size}`]),
    curl([`http://${formatHostPort(upstream.address)}/bytes/${size}`]),
  ]);
  expect(proxied.length).toBe(size);
  expect(createHash("sha256").update(proxied).digest("hex")).toBe(createHash("sha256").update(direct).digest("hex"));
});

test("an upload comes back intact, and keep-alive requests share one tunnel", async () => {
  const file = join(tempDir("upload"), "body.bin");
  const body = Buffer.alloc(20 << 20);
  for (let i = 0; i < body.length; i += 4) body.writeUInt32LE(i, i);
  writeFileSync(file, body);
  const out = await curl(["--data-binary", `@${file}`, "-H", "content-type: application/octet-stream", `${base}/echo`]);
  expect(createHash("sha256").update(out).digest("hex")).toBe(createHash("sha256").update(body).digest("hex"));
  // Two URLs in one curl run reuse the connection: the second response crosses the same tunnel.
  const two = await curl(["-w", "%{num_connects}\n", `${base}/bytes/10`, `${base}/bytes/20`]);
  expect(two.toString()).toMatch(/^.{10}1\n.{20}0\n$/s);
});

test("no fd or pipe stays behind after 200 short connections", async () => {
  await settle();
  const idle = () => spliceAddon()?.stats().idle ?? 0;
  const before = openFds() - 2 * idle();
  await Promise.all(Array.from({ length: 200 }, (_, i) => curl([`${base}/bytes/${i * 1000}`])));
  await settle(10);
  expect(openFds() - 2 * idle()).toBe(before);
  expect(spliceAddon()?.stats().inUse ?? 0).toBe(0);
});

test("an unreachable upstream closes the client connection", async () => {
  const dead = await startTcpForwarder({
    listen: { host: "127.0.0.1", port: 0 },
    upstream: { host: "127.0.0.1", port: 1 },
    connectTimeoutMs: 1000,
    idleTimeoutMs: 1000,
    tunnels: new Metrics().activeTunnels,
    refused: () => undefined,
    admission: new Admission(),
  });
  const err = await curl([`http://${formatHostPort(dead.address)}/`]).catch((e: { code?: number }) => e);
  // curl: 52 empty reply, 56 reset while receiving; either way no response and closed.
  expect([52, 56]).toContain((err as { code?: number }).code);
  await dead.close();
});
