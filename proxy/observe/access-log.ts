// The access log: with `access_log` on, one JSON line per request, read from its record.
import { log } from "../base/log.js";
import type { RequestRecord } from "../request/record.js";

const access = log.child({ log: "access" });

export function writeAccessLog(rec: RequestRecord): void {
  access.info(
    {
      method: rec.method,
      path: rec.path,
      route: rec.route ?? "none",
      status: rec.status,
      engine: rec.bodyPathLabel,
      bytesIn: rec.request.bytes,
      bytesOut: rec.response.bytes,
      ms: Math.round(rec.seconds * 1e4) / 10,
      client: rec.clientAddress,
      outcome: rec.outcome?.code ?? null,
      phase: rec.outcome?.phase ?? null,
      ...(rec.outcome?.detail ? { detail: rec.outcome.detail } : {}),
      ...(rec.tries.length > 1 ? { tries: rec.tries.length } : {}),
    },
    "request",
  );
}
