// Route lookup cost as tables grow: 10, 1 000 and 10 000 routes (exact paths, prefixes and
// hosts), and what loading and compiling such a config costs. In-process, public tools only.
import os from "node:os";
import { compileConfig } from "../proxy/config/compile.js";
import { loadConfigText } from "../proxy/config/load.js";
import { RouteTable } from "../proxy/routing/route-table.js";

function configText(n: number): string {
  const routes: string[] = [];
  for (let i = 0; i < n; i++) {
    const kind = i % 3;
    const match =
      kind === 0
        ? `{ path: { exact: /svc${i}/status } }`
        : kind === 1
          ? `{ path: { prefix: /svc${i}/ } }`
          : `{ host: h${i}.example.com, path: { prefix: / } }`;
    routes.push(`      - { name: r${i}, match: ${match}, forward: { cluster: app } }`);
  }
  routes.push("      - { name: last, match: {}, forward: { cluster: app } }");
  return `listeners:\n  - name: main\n    address: 127.0.0.1:0\n    routes:\n${routes.join("\n")}\nclusters:\n  app: { endpoints: ["127.0.0.1:1"] }\n`;
}

function main(): void {
  const rows: string[] = [];
  for (const n of [10, 1000, 10_000]) {
    const text = configText(n);
    const t0 = performance.now();
    const cfg = compileConfig(loadConfigText(text, "bench.yaml", {}));
    const table = new RouteTable(cfg.listeners[0]?.routes ?? []);
    const loadMs = performance.now() - t0;
    // Requests spread over the table, and ones that only the last route takes.
    const reqs = Array.from({ length: 1000 }, (_, k) => {
      const i = Math.floor((k * 7919) % n);
      return k % 4 === 3
        ? { method: "GET", path: "/nowhere/else", host: "unknown.example", headers: [] }
        : { method: "GET", path: i % 3 === 2 ? "/" : `/svc${i}/status`, host: `h${i}.example.com`, headers: [] };
    });
    let found = 0;
    const rounds = 200;
    const t1 = performance.now();
    for (let r = 0; r < rounds; r++) for (const q of reqs) if (table.match(q)) found++;
    const perLookupUs = ((performance.now() - t1) * 1000) / (rounds * reqs.length);
    if (found !== rounds * reqs.length) throw new Error("every request should match a route");
    rows.push(`| ${n} | ${(text.length / 1024).toFixed(0)} KiB | ${loadMs.toFixed(0)} | ${perLookupUs.toFixed(2)} |`);
  }
  const cpu = os.cpus();
  console.log(`### Route lookup, ${new Date().toISOString().slice(0, 10)}

Machine: ${cpu.length} × ${cpu[0]?.model ?? "?"}, Node ${process.version}. 200 000 lookups per table, a quarter of them matched only by the last route.

| routes | config | load + compile + index, ms | µs per lookup |
|---|---|---|---|
${rows.join("\n")}
`);
}

main();
