// What the OpenTelemetry SDK alone costs for the spans sluice records per request, with no
// proxy and no network around it: the floor under any tracing overhead sluice can reach
// while using the official SDK and OTLP protobuf encoding. The span shape mirrors
// proxy/observe/request-trace.ts: a server span with 9 attributes, a client span with 11 attributes
// and 4 events.
import { context, SpanKind, trace } from "@opentelemetry/api";
import { ProtobufTraceSerializer } from "@opentelemetry/otlp-transformer";
import { BasicTracerProvider, BatchSpanProcessor, type ReadableSpan, type SpanExporter } from "@opentelemetry/sdk-trace-base";

export interface SdkCost {
  /** CPU µs per request: spans recorded and queued, export discards them. */
  spans: number;
  /** CPU µs per request: the same, and each batch encoded as OTLP protobuf. */
  encoded: number;
  /** Encoded bytes per request. */
  bytes: number;
}

async function measure(encode: boolean, requests: number): Promise<{ cpu: number; bytes: number }> {
  let bytes = 0;
  const exporter: SpanExporter = {
    export(spans: ReadableSpan[], done) {
      if (encode) bytes += ProtobufTraceSerializer.serializeRequest(spans)?.length ?? 0;
      done({ code: 0 });
    },
    shutdown: async () => undefined,
  };
  // The batch settings sluice uses (proxy/observe/telemetry.ts).
  const provider = new BasicTracerProvider({
    spanProcessors: [
      new BatchSpanProcessor(exporter, { maxQueueSize: 4096, maxExportBatchSize: 512, scheduledDelayMillis: 500 }),
    ],
  });
  const tracer = provider.getTracer("sluice");
  const one = () => {
    const server = tracer.startSpan("GET all", { kind: SpanKind.SERVER });
    server.setAttributes({
      "http.request.method": "GET",
      "url.path": "/1k.bin",
      "network.protocol.version": "1.1",
      "client.address": "127.0.0.1",
      "client.port": 40000,
      "server.address": "127.0.0.1",
      "server.port": 8080,
      "sluice.listener.engine": "splice",
      "http.route": "all",
    });
    const client = tracer.startSpan("GET", { kind: SpanKind.CLIENT }, trace.setSpan(context.active(), server));
    client.setAttributes({
      "http.request.method": "GET",
      "server.address": "127.0.0.1",
      "server.port": 3000,
      "sluice.retry_count": 0,
    });
    client.addEvent("upstream connected", { "sluice.connection.reused": true });
    client.setAttribute("http.response.status_code", 200);
    client.addEvent("response head received");
    client.addEvent("first body byte");
    client.addEvent("last body byte");
    client.setAttributes({
      "sluice.engine": "copy",
      "sluice.request.bytes_spliced": 0,
      "sluice.request.bytes_copied": 0,
      "sluice.response.bytes_spliced": 0,
      "sluice.response.bytes_copied": 1024,
      "sluice.tunnel": false,
    });
    client.end();
    server.setAttribute("http.response.status_code", 200);
    server.end();
  };
  // Warm up, then measure; yield often enough that the queue never overflows.
  for (let i = 0; i < 20_000; i++) one();
  await provider.forceFlush();
  bytes = 0;
  const start = process.cpuUsage();
  for (let i = 0; i < requests; i++) {
    one();
    if (i % 1000 === 999) await new Promise((r) => setImmediate(r));
  }
  await provider.forceFlush();
  const used = process.cpuUsage(start);
  await provider.shutdown();
  return { cpu: (used.user + used.system) / requests, bytes: bytes / requests };
}

export async function sdkCostPerRequest(requests = 200_000): Promise<SdkCost> {
  const spans = await measure(false, requests);
  const encoded = await measure(true, requests);
  return { spans: spans.cpu, encoded: encoded.cpu, bytes: encoded.bytes };
}
