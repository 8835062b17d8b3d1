// How a request ended: one closed vocabulary for both engines, read by the access log, the
// metrics, the spans and outlier detection. docs/failure-semantics.md has the table, with
// the Envoy response flags and HAProxy termination states each code corresponds to.

/** Who ended the request early; null when nothing went wrong. */
export type Party = "client" | "upstream" | "proxy";

/** Where in its life the request was when it ended. */
export type Phase =
  | "head" // reading the request head
  | "route" // choosing what to do with it
  | "connect" // getting an upstream connection
  | "request_body" // sending the request (head and body) upstream
  | "response_head" // waiting for the upstream's final response head
  | "response_body" // relaying the response body
  | "tunnel"; // an Upgrade or CONNECT tunnel

/** The outcome codes, each one party and one cause; the `outcome` metric label takes these values. */
export const OUTCOMES = {
  completed: { party: null, cause: "completed" },
  local: { party: "proxy", cause: "local" },
  no_route: { party: "proxy", cause: "no_route" },
  no_endpoint: { party: "proxy", cause: "no_endpoint" },
  overloaded: { party: "proxy", cause: "overloaded" },
  proxy_internal: { party: "proxy", cause: "internal" },
  client_protocol: { party: "client", cause: "protocol" },
  client_limit: { party: "client", cause: "limit" },
  client_timeout: { party: "client", cause: "timeout" },
  client_closed: { party: "client", cause: "closed" },
  client_reset: { party: "client", cause: "reset" },
  client_tls: { party: "client", cause: "tls" },
  upstream_refused: { party: "upstream", cause: "refused" },
  upstream_timeout: { party: "upstream", cause: "timeout" },
  upstream_closed: { party: "upstream", cause: "closed" },
  upstream_reset: { party: "upstream", cause: "reset" },
  upstream_protocol: { party: "upstream", cause: "protocol" },
  upstream_status: { party: "upstream", cause: "status" },
  upstream_tls: { party: "upstream", cause: "tls" },
} as const satisfies Record<string, { party: Party | null; cause: string }>;

export type OutcomeCode = keyof typeof OUTCOMES;

export interface Outcome {
  code: OutcomeCode;
  phase: Phase;
  /** What exactly happened, for people: an errno name or a parser's message. */
  detail: string | null;
}

export const outcome = (code: OutcomeCode, phase: Phase, detail: string | null = null): Outcome => ({ code, phase, detail });

/** The outcomes of a completed try, shared by every request (an outcome is never changed). */
export const COMPLETED: Readonly<Record<"response_body" | "tunnel", Outcome>> = {
  response_body: Object.freeze(outcome("completed", "response_body")),
  tunnel: Object.freeze(outcome("completed", "tunnel")),
};

/**
 * Thrown by a try (either engine) when the request can't end normally. `status` is what the
 * client gets if no response head went out yet (null: nothing can be answered, the
 * connection is closed). `bodySent`: request body bytes may have gone upstream, so this
 * request can't be sent again.
 */
export class RequestFailure extends Error {
  constructor(
    readonly outcome: Outcome,
    readonly status: number | null,
    readonly bodySent = false,
  ) {
    super(`${outcome.code} in ${outcome.phase}${outcome.detail ? `: ${outcome.detail}` : ""}`);
    this.name = "RequestFailure";
  }
}

/** The cause a socket errno (or a transfer's code) stands for, on whichever side it happened. */
export function causeOfCode(code: string): "timeout" | "closed" | "reset" {
  if (code === "ETIMEDOUT") return "timeout";
  if (code === "UNEXPECTED_EOF" || code === "EOF") return "closed";
  return "reset";
}

/** The outcome code for `party` failing with `cause` (only the combinations the table has). */
export function codeFor(party: "client" | "upstream", cause: "timeout" | "closed" | "reset" | "protocol" | "limit"): OutcomeCode {
  if (party === "upstream" && cause === "limit") return "upstream_protocol";
  return `${party}_${cause}` as OutcomeCode;
}

/** A status sluice answers by itself: the outcome it stands for on the client's side. */
export function clientCodeForStatus(status: number): OutcomeCode {
  if (status === 408) return "client_timeout";
  if (status === 413 || status === 414 || status === 431) return "client_limit";
  return "client_protocol";
}
