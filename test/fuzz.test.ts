// Fuzzing what comes from upstreams and what operators write: mutated responses against
// Node's own parser (llhttp, in http.get), and mutated config files against the loader.
// Requests are fuzzed the same way in differential.test.ts.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { afterAll, beforeAll, expect, test } from "vitest";
import { ConfigError, loadConfigText } from "../proxy/config/load.js";
import { mutate, pick, prng, responseCorpus } from "./helpers/corpus.js";
import { listen } from "./helpers/net.js";
import { proxyTo } from "./helpers/proxy.js";

const RESPONSES = responseCorpus(1500);

/** Answers GET /case/<i> with RESPONSES[i], byte for byte, then closes. */
let upstream: net.Server;
let upstreamPort: number;

beforeAll(async () => {
  upstream = net.createServer((s) => {
    s.on("error", () => undefined);
    let head = "";
    s.on("data", (d: Buffer) => {
      head += d.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      const i = Number(/^GET \/case\/(\d+)/.exec(head)?.[1]);
      s.end(Buffer.from(RESPONSES[i] ?? "", "latin1"));
      s.removeAllListeners("data");
      s.resume();
    });
  });
  upstreamPort = await listen(upstream);
});

afterAll(() => upstream.close());

type Outcome = { kind: "response"; status: number; body: string } | { kind: "error"; code: string };

// llhttp itself, as Node's http module drives it: the reference verdict on the first message
// in the bytes (what follows a complete message is not its business; Node's client reports
// it as an error of the connection, which would blur the comparison).
const { HTTPParser } = (process as unknown as { binding(name: string): { HTTPParser: LlhttpParserClass } }).binding(
  "http_parser",
);
interface LlhttpParser {
  initialize(type: number, resource: object): void;
  execute(b: Buffer): number | Error;
  finish(): undefined | Error;
  [k: number]: unknown;
}
interface LlhttpParserClass {
  new (): LlhttpParser;
  RESPONSE: number;
  kOnHeadersComplete: number;
  kOnBody: number;
  kOnMessageComplete: number;
}

function llhttpVerdict(bytes: Buffer): Outcome {
  const p = new HTTPParser();
  p.initialize(HTTPParser.RESPONSE, {});
  let status = 0;
  let done = false;
  const h = createHash("sha256");
  p[HTTPParser.kOnHeadersComplete] = (_maj: number, _min: number, _h: unknown, _m: unknown, _u: unknown, code: number) => {
    status = code;
    return 0;
  };
  p[HTTPParser.kOnBody] = (b: Buffer) => {
    if (!done) h.update(b);
  };
  p[HTTPParser.kOnMessageComplete] = () => {
    done = true;
  };
  const r = p.execute(bytes);
  // The upstream closes after its bytes: that ends a close-delimited body.
  const f = !done && !(r instanceof Error) ? p.finish() : undefined;
  if (!done) return { kind: "error", code: (r instanceof Error ? r : f)?.message ?? "incomplete" };
  return { kind: "response", status, body: h.digest("hex") };
}

/** A GET through Node's client (llhttp parses the response); a fresh connection each time. */
function get(port: number, path: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const req = http.get({ host: "127.0.0.1", port, path, agent: false, timeout: 5000 }, (res) => {
      const h = createHash("sha256");
      res.on("data", (c: Buffer) => h.update(c));
      res.on("end", () => resolve({ kind: "response", status: res.statusCode ?? 0, body: h.digest("hex") }));
      res.on("error", (e: NodeJS.ErrnoException) => resolve({ kind: "error", code: e.code ?? e.message }));
    });
    req.on("timeout", () => req.destroy(Object.assign(new Error("timeout"), { code: "TIMEOUT" })));
    req.on("error", (e: NodeJS.ErrnoException) => resolve({ kind: "error", code: e.code ?? e.message }));
  });
}

test("1500 valid and mutated upstream responses: sluice never passes on what llhttp rejects, always answers or closes, and passes the same status and body where both accept", async () => {
  const p = await proxyTo({ host: "127.0.0.1", port: upstreamPort }, (o) => {
    o.timeouts.firstByteMs = 2000;
    o.timeouts.bodyIdleMs = 1000;
  });
  const violations: string[] = [];
  let bothAccepted = 0;
  let refused = 0;
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < RESPONSES.length; i = next++) {
      const direct = llhttpVerdict(Buffer.from(RESPONSES[i] as string, "latin1"));
      const via = await get(p.port, `/case/${i}`);
      const show = () =>
        `#${i} ${JSON.stringify(RESPONSES[i]?.slice(0, 160))} direct=${JSON.stringify(direct)} via=${JSON.stringify(via)}`;
      if (via.kind === "error" && via.code === "TIMEOUT") violations.push(`hung: ${show()}`);
      // What the client got from sluice is itself a well-formed response, or nothing.
      if (via.kind === "response" && via.status !== 502 && via.status !== 504) {
        if (direct.kind === "error") violations.push(`forwarded what llhttp rejects: ${show()}`);
        else if (direct.status !== via.status || direct.body !== via.body) violations.push(`differs: ${show()}`);
        else bothAccepted++;
      } else refused++;
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  expect(violations.slice(0, 5)).toEqual([]);
  // The corpus exercises both sides of the line.
  expect(bothAccepted).toBeGreaterThan(300);
  expect(refused).toBeGreaterThan(100);
  // Whatever the upstream sent, no request ended as a fault of sluice itself.
  const internal = (await p.sinks.metrics.registry.getSingleMetric("sluice_http_request_duration_seconds")?.get())?.values.filter(
    (v) => v.labels.outcome === "proxy_internal" && (v as { metricName?: string }).metricName?.endsWith("_count") && v.value > 0,
  );
  expect(internal).toEqual([]);
  // Still serving: the seeds pass through intact afterwards.
  for (let i = 0; i < 3; i++) expect((await get(p.port, `/case/${i}`)).kind).toBe("response");
  await p.close();
}, 120_000);

test("2000 mutated config files: each loads or is refused with file:line:col, never anything else", () => {
  const seeds = ["config/sidecar.yaml", "config/edge.yaml", "config/tcp-passthrough.yaml"].map((f) => readFileSync(f, "latin1"));
  const r = prng(7);
  let loaded = 0;
  let refused = 0;
  const odd: string[] = [];
  for (let i = 0; i < 2000; i++) {
    const text = Buffer.from(mutate(pick(r, seeds), r), "latin1").toString("utf8");
    try {
      loadConfigText(text, "fuzz.yaml");
      loaded++;
    } catch (err) {
      if (!(err instanceof ConfigError)) {
        odd.push(`#${i}: ${(err as Error).stack?.split("\n").slice(0, 2).join(" ")}`);
        continue;
      }
      refused++;
      for (const line of err.message.split("\n"))
        if (!/^fuzz\.yaml:\d+:\d+: \S/.test(line)) odd.push(`#${i}: message without a position: ${JSON.stringify(line)}`);
    }
  }
  expect(odd.slice(0, 5)).toEqual([]);
  expect(refused).toBeGreaterThan(200);
  expect(loaded).toBeGreaterThan(50);
});
