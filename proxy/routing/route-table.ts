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
  /** The verified client certificate's subject line; null or absent: none (plain TCP, or not verified). */
  clientSubject?: string | null;
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
  const cc = m.clientCertificate;
  if (cc) {
    const re = cc.subject?.regex !== undefined ? new RegExp(`^(?:${cc.subject.regex})$`) : null;
    const exact = cc.subject?.exact;
    checks.push((req) => {
      const subject = req.clientSubject ?? null;
      if (cc.present !== undefined && cc.present !== (subject !== null)) return false;
      if (exact !== undefined) return subject === exact;
      if (re) return subject !== null && re.test(subject);
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

/** Routes of one host bucket, indexed by their path condition; indices are file order. */
class PathIndex {
  readonly exact = new Map<string, number[]>();
  readonly prefixes = new Map<string, number[]>();
  /** Distinct prefix lengths, so a lookup tries only lengths some prefix has. */
  prefixLengths: number[] = [];
  /** Routes with a regex or no path condition: candidates for every path. */
  readonly others: number[] = [];

  add(i: number, path: RouteSpec["match"]["path"]): void {
    if (path && "exact" in path) push(this.exact, path.exact, i);
    else if (path && "prefix" in path) push(this.prefixes, path.prefix, i);
    else this.others.push(i);
  }

  seal(): void {
    this.prefixLengths = [...new Set([...this.prefixes.keys()].map((p) => p.length))].sort((x, y) => x - y);
  }

  collect(path: string, into: number[]): void {
    const q = path.indexOf("?");
    const exact = this.exact.get(q === -1 ? path : path.slice(0, q));
    if (exact) into.push(...exact);
    for (const n of this.prefixLengths) {
      if (n > path.length) break;
      const hit = this.prefixes.get(path.slice(0, n));
      if (hit) into.push(...hit);
    }
    into.push(...this.others);
  }
}

function push(m: Map<string, number[]>, key: string, i: number): void {
  const list = m.get(key);
  if (list) list.push(i);
  else m.set(key, [i]);
}

/** A host as routes compare it: lower case, without port or trailing dot. */
const hostKey = (host: string) => host.replace(/:\d*$/, "").replace(/\.$/, "").toLowerCase();

/** Below this many routes a scan in order is cheaper than the index. */
const SCAN_BELOW = 16;

/**
 * The routes of a listener; the first that matches wins, in file order. Large tables are
 * indexed by host (exact names and *.suffix) and path (exact and prefix), so a lookup checks
 * only the routes that could match: 10 000 routes cost about what 10 do.
 */
export class RouteTable {
  private readonly routes: Route[];
  private readonly anyHost = new PathIndex();
  private readonly byHost = new Map<string, PathIndex>();
  /** Keys are the suffix with its leading dot (".example.com" for "*.example.com"). */
  private readonly bySuffix = new Map<string, PathIndex>();

  constructor(specs: readonly RouteSpec[]) {
    this.routes = specs.map(routeOf);
    if (this.routes.length < SCAN_BELOW) return;
    specs.forEach((spec, i) => {
      const hosts = spec.match.hosts;
      if (!hosts) {
        this.anyHost.add(i, spec.match.path);
        return;
      }
      for (const h of hosts) {
        const l = h.toLowerCase();
        const map = l.startsWith("*.") ? this.bySuffix : this.byHost;
        const key = l.startsWith("*.") ? l.slice(1) : l;
        const idx = map.get(key) ?? new PathIndex();
        map.set(key, idx);
        idx.add(i, spec.match.path);
      }
    });
    for (const idx of [this.anyHost, ...this.byHost.values(), ...this.bySuffix.values()]) idx.seal();
  }

  match(req: RequestView): Route | null {
    if (this.routes.length < SCAN_BELOW) {
      for (const r of this.routes) if (r.matches(req)) return r;
      return null;
    }
    const candidates: number[] = [];
    this.anyHost.collect(req.path, candidates);
    if (req.host !== null) {
      const h = hostKey(req.host);
      this.byHost.get(h)?.collect(req.path, candidates);
      // Every dot-suffix of the host, for *.suffix routes.
      for (let dot = h.indexOf(".", 1); dot !== -1; dot = h.indexOf(".", dot + 1))
        this.bySuffix.get(h.slice(dot))?.collect(req.path, candidates);
    }
    candidates.sort((x, y) => x - y);
    let last = -1;
    for (const i of candidates) {
      if (i === last) continue;
      last = i;
      const r = this.routes[i] as Route;
      if (r.matches(req)) return r;
    }
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
