// The observers of one request, composed once from a running proxy's sinks: metrics, the
// access log and, when tracing is on, spans. The session and the forward loop tell it when
// a try starts and ends and when the request is over; everything else it reads from the record.
import { performance } from "node:perf_hooks";
import type { AccessLogField } from "../config/types.js";
import { clientCodeForStatus, outcome } from "../request/outcome.js";
import { type ClientAddresses, type ListenerEngine, NO_FIELDS, RequestRecord, type TryRecord } from "../request/record.js";
import { writeAccessLog } from "./access-log.js";
import type { Metrics } from "./metrics.js";
import type { RequestTraceHandle, TraceSink } from "./telemetry.js";

/** Where a running proxy's observations go. One per runtime: nothing is shared between two. */
export interface Sinks {
  metrics: Metrics;
  tracing: TraceSink | null;
  /** One access-log line per request, with these fields; null: none. */
  accessLog: readonly AccessLogField[] | null;
}

export class RequestObservation {
  private readonly trace: RequestTraceHandle | null;

  /** `traced`: the request's head was parsed, so it has a trace context to continue. */
  constructor(
    private readonly sinks: Sinks,
    readonly rec: RequestRecord,
    traced = true,
  ) {
    this.trace = traced && sinks.tracing ? sinks.tracing.startRequest(rec) : null;
  }

  /** A try begins: header fields to send upstream with it (the trace context; a new array, the caller's to extend), or null. */
  tryStarted(t: TryRecord): Array<[string, string]> | null {
    return this.trace?.tryStarted(this.rec, t) ?? null;
  }

  /** A try ended (its outcome is in `t`); `retried`: another try follows. */
  tryEnded(t: TryRecord, retried: boolean): void {
    this.sinks.metrics.tryEnded(this.rec, t, retried);
    this.trace?.tryEnded(this.rec, t);
  }

  /** The request is over: its record is final. Called once. */
  finish(): void {
    const rec = this.rec;
    if (rec.end === 0) rec.end = performance.now();
    // The client saw the bytes of the last try.
    const last = rec.lastTry;
    if (last) {
      rec.request = last.request;
      rec.response = last.response;
      rec.tunnel = last.tunnel;
    }
    this.sinks.metrics.requestEnded(rec);
    if (this.sinks.accessLog) writeAccessLog(rec, this.sinks.accessLog, this.trace?.traceId ?? null);
    this.trace?.finish(rec);
  }
}

/**
 * A request whose head failed (refused with `status`, or the client gone inside it when null)
 * still ends with a record, the same from both engines: counted and logged, never traced.
 */
export function observeFailedHead(
  sinks: Sinks,
  engine: ListenerEngine,
  client: ClientAddresses,
  status: number | null,
  detail: string,
): void {
  const rec = new RequestRecord({ engine, method: "", path: "", version: "1.1", host: null, fields: NO_FIELDS, client });
  rec.outcome = outcome(status === null ? "client_closed" : clientCodeForStatus(status), "head", detail);
  rec.status = status;
  new RequestObservation(sinks, rec, false).finish();
}
