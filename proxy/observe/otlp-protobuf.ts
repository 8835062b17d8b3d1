// OTLP trace protobuf, written straight from sluice's records: no span objects, no message
// objects, no Long or BigInt. Field numbers are those of opentelemetry/proto/trace/v1/trace.proto
// and common/v1/common.proto; test/otlp.test.ts decodes what this writes with the official
// @opentelemetry/otlp-transformer and compares it field by field with the SDK's output.

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

/** KeyValue.key fields (field 1, length, UTF-8), encoded once per key: the keys are a small fixed set. */
const KEY_FIELDS = new Map<string, Uint8Array>();
/** An attribute in field `field` whose values are few: each key-and-value pair encoded once (kvFew). */
export interface FewKey {
  field: number;
  key: Uint8Array;
  values: Map<string, Uint8Array>;
}
export function fewKey(field: number, key: string): FewKey {
  return { field, key: keyField(key), values: new Map() };
}

/** An attribute key encoded once, for kvStr, kvUint and kvBool. */
export function attrKey(key: string): Uint8Array {
  return keyField(key);
}
function keyField(key: string): Uint8Array {
  const bytes = Buffer.from(key, "utf8");
  const w = new ProtoWriter(bytes.length + 8);
  w.bytes(1, bytes);
  return Uint8Array.from(w.view());
}

/** A growable buffer of protobuf fields. Length-delimited fields are back-patched. */
export class ProtoWriter {
  buf: Buffer;
  /** The same bytes, for writing a time's two 32-bit words at once. */
  private dv: DataView;
  pos = 0;

  constructor(size = 64 * 1024) {
    this.buf = Buffer.allocUnsafe(size);
    this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.length);
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
    this.dv = new DataView(next.buffer, next.byteOffset, next.length);
  }

  reset(): void {
    this.pos = 0;
  }

  /** The bytes written so far (a view: valid until the next write). */
  view(): Buffer {
    return this.buf.subarray(0, this.pos);
  }

  /** A non-negative integer below 2^53. */
  varint(v: number): void {
    this.ensure(10);
    this.pos = this.varintAt(this.pos, v);
  }

  tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }

  /** Starts a length-delimited field; end(start) writes its length. */
  begin(field: number): number {
    this.tag(field, WIRE_LEN);
    this.ensure(1);
    return this.pos++;
  }

  /**
   * Starts a length-delimited field whose length is likely 128 to 16383 bytes (a span): two
   * length bytes are reserved, so that endWide() need not move the content, as end() would.
   */
  beginWide(field: number): number {
    this.tag(field, WIRE_LEN);
    this.ensure(2);
    const start = this.pos;
    this.pos += 2;
    return start;
  }

  /** Ends what beginWide() started; another length size moves the content (canonical varints only). */
  endWide(start: number): void {
    const len = this.pos - start - 2;
    if (len >= 128 && len < 16384) {
      this.buf[start] = (len & 0x7f) | 0x80;
      this.buf[start + 1] = len >>> 7;
      return;
    }
    // Rare: shift the content to one reserved byte, then let end() size the length.
    this.buf.copyWithin(start + 1, start + 2, this.pos);
    this.pos--;
    this.end(start);
  }

  /** The bytes written since `from`, copied (to be written again with encoded()). */
  keep(from: number): Uint8Array {
    return Uint8Array.from(this.buf.subarray(from, this.pos));
  }

  /** Ends what begin() started: one length byte was reserved; a longer length moves the content. */
  end(start: number): void {
    const len = this.pos - start - 1;
    if (len < 128) {
      this.buf[start] = len;
      return;
    }
    let extra = 0;
    for (let v = len >> 7; v > 0; v >>= 7) extra++;
    this.ensure(extra);
    this.buf.copyWithin(start + 1 + extra, start + 1, this.pos);
    let p = start;
    let v = len;
    while (v > 0x7f) {
      this.buf[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[p] = v;
    this.pos += extra;
  }

  string(field: number, s: string): void {
    const start = this.begin(field);
    this.ensure(s.length * 3);
    // Short ASCII strings (nearly all of them) are copied here: cheaper than a call into C++.
    const b = this.buf;
    let p = this.pos;
    let i = 0;
    for (; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c > 0x7f) break;
      b[p++] = c;
    }
    this.pos = i === s.length ? p : this.pos + b.write(s, this.pos, "utf8");
    this.end(start);
  }

  /** Bytes encoded once (constant attribute keys, a span's kept start), copied in; returns where they start, for patching. */
  encoded(bytes: Uint8Array): number {
    this.ensure(bytes.length);
    const at = this.pos;
    this.buf.set(bytes, at);
    this.pos = at + bytes.length;
    return at;
  }

  /** Bytes set at `at`, in bytes already written (a template's id). */
  patch(at: number, bytes: Uint8Array): void {
    this.buf.set(bytes, at);
  }

  /**
   * A varint's bytes at `p` (room checked by the caller; over one of the same length, a kept
   * template's value); returns the position after them.
   */
  varintAt(p: number, v: number): number {
    const b = this.buf;
    while (v > 0x7f) {
      b[p++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    b[p] = v;
    return p + 1;
  }

  /** A trace or span id (16 or 8 bytes) as a bytes field. */
  id(field: number, id: Uint8Array): void {
    const n = id.length;
    this.ensure(n + 2);
    const b = this.buf;
    const p = this.pos;
    b[p] = field * 8 + WIRE_LEN;
    b[p + 1] = n;
    // One copy: cheaper than a loop even for 8 bytes.
    b.set(id, p + 2);
    this.pos = p + 2 + n;
  }

  bytes(field: number, b: Buffer): void {
    this.tag(field, WIRE_LEN);
    this.varint(b.length);
    this.raw(b);
  }

  raw(b: Buffer): void {
    this.ensure(b.length);
    b.copy(this.buf, this.pos);
    this.pos += b.length;
  }

  uint(field: number, v: number): void {
    this.tag(field, WIRE_VARINT);
    this.varint(v);
  }

  fixed32(field: number, v: number): void {
    this.tag(field, WIRE_FIXED32);
    this.ensure(4);
    const b = this.buf;
    const p = this.pos;
    b[p] = v & 0xff;
    b[p + 1] = (v >>> 8) & 0xff;
    b[p + 2] = (v >>> 16) & 0xff;
    b[p + 3] = v >>> 24;
    this.pos = p + 4;
  }

  /**
   * Epoch milliseconds as fixed64 nanoseconds, split the way the SDK splits a millisecond time
   * (whole seconds, then nanoseconds rounded), and put together without losing a bit.
   */
  time(field: number, epochMs: number): void {
    this.tag(field, WIRE_FIXED64);
    this.ensure(8);
    this.timeAt(this.pos, epochMs);
    this.pos += 8;
  }

  /** The eight bytes of a time (as time() writes them) at `p`, in bytes already written: a template's time. */
  timeAt(p: number, epochMs: number): void {
    const seconds = Math.trunc(epochMs / 1000);
    // The remainder by subtraction: exact here (what % gives), where % on doubles is a call into C.
    const nanos = Math.round((epochMs - seconds * 1000) * 1e6);
    // seconds × 1e9 + nanos without losing a bit: 1e9 = 1953125 × 2^9, and seconds × 1953125
    // stays below 2^53; split it at 2^23 so that × 2^9 lands on the two 32-bit words.
    const a = seconds * 1953125;
    const aHi = Math.floor(a / 8388608);
    const low = (a - aHi * 8388608) * 512 + nanos; // below 2^33
    const carry = low >= 4294967296 ? 1 : 0;
    const lw = (low - carry * 4294967296) >>> 0;
    const hw = (aHi + carry) >>> 0;
    this.dv.setUint32(p, lw, true);
    this.dv.setUint32(p + 4, hw, true);
  }

  /** Bytes encoded once with a time at `timeOffset` in them (an event whose name is constant): copied, and the time set. */
  timed(bytes: Uint8Array, timeOffset: number, epochMs: number): void {
    this.ensure(bytes.length);
    const at = this.pos;
    this.buf.set(bytes, at);
    this.pos = at + bytes.length;
    this.timeAt(at + timeOffset, epochMs);
  }

  /**
   * A KeyValue whose values are few (a method, a scheme, an engine, an outcome): each
   * key-and-value pair is encoded once and copied in after.
   */
  kvFew(few: FewKey, value: string): void {
    let kv = few.values.get(value);
    if (kv === undefined) {
      const w = new ProtoWriter(few.key.length + value.length * 3 + 16);
      w.kvStr(few.field, few.key, value);
      kv = Uint8Array.from(w.view());
      // Bounded: a key whose values turn out many is encoded each time beyond this.
      if (few.values.size < 256) few.values.set(value, kv);
    }
    this.encoded(kv);
  }

  /** A KeyValue with a pre-encoded key (attrKey) and a string value. */
  kvStr(field: number, key: Uint8Array, value: string): void {
    const kv = this.begin(field);
    this.encoded(key);
    const any = this.begin(2);
    this.string(1, value);
    this.end(any);
    this.end(kv);
  }

  /** A KeyValue with a pre-encoded key and a non-negative integer value (lengths known: no back-patching). */
  kvUint(field: number, key: Uint8Array, value: number): void {
    const vlen = varintSize(value);
    const anyLen = 2 + vlen - 1; // AnyValue: the int_value tag, then the varint
    const kvLen = key.length + 2 + anyLen;
    if (field > 15 || kvLen > 0x7f) {
      // Not the common shape (one-byte tag and length): the general writers.
      this.tag(field, WIRE_LEN);
      this.varint(kvLen);
      this.encoded(key);
      this.ensure(2);
      this.buf[this.pos++] = 0x12;
      this.buf[this.pos++] = anyLen;
      this.uint(3, value);
      return;
    }
    this.ensure(kvLen + 2);
    const b = this.buf;
    let p = this.pos;
    b[p++] = field * 8 + WIRE_LEN;
    b[p++] = kvLen;
    b.set(key, p);
    p += key.length;
    b[p++] = 0x12;
    b[p++] = anyLen;
    b[p++] = 0x18; // int_value: field 3, varint
    this.pos = this.varintAt(p, value);
  }

  kvBool(field: number, key: Uint8Array, value: boolean): void {
    this.tag(field, WIRE_LEN);
    this.varint(key.length + 4);
    this.encoded(key);
    this.ensure(4);
    this.buf[this.pos++] = 0x12;
    this.buf[this.pos++] = 2;
    this.buf[this.pos++] = 0x10;
    this.buf[this.pos++] = value ? 1 : 0;
  }

  /** A KeyValue (common.proto) in field `field`: strings, integers, doubles and booleans. */
  keyValue(field: number, key: string, value: string | number | boolean): void {
    const kv = this.begin(field);
    let k = KEY_FIELDS.get(key);
    if (k === undefined) {
      k = keyField(key);
      if (KEY_FIELDS.size < 1024) KEY_FIELDS.set(key, k);
    }
    this.encoded(k);
    const any = this.begin(2);
    if (typeof value === "string") this.string(1, value);
    else if (typeof value === "boolean") this.uint(2, value ? 1 : 0);
    else if (Number.isInteger(value)) {
      // int64: a negative value is its two's complement as ten bytes.
      if (value >= 0) this.uint(3, value);
      else this.negativeInt(3, value);
    } else {
      this.tag(4, WIRE_FIXED64);
      this.ensure(8);
      this.buf.writeDoubleLE(value, this.pos);
      this.pos += 8;
    }
    this.end(any);
    this.end(kv);
  }

  private negativeInt(field: number, v: number): void {
    this.tag(field, WIRE_VARINT);
    let n = BigInt.asUintN(64, BigInt(v));
    this.ensure(10);
    while (n > 0x7fn) {
      this.buf[this.pos++] = Number(n & 0x7fn) | 0x80;
      n >>= 7n;
    }
    this.buf[this.pos++] = Number(n);
  }
}

/** Span fields (trace.proto). */
export const SPAN = {
  traceId: 1,
  spanId: 2,
  traceState: 3,
  parentSpanId: 4,
  name: 5,
  kind: 6,
  start: 7,
  end: 8,
  attributes: 9,
  events: 11,
  status: 15,
  flags: 16,
} as const;

export const EVENT = { time: 1, name: 2, attributes: 3 } as const;
export const STATUS = { message: 2, code: 3 } as const;
export const KIND = { server: 2, client: 3 } as const;
export const STATUS_ERROR = 2;
/** Span flags: the W3C trace flags, and whether the parent was remote (OTLP 1.1 flags). */
export const FLAG_HAS_IS_REMOTE = 0x100;
export const FLAG_IS_REMOTE = 0x200;

/**
 * An ExportTraceServiceRequest around encoded spans: one ResourceSpans with `resource` (an
 * encoded Resource message) and one ScopeSpans with `scope` (an encoded InstrumentationScope).
 * `spans` holds Span messages already framed as field 2 of ScopeSpans.
 */
export function exportRequest(resource: Buffer, scope: Buffer, spans: Buffer): Buffer {
  return Buffer.concat([exportPrefix(resource, scope, spans.length), spans]);
}

/**
 * What comes before `spansLength` bytes of spans in an ExportTraceServiceRequest (as
 * exportRequest): sent ahead of the spans, so that a batch's spans are not copied into it.
 */
export function exportPrefix(resource: Buffer, scope: Buffer, spansLength: number): Buffer {
  const w = new ProtoWriter(resource.length + scope.length + 64);
  const scopeField = 1 + varintSize(scope.length) + scope.length;
  const scopeSpans = scopeField + spansLength;
  w.tag(1, WIRE_LEN);
  w.varint(1 + varintSize(resource.length) + resource.length + 1 + varintSize(scopeSpans) + scopeSpans);
  w.bytes(1, resource);
  w.tag(2, WIRE_LEN);
  w.varint(scopeSpans);
  w.bytes(1, scope);
  return Buffer.from(w.view());
}

/** Bytes of a non-negative integer's varint. */
export function varintSize(v: number): number {
  let n = 1;
  for (; v > 0x7f; v = Math.floor(v / 128)) n++;
  return n;
}

/** A Resource message from its attributes. */
export function resourceMessage(attributes: ReadonlyArray<readonly [string, string | number | boolean]>): Buffer {
  const w = new ProtoWriter(1024);
  for (const [k, v] of attributes) w.keyValue(1, k, v);
  w.uint(2, 0);
  return Buffer.from(w.view());
}

/** An InstrumentationScope message. */
export function scopeMessage(name: string, version?: string): Buffer {
  const w = new ProtoWriter(256);
  w.string(1, name);
  if (version) w.string(2, version);
  return Buffer.from(w.view());
}
