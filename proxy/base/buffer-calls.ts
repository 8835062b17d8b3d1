// Node's Buffer methods on the per-request path, called without looking them up on each buffer.
// In V8's compiled code a method looked up on a Buffer (subarray, toString) is a call of the
// generic property load, about 120 instructions, since Buffer.prototype is not an object V8
// folds lookups in; a method held in a module constant and called with `call` is a direct call.
// Buffer#toString also checks its arguments and looks the encoding up before it decodes.

type Latin1Slice = (this: Buffer, start: number, end: number) => string;

/** The Latin-1 decoder Buffer#toString("latin1") ends in: undocumented, so used only where it exists. */
const LATIN1_SLICE = (Buffer.prototype as unknown as { latin1Slice?: Latin1Slice }).latin1Slice ?? null;
const SUBARRAY = Buffer.prototype.subarray;
const SET = Uint8Array.prototype.set;
const ALLOC_UNSAFE = Buffer.allocUnsafe;

/** buf.toString("latin1", start, end) for 0 <= start <= end <= buf.length. */
export function latin1Of(buf: Buffer, start: number, end: number): string {
  return LATIN1_SLICE !== null ? LATIN1_SLICE.call(buf, start, end) : buf.toString("latin1", start, end);
}

/** buf.subarray(start, end): a view of the same memory. */
export function viewOf(buf: Buffer, start: number, end: number): Buffer {
  return SUBARRAY.call(buf, start, end);
}

/** A copy of `bytes` in a new Buffer (from Node's pool when small, as Buffer.allocUnsafe gives it). */
export function copyOf(bytes: Uint8Array): Buffer {
  const copy = ALLOC_UNSAFE(bytes.length);
  SET.call(copy, bytes);
  return copy;
}
