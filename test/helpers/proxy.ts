// Starts the HTTP engine in the test process with options adjusted per test; curl.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { formatHostPort, type HostPort } from "../../proxy/base/address.js";
import { compileCluster, compileRoute } from "../../proxy/config/compile.js";
import { defaultHttpOptions, type HttpProxyOptions } from "../../proxy/config/http-options.js";
import type { RouteFile } from "../../proxy/config/types.js";
import { Metrics } from "../../proxy/observe/metrics.js";
import type { Sinks } from "../../proxy/observe/observation.js";
import { RouteTable } from "../../proxy/routing/route-table.js";
import { Admission } from "../../proxy/session/admission.js";
import { startHttpListener } from "../../proxy/session/http-listener.js";
import type { HttpListenerState, RunningProxy } from "../../proxy/session/listener-state.js";
import { httpConnector } from "../../proxy/session/upstream-connector.js";
import { Cluster } from "../../proxy/upstream/cluster.js";

/**
 * The HTTP engine in this process: one listener with `opts` (defaults, adjusted by `tweak`),
 * `routes` (by default, every request to `upstream`, the one cluster), with sinks of its own (read its metrics through `sinks`).
 */
export async function proxyTo(
  upstream: HostPort,
  tweak: (o: HttpProxyOptions) => void = () => undefined,
  routes: RouteFile[] = [{ name: "all", match: {}, forward: { cluster: "upstream" } }],
): Promise<RunningProxy & { url: string; port: number; sinks: Sinks }> {
  const opts = defaultHttpOptions({ host: "127.0.0.1", port: 0 });
  tweak(opts);
  const sinks: Sinks = { metrics: new Metrics(), tracing: null, accessLog: null };
  const spec = compileCluster("upstream", { endpoints: [formatHostPort(upstream)] });
  const cluster = new Cluster({ ...spec, options: { ...spec.options, pool: opts.pool } }, { connector: httpConnector });
  const state: HttpListenerState = {
    opts,
    routes: new RouteTable(routes.map(compileRoute)),
    clusters: new Map([["upstream", cluster]]),
  };
  const p = await startHttpListener(opts.listen, opts.engine, () => state, sinks, new Admission());
  return {
    ...p,
    close: async () => {
      await p.close();
      cluster.close();
    },
    sinks,
    port: p.address.port,
    url: `http://127.0.0.1:${p.address.port}`,
  };
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
