// Where splicing starts to pay: the same response sizes through sluice forced to splice
// every body and forced to copy every body, side by side. Picks the default threshold.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { freePort, startNginx, waitForPort, writeTestFile } from "./peers.js";

const run = promisify(execFile);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const SIZES = [4, 16, 32, 64, 128, 256, 1024].map((k) => k * 1024);
const cli = fileURLToPath(new URL("../proxy/cli.js", import.meta.url));

function cpu(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function sluice(upstream: number, threshold: number): Promise<{ port: number; child: ChildProcess }> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    [cli, "--listen", `127.0.0.1:${port}`, "--upstream", `127.0.0.1:${upstream}`, "--splice-threshold", String(threshold)],
    {
      stdio: "ignore",
      env: { ...process.env, SLUICE_LOG_LEVEL: "warn" },
    },
  );
  await waitForPort(port);
  return { port, child };
}

async function wrk(port: number, path: string): Promise<number> {
  const { stdout } = await run("wrk", ["-t1", "-c20", `-d${SECONDS}s`, `http://127.0.0.1:${port}${path}`]);
  if (/Non-2xx|Socket errors/.test(stdout)) throw new Error(stdout);
  return Number(/(\d+) requests in/.exec(stdout)?.[1]);
}

async function main() {
  const upstream = await startNginx();
  for (const s of SIZES) writeTestFile(join(upstream.root, `${s}.bin`), s);
  const splice = await sluice(upstream.port, 1);
  const copy = await sluice(upstream.port, 2 ** 40);
  const rows: string[] = [];
  try {
    for (const size of SIZES) {
      const per: Record<string, { rps: number[]; us: number[] }> = { splice: { rps: [], us: [] }, copy: { rps: [], us: [] } };
      for (let r = 0; r < RUNS; r++) {
        for (const [name, p] of r % 2
          ? ([
              ["copy", copy],
              ["splice", splice],
            ] as const)
          : ([
              ["splice", splice],
              ["copy", copy],
            ] as const)) {
          const c0 = cpu(p.child.pid as number);
          const n = await wrk(p.port, `/${size}.bin`);
          per[name]?.rps.push(n / SECONDS);
          per[name]?.us.push(((cpu(p.child.pid as number) - c0) / n) * 1e6);
        }
      }
      const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
      const s = per.splice as { rps: number[]; us: number[] };
      const c = per.copy as { rps: number[]; us: number[] };
      rows.push(
        `| ${size / 1024} KiB | ${med(s.rps).toFixed(0)} | ${med(c.rps).toFixed(0)} | ${med(s.us).toFixed(0)} | ${med(c.us).toFixed(0)} |`,
      );
      process.stderr.write(`${rows.at(-1)}\n`);
    }
  } finally {
    splice.child.kill();
    copy.child.kill();
    await upstream.stop();
  }
  console.log(
    `| response body | req/s spliced | req/s copied | proxy CPU µs/req spliced | proxy CPU µs/req copied |\n|---|---|---|---|---|\n${rows.join("\n")}`,
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
