// The layout's rules (docs/architecture.md), read off the import graph of proxy/: which
// folder may import which. A new import that breaks one fails here, with the file and the line.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, normalize, relative } from "node:path";
import { expect, test } from "vitest";

const ROOT = "proxy";

/** Folders each folder may import from (itself always). */
const ALLOWED: Record<string, string[]> = {
  base: [],
  http1: ["base"],
  request: ["upstream"],
  routing: ["http1", "upstream", "config"],
  upstream: ["base", "config", "tls"],
  transfer: ["base"],
  tls: ["base"],
  config: ["base", "http1", "upstream", "tls"],
  observe: ["base", "config", "http1", "request", "transfer"],
  session: ["base", "config", "http1", "observe", "request", "routing", "tls", "transfer", "upstream"],
  control: ["*"],
  tools: ["*"],
  ".": ["*"],
};

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : p.endsWith(".ts") ? [p] : [];
  });
}

/** The folder of proxy/ a path is in ("." for proxy/ itself), or the path outside proxy/. */
function folderOf(path: string): string {
  const rel = relative(ROOT, path);
  if (rel.startsWith("..")) return rel;
  const parts = rel.split("/");
  return parts.length === 1 ? "." : (parts[0] as string);
}

test("every import in proxy/ follows the layout's rules", () => {
  const broken: string[] = [];
  let imports = 0;
  for (const file of files(ROOT)) {
    const from = folderOf(file);
    const lines = readFileSync(file, "utf8").split("\n");
    lines.forEach((line, i) => {
      for (const m of line.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
        imports++;
        const target = normalize(join(dirname(file), m[1] as string));
        const to = folderOf(target);
        if (to.startsWith("..")) {
          broken.push(
            `${file}:${i + 1}: imports ${m[1]} from outside proxy/ (tests and benchmarks import the product, never the reverse)`,
          );
          continue;
        }
        const allowed = ALLOWED[from];
        if (!allowed) {
          broken.push(`${file}: folder ${from} has no rule in this test (and docs/architecture.md)`);
          continue;
        }
        if (to !== from && !allowed.includes("*") && !allowed.includes(to))
          broken.push(`${file}:${i + 1}: ${from}/ may not import ${to}/ (${m[1]})`);
      }
    });
  }
  expect(broken).toEqual([]);
  // The test reads a real graph.
  expect(imports).toBeGreaterThan(100);
});

test("the rules can fail: a codec file importing the transfer layer would be reported", () => {
  const from = folderOf("proxy/http1/head.ts");
  const to = folderOf(normalize(join("proxy/http1", "../transfer/transfer.js")));
  expect([from, to]).toEqual(["http1", "transfer"]);
  expect(ALLOWED[from]?.includes(to)).toBe(false);
});
