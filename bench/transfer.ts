// Transfer benchmark: 1 GiB from a sender process, through a forwarding process, to a
// receiver, with the splice engine and with the streaming copy in alternating runs.
// Reports throughput and the forwarder's CPU seconds per GiB (from /proc/PID/stat).
import { type ChildProcess, fork } from "node:child_process";
import { readFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import { fileURLToPath } from "node:url";

const GiB = 1 << 30;
const total = Number(process.env.BENCH_BYTES ?? GiB);
const runs = Number(process.env.BENCH_RUNS ?? 5);
const here = (f: string) => fileURLToPath(new URL(f, import.meta.url));
const TICK = 100; // USER_HZ on Linux

function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICK; // utime + stime
}

async function startReceiver(): Promise<{ port: number; next(): Promise<number>; close(): void }> {
  let waiter: ((bytes: number) => void) | null = null;
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    let bytes = 0;
    sock.on("data", (c: Buffer) => {
      bytes += c.length;
    });
    sock.on("end", () => {
      sock.end();
      waiter?.(bytes);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    next: () => new Promise((r) => (waiter = r)),
    close: () => server.close(),
  };
}

async function startForwarder(engine: string, receiverPort: number): Promise<{ child: ChildProcess; port: number }> {
  const child = fork(here("./forwarder.js"), [engine, String(receiverPort)], { stdio: "inherit" });
  const port = await new Promise<number>((r) => child.once("message", (m: { port: number }) => r(m.port)));
  return { child, port };
}

async function once(port: number, rx: Awaited<ReturnType<typeof startReceiver>>, fwdPid: number | null) {
  const cpu0 = fwdPid ? cpuSeconds(fwdPid) : 0;
  const t0 = process.hrtime.bigint();
  const got = rx.next();
  const sender = fork(here("./sender.js"), [String(port), String(total)], { stdio: "inherit" });
  const bytes = await got;
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  await new Promise((r) => sender.once("exit", r));
  if (bytes !== total) throw new Error(`receiver got ${bytes} of ${total} bytes`);
  const cpu = fwdPid ? cpuSeconds(fwdPid) - cpu0 : 0;
  return { wall, cpu };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

async function main() {
  const rx = await startReceiver();
  const splice = await startForwarder("auto", rx.port);
  const copy = await startForwarder("copy", rx.port);
  const results: Record<string, { wall: number[]; cpu: number[] }> = {
    direct: { wall: [], cpu: [] },
    splice: { wall: [], cpu: [] },
    copy: { wall: [], cpu: [] },
  };
  for (let i = 0; i < runs; i++) {
    // Alternate the order so drift on a shared machine hits both engines alike.
    const order = i % 2 === 0 ? (["splice", "copy", "direct"] as const) : (["copy", "splice", "direct"] as const);
    for (const name of order) {
      const fwd = name === "splice" ? splice : name === "copy" ? copy : null;
      const r = await once(fwd ? fwd.port : rx.port, rx, fwd?.child.pid ?? null);
      results[name]?.wall.push(r.wall);
      results[name]?.cpu.push(r.cpu);
      process.stderr.write(`run ${i + 1}/${runs} ${name}: ${r.wall.toFixed(3)} s wall, ${r.cpu.toFixed(2)} s forwarder CPU\n`);
    }
  }
  splice.child.kill();
  copy.child.kill();
  rx.close();
  const gib = total / GiB;
  const row = (name: string) => {
    const r = results[name] as { wall: number[]; cpu: number[] };
    const wall = median(r.wall);
    const cpu = name === "direct" ? "—" : (median(r.cpu) / gib).toFixed(2);
    return { name, wall, line: `| ${name} | ${(gib / wall).toFixed(2)} | ${wall.toFixed(3)} | ${cpu} |` };
  };
  const rows = ["direct", "splice", "copy"].map(row);
  const s = results.splice as { cpu: number[]; wall: number[] };
  const c = results.copy as { cpu: number[]; wall: number[] };
  const cpuRatio = median(s.cpu) / median(c.cpu);
  const speedRatio = median(c.wall) / median(s.wall);
  const cpuModel = os.cpus()[0]?.model ?? "unknown CPU";
  console.log(`### Transfer engine, ${new Date().toISOString().slice(0, 10)}

Machine: ${os.cpus().length} × ${cpuModel}, ${(os.totalmem() / GiB).toFixed(0)} GiB, Linux ${os.release()}, Node ${process.version}.
${(total / GiB).toFixed(2)} GiB per run, sender → forwarder → receiver on loopback, median of ${runs} alternating runs.

| path | GiB/s | wall s | forwarder CPU s/GiB |
|---|---|---|---|
${rows.map((r) => r.line).join("\n")}

splice / copy: CPU per GiB ×${cpuRatio.toFixed(2)}, throughput ×${speedRatio.toFixed(2)}.`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
