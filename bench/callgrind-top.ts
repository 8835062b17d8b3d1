// Where a callgrind count went, by function, with V8's compiled code named: callgrind knows
// JIT-compiled JavaScript only by address, and V8's --perf-basic-prof map says which function
// each address range is. Prints the functions with the most instructions of their own
// (exclusive) and with their callees (inclusive), divided by the requests counted.
//   node dist/bench/callgrind-top.js <dir kept by BENCH_PROFILE>/<row> [thread file, default cg.out-01] [requests, default 3000] [rows, default 40]
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

const [dir, file = "cg.out-01", perArg = "3000", rowsArg = "40"] = process.argv.slice(2);
if (!dir) throw new Error("usage: callgrind-top <dir> [file] [requests] [rows]");
const per = Number(perArg);

/** V8's map: start, size and name of each piece of compiled code, sorted by start. */
const ranges: Array<[number, number, string]> = [];
const mapFile = join(dir, "perf.map");
if (existsSync(mapFile))
  for (const line of readFileSync(mapFile, "utf8").split("\n")) {
    const m = /^([0-9a-f]+) ([0-9a-f]+) (.*)$/.exec(line);
    if (m) ranges.push([Number.parseInt(m[1] as string, 16), Number.parseInt(m[2] as string, 16), m[3] as string]);
  }
ranges.sort((a, b) => a[0] - b[0]);

/** The map's name for an address callgrind printed as a function name, or the name itself. */
function nameOf(fn: string): string {
  const m = /^0x([0-9a-f]+)$/.exec(fn);
  if (!m) return fn;
  const a = Number.parseInt(m[1] as string, 16);
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid] as [number, number, string];
    if (a < r[0]) hi = mid - 1;
    else if (a >= r[0] + r[1]) lo = mid + 1;
    else return r[2];
  }
  return "(unnamed JIT code)";
}

const names = new Map<string, string>();
const self = new Map<string, number>();
const incl = new Map<string, number>();
const add = (m: Map<string, number>, k: string, v: number) => m.set(k, (m.get(k) ?? 0) + v);
let fn = "";
let callCost = false;
for (const line of readFileSync(join(dir, file), "utf8").split("\n")) {
  const f = /^fn=\((\d+)\)(?: (.*))?$/.exec(line);
  if (f) {
    if (f[2] !== undefined) names.set(f[1] as string, nameOf(f[2]));
    fn = names.get(f[1] as string) ?? "?";
    continue;
  }
  const c = /^cfn=\((\d+)\)(?: (.*))?$/.exec(line);
  if (c) {
    if (c[2] !== undefined) names.set(c[1] as string, nameOf(c[2]));
    continue;
  }
  if (line.startsWith("calls=")) {
    callCost = true;
    continue;
  }
  if (!/^[0-9+\-*]/.test(line)) continue;
  const parts = line.trim().split(/\s+/);
  const cost = Number(parts[parts.length - 1]);
  if (!Number.isFinite(cost) || parts.length < 2) continue;
  // The line after calls= is the call's inclusive cost: the caller's inclusive, not its own.
  if (callCost) callCost = false;
  else add(self, fn, cost);
  add(incl, fn, cost);
}
const rows = Number(rowsArg);
const show = (title: string, m: Map<string, number>) => {
  console.log(`\n${title} (instructions per request)`);
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, rows))
    console.log(`${(v / per).toFixed(0).padStart(8)}  ${k.slice(0, 150)}`);
};
const total = [...self.values()].reduce((a, b) => a + b, 0);
console.log(`total ${(total / per).toFixed(0)} per request`);
show("exclusive", self);
show("inclusive", incl);
