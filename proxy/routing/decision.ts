// The decision for one request, the same for both engines: answer it here (a configured
// response or redirect, or 404 when no route matches), or forward it by a plan that says
// where, with which edits, timeouts and retry policy.
import { STATUS_CODES } from "node:http";
import type { Header } from "../http1/head.js";
import type { Cluster } from "../upstream/cluster.js";
import { type RequestView, type Route, type RouteTable, rewritePath } from "./route-table.js";

export interface LocalAnswer {
  kind: "answer";
  route: string | null;
  status: number;
  reason: string;
  headers: Header[];
  body: string;
  outcome: "local" | "no_route" | "client_protocol";
}

export interface RetryPolicy {
  /** Tries after the first. */
  attempts: number;
  /** Failures that allow another try: connect-failure, reset, timeout. */
  on: ReadonlySet<string>;
  /** Statuses that end a try with another try instead of being passed on (idempotent, bodiless requests). */
  statuses: ReadonlySet<number>;
}

export interface ForwardPlan {
  kind: "forward";
  route: string;
  clusterName: string;
  /** null when the route names a cluster this state does not have. */
  cluster: Cluster | null;
  /** The path sent upstream (the route's prefix rewrite applied). */
  path: string;
  hostRewrite: string | null;
  requestHeadersAdd: Header[];
  requestHeadersRemove: ReadonlySet<string>;
  responseHeadersAdd: Header[];
  responseHeadersRemove: ReadonlySet<string>;
  firstByteMs: number;
  bodyIdleMs: number;
  retry: RetryPolicy;
  /** The route asks for the buffered engine (splice listeners hand the connection over). */
  buffered: boolean;
}

export type Decision = LocalAnswer | ForwardPlan;

/** What a decision reads of a listener's state (the state itself is passed: no object per request). */
export interface DecisionState {
  routes: RouteTable;
  clusters: ReadonlyMap<string, Cluster>;
  opts: { timeouts: { firstByteMs: number; bodyIdleMs: number } };
}

/** A plain-text or configured answer sluice gives itself. */
function answer(
  route: string | null,
  status: number,
  headers: Header[],
  body: string,
  outcome: LocalAnswer["outcome"],
): LocalAnswer {
  return { kind: "answer", route, status, reason: STATUS_CODES[status] ?? "Status", headers, body, outcome };
}

const TEXT: Header = ["content-type", "text/plain; charset=utf-8"];
const NO_ROUTE = answer(null, 404, [TEXT], "404 Not Found: no route\n", "no_route");
const CONNECT_NOT_ALLOWED = answer(
  null,
  405,
  [TEXT],
  "405 Method Not Allowed: CONNECT is not enabled on this route\n",
  "client_protocol",
);

// Answers and retry policies are the same for every request of a route: made once per route.
const answers = new WeakMap<Route, LocalAnswer>();
const policies = new WeakMap<Route, RetryPolicy>();

function answerOf(route: Route): LocalAnswer {
  let made = answers.get(route);
  if (made) return made;
  const a = route.action;
  if (a.kind === "respond") made = answer(route.name, a.status, [["content-type", a.contentType]], a.body, "local");
  else if (a.kind === "redirect") made = answer(route.name, a.status, [["location", a.location]], "", "local");
  else throw new Error("a forwarding route has no local answer");
  answers.set(route, made);
  return made;
}

export function decide(req: RequestView, state: DecisionState): Decision {
  const route = state.routes.match(req);
  if (route === null) return NO_ROUTE;
  // A reverse proxy tunnels nothing it wasn't told to: after a CONNECT, the bytes on the
  // connection bypass everything sluice does to requests.
  if (req.method === "CONNECT" && !route.allowsConnect) return { ...CONNECT_NOT_ALLOWED, route: route.name };
  const a = route.action;
  if (a.kind !== "forward") return answerOf(route);
  let retry = policies.get(route);
  if (!retry) {
    retry = { attempts: a.retryAttempts, on: a.retryOn, statuses: a.retryOnStatus };
    policies.set(route, retry);
  }
  return {
    kind: "forward",
    route: route.name,
    clusterName: a.cluster,
    cluster: state.clusters.get(a.cluster) ?? null,
    path: rewritePath(route, req.path),
    hostRewrite: a.hostRewrite,
    requestHeadersAdd: a.requestHeadersAdd,
    requestHeadersRemove: a.requestHeadersRemove,
    responseHeadersAdd: a.responseHeadersAdd,
    responseHeadersRemove: a.responseHeadersRemove,
    firstByteMs: a.firstByteMs ?? state.opts.timeouts.firstByteMs,
    bodyIdleMs: a.bodyIdleMs ?? state.opts.timeouts.bodyIdleMs,
    retry,
    buffered: a.engine === "buffered",
  };
}
