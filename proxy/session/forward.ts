// Forwarding a request by its plan: the only retry loop, the same for both engines. It picks
// an endpoint (not one already tried), counts the request as active there, runs one try on
// it, feeds outlier detection from the try's outcome, and asks one question of a failure:
// may another try follow?
import { performance } from "node:perf_hooks";
import type { Header } from "../http1/head.js";
import { isIdempotent } from "../http1/methods.js";
import type { RequestObservation } from "../observe/observation.js";
import { COMPLETED, outcome, RequestFailure } from "../request/outcome.js";
import type { RequestRecord, TryRecord } from "../request/record.js";
import type { ForwardPlan, RetryPolicy } from "../routing/decision.js";
import type { Cluster, Endpoint, UpstreamResult } from "../upstream/cluster.js";

/** One try on one endpoint; it fills `t` and throws RequestFailure when it can't complete. */
export type RunTry<T> = (t: TryRecord, traceHeaders: Header[] | null, lastTry: boolean) => Promise<T>;

/** The retry kinds a route's `retry.on` names, for a failure that happened before any response byte. */
function retryKind(f: RequestFailure, t: TryRecord): "connect-failure" | "reset" | "timeout" | "status" | null {
  const { code, phase } = f.outcome;
  if (phase === "connect") return code === "upstream_refused" || code === "upstream_timeout" ? "connect-failure" : null;
  if (t.responseHeadAt !== null && code !== "upstream_status") return null;
  switch (code) {
    case "upstream_status":
      return "status";
    case "upstream_timeout":
      return "timeout";
    case "upstream_reset":
    case "upstream_closed":
      return "reset";
    default:
      return null;
  }
}

/**
 * Whether the request may go to another endpoint after this failure: the route allows it, and
 * it is safe, because no body byte can have gone (a try says so in `bodySent`) and either
 * nothing was sent at all (a connect failure) or the method is idempotent. Statuses are
 * retried only for idempotent requests without a body: a try asks for it only then.
 */
export function retryable(f: RequestFailure, t: TryRecord, method: string, policy: RetryPolicy): boolean {
  const kind = retryKind(f, t);
  if (kind === null) return false;
  if (kind === "status") return true;
  return policy.on.has(kind) && !f.bodySent && (kind === "connect-failure" || isIdempotent(method));
}

/** What the endpoint's outlier detection learns from a try. */
function resultOf(t: TryRecord): UpstreamResult | null {
  const code = t.outcome?.code;
  if (code === "upstream_status") return null;
  if (t.status !== null) return t.status >= 500 ? "5xx" : "success";
  if (code === "upstream_refused") return "connect-failure";
  if (code === "upstream_timeout") return t.outcome?.phase === "connect" ? "connect-failure" : "timeout";
  if (code === "upstream_reset" || code === "upstream_closed") return "reset";
  return null;
}

export async function forward<T>(
  rec: RequestRecord,
  plan: ForwardPlan,
  observation: RequestObservation,
  runTry: RunTry<T>,
): Promise<T> {
  const cluster = plan.cluster;
  if (cluster === null) throw new RequestFailure(outcome("no_endpoint", "route", `no cluster ${plan.clusterName}`), 503);
  // The endpoints tried so far, made only when a try is retried (most requests have one).
  let tried: Set<Endpoint> | null = null;
  for (let attempt = 0; ; attempt++) {
    const endpoint = cluster.pick(tried);
    if (endpoint === null)
      throw new RequestFailure(outcome("no_endpoint", "route", `cluster ${cluster.name} has no endpoints yet`), 503);
    const lastTry = attempt >= plan.retry.attempts || cluster.retriesInFlight >= cluster.opts.maxRetries;
    const t = rec.startTry(endpoint);
    t.upstreamTls = cluster.tls;
    const traceHeaders = observation.tryStarted(t);
    endpoint.active++;
    if (attempt > 0) cluster.retriesInFlight++;
    try {
      const result = await runTry(t, traceHeaders, lastTry);
      endTry(cluster, t, t.tunnel ? COMPLETED.tunnel : COMPLETED.response_body);
      observation.tryEnded(t, false);
      return result;
    } catch (err) {
      const f =
        err instanceof RequestFailure ? err : new RequestFailure(outcome("proxy_internal", "response_head", String(err)), null);
      endTry(cluster, t, f.outcome);
      const again = !lastTry && retryable(f, t, rec.method, plan.retry);
      observation.tryEnded(t, again);
      if (!again) throw f;
      tried ??= new Set();
      tried.add(endpoint);
    } finally {
      endpoint.active--;
      if (attempt > 0) cluster.retriesInFlight--;
    }
  }
}

function endTry(cluster: Cluster, t: TryRecord, o: TryRecord["outcome"]): void {
  t.outcome = o;
  t.end = performance.now();
  const result = resultOf(t);
  if (result) cluster.report(t.endpoint, result);
}
