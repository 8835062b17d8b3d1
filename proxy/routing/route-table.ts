// Route matching for HTTP listeners: host (exact or *.suffix), path (exact, prefix,
// regex), method and headers; the first route that matches wins, in file order.
import type { RouteAction, RouteSpec } from "../config/compile.js";
import type { Header } from "../http1/head.js";

export interface RequestView {
  method: string;
  /** origin-form path with query */
  path: string;
  host: string | null;
  headers: Header[];
}

export interface Route {
  name: string;
  matches(req: RequestView): boolean;
  /** The path prefix a prefix_rewrite replaces (the matched prefix, or "" for other matchers). */
  pathPrefix: string;
  action: RouteAction;
  /** CONNECT is tunnelled only by a route that names the method. */
  allowsConnect: boolean;
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

/** A route's matchers, built once from its spec. */
export function routeOf(spec: RouteSpec): Route {
  const checks: Array<(req: RequestView) => boolean> = [];
  const m = spec.match;
  if (m.hosts) {
    const matchHost = hostMatcher([...m.hosts]);
    checks.push((req) => matchHost(req.host));
  }
  let pathPrefix = "";
  const p = m.path;
  if (p && "exact" in p) {
    const exact = p.exact;
    checks.push((req) => req.path.split("?")[0] === exact);
    pathPrefix = exact;
  } else if (p && "prefix" in p) {
    const prefix = p.prefix;
    checks.push((req) => req.path.startsWith(prefix));
    pathPrefix = prefix;
  } else if (p && "regex" in p) {
    const re = new RegExp(`^(?:${p.regex})$`);
    checks.push((req) => re.test(req.path.split("?")[0] as string));
  }
  if (m.methods) {
    const set = new Set(m.methods);
    checks.push((req) => set.has(req.method));
  }
  for (const h of m.headers) {
    const name = h.name;
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
  return {
    name: spec.name,
    matches: (req) => checks.every((c) => c(req)),
    pathPrefix,
    action: spec.action,
    allowsConnect: m.methods?.includes("CONNECT") ?? false,
  };
}

export class RouteTable {
  private readonly routes: Route[];

  constructor(routes: readonly RouteSpec[]) {
    this.routes = routes.map(routeOf);
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
