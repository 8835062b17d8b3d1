// RFC 9110 §9.2.2: methods whose intended effect is the same however often a request is
// sent. Only these are sent again without being asked to.
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);

export function isIdempotent(method: string): boolean {
  return IDEMPOTENT.has(method);
}
