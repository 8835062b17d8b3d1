// A sluice config file with one listener and an admin port, both on free loopback ports.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort } from "../../proxy/tools/ports.js";

export interface ConfigParts {
  /** Top-level keys before `admin` (workers, drain_timeout, splice...). */
  top?: string;
  /** The listener's routes, indented under it; by default everything to cluster `app`. */
  routes?: string;
  /** More keys of the listener (timeouts, limits...), indented under it. */
  listener?: string;
  /** The body of `clusters:`, indented. */
  clusters: string;
}

export async function writeOneListenerConfig(
  dir: string,
  parts: ConfigParts,
): Promise<{ file: string; port: number; admin: number }> {
  const [port, admin] = [await freePort(), await freePort()];
  const file = join(dir, `sluice-${port}.yaml`);
  const routes = parts.routes ?? "    routes: [{ name: app, match: {}, forward: { cluster: app } }]";
  writeFileSync(
    file,
    `${parts.top ?? ""}
admin: { address: "127.0.0.1:${admin}" }
listeners:
  - name: inbound
    address: 127.0.0.1:${port}
${routes}
${parts.listener ?? ""}
clusters:
${parts.clusters}
`,
  );
  return { file, port, admin };
}
