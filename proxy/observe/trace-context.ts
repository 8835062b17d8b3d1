// W3C trace context (traceparent, tracestate) read and written without intermediate objects,
// new traces' ids made in batches with their traceparent, span ids from a pooled random buffer,
// and the OpenTelemetry samplers sluice supports, with the
// SDK's exact decisions (TraceIdRatioBased: the trace id's 32-bit words XORed, against the ratio).
import { randomFillSync } from "node:crypto";
import { latin1Of } from "../base/buffer-calls.js";

/** A parent context from a traceparent field (hex ids, lower case). */
export interface ParentContext {
  traceId: string;
  spanId: string;
  /** The trace id's and then the span id's bytes as 32-bit words (see IdWords). */
  words: readonly number[];
  sampled: boolean;
  traceState: string | null;
}

/**
 * Ids as the span ring takes them: their bytes as 32-bit big-endian words (a trace id is four, a
 * span id two), made with the ids, so the request path never decodes hex.
 */
export type IdWords = number[];

/**
 * The lower-case hex of s[from, from + 8 * n) as n 32-bit words pushed onto `out`; false (and
 * `out` partly filled) when a character is not lower-case hex. One pass checks and decodes.
 */
function hexWords(s: string, from: number, n: number, out: IdWords): boolean {
  for (let w = 0; w < n; w++) {
    let word = 0;
    for (let i = from + 8 * w, end = i + 8; i < end; i++) {
      const c = s.charCodeAt(i);
      const v = c <= 57 ? c - 48 : c - 87;
      // Below '0' or between '9' and 'a' or above 'f': not a digit (v out of 0..15).
      if (v < 0 || v > 15 || (c > 57 && c < 97)) return false;
      word = (word << 4) | v;
    }
    out.push(word);
  }
  return true;
}

const HEX = /^[0-9a-f]+$/;
const ZERO_TRACE = "00000000000000000000000000000000";
const ZERO_SPAN = "0000000000000000";

/**
 * A traceparent's fields, or null when it is not one (W3C Trace Context level 1: version 00 is
 * exactly 55 characters; a later version may carry more after a dash; ff is invalid).
 */
export function parseTraceparent(value: string): Omit<ParentContext, "traceState"> | null {
  const v = value.trim();
  if (v.length < 55 || v[2] !== "-" || v[35] !== "-" || v[52] !== "-") return null;
  const version = v.slice(0, 2);
  if (!HEX.test(version) || version === "ff") return null;
  if (version === "00" ? v.length !== 55 : v.length > 55 && v[55] !== "-") return null;
  const traceId = v.slice(3, 35);
  const spanId = v.slice(36, 52);
  const flags = v.slice(53, 55);
  const words: IdWords = [];
  if (!hexWords(v, 3, 4, words) || !hexWords(v, 36, 2, words) || !HEX.test(flags)) return null;
  if (traceId === ZERO_TRACE || spanId === ZERO_SPAN) return null;
  return { traceId, spanId, words, sampled: (Number.parseInt(flags, 16) & 1) === 1 };
}

/** The incoming trace context: the traceparent, and tracestate fields joined (RFC 9110 list). `fields`: a request record's (RequestFields). */
export function extractContext(fields: { valuesOf(name: string): readonly string[] }): ParentContext | null {
  const parents = fields.valuesOf("traceparent");
  // None, or two: the context is ambiguous, and a new trace starts.
  if (parents.length !== 1) return null;
  const parent = parseTraceparent(parents[0] as string);
  if (!parent) return null;
  const states = fields.valuesOf("tracestate");
  const state = states.length === 0 ? null : states.length === 1 ? (states[0] as string) : states.join(",");
  return { ...parent, traceState: state !== null ? cleanTraceState(state) : null };
}

const TS_KEY = /^(?:[a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})$/;
const TS_VALUE = /^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/;

/** tracestate members that are valid `key=value` pairs (W3C), the first 32, as the SDK keeps them. */
function cleanTraceState(s: string): string | null {
  const kept: string[] = [];
  for (const raw of s.split(",")) {
    const m = raw.trim();
    const eq = m.indexOf("=");
    if (eq <= 0) continue;
    if (TS_KEY.test(m.slice(0, eq)) && TS_VALUE.test(m.slice(eq + 1))) kept.push(m);
  }
  return kept.length === 0 ? null : kept.slice(0, 32).join(",");
}

/**
 * Random bytes, and the same as lower-case hex, 4 KiB at a time: a span id (a try's, or the one
 * passed on under a caller's trace) is a slice of it, not a call into C++. New traces take theirs
 * from nextRoot's batches.
 */
const POOL_BYTES = 4096;
const pool = Buffer.allocUnsafe(POOL_BYTES);
const poolWords = new DataView(pool.buffer, pool.byteOffset, POOL_BYTES);
let poolHex = "";
let poolAt = POOL_BYTES;

/**
 * `bytes` random bytes as lower-case hex; never all zeros (an invalid id). The same bytes go onto
 * `words`, if given, as 32-bit words (IdWords).
 */
function randomId(bytes: number, words: IdWords | undefined): string {
  for (;;) {
    if (poolAt + bytes > POOL_BYTES) {
      poolHex = randomFillSync(pool).toString("hex");
      poolAt = 0;
    }
    const at = poolAt;
    poolAt += bytes;
    // Checked on the bytes (nearly always the first is not zero), not by comparing strings.
    for (let i = at; i < at + bytes; i++)
      if (pool[i] !== 0) {
        if (words) for (let k = at; k < at + bytes; k += 4) words.push(poolWords.getInt32(k, false));
        return poolHex.slice(2 * at, 2 * (at + bytes));
      }
  }
}

export const newSpanId = (words?: IdWords): string => randomId(8, words);

export function formatTraceparent(traceId: string, spanId: string, sampled: boolean): string {
  return `00-${traceId}-${spanId}-${sampled ? "01" : "00"}`;
}

/**
 * New root traces (a request that came without a trace context), made ROOTS at a time: each a
 * trace id and a span id, written out as the traceparent an unsampled request passes on,
 * `00-<trace id>-<span id>-00`, all of a batch in one string. An unsampled request (nine in ten
 * at 10%) cuts its traceparent out of it: one sliced string, where formatting one joined five
 * pieces that the head's write then flattened, and the ids' hex was a call into C++ (about a
 * third of what tracing cost such a request, callgrind, 2026-12-04). Its sampling is decided on
 * the XOR of its trace id's words (idXor), kept per root. A root is a number, valid until the
 * next call of nextRoot.
 */
const ROOTS = 128;
const ROOT_BYTES = 24;
const ROOT_TEXT = 55;
const rootRandom = new Uint8Array(ROOTS * ROOT_BYTES);
const rootView = new DataView(rootRandom.buffer);
/** The batch's text as bytes: a plain Uint8Array to write into, and a Buffer over it to decode. */
const rootChars = new Uint8Array(ROOTS * ROOT_TEXT);
const rootCharsBuffer = Buffer.from(rootChars.buffer, 0, rootChars.length);
/** The same bytes for two at a time (a pair of hex digits, at any offset). */
const rootCharsView = new DataView(rootChars.buffer);
const rootXors = new Int32Array(ROOTS);
/** Each byte's two lower-case hex digits, the first in the low 8 bits (written little-endian). */
const HEX_PAIRS = new Uint16Array(256);
for (let b = 0; b < 256; b++) {
  const digits = b.toString(16).padStart(2, "0");
  HEX_PAIRS[b] = digits.charCodeAt(0) | (digits.charCodeAt(1) << 8);
}
let rootText = "";
let rootAt = ROOTS;
for (let r = 0; r < ROOTS; r++) {
  rootCharsBuffer.write("00-", r * ROOT_TEXT, "latin1");
  rootCharsBuffer.write("-", r * ROOT_TEXT + 35, "latin1");
  rootCharsBuffer.write("-00", r * ROOT_TEXT + 52, "latin1");
}

/**
 * A batch of roots. The arrays are read through local names: through the module constants, V8
 * checks each one again at every element's load or store (about 10 instructions each). Written
 * like request-id.ts's batches of UUIDs, but not through one shared function: one taking the
 * arrays and a table of where each pair goes cost 794 instructions a root against 513 here,
 * whose two runs of digits need no table (callgrind, 2026-12-04).
 */
function makeRoots(): void {
  const random = rootRandom;
  const text = rootCharsView;
  const pairs = HEX_PAIRS;
  const view = rootView;
  randomFillSync(random);
  for (let r = 0; r < ROOTS; r++) {
    const at = r * ROOT_BYTES;
    let traceBits = 0;
    let spanBits = 0;
    let c = r * ROOT_TEXT + 3;
    for (let i = at; i < at + 16; i++, c += 2) {
      const b = random[i] as number;
      traceBits |= b;
      text.setUint16(c, pairs[b] as number, true);
    }
    // After the dash between the ids.
    c++;
    for (let i = at + 16; i < at + ROOT_BYTES; i++, c += 2) {
      const b = random[i] as number;
      spanBits |= b;
      text.setUint16(c, pairs[b] as number, true);
    }
    // An all-zero id is invalid (a chance of 2^-64 for the span id): this root is drawn again.
    if (traceBits === 0 || spanBits === 0) {
      randomFillSync(random, at, ROOT_BYTES);
      r--;
      continue;
    }
    rootXors[r] =
      view.getInt32(at, false) ^ view.getInt32(at + 4, false) ^ view.getInt32(at + 8, false) ^ view.getInt32(at + 12, false);
  }
  rootText = latin1Of(rootCharsBuffer, 0, ROOTS * ROOT_TEXT);
}

/** The next new root (see ROOTS). */
export function nextRoot(): number {
  if (rootAt === ROOTS) {
    makeRoots();
    rootAt = 0;
  }
  return rootAt++;
}

/** Root `r`'s traceparent when it is not sampled (its flags 00). */
export const rootTraceparent = (r: number): string => rootText.slice(r * ROOT_TEXT, r * ROOT_TEXT + 55);
/** Root `r`'s trace id's words XORed (idXor), for the sampler. */
export const rootXor = (r: number): number => rootXors[r] as number;
export const rootTraceId = (r: number): string => rootText.slice(r * ROOT_TEXT + 3, r * ROOT_TEXT + 35);
export const rootSpanId = (r: number): string => rootText.slice(r * ROOT_TEXT + 36, r * ROOT_TEXT + 52);

/** Root `r`'s ids as IdWords: the trace id's four words, then its span id's two. */
export function rootWords(r: number): IdWords {
  const at = r * ROOT_BYTES;
  return [
    rootView.getInt32(at, false),
    rootView.getInt32(at + 4, false),
    rootView.getInt32(at + 8, false),
    rootView.getInt32(at + 12, false),
    rootView.getInt32(at + 16, false),
    rootView.getInt32(at + 20, false),
  ];
}

/** A trace id's words (IdWords: the first four) XORed: what the ratio sampler decides on. */
export const idXor = (w: readonly number[]): number => (w[0] as number) ^ (w[1] as number) ^ (w[2] as number) ^ (w[3] as number);

/** A root sampler's decision for a trace id, given as its words XORed (idXor). */
export type RootSampler = (xor: number) => boolean;

/**
 * TraceIdRatioBased, decided exactly as the SDK decides it: the SDK XORs the id's four 8-digit
 * hex words, which are these 32-bit words (read from the id's bytes, not its text: reading the
 * 32 hex digits cost about 200 ns a request).
 */
export function ratioSampler(ratio: number): RootSampler {
  const r = Number.isFinite(ratio) ? Math.min(1, Math.max(0, ratio)) : 0;
  // Below the bound, as the SDK has it (at 0 nothing is sampled, at 1 everything).
  const bound = r === 1 ? 0x100000000 : Math.floor(r * 0xffffffff);
  return (xor) => xor >>> 0 < bound;
}

export interface Sampler {
  /** Whether a span with this parent (or none) is recorded; `xor`: the trace id's words XORed (idXor). */
  sample(parent: ParentContext | null, xor: number): boolean;
  describe: string;
}

/**
 * The sampler OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG name (the SDK's names and
 * defaults: parentbased_always_on), or the config file's ratio (parentbased_traceidratio).
 */
export function samplerFrom(configRatio: number | undefined, env: NodeJS.ProcessEnv): Sampler {
  const arg = Number(env.OTEL_TRACES_SAMPLER_ARG);
  const ratio = Number.isFinite(arg) && env.OTEL_TRACES_SAMPLER_ARG !== undefined ? arg : 1;
  const parentBased = (root: RootSampler, describe: string): Sampler => ({
    sample: (parent, xor) => (parent ? parent.sampled : root(xor)),
    describe,
  });
  const always = () => true;
  const never = () => false;
  if (configRatio !== undefined) return parentBased(ratioSampler(configRatio), `parentbased_traceidratio(${configRatio})`);
  switch (env.OTEL_TRACES_SAMPLER) {
    case "always_on":
      return { sample: () => true, describe: "always_on" };
    case "always_off":
      return { sample: () => false, describe: "always_off" };
    case "traceidratio": {
      const root = ratioSampler(ratio);
      return { sample: (_p, xor) => root(xor), describe: `traceidratio(${ratio})` };
    }
    case "parentbased_always_off":
      return parentBased(never, "parentbased_always_off");
    case "parentbased_traceidratio":
      return parentBased(ratioSampler(ratio), `parentbased_traceidratio(${ratio})`);
    default:
      return parentBased(always, "parentbased_always_on");
  }
}
