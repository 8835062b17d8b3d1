// What the fast recorder costs the main thread per request, in this process with no proxy
// around it: the calls a request makes (its trace started, a try's context made for the
// upstream, the request ended) timed alone, for each export thread and for an unsampled
// request. The records are made outside the timed part. Requests come in bursts of 500 with a
// pause between, so the export worker keeps up and nothing is dropped.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { FastTracing } from "../proxy/observe/fast-tracing.js";
import { outcome } from "../proxy/request/outcome.js";
import { listedFields, RequestRecord } from "../proxy/request/record.js";
import type { Endpoint } from "../proxy/upstream/cluster.js";

export interface FastCost {
  /** Main-thread µs per sampled request, spans handed to the export worker. */
  worker: number;
  /** Main-thread µs per sampled request, spans encoded and exported on the main thread. */
  main: number;
  /** Main-thread µs per unsampled request (trace context only). */
  unsampled: number;
}

const endpoint = { address: { host: "127.0.0.1", port: 8081 } } as unknown as Endpoint;

function record(): RequestRecord {
  return new RequestRecord({
    engine: "splice",
    method: "GET",
    path: "/1k.bin",
    version: "1.1",
    host: "127.0.0.1:8080",
    fields: listedFields([
      ["host", "127.0.0.1:8080"],
      ["user-agent", "wrk"],
    ]),
    client: { remoteAddress: "127.0.0.1", remotePort: 40000, localAddress: "127.0.0.1", localPort: 8080 },
  });
}

async function measure(collector: string, sampler: string, exportThread: "worker" | "main", requests: number): Promise<number> {
  const tracing = new FastTracing(
    { export_thread: exportThread },
    { OTEL_EXPORTER_OTLP_ENDPOINT: collector, OTEL_TRACES_SAMPLER: sampler },
  );
  const BURST = 500;
  let ns = 0n;
  let timed = 0;
  for (let done = 0; done < requests * 2; done += BURST) {
    // Records as a request leaves them, made before the clock starts.
    const recs = Array.from({ length: BURST }, () => {
      const rec = record();
      const t = rec.startTry(endpoint);
      t.connects.push({ at: performance.now(), reused: true });
      t.responseHeadAt = t.firstBodyByteAt = t.end = performance.now();
      t.status = rec.status = 200;
      t.response.bytes = t.response.copied = 1024;
      t.outcome = rec.outcome = outcome("completed", "response_body");
      rec.end = performance.now();
      return { rec, t };
    });
    const start = process.hrtime.bigint();
    for (const { rec, t } of recs) {
      const trace = tracing.startRequest(rec);
      trace.tryStarted(rec, t);
      trace.tryEnded(rec, t);
      trace.finish(rec);
    }
    // The first half warms up.
    if (done >= requests) {
      ns += process.hrtime.bigint() - start;
      timed += BURST;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  await tracing.shutdown();
  const { dropped } = tracing.stats();
  if (dropped > 0) process.stderr.write(`tracing-fast: ${dropped} spans dropped (${exportThread}, ${sampler})\n`);
  return Number(ns) / 1000 / timed;
}

export async function fastCostPerRequest(requests = 50_000): Promise<FastCost> {
  const sink = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => res.end());
  });
  await new Promise<void>((r) => sink.listen(0, "127.0.0.1", () => r()));
  const collector = `http://127.0.0.1:${(sink.address() as AddressInfo).port}`;
  try {
    return {
      worker: await measure(collector, "always_on", "worker", requests),
      main: await measure(collector, "always_on", "main", requests),
      unsampled: await measure(collector, "always_off", "worker", requests),
    };
  } finally {
    sink.close();
  }
}
