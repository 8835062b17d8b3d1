// The span ring: what finished requests' spans show, passed from the main thread to the export
// worker through one SharedArrayBuffer, with no message per request. One writer (the main
// thread), one reader (the worker). An entry is one request: its server span's fields and each
// try's, as numbers and UTF-8 strings written in a fixed order and read back in the same order
// into the shapes span-encoding.ts writes from. Ids go as their bytes, which the main thread
// keeps as 32-bit words from the moment it makes or reads them (RequestWords: as hex text they
// cost a call into C++ per entry, see docs/BENCHMARKS.md); the other strings are written
// together, after the entry's other fields, in one call, and only when some string differs from
// the entry before's. When the ring is full the request's spans are dropped and counted: the
// request path never waits.
import type { Outcome } from "../request/outcome.js";
import type { BodyCount, ClientTls, ListenerEngine } from "../request/record.js";
import type { SpanPlace, SpanRequest, SpanTry } from "./span-encoding.js";
import type { IdWords } from "./trace-context.js";

/**
 * A request's ids as an entry takes them (IdWords): the trace id (words 0-3), the server span's
 * id (4-5), the parent span's id (6-7; zeros for none: a span id is never all zeros), then each
 * try's span id (two words each, in try order).
 */
export type RequestWords = IdWords;

/**
 * Int32 control words: where the writer and the reader are (byte counters, wrapping at 2^32).
 * Each on its own cache line, and the counters on a third, so that the two threads' writes do
 * not take a line from each other on every request.
 */
const HEAD = 0;
const TAIL = 16;
/**
 * How the reader sleeps (sleep()), on the writer's line: written only when the reader goes to
 * sleep or wakes. AWAKE: it is reading or about to; NAPPING: wake it when a WAKE_SHARE of the
 * ring waits to be read; IDLE: wake it at the next entry.
 */
const SLEEPING = 8;
const AWAKE = 0;
const NAPPING = 1;
const IDLE = 2;
/** A napping reader is woken when this share of the ring waits to be read (1/32: 128 KiB of the default 4 MiB). */
const WAKE_SHARE = 32;
/** BigInt64 counters: spans taken by the reader, exported, dropped by the worker. */
export const TAKEN = 0;
export const EXPORTED = 1;
export const DROPPED = 2;
const COUNTERS_AT = 128;
const DATA_AT = 192;

/** An entry length of 0: the rest of the ring up to its end is unused; go on from its start. */
const SKIP = 0;
const NULL_STRING = 0xffffffff;
/** A string equal to the one at the same place in the entry before: not written again. */
const REPEAT = 0xfffffffe;
/** An entry's header: its length, where its strings' bytes begin, the writer's epoch, its spans, where its words begin (and a spare word). */
const ENTRY_HEADER = 24;
/** Set in an entry's text word when all its strings are ASCII: the reader can take their bytes as Latin-1, a plain copy. */
const ASCII = 0x80000000;

/** A shared buffer for a ring of `dataBytes` (a power of two) of span entries. */
export function createSpanRing(dataBytes = 4 << 20): SharedArrayBuffer {
  if (dataBytes & (dataBytes - 1)) throw new Error("span ring size must be a power of two");
  return new SharedArrayBuffer(DATA_AT + dataBytes);
}

/** What both ends see of the buffer. */
class RingViews {
  protected readonly ctrl: Int32Array;
  readonly counters: BigInt64Array;
  protected readonly bytes: Uint8Array;
  protected readonly buf: Buffer;
  /** The same bytes as numbers and as 32-bit words (entries are 8-aligned; numbers and words each in their own part). */
  protected readonly f64: Float64Array;
  protected readonly u32: Uint32Array;
  protected readonly size: number;
  /** Bytes waiting to be read that wake a napping reader (WAKE_SHARE of the ring). */
  protected readonly wakeBytes: number;

  constructor(sab: SharedArrayBuffer) {
    this.ctrl = new Int32Array(sab, 0, TAIL + 1);
    this.counters = new BigInt64Array(sab, COUNTERS_AT, 3);
    this.size = sab.byteLength - DATA_AT;
    this.wakeBytes = this.size / WAKE_SHARE;
    this.bytes = new Uint8Array(sab, DATA_AT, this.size);
    this.buf = Buffer.from(sab, DATA_AT, this.size);
    this.f64 = new Float64Array(sab, DATA_AT, this.size >> 3);
    this.u32 = new Uint32Array(sab, DATA_AT, this.size >> 2);
  }

  /** A counter's value (spans since the ring was made). */
  count(which: number): number {
    return Number(Atomics.load(this.counters, which));
  }
}

/** Bytes a string's UTF-8 can take (0 for none). */
const textBound = (s: string | null) => (s === null ? 0 : s.length * 3);

/** A request's numbers and 32-bit words besides its tries' (see writeRequest). */
const REQUEST_NUMBERS = 7;
const REQUEST_STRINGS = 17;
const TRY_NUMBERS = 18;
const TRY_STRINGS = 4;

/**
 * The main thread's end: writes a finished request's span fields, or drops them when the ring is
 * full. An entry is a header (ENTRY_HEADER: its length; where its strings' bytes begin, as the
 * offset from the entry's start with the ASCII bit; the writer's epoch; how many spans it holds;
 * where its words begin), then its numbers (float64, in order), then its words (uint32: the ids'
 * count of words, the ids' words, then for each string its byte length or a marker, in order),
 * then the strings' bytes in the same order. Numbers and words are written through typed arrays
 * (an element store each), which is why they are apart. Entries start 8-aligned. A string equal
 * to the one in the same place of the entry before is written as REPEAT (most of a request's
 * strings are: method, version, addresses, route, outcome), so the reader must see every entry
 * of an epoch in order: a new reader (the worker restarted) gets a new epoch, and entries of an
 * older one are dropped and counted.
 */
export class SpanRingWriter extends RingViews {
  /** The entry being written: where it starts, its next number's index (f64) and next word's index (u32). */
  private at = 0;
  private f = 0;
  private u = 0;
  /** Where the next entry goes: only this writer moves it, so it is read from here, not from the shared word. */
  private head = Atomics.load(this.ctrl, HEAD) >>> 0;
  /** The strings of the entry being written, joined, and where each one's length went (word index; in characters until commit). */
  private joined = "";
  private readonly lengthAt: number[] = [];
  private nTexts = 0;
  /** Each string place's value in the entry before (this epoch), and the place the next string takes. */
  private prev: Array<string | null> = [];
  private place = 0;
  /** Starts at 0; a reader reads only entries of the epoch it was made for. */
  epoch = 0;

  /** Starts a new epoch (for a new reader): no string refers to an entry before it. */
  newEpoch(): void {
    this.epoch = (this.epoch + 1) >>> 0;
    this.prev = [];
  }
  /** Where the reader was when last looked at: read again only when the ring looks full. */
  private tail = 0;
  /** Spans dropped because the ring was full (the worker is behind or gone). */
  dropped = 0;

  /** Bytes free for writing, counting from `head`; `need` more than that: look where the reader is now. */
  private free(head: number, need: number): number {
    let free = this.size - ((head - this.tail) >>> 0);
    if (free < need) {
      this.tail = Atomics.load(this.ctrl, TAIL) >>> 0;
      free = this.size - ((head - this.tail) >>> 0);
    }
    return free;
  }

  /** Reserves room for an entry of `numbers`, `words` and up to `text` bytes (false: no room, the entry is dropped and its spans counted). */
  private begin(numbers: number, words: number, text: number): boolean {
    const need = (ENTRY_HEADER + 8 * numbers + 4 * words + text + 7) & ~7;
    let head = this.head;
    let at = head & (this.size - 1);
    const toEnd = this.size - at;
    const free = this.free(head, toEnd < need ? toEnd + need : need);
    if (toEnd < need) {
      // Entries never wrap: the end of the ring is skipped and the entry starts at its beginning.
      if (free < toEnd + need) return false;
      this.u32[at >> 2] = SKIP;
      head = (head + toEnd) >>> 0;
      this.head = head;
      Atomics.store(this.ctrl, HEAD, head | 0);
      at = 0;
    }
    // else if: the skip above left room (free was checked for both).
    else if (free < need) return false;
    this.at = at;
    this.f = (at + ENTRY_HEADER) >> 3;
    this.u = (at + ENTRY_HEADER + 8 * numbers) >> 2;
    this.u32[(at >> 2) + 4] = ENTRY_HEADER + 8 * numbers;
    this.joined = "";
    this.nTexts = 0;
    this.place = 0;
    return true;
  }

  /** Writes the entry's strings after its words and publishes it: the reader may take it from now on. */
  private commit(spans: number): void {
    const at = this.at;
    const textAt = this.u << 2;
    const joined = this.joined;
    // Nothing to write (every string repeats the entry before's): no call at all.
    let n = joined.length === 0 ? 0 : this.buf.write(joined, textAt, "utf8");
    // As many bytes as characters: all ASCII, and the lengths written (in characters) are byte counts.
    const ascii = n === joined.length;
    if (!ascii) {
      // Again string by string, cut from the joined text by their lengths in characters.
      n = 0;
      let from = 0;
      for (let i = 0; i < this.nTexts; i++) {
        const w = this.lengthAt[i] as number;
        const to = from + (this.u32[w] as number);
        const b = this.buf.write(joined.slice(from, to), textAt + n, "utf8");
        this.u32[w] = b;
        n += b;
        from = to;
      }
    }
    const len = (textAt + n - at + 7) & ~7;
    const h = at >> 2;
    this.u32[h] = len;
    this.u32[h + 1] = ascii ? (textAt - at) | ASCII : textAt - at;
    this.u32[h + 2] = this.epoch;
    this.u32[h + 3] = spans;
    this.head = (this.head + len) >>> 0;
    Atomics.store(this.ctrl, HEAD, this.head | 0);
    // Published before looking (the reader says it sleeps before it looks at the ring): either
    // the reader sees this entry, or this sees it asleep.
    const sleeping = Atomics.load(this.ctrl, SLEEPING);
    if (sleeping !== AWAKE && (sleeping === IDLE || this.unread() >= this.wakeBytes)) {
      Atomics.store(this.ctrl, SLEEPING, AWAKE);
      Atomics.notify(this.ctrl, SLEEPING);
    }
  }

  /** Bytes not yet read: counted from where the reader was when last looked at, and looked at again when that says enough. */
  private unread(): number {
    if ((this.head - this.tail) >>> 0 >= this.wakeBytes) this.tail = Atomics.load(this.ctrl, TAIL) >>> 0;
    return (this.head - this.tail) >>> 0;
  }

  private num(v: number): void {
    this.f64[this.f++] = v;
  }

  /** A number that may be null (NaN stands for null). */
  private opt(v: number | null): void {
    this.f64[this.f++] = v === null ? Number.NaN : v;
  }

  /** A string's length now, its bytes at commit() with the entry's other strings; or REPEAT. */
  private str(s: string | null): void {
    const place = this.place++;
    if (s === null) {
      this.u32[this.u++] = NULL_STRING;
    } else if (this.prev[place] === s) {
      this.u32[this.u++] = REPEAT;
    } else {
      this.prev[place] = s;
      this.lengthAt[this.nTexts++] = this.u;
      this.u32[this.u++] = s.length;
      // Concatenated (V8 links the pieces; the write copies them once), not joined at the end: join costs more.
      this.joined += s;
    }
  }

  /** The request's ids: how many words, then the words (as numbers: the reader puts their bytes back in the ids' order). */
  private ids(words: RequestWords, n: number): void {
    const u32 = this.u32;
    let u = this.u;
    u32[u++] = n;
    for (let i = 0; i < n; i++) u32[u++] = words[i] as number;
    this.u = u;
  }

  private body(c: BodyCount): void {
    this.num(c.bytes);
    this.num(c.spliced);
    this.num(c.copied);
    this.opt(c.pipeSize);
  }

  private outcome(o: Outcome | null): void {
    this.str(o?.code ?? null);
    this.str(o?.phase ?? null);
    this.str(o?.detail ?? null);
  }

  private static outcomeText(o: Outcome | null): number {
    return o === null ? 0 : 3 * (o.code.length + o.phase.length) + textBound(o.detail);
  }

  /** TRY_NUMBERS numbers (and two per connection, one per stale connection) and TRY_STRINGS strings. */
  private tryFields(t: SpanTry): void {
    this.str(t.endpoint.address.host);
    this.num(t.endpoint.address.port);
    this.num(t.index);
    this.num(t.start);
    this.num(t.end);
    this.opt(t.responseHeadAt);
    this.opt(t.status);
    this.opt(t.firstBodyByteAt);
    this.body(t.request);
    this.body(t.response);
    this.num((t.tunnel ? 1 : 0) | (t.upstreamTls ? 2 : 0));
    this.outcome(t.outcome);
    this.num(t.connects.length);
    for (const c of t.connects) {
      this.num(c.at);
      this.num(c.reused ? 1 : 0);
    }
    this.num(t.staleAt.length);
    for (const s of t.staleAt) this.num(s);
  }

  /**
   * A finished request's spans: the server span at `place`, and a client span for each of the
   * first `spans` `tries` (the server span is their parent). The ids are `words`' (RequestWords),
   * not place's hex. One entry, so the trace's ids and the request's fields are written once.
   * False when it was dropped.
   */
  writeRequest(
    place: SpanPlace<string>,
    rec: SpanRequest,
    tries: readonly SpanTry[],
    spans: number,
    words: RequestWords,
  ): boolean {
    const tls = rec.tls;
    const userAgent = rec.userAgent;
    const n = Math.min(tries.length, spans, (words.length - 8) >> 1);
    const idWords = 8 + 2 * n;
    let numbers = REQUEST_NUMBERS + n * TRY_NUMBERS;
    let text =
      textBound(place.traceState) +
      textBound(rec.method) +
      textBound(rec.engine) +
      textBound(rec.path) +
      textBound(rec.version) +
      textBound(rec.host) +
      textBound(userAgent) +
      textBound(rec.clientAddress) +
      textBound(rec.localAddress) +
      textBound(rec.route) +
      SpanRingWriter.outcomeText(rec.outcome);
    if (tls) text += textBound(tls.protocol) + textBound(tls.cipher) + textBound(tls.serverName) + textBound(tls.clientSubject);
    for (let i = 0; i < n; i++) {
      const t = tries[i] as SpanTry;
      numbers += 2 * t.connects.length + t.staleAt.length;
      text += textBound(t.endpoint.address.host) + SpanRingWriter.outcomeText(t.outcome);
    }
    if (!this.begin(numbers, 1 + idWords + REQUEST_STRINGS + n * TRY_STRINGS, text)) {
      this.dropped += 1 + n;
      return false;
    }
    this.ids(words, idWords);
    this.str(place.traceState);
    this.num(place.remoteParent ? 1 : 0);
    this.str(rec.method);
    this.str(rec.engine);
    this.str(rec.path);
    this.str(rec.version);
    this.str(rec.host);
    this.str(userAgent);
    this.str(rec.clientAddress);
    this.num(rec.clientPort);
    this.str(rec.localAddress);
    this.num(rec.localPort);
    this.str(rec.route);
    this.opt(rec.status);
    this.num(rec.start);
    this.num(rec.end);
    this.num(tls ? 1 : 0);
    if (tls) {
      this.str(tls.protocol);
      this.str(tls.cipher);
      this.str(tls.serverName);
      this.str(tls.clientSubject);
    }
    // Not written without TLS; the places keep their strings of the last entry that had them.
    else this.place += 4;
    this.outcome(rec.outcome);
    for (let i = 0; i < n; i++) this.tryFields(tries[i] as SpanTry);
    this.commit(1 + n);
    return true;
  }
}

/** A finished request as the reader hands it over: what writeRequest was given, with the ids as bytes. */
export interface FinishedRequest {
  place: SpanPlace;
  rec: Mutable<SpanRequest>;
  tries: SpanTry[];
  tryIds: Uint8Array[];
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** A try as the reader fills it (SpanTry's fields, writable). */
interface ReadTry extends SpanTry {
  endpoint: { address: { host: string; port: number } };
  index: number;
  start: number;
  end: number;
  connects: Array<{ at: number; reused: boolean }>;
  staleAt: number[];
  responseHeadAt: number | null;
  status: number | null;
  firstBodyByteAt: number | null;
  request: BodyCount;
  response: BodyCount;
  tunnel: boolean;
  upstreamTls: boolean;
  outcome: Outcome | null;
}

const newReadTry = (): ReadTry => ({
  endpoint: { address: { host: "", port: 0 } },
  index: 0,
  start: 0,
  end: 0,
  connects: [],
  staleAt: [],
  responseHeadAt: null,
  status: null,
  firstBodyByteAt: null,
  request: { bytes: 0, spliced: 0, copied: 0, pipeSize: null },
  response: { bytes: 0, spliced: 0, copied: 0, pipeSize: null },
  tunnel: false,
  upstreamTls: false,
  outcome: null,
});

/** The worker's end: reads entries back into span-encoding.ts's shapes and frees their room. */
export class SpanRingReader extends RingViews {
  /** The entry being read: its next number's index (f64) and next word's index (u32). */
  private f = 0;
  private u = 0;
  /** Where the next string's bytes are, and how to decode them. */
  private textPos = 0;
  private textEncoding: "latin1" | "utf8" = "utf8";
  /** The writer's string places, as in the entry before. */
  private readonly prev: Array<string | null> = [];
  private place = 0;
  /** The ids of the entry being read (readIds), and views of them by place (idAt). */
  private ids = new Uint8Array(64);
  private idView = new DataView(this.ids.buffer);
  private idViews: Array<Uint8Array | undefined> = [];
  /** What each entry is read into (drain() hands these over, filled again for each entry). */
  private readonly finished: FinishedRequest = {
    place: { traceId: new Uint8Array(16), spanId: new Uint8Array(8), parentId: null, traceState: null, remoteParent: false },
    rec: {
      method: "",
      engine: "splice",
      path: "",
      version: "",
      host: null,
      userAgent: null,
      clientAddress: "",
      clientPort: 0,
      localAddress: "",
      localPort: 0,
      route: null,
      status: null,
      start: 0,
      end: 0,
      tls: null,
      outcome: null,
    },
    tries: [],
    tryIds: [],
  };
  private readonly tls: ClientTls = { protocol: null, cipher: null, serverName: null, clientSubject: null };
  private readonly recOutcome: Outcome = { code: "completed", phase: "response_body", detail: null };
  private readonly tryOutcomes: Outcome[] = [];

  /** `epoch`: the writer's epoch when this reader was made; older entries are dropped and counted. */
  constructor(
    sab: SharedArrayBuffer,
    private readonly epoch = 0,
  ) {
    super(sab);
    // A reader that died asleep left the mark: the writer would wake nobody on every entry.
    Atomics.store(this.ctrl, SLEEPING, AWAKE);
  }

  private num(): number {
    return this.f64[this.f++] as number;
  }

  private opt(): number | null {
    const v = this.num();
    return Number.isNaN(v) ? null : v;
  }

  private str(): string | null {
    const n = this.u32[this.u++] as number;
    const place = this.place++;
    if (n === NULL_STRING) return null;
    if (n === REPEAT) return this.prev[place] as string;
    const s = this.buf.toString(this.textEncoding, this.textPos, this.textPos + n);
    this.textPos += n;
    this.prev[place] = s;
    return s;
  }

  private text(): string {
    return this.str() ?? "";
  }

  private body(c: BodyCount): void {
    c.bytes = this.num();
    c.spliced = this.num();
    c.copied = this.num();
    c.pipeSize = this.opt();
  }

  /** An outcome's three strings into `o`; null when there was none. */
  private outcome(o: Outcome): Outcome | null {
    const code = this.str();
    const phase = this.str();
    const detail = this.str();
    if (code === null) return null;
    o.code = code as Outcome["code"];
    o.phase = phase as Outcome["phase"];
    o.detail = detail;
    return o;
  }

  private readTry(t: ReadTry, outcome: Outcome): void {
    t.endpoint.address.host = this.text();
    t.endpoint.address.port = this.num();
    t.index = this.num();
    t.start = this.num();
    t.end = this.num();
    t.responseHeadAt = this.opt();
    t.status = this.opt();
    t.firstBodyByteAt = this.opt();
    this.body(t.request);
    this.body(t.response);
    const flags = this.num();
    t.tunnel = (flags & 1) !== 0;
    t.upstreamTls = (flags & 2) !== 0;
    t.outcome = this.outcome(outcome);
    const connects = t.connects;
    const n = this.num();
    for (let i = 0; i < n; i++) {
      let c = connects[i];
      if (c === undefined) {
        c = { at: 0, reused: false };
        connects.push(c);
      }
      c.at = this.num();
      c.reused = this.num() === 1;
    }
    // Set only when it changes: a store to an array's length is a call into the runtime (about 400 instructions).
    if (connects.length !== n) connects.length = n;
    const staleAt = t.staleAt;
    const stale = this.num();
    for (let i = 0; i < stale; i++) staleAt[i] = this.num();
    if (staleAt.length !== stale) staleAt.length = stale;
  }

  /**
   * The ids' words (RequestWords) copied out of the ring as they are (their bytes are the ids'),
   * into memory of the reader's own that each entry's ids are views of: a view made once per
   * place costs nothing per request, where a slice per id was a typed array made each time.
   */
  private readIds(at: number, words: number): void {
    if (4 * words > this.ids.length) {
      this.ids = new Uint8Array(8 * words);
      this.idView = new DataView(this.ids.buffer);
      this.idViews = [];
    }
    const u32 = this.u32;
    const to = this.idView;
    // Each word's bytes, most significant first: the id's bytes in order.
    for (let i = 0; i < words; i++) to.setUint32(4 * i, u32[at + i] as number, false);
  }

  /** The view of the reader's id memory for the id at `from` (bytes), `length` bytes long. */
  private idAt(from: number, length: number): Uint8Array {
    const k = from >> 3;
    let id = this.idViews[k];
    if (id === undefined) {
      id = this.ids.subarray(from, from + length);
      this.idViews[k] = id;
    }
    return id;
  }

  private readRequest(): FinishedRequest {
    const u32 = this.u32;
    const words = u32[this.u] as number;
    const at = this.u + 1;
    this.u = at + words;
    this.readIds(at, words);
    const noParent = u32[at + 6] === 0 && u32[at + 7] === 0;
    const r = this.finished;
    const place = r.place;
    place.traceId = this.idAt(0, 16);
    place.spanId = this.idAt(16, 8);
    place.parentId = noParent ? null : this.idAt(24, 8);
    place.traceState = this.str();
    place.remoteParent = this.num() === 1;
    const rec = r.rec;
    rec.method = this.text();
    rec.engine = this.text() as ListenerEngine;
    rec.path = this.text();
    rec.version = this.text();
    rec.host = this.str();
    rec.userAgent = this.str();
    rec.clientAddress = this.text();
    rec.clientPort = this.num();
    rec.localAddress = this.text();
    rec.localPort = this.num();
    rec.route = this.str();
    rec.status = this.opt();
    rec.start = this.num();
    rec.end = this.num();
    if (this.num() === 1) {
      const tls = this.tls;
      tls.protocol = this.str();
      tls.cipher = this.str();
      tls.serverName = this.str();
      tls.clientSubject = this.str();
      rec.tls = tls;
    } else {
      // The writer wrote nothing in these places (SpanRingWriter.writeRequest).
      this.place += 4;
      rec.tls = null;
    }
    rec.outcome = this.outcome(this.recOutcome);
    const tries = r.tries as ReadTry[];
    const tryIds = r.tryIds;
    let n = 0;
    for (let i = 32; i < 4 * words; i += 8, n++) {
      tryIds[n] = this.idAt(i, 8);
      let t = tries[n];
      if (t === undefined) {
        t = newReadTry();
        tries.push(t);
        this.tryOutcomes.push({ code: "completed", phase: "response_body", detail: null });
      }
      this.readTry(t, this.tryOutcomes[n] as Outcome);
    }
    // As for connects: only when the count changes.
    if (tries.length !== n) tries.length = n;
    if (tryIds.length !== n) tryIds.length = n;
    return r;
  }

  /** Whether the last drain() left requests for want of `maxSpans`. */
  stoppedShort = false;

  /**
   * Hands each request written since the last call to `onRequest`; stops before a request
   * whose spans would take it past `maxSpans` (stoppedShort). Returns how many requests it took.
   * The request handed over is the reader's own objects, filled again for the next entry: good
   * until `onRequest` returns (copy what must outlive the call). A worker that made a graph of
   * objects per request spent more of its time collecting them than encoding
   * (docs/BENCHMARKS.md). The room of what it read is freed, and its spans counted as taken,
   * once at the end, even when `onRequest` throws (so a request that cannot be encoded is lost
   * once, and counted, not read again forever): a shared store and a BigInt per request cost
   * the worker more than the writer gains from seeing room a turn sooner (a turn takes at most
   * two batches, a small part of the ring).
   */
  drain(onRequest: (r: FinishedRequest) => void, maxSpans = Number.POSITIVE_INFINITY): number {
    let taken = 0;
    let budget = maxSpans;
    this.stoppedShort = false;
    const head = Atomics.load(this.ctrl, HEAD) >>> 0;
    let tail = Atomics.load(this.ctrl, TAIL) >>> 0;
    let takenSpans = 0;
    try {
      while (tail !== head) {
        const at = tail & (this.size - 1);
        const h = at >> 2;
        const len = this.u32[h] as number;
        if (len === SKIP) {
          tail = (tail + this.size - at) >>> 0;
          Atomics.store(this.ctrl, TAIL, tail | 0);
          continue;
        }
        if (this.u32[h + 2] !== this.epoch) {
          // Written for a reader before this one (that died): its repeated strings can't be known here.
          const dropped = BigInt(this.u32[h + 3] as number);
          tail = (tail + len) >>> 0;
          Atomics.store(this.ctrl, TAIL, tail | 0);
          Atomics.add(this.counters, TAKEN, dropped);
          Atomics.add(this.counters, DROPPED, dropped);
          continue;
        }
        const spans = this.u32[h + 3] as number;
        if (spans > budget) {
          this.stoppedShort = true;
          break;
        }
        budget -= spans;
        this.f = (at + ENTRY_HEADER) >> 3;
        this.u = (at + (this.u32[h + 4] as number)) >> 2;
        this.place = 0;
        const text = this.u32[h + 1] as number;
        this.textPos = at + (text & ~ASCII);
        this.textEncoding = text & ASCII ? "latin1" : "utf8";
        const r = this.readRequest();
        tail = (tail + len) >>> 0;
        takenSpans += 1 + r.tryIds.length;
        taken++;
        onRequest(r);
      }
    } finally {
      Atomics.store(this.ctrl, TAIL, tail | 0);
      if (takenSpans > 0) Atomics.add(this.counters, TAKEN, BigInt(takenSpans));
    }
    return taken;
  }

  /**
   * Null when there is already enough to read; else a promise that settles when the writer has
   * written enough, or after `napMs`. Enough: `idle` (the last turn found nothing), any entry, and
   * no time limit (an idle proxy's reader is not woken by a timer); else a 32nd of the ring
   * (WAKE_SHARE). The thread sleeps meanwhile (Atomics.waitAsync), and a reader that wakes on a
   * clock rather than on work costs the same turn at 1% sampling as at 100% (about 100 µs of
   * CPU each: docs/BENCHMARKS.md).
   */
  sleep(idle: boolean, napMs: number): Promise<void> | null {
    const mode = idle ? IDLE : NAPPING;
    // Said before looking (and the writer publishes before it looks at this): either this
    // sees the writer's entry, or the writer sees this and wakes the wait.
    Atomics.store(this.ctrl, SLEEPING, mode);
    const unread = (Atomics.load(this.ctrl, HEAD) - Atomics.load(this.ctrl, TAIL)) >>> 0;
    const wait = (idle ? unread === 0 : unread < this.wakeBytes)
      ? Atomics.waitAsync(this.ctrl, SLEEPING, mode, idle ? Number.POSITIVE_INFINITY : napMs)
      : null;
    if (wait?.async) return wait.value.then(() => void Atomics.store(this.ctrl, SLEEPING, AWAKE));
    Atomics.store(this.ctrl, SLEEPING, AWAKE);
    return null;
  }

  /** The worker's reports, shared with the main thread. */
  countExported(n: number): void {
    Atomics.add(this.counters, EXPORTED, BigInt(n));
  }

  countDropped(n: number): void {
    Atomics.add(this.counters, DROPPED, BigInt(n));
  }
}
