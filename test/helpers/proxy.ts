// Starts the HTTP engine in the test process with options adjusted per test.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { HostPort } from "../../proxy/base/address.js";
import { defaultHttpOptions, type HttpProxyOptions } from "../../proxy/config/http-options.js";
import type { Sinks } from "../../proxy/observe/observation.js";
import { startHttpProxy } from "../../proxy/session/http-listener.js";
import type { RunningProxy } from "../../proxy/session/listener-state.js";

export async function proxyTo(
  upstream: HostPort,
  tweak: (o: HttpProxyOptions) => void = () => undefined,
): Promise<RunningProxy & { url: string; port: number; sinks: Sinks }> {
  const opts = defaultHttpOptions({ host: "127.0.0.1", port: 0 }, upstream);
  tweak(opts);
  const p = await startHttpProxy(opts);
  return { ...p, port: p.address.port, url: `http://127.0.0.1:${p.address.port}` };
}

const run = promisify(execFile);

/** curl with -sS; returns stdout (buffer), the exit code and what -w printed on stderr. */
export async function curl(args: string[]): Promise<{ code: number; out: Buffer; err: string }> {
  try {
    const { stdout, stderr } = await run("curl", ["-sS", ...args], { encoding: "buffer", maxBuffer: 64 << 20 });
    return { code: 0, out: stdout, err: stderr.toString() };
  } catch (e) {
    const err = e as { code?: number; stdout?: Buffer; stderr?: Buffer };
    return { code: err.code ?? -1, out: err.stdout ?? Buffer.alloc(0), err: err.stderr?.toString() ?? "" };
  }
}
