// Route matching for HTTP listeners: host (exact or *.suffix), path (exact, prefix,
// regex), method and headers; the first route that matches wins, in file order.
import type { RouteFile } from "../config/types.js";
import { durationMs } from "../config/types.js";
import type { Header } from "../http1/head.js";

export interface RequestView {
  method: string;
  /** origin-form path with query */
  path: string;
  host: string | null;
  headers: Header[];
}

export type RouteAction =
  | {
      kind: "forward";
      cluster: string;
      prefixRewrite: string | null;
      hostRewrite: string | null;
      requestHeadersAdd: Header[];
      requestHeadersRemove: Set<string>;
      responseHeadersAdd: Header[];
      responseHeadersRemove: Set<string>;
      firstByteMs: number | null;
      bodyIdleMs: number | null;
      engine: "splice" | "buffered" | null;
      /** Retries after the first try, and the failures that allow one. */
      retryAttempts: number;
      retryOn: ReadonlySet<string>;
      retryOnStatus: ReadonlySet<number>;
    }
  | { kind: "respond"; status: number; body: string; contentType: string }
  | { kind: "redirect"; status: number; location: string };

export interface Route {
  name: string;
  matches(req: RequestView): boolean;
  /** The path prefix a prefix_rewrite replaces (the matched prefix, or "" for other matchers). */
  pathPrefix: string;
  action: RouteAction;
}

function hostMatcher(patterns: string[]): (host: string | null) => boolean {
  const exact = new Set<string>();
  const suffixes: string[] = [];
  for (const p of patterns) {
    const l = p.toLowerCase();
    if (l.startsWith("*.")) suffixes.push(l.slice(1));
    else exact.add(l);
  }
  return (host) => {
    if (host === null) return false;
    // Port and a trailing dot don't make a different host.
    const h = host.replace(/:\d*$/, "").replace(/\.$/, "").toLowerCase();
    return exact.has(h) || suffixes.some((s) => h.endsWith(s) && h.length > s.length);
  };
}

const list = (v: string | string[] | undefined): string[] | undefined =>
  v === undefined ? undefined : Array.isArray(v) ? v : [v];

export function compileRoute(r: RouteFile, index: number): Route {
  const checks: Array<(req: RequestView) => boolean> = [];
  const hosts = list(r.match.host);
  if (hosts) {
    const m = hostMatcher(hosts);
    checks.push((req) => m(req.host));
  }
  let pathPrefix = "";
  const p = r.match.path;
  if (p?.exact !== undefined) {
    const exact = p.exact;
    checks.push((req) => req.path.split("?")[0] === exact);
    pathPrefix = exact;
  } else if (p?.prefix !== undefined) {
    const prefix = p.prefix;
    checks.push((req) => req.path.startsWith(prefix));
    pathPrefix = prefix;
  } else if (p?.regex !== undefined) {
    const re = new RegExp(`^(?:${p.regex})$`);
    checks.push((req) => re.test(req.path.split("?")[0] as string));
  }
  const methods = list(r.match.method);
  if (methods) {
    const set = new Set(methods.map((m) => m.toUpperCase()));
    checks.push((req) => set.has(req.method));
  }
  for (const h of r.match.headers ?? []) {
    const name = h.name.toLowerCase();
    const re = h.regex !== undefined ? new RegExp(`^(?:${h.regex})$`) : null;
    checks.push((req) => {
      const values = req.headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);
      if (h.present === false) return values.length === 0;
      if (values.length === 0) return false;
      if (h.exact !== undefined) return values.some((v) => v === h.exact);
      if (re) return values.some((v) => re.test(v));
      return true;
    });
  }
  let action: RouteAction;
  if (r.forward) {
    const f = r.forward;
    action = {
      kind: "forward",
      cluster: f.cluster,
      prefixRewrite: f.prefix_rewrite ?? null,
      hostRewrite: f.host_rewrite ?? null,
      requestHeadersAdd: Object.entries(f.request_headers_add ?? {}),
      requestHeadersRemove: new Set((f.request_headers_remove ?? []).map((n) => n.toLowerCase())),
      responseHeadersAdd: Object.entries(f.response_headers_add ?? {}),
      responseHeadersRemove: new Set((f.response_headers_remove ?? []).map((n) => n.toLowerCase())),
      firstByteMs: f.timeouts?.first_byte !== undefined ? durationMs(f.timeouts.first_byte, 0) : null,
      bodyIdleMs: f.timeouts?.body_idle !== undefined ? durationMs(f.timeouts.body_idle, 0) : null,
      engine: f.engine ?? null,
      retryAttempts: f.retry?.attempts ?? (f.retry ? 1 : 0),
      retryOn: new Set<string>((f.retry?.on ?? ["connect-failure"]).flatMap((x) => (typeof x === "string" ? [x] : []))),
      retryOnStatus: new Set<number>((f.retry?.on ?? []).flatMap((x) => (typeof x === "number" ? [x] : []))),
    };
  } else if (r.respond) {
    action = {
      kind: "respond",
      status: r.respond.status,
      body: r.respond.body ?? "",
      contentType: r.respond.content_type ?? "text/plain; charset=utf-8",
    };
  } else {
    const rd = r.redirect as NonNullable<RouteFile["redirect"]>;
    action = { kind: "redirect", status: rd.status ?? 302, location: rd.location };
  }
  return { name: r.name ?? `route ${index}`, matches: (req) => checks.every((c) => c(req)), pathPrefix, action };
}

export class RouteTable {
  private readonly routes: Route[];

  constructor(routes: RouteFile[]) {
    this.routes = routes.map(compileRoute);
  }

  match(req: RequestView): Route | null {
    for (const r of this.routes) if (r.matches(req)) return r;
    return null;
  }
}

/** The path sent upstream: the matched prefix replaced when the route says so. */
export function rewritePath(route: Route, path: string): string {
  if (route.action.kind !== "forward" || route.action.prefixRewrite === null) return path;
  const rest = path.slice(route.pathPrefix.length);
  const joined = route.action.prefixRewrite + rest;
  return joined.startsWith("/") ? joined : `/${joined}`;
}
