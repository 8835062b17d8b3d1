// Measuring tools shared by the benchmarks: process CPU and memory from /proc, wrk
// runs parsed into numbers, medians.
import { execFile, execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { promisify } from "node:util";

const run = promisify(execFile);
const GiB = 1 << 30;

export function has(cmd: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

export function processTree(root: number): number[] {
  try {
    const kids = execFileSync("pgrep", ["-P", String(root)])
      .toString()
      .trim()
      .split("\n")
      .filter(Boolean)
      .map(Number);
    return [root, ...kids.flatMap(processTree)];
  } catch {
    return [root];
  }
}

export function cpuSeconds(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(f[11]) + Number(f[12]);
    } catch {
      /* exited */
    }
  }
  return ticks / 100;
}

/** Each live thread of `pid` with the text of its /proc file `name` (stat, schedstat...), by thread id. */
function threadFiles(pid: number, name: string): Map<number, string> {
  const out = new Map<number, string>();
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      out.set(Number(tid), readFileSync(`/proc/${pid}/task/${tid}/${name}`, "utf8"));
    } catch {
      // The thread ended meanwhile.
    }
  }
  return out;
}

/** CPU seconds of each thread of `pid` so far (user + system), by thread id. */
export function threadCpuSeconds(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const [tid, stat] of threadFiles(pid, "stat")) {
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    out.set(tid, (Number(f[11]) + Number(f[12])) / 100);
  }
  return out;
}

/** The most CPU any thread but `pid`'s main one took between two threadCpuSeconds() readings. */
export function busiestOtherThread(pid: number, before: Map<number, number>, after: Map<number, number>): number {
  let most = 0;
  for (const [tid, s] of after) if (tid !== pid) most = Math.max(most, s - (before.get(tid) ?? 0));
  return most;
}

/**
 * Seconds the threads of `pids` have spent runnable but waiting for a CPU so far (the second field
 * of each thread's /proc schedstat, in ns). On a machine that client, upstream and proxy share, a
 * proxy whose p99 is long while it waits here is waiting for the scheduler, not for itself.
 * Threads that ended between two readings are not counted: a proxy's threads live as long as it.
 */
export function runQueueSeconds(pids: number[]): number {
  let ns = 0;
  for (const pid of pids) for (const text of threadFiles(pid, "schedstat").values()) ns += Number(text.split(" ")[1] ?? 0);
  return ns / 1e9;
}

/** Steal time of the whole machine so far, in seconds (neighbours taking this VM's CPU). */
export function stealSeconds(): number {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]?.trim().split(/\s+/) ?? [];
  return Number(cpu[8] ?? 0) / 100;
}

export function rssBytes(pids: number[]): number {
  let kb = 0;
  for (const pid of pids) {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      kb += Number(m?.[1] ?? 0);
    } catch {
      /* exited */
    }
  }
  return kb * 1024;
}

export function wrkUnits(v: string, unit: string): number {
  const n = Number(v);
  const scale: Record<string, number> = { us: 0.001, ms: 1, s: 1000, B: 1, KB: 1024, MB: 1 << 20, GB: GiB };
  return n * (scale[unit] ?? 1);
}

/** wrk with two threads for `seconds` (https: over TLS); throws on non-2xx answers or socket errors. */
export async function wrk(
  port: number,
  path: string,
  conns: number,
  seconds: number,
  scheme: "http" | "https" = "http",
  /** A Lua script for wrk (-s): what each request is, when not a GET of `path`. */
  script?: string,
) {
  const { stdout } = await run(
    "wrk",
    [
      "-t2",
      `-c${conns}`,
      `-d${seconds}s`,
      "--timeout",
      "10s",
      "--latency",
      ...(script ? ["-s", script] : []),
      `${scheme}://127.0.0.1:${port}${path}`,
    ],
    {
      maxBuffer: 1 << 20,
    },
  );
  const lat = (p: string) => {
    const m = new RegExp(`\\s${p}%\\s+([\\d.]+)(us|ms|s)`).exec(stdout);
    return m ? wrkUnits(m[1] as string, m[2] as string) : Number.NaN;
  };
  const total = /(\d+) requests in ([\d.]+)s, ([\d.]+)(B|KB|MB|GB) read/.exec(stdout);
  if (!total) throw new Error(`unexpected wrk output:\n${stdout}`);
  if (/Non-2xx or 3xx responses|Socket errors/.test(stdout)) throw new Error(`wrk saw errors:\n${stdout}`);
  return {
    bytes: wrkUnits(total[3] as string, total[4] as string),
    seconds: Number(total[2]),
    p50: lat("50"),
    p99: lat("99"),
    requests: Number(total[1]),
  };
}

/**
 * Seconds of the same load, not measured, that a bench gives a proxy right before each measured
 * window (every proxy alike; BENCH_WINDOW_WARMUP, 0 for none). A proxy that idled while others
 * took their turns, or changed workload, pays for its first second back (a JIT-compiled one most:
 * docs/BENCHMARKS.md, 2026-12-03): the window then measures the proxy, not that return.
 */
export const WINDOW_WARMUP = Number(process.env.BENCH_WINDOW_WARMUP ?? 1);

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

/** A process under load: its port, and the processes whose CPU counts as its own. */
export interface Loaded {
  port: number;
  pids(): number[];
}

/**
 * `second`'s CPU per request over `first`'s, the two loaded at the same time with `conns`
 * connections each for `seconds` (after WINDOW_WARMUP seconds of the same, unmeasured): both see
 * the same seconds of a shared machine, which windows taken one after the other do not.
 */
export async function cpuRatioAtOnce(first: Loaded, second: Loaded, path: string, conns: number, seconds: number) {
  const pair = [first, second];
  const load = (s: number) => Promise.all(pair.map((p) => wrk(p.port, path, conns, s)));
  if (WINDOW_WARMUP > 0) await load(WINDOW_WARMUP);
  const c0 = pair.map((p) => cpuSeconds(p.pids()));
  const runs = await load(seconds);
  const [a, b] = pair.map((p, i) => (cpuSeconds(p.pids()) - (c0[i] as number)) / (runs[i] as { requests: number }).requests);
  return (b as number) / (a as number);
}
