// `sluice compare` on a small bounded workload: a table per body size whose proxied
// rows come from the spans (one span per request), and a chart.
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect, test } from "vitest";
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
    const head = /^response body (.+)$/.exec(line);
    if (head) size = head[1] as string;
    const m = /^(direct|splice|buffered)\s+(.*)$/.exec(line);
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
  const html = readFileSync(out, "utf8");
  expect(html).toContain("<svg");
  expect(html).toContain("buffered");
}, 90_000);
