// Request path normalisation, so that routing sees one spelling of each path and a route
// can't be bypassed with dot segments, percent-encoded letters or doubled slashes
// (RFC 3986 §6.2.2). The upstream receives the normalised path that was routed.
import { HttpError } from "./errors.js";

const UNRESERVED_ESCAPE = /%(2[dDeE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])/g;
const HEX_ESCAPE = /%[0-9a-f]{2}/g;

/**
 * Normalises the path part of an origin-form target; the query is left as it is.
 * Decodes percent-encoded unreserved characters, upper-cases other escapes, merges
 * repeated slashes and removes "." and ".." segments. Escaped slashes (%2F) stay escaped.
 * A ".." above the root, or an encoded NUL (%00) in the path, is refused (400).
 */
export function normalizePath(target: string): string {
  const q = target.indexOf("?");
  const rawPath = q === -1 ? target : target.slice(0, q);
  // Most paths are already normal: nothing escaped, no empty or dot segments.
  if (!rawPath.includes("%") && !rawPath.includes("//") && !rawPath.includes("/.")) return target;
  // A NUL ends a string in C: an upstream could see a different path than the one routed (nginx refuses it too).
  if (rawPath.includes("%00")) throw new HttpError(400, "NUL (%00) in the request path");
  const query = q === -1 ? "" : target.slice(q);
  const decoded = rawPath
    .replace(UNRESERVED_ESCAPE, (m) => String.fromCharCode(Number.parseInt(m.slice(1), 16)))
    .replace(HEX_ESCAPE, (m) => m.toUpperCase());
  const out: string[] = [];
  const segments = decoded.split("/");
  for (let i = 1; i < segments.length; i++) {
    const s = segments[i] as string;
    const last = i === segments.length - 1;
    if (s === "" && !last) continue;
    if (s === ".") {
      if (last) out.push("");
      continue;
    }
    if (s === "..") {
      if (out.length === 0) throw new HttpError(400, "path climbs above the root");
      out.pop();
      if (last) out.push("");
      continue;
    }
    out.push(s);
  }
  return `/${out.join("/")}${query}`;
}
