// What /config may show. An allow-list: structure (names, addresses, durations, limits,
// matchers' shapes) is shown; free text that could carry a secret is shown only when it is
// known to be harmless. Header values are shown for a short list of header names; URLs keep
// their scheme, host and path but lose credentials and query values; bodies show their length.
import type { ConfigFile } from "../config/types.js";

export const REDACTED = "[redacted]";

/** Header fields whose values are not secrets. Everything else is redacted. */
const SAFE_HEADERS = new Set([
  "accept",
  "accept-encoding",
  "accept-language",
  "cache-control",
  "content-language",
  "content-type",
  "referrer-policy",
  "strict-transport-security",
  "vary",
  "via",
  "x-content-type-options",
  "x-forwarded-host",
  "x-forwarded-proto",
  "x-frame-options",
]);

const headerValue = (name: string, value: string) => (SAFE_HEADERS.has(name.toLowerCase()) ? value : REDACTED);

/** A URL or a path with its query: credentials and query values redacted, the rest kept. */
export function redactUrl(text: string): string {
  const absolute = /^[a-z][a-z0-9+.-]*:\/\//i.test(text);
  let u: URL;
  try {
    u = new URL(text, "http://placeholder.invalid");
  } catch {
    return REDACTED;
  }
  if (u.username || u.password) {
    u.username = REDACTED;
    u.password = "";
  }
  for (const key of [...new Set(u.searchParams.keys())]) u.searchParams.set(key, REDACTED);
  // The fragment never reaches a server but may still hold a token.
  if (u.hash) u.hash = REDACTED;
  const out = u.toString();
  return absolute ? out : out.slice("http://placeholder.invalid".length);
}

export function redact(config: ConfigFile): ConfigFile {
  const copy = structuredClone(config);
  for (const l of copy.listeners) {
    for (const r of l.routes ?? []) {
      const f = r.forward;
      for (const map of [f?.request_headers_add, f?.response_headers_add]) {
        if (!map) continue;
        for (const [name, value] of Object.entries(map)) map[name] = headerValue(name, value);
      }
      for (const m of r.match?.headers ?? []) {
        if (m.exact !== undefined) m.exact = headerValue(m.name, m.exact);
        if (m.regex !== undefined) m.regex = headerValue(m.name, m.regex);
      }
      const p = r.match?.path;
      if (p?.exact !== undefined) p.exact = redactUrl(p.exact);
      if (p?.prefix !== undefined) p.prefix = redactUrl(p.prefix);
      if (r.respond?.body !== undefined) r.respond.body = `${REDACTED} (${Buffer.byteLength(r.respond.body)} bytes)`;
      if (r.redirect) r.redirect.location = redactUrl(r.redirect.location);
    }
  }
  for (const c of Object.values(copy.clusters ?? {})) {
    if (c.health_check) c.health_check.path = redactUrl(c.health_check.path);
  }
  const tracing = copy.telemetry?.tracing;
  if (tracing?.endpoint) tracing.endpoint = redactUrl(tracing.endpoint);
  return copy;
}

/** A peer on this host: 127.0.0.0/8, ::1, or IPv4 loopback mapped into IPv6. */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  return address === "::1" || /^(::ffff:)?127\./.test(address);
}
