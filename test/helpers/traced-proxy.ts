// A sluice with tracing at 100% to a given collector, in front of a one-line upstream, and a
// steady load of small requests: what the collector tests share.
import { writeFileSync } from "node:fs";
import http from "node:http";
import type net from "node:net";
import { join } from "node:path";
import { request } from "undici";
import { expect } from "vitest";
import { Runtime } from "../../proxy/control/runtime.js";
import { listen } from "./net.js";
import { tempDir } from "./tmp.js";

export async function startTracedProxy(collectorPort: number): Promise<{ runtime: Runtime; base: string; close(): void }> {
  const upstream = http.createServer((_req, res) => res.end("ok"));
  const upstreamPort = await listen(upstream as unknown as net.Server);
  const file = join(tempDir("traced"), "c.yaml");
  writeFileSync(
    file,
    `telemetry:
  tracing: { endpoint: "http://127.0.0.1:${collectorPort}", sampler_ratio: 1 }
listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ match: {}, forward: { cluster: app } }]
clusters:
  app: { endpoints: ["127.0.0.1:${upstreamPort}"] }
`,
  );
  const runtime = new Runtime({ file });
  await runtime.start();
  return { runtime, base: `http://${runtime.addresses().get("main")}`, close: () => upstream.close() };
}

/** `total` GET requests, 10 at a time, each answered 200. */
export async function sendRequests(base: string, total: number): Promise<void> {
  for (let i = 0; i < total / 10; i++) {
    await Promise.all(
      Array.from({ length: 10 }, async () => {
        const res = await request(`${base}/`);
        expect(res.statusCode).toBe(200);
        await res.body.text();
      }),
    );
  }
}
