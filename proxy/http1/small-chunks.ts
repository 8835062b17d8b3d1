// The fast path of chunked bodies: many small chunks already buffered are parsed here in one
// synchronous pass, without a wait per chunk. Anything unusual (an extension, the last chunk,
// a large or incomplete chunk, bad framing) stops the pass: the line-by-line path takes the
// next chunk and applies every rule, so both paths accept and refuse exactly the same input.

/** Hex digit value of a byte, or -1. */
function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/** Chunk sizes of more significant hex digits than this are refused (by the line path). */
const MAX_SIZE_DIGITS = 12;

export interface SmallChunks {
  /** Bytes of the buffer parsed (size lines, data and CRLFs). */
  consumed: number;
  /** Payload bytes taken. */
  payload: number;
  chunks: number;
}

/**
 * Takes the complete chunks at the start of `buf` whose size line is bare hex, with its CRLF no
 * longer than `maxLine`, and whose size is below `largeFrom`, appending their data (views into `buf`) to `out`; stops once `maxPayload`
 * bytes or `maxChunks` chunks are taken.
 */
export function takeSmallChunks(
  buf: Buffer,
  maxLine: number,
  largeFrom: number,
  maxPayload: number,
  maxChunks: number,
  out: Buffer[],
): SmallChunks {
  let pos = 0;
  let payload = 0;
  let chunks = 0;
  while (payload < maxPayload && chunks < maxChunks) {
    let i = pos;
    let size = 0;
    let significant = 0;
    const lineEnd = Math.min(buf.length, pos + maxLine);
    for (let v = hexValue(buf[i] ?? -1); v >= 0 && i < lineEnd; v = hexValue(buf[++i] ?? -1)) {
      size = size * 16 + v;
      if (size > 0) significant++;
    }
    if (i === pos || i + 1 >= lineEnd || significant > MAX_SIZE_DIGITS || buf[i] !== 13 || buf[i + 1] !== 10) break;
    if (size === 0 || size >= largeFrom) break;
    const data = i + 2;
    const end = data + size;
    if (end + 2 > buf.length || buf[end] !== 13 || buf[end + 1] !== 10) break;
    out.push(buf.subarray(data, end));
    payload += size;
    chunks++;
    pos = end + 2;
  }
  return { consumed: pos, payload, chunks };
}
