// Differential test against Node's own HTTP parser (llhttp): the same bytes go to a
// Node server and to sluice in front of a Node upstream. sluice must never forward a
// message Node rejects, and where both accept, the upstream must see the same method,
// target, headers (but for the proxy's own) and body boundaries.
import { createHash } from "node:crypto";
import http from "node:http";
import net from "node:net";
import { request } from "undici";
import { afterAll, beforeAll, expect, test } from "vitest";
import { HOP_BY_HOP_NAMES } from "../proxy/http1/forward-headers.js";
import { normalizePath } from "../proxy/http1/normalize-path.js";
import { corpus, SEEDS } from "./helpers/corpus.js";
import { listen } from "./helpers/net.js";
import { proxyTo } from "./helpers/proxy.js";

interface Seen {
  method: string;
  url: string;
  headers: string[];
  body: string;
}

/** A Node server that records complete requests per client address. */
async function recordingServer(addressOf: (req: http.IncomingMessage) => string) {
  const seen = new Map<string, Seen[]>();
  const parserErrors: string[] = [];
  const server = http.createServer((req, res) => {
    const hash = createHash("sha256");
    req.on("data", (c: Buffer) => hash.update(c));
    req.on("end", () => {
      const key = addressOf(req);
      const list = seen.get(key) ?? [];
      list.push({ method: req.method ?? "", url: req.url ?? "", headers: req.rawHeaders, body: hash.digest("hex") });
      seen.set(key, list);
      res.end("ok");
    });
  });
  server.on("clientError", (err: NodeJS.ErrnoException, sock: net.Socket) => {
    // A message cut short (the proxy aborting a bad body) ends as INVALID_EOF_STATE;
    // anything else means the bytes themselves were refused.
    if (err.code?.startsWith("HPE_") && err.code !== "HPE_INVALID_EOF_STATE")
      parserErrors.push(
        `${err.code} ${JSON.stringify((err as { rawPacket?: Buffer }).rawPacket?.toString("latin1").slice(0, 300))}`,
      );
    // Later: a complete request parsed before the error still gets its 'end'.
    setImmediate(() => sock.destroy());
  });
  const port = await listen(server as unknown as net.Server);
  return { server, port, seen, parserErrors: () => parserErrors };
}

/** Header fields that are the proxy's business, not the message's. */
const PROXY_OWN = new Set<string>([
  ...HOP_BY_HOP_NAMES,
  "via",
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  // Made by the proxy when the request has none (forwarding.request_id), as Envoy does.
  "x-request-id",
]);

function comparable(s: Seen): string {
  const pairs: string[] = [];
  const connection = new Set<string>();
  for (let i = 0; i < s.headers.length; i += 2) {
    if ((s.headers[i] as string).toLowerCase() === "connection")
      for (const t of (s.headers[i + 1] as string).split(",")) connection.add(t.trim().toLowerCase());
  }
  // An absolute-form target is sent upstream in origin-form, and its authority
  // replaces Host (RFC 9112 §3.2.2).
  const authority = /^https?:\/\/([^/?#]*)/i.exec(s.url)?.[1];
  for (let i = 0; i < s.headers.length; i += 2) {
    const name = (s.headers[i] as string).toLowerCase();
    if (PROXY_OWN.has(name) || connection.has(name)) continue;
    pairs.push(`${name}: ${name === "host" && authority !== undefined ? authority : s.headers[i + 1]}`);
  }
  // sluice routes and forwards the normalised path (dot segments, unreserved escapes, //).
  const raw = s.url.replace(/^https?:\/\/[^/?#]*/i, "") || "/";
  let url = raw;
  try {
    url = raw.startsWith("/") ? normalizePath(raw) : raw;
  } catch {
    url = `unroutable ${raw}`;
  }
  return JSON.stringify([s.method, url, pairs, s.body]);
}

/** Sends the bytes and half-closes; resolves with false if the server neither answered nor closed within 3 s. */
function send(port: number, localAddress: string, data: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: "127.0.0.1", localAddress }, () => sock.end(Buffer.from(data, "latin1")));
    let hung = false;
    sock.on("data", () => undefined);
    sock.on("error", () => resolve(!hung));
    sock.on("close", () => resolve(!hung));
    setTimeout(() => {
      hung = true;
      sock.destroy();
    }, 3000).unref();
  });
}

let reference: Awaited<ReturnType<typeof recordingServer>>;
let upstream: Awaited<ReturnType<typeof recordingServer>>;
let proxy: Awaited<ReturnType<typeof proxyTo>>;

beforeAll(async () => {
  reference = await recordingServer((req) => req.socket.remoteAddress ?? "");
  upstream = await recordingServer(
    (req) =>
      String(req.headers["x-forwarded-for"] ?? "")
        .split(",")
        .pop()
        ?.trim() ?? "",
  );
  proxy = await proxyTo({ host: "127.0.0.1", port: upstream.port }, (o) => {
    o.timeouts.headMs = 500;
    o.timeouts.bodyIdleMs = 500;
    o.forwarding.via = "1.1 sluice";
  });
});

afterAll(async () => {
  await proxy.close();
  reference.server.closeAllConnections();
  upstream.server.closeAllConnections();
  reference.server.close();
  upstream.server.close();
});

test("3000 valid and mutated requests: sluice forwards nothing llhttp rejects, and the same thing where both accept", async () => {
  const cases = corpus(3000);
  const BATCH = 200;
  const violations: string[] = [];
  let bothAccepted = 0;
  let stricter = 0;
  for (let start = 0; start < cases.length; start += BATCH) {
    const batch = cases.slice(start, start + BATCH);
    // Each case in a batch comes from its own loopback address, which both servers see.
    await Promise.all(
      batch.flatMap((c, i) => {
        const addr = `127.0.${Math.floor((i + 2) / 250)}.${((i + 2) % 250) + 1}`;
        // sluice always answers and closes (its head and body timeouts are 500 ms here).
        const viaProxy = send(proxy.port, addr, c).then((ended) => {
          if (!ended) violations.push(`case ${start + i}: no answer and no close within 3 s: ${JSON.stringify(c.slice(0, 200))}`);
        });
        return [send(reference.port, addr, c), viaProxy];
      }),
    );
    await new Promise((r) => setTimeout(r, 50));
    batch.forEach((c, i) => {
      const addr = `127.0.${Math.floor((i + 2) / 250)}.${((i + 2) % 250) + 1}`;
      const ref = (reference.seen.get(addr) ?? []).map(comparable);
      const got = (upstream.seen.get(addr) ?? []).map(comparable);
      reference.seen.delete(addr);
      upstream.seen.delete(addr);
      const prefixOk = got.length <= ref.length && got.every((g, k) => g === ref[k]);
      if (!prefixOk)
        violations.push(
          `case ${start + i}: ${JSON.stringify(c.slice(0, 200))}\n  node: ${ref.join(" | ")}\n  sluice: ${got.join(" | ")}`,
        );
      bothAccepted += Math.min(got.length, ref.length);
      if (got.length < ref.length) {
        stricter++;
        if (start + i < SEEDS.length) violations.push(`valid seed ${start + i} was not forwarded`);
        if (process.env.SHOW_STRICTER) console.log(JSON.stringify(c.slice(0, 160)));
      }
    });
  }
  expect(violations.slice(0, 5)).toEqual([]);
  // Whatever sluice forwards, the upstream's own parser accepts.
  expect(upstream.parserErrors().slice(0, 3)).toEqual([]);
  // The valid seeds all pass, and the corpus exercises acceptance as well as refusal.
  expect(bothAccepted).toBeGreaterThan(500);
  // Whatever the client sent, no request ended as a fault of sluice itself.
  const internal = (
    await proxy.sinks.metrics.registry.getSingleMetric("sluice_http_request_duration_seconds")?.get()
  )?.values.filter(
    (v) => v.labels.outcome === "proxy_internal" && (v as { metricName?: string }).metricName?.endsWith("_count") && v.value > 0,
  );
  expect(internal).toEqual([]);
  // And it is still serving afterwards.
  const after = await request(`http://127.0.0.1:${proxy.port}/after`);
  expect(after.statusCode).toBe(200);
  expect(await after.body.text()).toBe("ok");
  console.log(
    `differential: ${cases.length} cases, ${bothAccepted} requests accepted by both, ${stricter} cases where sluice refused what Node accepted`,
  );
}, 300_000);
