// A sluice with tracing at 100% to a given collector, in front of a one-line upstream, a
// steady load of small requests, and a collector that counts spans: what the collector tests share.
import { writeFileSync } from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import type net from "node:net";
import { join } from "node:path";
import { request } from "undici";
import { expect } from "vitest";
import { Runtime } from "../../proxy/control/runtime.js";
import { listen } from "./net.js";
import { tempDir } from "./tmp.js";

/** `env`: OTEL_* variables (the batch's size and delay) set while the proxy starts, as a user's environment would. */
export async function startTracedProxy(
  collectorPort: number,
  env: Record<string, string> = {},
): Promise<{ runtime: Runtime; base: string; close(): void }> {
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
  const saved = { ...process.env };
  Object.assign(process.env, env);
  const runtime = new Runtime({ file });
  try {
    await runtime.start();
  } finally {
    process.env = saved;
  }
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

const ExportRequest = createRequire(import.meta.url)("otlp-transformer-decode/build/src/generated/root.js").opentelemetry.proto
  .collector.trace.v1.ExportTraceServiceRequest;

export interface SpanCounter {
  port: number;
  /** Spans in the export requests received in full (decoded with the official OTLP definitions). */
  spans(): number;
  /** Export requests received in full. */
  exports(): number;
  close(): void;
}

/**
 * A collector that counts spans. `answer` false: it never answers (the responses are held until
 * close); `delayMs`: it answers each export that long after receiving it.
 */
export async function spanCounter(answer = true, delayMs = 0): Promise<SpanCounter> {
  let spans = 0;
  let exports = 0;
  const held: http.ServerResponse[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      exports++;
      for (const rs of ExportRequest.decode(Buffer.concat(chunks)).resourceSpans ?? [])
        for (const ss of rs.scopeSpans ?? []) spans += (ss.spans ?? []).length;
      if (!answer) held.push(res);
      else if (delayMs > 0) setTimeout(() => res.end(), delayMs);
      else res.end();
    });
  });
  const port = await listen(server as unknown as net.Server);
  return {
    port,
    spans: () => spans,
    exports: () => exports,
    close: () => {
      for (const res of held) res.destroy();
      server.close();
    },
  };
}
