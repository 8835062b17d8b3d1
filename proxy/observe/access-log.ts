// The access log: with `access_log` on, one line per request, read from its record, with the
// fields the config chose (every one by default).
import { log } from "../base/log.js";
import type { AccessLogField } from "../config/types.js";
import type { RequestRecord } from "../request/record.js";

const access = log.child({ log: "access" });

type Field = (rec: RequestRecord, traceId: string | null) => unknown;

/** Each field from the record; undefined leaves it out of the line. */
const FIELDS: Record<AccessLogField, Field> = {
  method: (rec) => rec.method,
  path: (rec) => rec.path,
  route: (rec) => rec.route ?? "none",
  status: (rec) => rec.status,
  engine: (rec) => rec.bodyPathLabel,
  bytesIn: (rec) => rec.request.bytes,
  bytesOut: (rec) => rec.response.bytes,
  ms: (rec) => Math.round(rec.seconds * 1e4) / 10,
  client: (rec) => rec.clientAddress,
  upstream: (rec) => rec.lastTry?.endpoint.label ?? null,
  outcome: (rec) => rec.outcome?.code ?? null,
  phase: (rec) => rec.outcome?.phase ?? null,
  detail: (rec) => rec.outcome?.detail || undefined,
  tries: (rec) => (rec.tries.length > 1 ? rec.tries.length : undefined),
  requestId: (rec) => rec.requestId,
  traceId: (_rec, traceId) => traceId,
  userAgent: (rec) => rec.userAgent,
  tls: (rec) => rec.tls?.protocol ?? undefined,
  clientCert: (rec) => rec.tls?.clientSubject ?? undefined,
};

export function writeAccessLog(rec: RequestRecord, fields: readonly AccessLogField[], traceId: string | null): void {
  const line: Record<string, unknown> = {};
  for (const f of fields) {
    const v = FIELDS[f](rec, traceId);
    if (v !== undefined) line[f] = v;
  }
  access.info(line, "request");
}
