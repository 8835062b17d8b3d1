// The exporter's own HTTP/1.1 client against collectors that answer in every framing HTTP
// allows, refuse, close idle connections, never answer or speak TLS: each batch is exported or
// dropped and counted with its reason, connections are kept only while the answers allow it, and
// none is left open.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import tls from "node:tls";
import { gunzipSync } from "node:zlib";
import { expect, test, vi } from "vitest";
import { exportCompression, exportTls } from "../proxy/observe/fast-tracing.js";
import { type ExportTarget, exportHeadStart, OtlpBatchExporter } from "../proxy/observe/otlp-export.js";
import { resourceMessage, scopeMessage } from "../proxy/observe/otlp-protobuf.js";
import { makeCa } from "./helpers/certs.js";
import { listen, openFds, settle } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

const ExportRequest = createRequire(import.meta.url)("otlp-transformer-decode/build/src/generated/root.js").opentelemetry.proto
  .collector.trace.v1.ExportTraceServiceRequest;

interface Received {
  /** Which connection (1, 2, ...) it came on. */
  connection: number;
  head: string;
  spans: string[];
}

/**
 * A collector written byte by byte: it reads each export (head and Content-Length body), decodes
 * its spans with the official OTLP definitions, and writes `answer(n)` for the n-th export (from
 * 0); `close` ends the connection after it. The answer null: it never answers.
 */
async function scriptedCollector(
  answer: (n: number) => { bytes: string; close?: boolean } | null,
  opts: { secure?: { cert: string; key: string } } = {},
) {
  const received: Received[] = [];
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const onSocket = (sock: net.Socket) => {
    const connection = ++connections;
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    sock.on("error", () => {});
    let buf = Buffer.alloc(0);
    sock.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buf.subarray(0, end).toString("latin1");
        const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1]);
        if (buf.length < end + 4 + length) return;
        const sent = buf.subarray(end + 4, end + 4 + length);
        const body = /\r\ncontent-encoding: gzip\r\n/i.test(`${head}\r\n`) ? gunzipSync(sent) : sent;
        buf = buf.subarray(end + 4 + length);
        const spans: string[] = [];
        for (const rs of ExportRequest.decode(body).resourceSpans ?? [])
          for (const ss of rs.scopeSpans ?? []) for (const s of ss.spans ?? []) spans.push(s.name);
        const n = received.length;
        received.push({ connection, head, spans });
        const a = answer(n);
        if (a === null) continue;
        sock.write(a.bytes);
        if (a.close) sock.end();
      }
    });
  };
  const server = opts.secure ? tls.createServer({ ...opts.secure }, onSocket) : net.createServer(onSocket);
  const port = await listen(server as net.Server);
  return {
    port,
    received,
    connections: () => connections,
    open: () => sockets.size,
    /** Ends every connection from the collector's side. */
    endAll: () => {
      for (const s of sockets) s.end();
    },
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

function exporterTo(url: string, more: Partial<ExportTarget> = {}) {
  const report = { exported: 0, dropped: 0, failures: [] as string[] };
  const target: ExportTarget = {
    url,
    headers: { "content-type": "application/x-protobuf" },
    timeoutMs: 5000,
    resource: resourceMessage([["service.name", "otlp-export-test"]]),
    scope: scopeMessage("sluice"),
    batch: { spans: 2, delayMs: 10_000 },
    compression: "none",
    ...more,
  };
  const exporter = new OtlpBatchExporter(target, {
    exported: (n) => {
      report.exported += n;
    },
    dropped: (n) => {
      report.dropped += n;
    },
    failed: (reason) => report.failures.push(reason),
  });
  return { exporter, report };
}

/** Writes spans named `names` (the batch of 2 goes when the second is written) and waits for its export to end. */
async function exportBatch(exporter: OtlpBatchExporter, ...names: string[]): Promise<void> {
  for (const name of names) {
    const w = exporter.writerForSpan();
    if (!w) throw new Error("no room");
    const at = w.begin(2); // ScopeSpans.spans
    w.string(5, name); // Span.name
    w.end(at);
    exporter.spanWritten();
  }
  await exporter.flush(10_000);
}

const ok = (body: string, more = "") => `HTTP/1.1 200 OK\r\n${more}content-length: ${body.length}\r\n\r\n${body}`;

test("answers framed by length, by chunks with trailer fields, with no body and by the close: every batch exported; a connection is kept while its answers allow", async () => {
  const fds = openFds();
  const answers = [
    { bytes: ok("") },
    { bytes: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n" },
    { bytes: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n" },
    { bytes: ok("{}", "connection: close\r\n") },
    // No length: the body ends with the connection.
    { bytes: "HTTP/1.1 200 OK\r\n\r\nthe rest", close: true },
    { bytes: ok("") },
  ];
  const collector = await scriptedCollector((n) => answers[n] ?? null);
  const { exporter, report } = exporterTo(`http://127.0.0.1:${collector.port}/v1/traces`);
  try {
    for (let i = 0; i < answers.length; i++) await exportBatch(exporter, `a${i}`, `b${i}`);
    expect(report).toEqual({ exported: 12, dropped: 0, failures: [] });
    expect(collector.received.map((r) => r.spans)).toEqual(answers.map((_, i) => [`a${i}`, `b${i}`]));
    // Kept through the first four answers; "connection: close" and the close-delimited answer each end theirs.
    expect(collector.received.map((r) => r.connection)).toEqual([1, 1, 1, 1, 2, 3]);
    const head = collector.received[0]?.head ?? "";
    expect(head).toMatch(
      /^POST \/v1\/traces HTTP\/1\.1\r\nhost: 127\.0\.0\.1:\d+\r\ncontent-type: application\/x-protobuf\r\ncontent-length: \d+$/,
    );
  } finally {
    await exporter.shutdown();
    collector.close();
  }
  await settle();
  expect(openFds()).toBe(fds);
});

test("a refusal (503) drops the batch's spans, counted, with the status as the reason; the connection carries the next batch", async () => {
  const collector = await scriptedCollector((n) =>
    n === 0 ? { bytes: "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy" } : { bytes: ok("") },
  );
  const { exporter, report } = exporterTo(`http://127.0.0.1:${collector.port}/v1/traces`);
  try {
    await exportBatch(exporter, "refused1", "refused2");
    await exportBatch(exporter, "taken1", "taken2");
    expect(report).toEqual({ exported: 2, dropped: 2, failures: ["collector answered 503"] });
    expect(collector.received.map((r) => r.connection)).toEqual([1, 1]);
  } finally {
    await exporter.shutdown();
    collector.close();
  }
});

test("a refusal at the head, before the body is read (413): the connection is not used again, and the next batch goes on a new one", async () => {
  const fds = openFds();
  const heads: number[] = [];
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    const connection = ++connections;
    sockets.add(sock);
    sock.on("error", () => {});
    let text = "";
    const onData = (d: Buffer) => {
      text += d.toString("latin1");
      if (!text.includes("\r\n\r\n")) return;
      heads.push(connection);
      if (connection === 1) {
        // Answered at the head; the body is never read (the connection stays open).
        sock.off("data", onData);
        sock.pause();
        sock.write("HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n");
      } else {
        const length = Number(/\r\ncontent-length: (\d+)/i.exec(text)?.[1]);
        if (text.length - text.indexOf("\r\n\r\n") - 4 >= length) sock.write(ok(""));
      }
    };
    sock.on("data", onData);
  });
  const port = await listen(server);
  const { exporter, report } = exporterTo(`http://127.0.0.1:${port}/v1/traces`);
  try {
    // Two spans of 3 MB: more than the socket buffers between the two hold, so the body is
    // still being written when the refusal comes.
    await exportBatch(exporter, "x".repeat(3 << 20), "y".repeat(3 << 20));
    await exportBatch(exporter, "a", "b");
    expect(report).toEqual({ exported: 2, dropped: 2, failures: ["collector answered 413"] });
    expect(heads).toEqual([1, 2]);
  } finally {
    await exporter.shutdown();
    for (const s of sockets) s.destroy();
    server.close();
  }
  await settle();
  expect(openFds()).toBe(fds);
});

test("a collector that closes an idle connection: the next batch goes on a new one, nothing fails", async () => {
  const collector = await scriptedCollector(() => ({ bytes: ok("") }));
  const { exporter, report } = exporterTo(`http://127.0.0.1:${collector.port}/v1/traces`);
  try {
    await exportBatch(exporter, "a", "b");
    collector.endAll();
    await vi.waitFor(() => expect(collector.open()).toBe(0));
    await exportBatch(exporter, "c", "d");
    expect(report).toEqual({ exported: 4, dropped: 0, failures: [] });
    expect(collector.received.map((r) => r.connection)).toEqual([1, 2]);
  } finally {
    await exporter.shutdown();
    collector.close();
  }
});

test("answers that cannot be read as HTTP fail the export and close its connection; the next batch goes on a new one", async () => {
  const bad = [
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
    "NOT HTTP\r\n\r\n",
  ];
  const collector = await scriptedCollector((n) =>
    n % 2 === 0 ? { bytes: bad[n / 2] as string, close: n === 4 } : { bytes: ok("") },
  );
  const { exporter, report } = exporterTo(`http://127.0.0.1:${collector.port}/v1/traces`, { timeoutMs: 1000 });
  try {
    for (let i = 0; i < 2 * bad.length; i++) await exportBatch(exporter, `a${i}`, `b${i}`);
    expect(report.exported).toBe(2 * bad.length);
    expect(report.dropped).toBe(2 * bad.length);
    expect(report.failures).toHaveLength(bad.length);
    // Each bad answer's connection is not used again.
    expect(collector.received.map((r) => r.connection)).toEqual([1, 2, 2, 3, 3, 4, 4, 5]);
    expect(report.failures[2]).toBe("collector closed the connection (EOF)");
    for (const f of [0, 1, 3]) expect(report.failures[f]).toMatch(/^the collector's answer cannot be read: /);
  } finally {
    await exporter.shutdown();
    collector.close();
  }
});

test("a collector that never answers: the export fails at its timeout, and its connection is closed", async () => {
  const fds = openFds();
  const collector = await scriptedCollector(() => null);
  const { exporter, report } = exporterTo(`http://127.0.0.1:${collector.port}/v1/traces`, { timeoutMs: 300 });
  try {
    await exportBatch(exporter, "a", "b");
    await vi.waitFor(() => expect(report.failures).toEqual(["collector did not answer in time"]));
    expect(report.dropped).toBe(2);
    await vi.waitFor(() => expect(collector.open()).toBe(0));
  } finally {
    await exporter.shutdown();
    collector.close();
  }
  await settle();
  expect(openFds()).toBe(fds);
});

test("no collector listening: the export fails with the connection's error", async () => {
  const server = net.createServer();
  const port = await listen(server);
  server.close();
  const { exporter, report } = exporterTo(`http://127.0.0.1:${port}/v1/traces`);
  await exportBatch(exporter, "a", "b");
  await exporter.shutdown();
  expect(report.dropped).toBe(2);
  expect(report.failures).toEqual([`connect ECONNREFUSED 127.0.0.1:${port}`]);
});

test("header fields from OTEL_EXPORTER_OTLP_HEADERS: sent as given, but none that could break the head or its framing", async () => {
  const url = new URL("http://collector.test:4318/v1/traces?x=1");
  const headers = {
    "x-api-key": "secret",
    "x-injected": "a\r\nx-evil: 1",
    "bad name": "v",
    "Content-Length": "5",
    "transfer-encoding": "chunked",
    host: "elsewhere",
    "Content-Encoding": "br",
  };
  expect(exportHeadStart(url, headers, "none")).toBe(
    "POST /v1/traces?x=1 HTTP/1.1\r\nhost: collector.test:4318\r\nx-api-key: secret\r\ncontent-length: ",
  );
  expect(exportHeadStart(url, headers, "gzip")).toBe(
    "POST /v1/traces?x=1 HTTP/1.1\r\nhost: collector.test:4318\r\ncontent-encoding: gzip\r\nx-api-key: secret\r\ncontent-length: ",
  );
});

test("over TLS: the collector's certificate is checked against OTEL_EXPORTER_OTLP_CERTIFICATE's CA; without it the export fails", async () => {
  const ca = makeCa(tempDir("otlp-tls"));
  const leaf = ca.issue("collector", { san: ["IP:127.0.0.1"] });
  const collector = await scriptedCollector(() => ({ bytes: ok("") }), {
    secure: { cert: readFileSync(leaf.cert, "utf8"), key: readFileSync(leaf.key, "utf8") },
  });
  const url = `https://127.0.0.1:${collector.port}/v1/traces`;
  const trusted = exporterTo(url, { tls: { ca: readFileSync(ca.cert, "utf8") } });
  const untrusted = exporterTo(url);
  try {
    await exportBatch(trusted.exporter, "a", "b");
    await exportBatch(trusted.exporter, "c", "d");
    expect(trusted.report).toEqual({ exported: 4, dropped: 0, failures: [] });
    expect(collector.received.map((r) => r.connection)).toEqual([1, 1]);
    await exportBatch(untrusted.exporter, "e", "f");
    expect(untrusted.report.dropped).toBe(2);
    expect(untrusted.report.failures[0]).toMatch(/certificate/);
  } finally {
    await trusted.exporter.shutdown();
    await untrusted.exporter.shutdown();
    collector.close();
  }
});

test("the TLS files: the traces variable before the general one, none without either, an unreadable one named", () => {
  const dir = tempDir("otlp-tls-env");
  const ca = makeCa(dir);
  const pem = readFileSync(ca.cert, "utf8");
  expect(exportTls({})).toBeUndefined();
  expect(exportTls({ OTEL_EXPORTER_OTLP_CERTIFICATE: ca.cert })).toEqual({ ca: pem, cert: undefined, key: undefined });
  expect(
    exportTls({
      OTEL_EXPORTER_OTLP_CERTIFICATE: "/nonexistent/ca.pem",
      OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: ca.cert,
      OTEL_EXPORTER_OTLP_CLIENT_KEY: ca.key,
    }),
  ).toEqual({ ca: pem, cert: undefined, key: readFileSync(ca.key, "utf8") });
  expect(() => exportTls({ OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE: "/nonexistent/client.pem" })).toThrow(
    /^OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE: cannot read \/nonexistent\/client\.pem/,
  );
});

test("OTEL_EXPORTER_OTLP_COMPRESSION=gzip: each batch gzipped, said in Content-Encoding, the connection kept", async () => {
  const collector = await scriptedCollector(() => ({ bytes: ok("") }));
  const { exporter, report } = exporterTo(`http://127.0.0.1:${collector.port}/v1/traces`, { compression: "gzip" });
  try {
    const long = "a span name that repeats ".repeat(40);
    await exportBatch(exporter, `${long}1`, `${long}2`);
    await exportBatch(exporter, "c", "d");
    expect(report).toEqual({ exported: 4, dropped: 0, failures: [] });
    expect(collector.received.map((r) => r.spans)).toEqual([
      [`${long}1`, `${long}2`],
      ["c", "d"],
    ]);
    expect(collector.received.map((r) => r.connection)).toEqual([1, 1]);
    const head = collector.received[0]?.head ?? "";
    expect(head).toMatch(/\r\ncontent-encoding: gzip\r\n/);
    // Compressed: the two 1 KB names in fewer bytes than one of them.
    expect(Number(/content-length: (\d+)/.exec(head)?.[1])).toBeLessThan(long.length);
  } finally {
    await exporter.shutdown();
    collector.close();
  }
  expect(exportCompression({})).toBe("none");
  expect(exportCompression({ OTEL_EXPORTER_OTLP_COMPRESSION: "gzip" })).toBe("gzip");
  expect(exportCompression({ OTEL_EXPORTER_OTLP_COMPRESSION: "gzip", OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: "none" })).toBe(
    "none",
  );
  expect(exportCompression({ OTEL_EXPORTER_OTLP_COMPRESSION: "brotli" })).toBe("none");
});
