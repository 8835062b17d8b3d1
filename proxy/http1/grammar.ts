// RFC 9110/9112 character classes as regular expressions, shared by the parsers.
export const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** field-value: VCHAR, obs-text, SP and HTAB; no CTL (so no bare CR or LF). */
export const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
export const METHOD = TOKEN;
/** origin-form: absolute-path [ "?" query ], with well-formed percent escapes. */
export const ORIGIN_FORM = /^\/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*$/;
export const ABSOLUTE_FORM = /^(https?):\/\/([^/?#@\s]+)((?:\/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*)?)$/i;
/** authority-form for CONNECT: host:port, host being a name, IPv4 or [IPv6]. */
export const AUTHORITY_FORM = /^(?:[A-Za-z0-9\-._~%!$&'()*+,;=]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$/;
/** Host header: empty, or reg-name / IPv4 / [IPv6] with an optional port. */
export const HOST_VALUE = /^(?:(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*|\[[0-9A-Fa-f:.]+\])(?::\d{0,5})?$/;
/** chunk-size [ chunk-ext ]: hex digits, then ;name[=token|quoted-string] with no whitespace. */
export const CHUNK_LINE =
  /^([0-9A-Fa-f]+)((?:;[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:=(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*)$/;

/** Whether field name `name` is `lower` (already lower-case) in any ASCII case, without allocating. */
export function sameName(name: string, lower: string): boolean {
  if (name.length !== lower.length) return false;
  for (let i = 0; i < name.length; i++) {
    let c = name.charCodeAt(i);
    if (c >= 65 && c <= 90) c += 32;
    if (c !== lower.charCodeAt(i)) return false;
  }
  return true;
}
