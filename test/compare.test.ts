// `sluice compare` on a small bounded workload: a table per body size whose proxied
// rows come from the spans of the measured requests (one each, warm-up excluded), and charts.
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect, test } from "vitest";
import { makeCa } from "./helpers/certs.js";
import { tempDir } from "./helpers/tmp.js";

const run = promisify(execFile);

test("compare prints consistent rows for splice, buffered and direct, and writes a chart", async () => {
  const out = join(tempDir("compare"), "c.html");
  const { stdout } = await run(
    process.execPath,
    [
      "dist/proxy/cli.js",
      "compare",
      "--sizes",
      "1k,512k",
      "--duration",
      "800",
      "--concurrency",
      "2",
      "--requests",
      "150",
      "--out",
      out,
    ],
    {
      env: { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: "" },
      timeout: 60_000,
    },
  );
  const rows = new Map<string, string[]>();
  let size = "";
  for (const line of stdout.split("\n")) {
    const head = /^response body (\d+ [KM]?i?B)/.exec(line);
    if (head) size = head[1] as string;
    const m = /^(direct|splice|buffered)\s+(\d.*)$/.exec(line);
    if (m) rows.set(`${size} ${m[1]}`, (m[2] as string).trim().split(/\s+/));
  }
  expect([...rows.keys()].sort()).toEqual([
    "1 KiB buffered",
    "1 KiB direct",
    "1 KiB splice",
    "512 KiB buffered",
    "512 KiB direct",
    "512 KiB splice",
  ]);
  for (const [key, cols] of rows) {
    const [requests, spans] = cols;
    expect(Number(requests), key).toBeGreaterThan(0);
    // Proxied rows are computed from the spans: one per request.
    if (!key.endsWith("direct")) expect(spans, key).toBe(requests);
  }
  const splicedMiB = (key: string) => Number(rows.get(key)?.[7]);
  expect(splicedMiB("512 KiB splice")).toBeGreaterThan(0);
  expect(splicedMiB("512 KiB buffered")).toBe(0);
  expect(splicedMiB("1 KiB splice")).toBe(0);
  // The run's facts come first; a size below the splice threshold says why nothing was spliced.
  expect(stdout).toMatch(/^sluice \d+\.\d+\.\d+, Node v\d+/);
  expect(stdout).toMatch(/splice threshold 16 KiB, concurrency 2, 3 rounds of \d+ ms per path and size \(paths interleaved\)/);
  expect(stdout).toMatch(/response body 1 KiB \(below the splice threshold: the splice path copies these bodies\)/);
  expect(stdout).toMatch(/response body 512 KiB\n/);
  // Each row gives the spread of its rounds.
  for (const [key, cols] of rows) expect(cols.at(-1), key).toMatch(/^\d+\.\d–\d+\.\d$/);
  const html = readFileSync(out, "utf8");
  expect(html.match(/<svg/g)).toHaveLength(3);
  expect(html).toContain("p99 dashed");
  expect(html).toContain("proxy CPU, s per GiB");
  expect(html).toContain("buffered");
}, 90_000);

test("compare --tls-cert runs both sluice listeners over TLS: the splice row copies, and says why", async () => {
  const dir = tempDir("compare-tls");
  const site = makeCa(dir).issue("site", { san: ["DNS:localhost", "IP:127.0.0.1"] });
  const { stdout } = await run(
    process.execPath,
    [
      "dist/proxy/cli.js",
      "compare",
      ...["--sizes", "512k", "--duration", "600", "--concurrency", "2", "--requests", "60", "--rounds", "2"],
      ...["--tls-cert", site.cert, "--tls-key", site.key, "--splice-threshold", "131072", "--out", join(dir, "c.html")],
    ],
    { env: { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: "" }, timeout: 60_000 },
  );
  // The command's own options reach it (the proxy's options of the same names once took them).
  expect(stdout).toMatch(/splice threshold 128 KiB/);
  expect(stdout).toMatch(/client → sluice over TLS .*Bodies on a TLS leg are copied, never spliced\./);
  expect(stdout).toMatch(/response body 512 KiB \(TLS listener: the splice path copies these bodies\)/);
  const row = (path: string) => (new RegExp(`^${path}\\s+(\\d.*)$`, "m").exec(stdout)?.[1] ?? "").trim().split(/\s+/);
  for (const path of ["splice", "buffered"]) {
    const [requests, spans, , , , , , spliced, copied] = row(path);
    expect(Number(requests), path).toBeGreaterThan(0);
    expect(spans, path).toBe(requests);
    expect(Number(spliced), path).toBe(0);
    expect(Number(copied), path).toBeGreaterThan(0);
  }
}, 90_000);
