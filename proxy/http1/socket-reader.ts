// Reads heads, lines and small bodies from a socket on demand. The socket stops reading when
// bytes arrive that nobody waits for, so body bytes stay in the kernel for splice() to move.
import type { Socket } from "node:net";
import { viewOf } from "../base/buffer-calls.js";
import { RearmableTimer } from "../base/rearmable-timer.js";
import { HttpError } from "./errors.js";
import { FIRST_HEAD_TEXT_WINDOW, findHeadEnd, HEAD_TEXT_WINDOW, headTextAt } from "./head.js";

export class PeerClosed extends Error {
  constructor(
    readonly code: string,
    /** True when the peer closed before sending any byte of what was awaited. */
    readonly clean: boolean,
  ) {
    super(`peer closed (${code})`);
    this.name = "PeerClosed";
  }
}

export class ReadTimeout extends Error {
  constructor() {
    super("read timed out");
    this.name = "ReadTimeout";
  }
}

/**
 * How the reader stops and restarts the socket's reading: by default its stream's pause() and
 * resume(); the owner may know a cheaper way for its sockets (transfer/read-buffers.ts). A
 * socket whose reads can be lent (a chunk kept without a copy until given back) says which.
 */
export interface ReadSwitch {
  stop(socket: Socket): void;
  start(socket: Socket): void;
  isLent?(chunk: Buffer): boolean;
  giveBack?(chunk: Buffer): void;
}
const streamReads: ReadSwitch = { stop: (s) => s.pause(), start: (s) => s.resume() };

const EMPTY = Buffer.alloc(0);
/** Lent chunks a reader keeps for giving back (see SocketReader#lent). */
const MAX_LENT_HELD = 3;
const RESOLVED = Promise.resolve();

const settleNothing = (): void => undefined;

export class SocketReader {
  // Buffered bytes are store[start, end). Appends grow the store geometrically, so a
  // head trickling in byte by byte costs linear, not quadratic, copying. Bytes before
  // `start` may still be referenced by callers (heads, pending writes): never reused.
  private store: Buffer = EMPTY;
  private start = 0;
  private end = 0;
  private owned = false;
  /**
   * Lent chunks (reads while bytes stream in: transfer/read-buffers.ts) whose memory
   * views taken from this reader may lie in, oldest first; the last is the store while
   * `storeLent`. Given back by releaseLent() or lentBehind()'s caller only, once every view
   * taken of them has been written on. Past MAX_LENT_HELD the oldest is let go unreturned (the
   * garbage collector takes it): an owner that never gives back holds no more than that.
   */
  private lent: Buffer[] = [];
  private storeLent = false;
  private ended = false;
  private failure: string | null = null;
  // The pending wait (one at a time), kept in fields rather than in an object per wait: its
  // promise's settling functions, the bytes buffered when it began (waking with no more means
  // the peer is done), whether any of what it awaits had come, and its number, which a timeout
  // firing after the wait ended tells it by.
  private waiting = false;
  private waitResolve: () => void = settleNothing;
  private waitReject: (err: Error) => void = settleNothing;
  private waitBefore = 0;
  private waitStarted = false;
  private waitNumber = 0;
  /** Takes a wait's settling functions: one executor for the reader's life, not a closure per wait. */
  private readonly takeSettlers = (resolve: () => void, reject: (err: Error) => void) => {
    this.waitResolve = resolve;
    this.waitReject = reject;
  };
  private watcher: (() => void) | null = null;
  /** The waits' timeout: one timer for the connection's life. */
  private readonly waitTimer = new RearmableTimer(() => this.waitTimedOut());
  /** A deadline the reader's owner sets (a response's first byte): one timer for the connection's life too. */
  private deadlineTimer: RearmableTimer | null = null;
  private deadlineExpired: (() => void) | null = null;
  /**
   * The head the last takeHead or readHead returned, as Latin-1 text, when it was found in text
   * (see headFrom); null when not. For the parser, which would otherwise make it again.
   */
  headText: string | null = null;
  /** How many bytes from a head's start are looked at as text (see FIRST_HEAD_TEXT_WINDOW). */
  private textWindow = FIRST_HEAD_TEXT_WINDOW;

  private readonly onData = (chunk: Buffer) => {
    this.append(chunk);
    // Bytes nobody waits or watches for: reading stops here, so that what follows (a body to
    // splice) stays in the kernel. Not after every answered wait: the next wait would start
    // reading again at once, a pause and a resume per request on each socket.
    if (!this.waiting && this.watcher === null) this.reads.stop(this.socket);
    else this.notify();
  };
  private readonly onEnd = () => {
    this.ended = true;
    this.notify();
  };
  private readonly onError = (err: NodeJS.ErrnoException) => {
    this.failure = err.code ?? "ECONNRESET";
    this.notify();
  };
  private readonly onClose = () => {
    if (!this.ended) this.failure ??= "ECONNRESET";
    this.notify();
    this.waitTimer.dispose();
    this.deadlineTimer?.dispose();
  };

  constructor(
    readonly socket: Socket,
    private readonly reads: ReadSwitch = streamReads,
  ) {
    socket.on("data", this.onData).on("end", this.onEnd).on("error", this.onError).on("close", this.onClose);
  }

  /** Stops reading for good and returns what was buffered (handing the socket to someone else). */
  detach(): Buffer[] {
    this.socket.off("data", this.onData).off("end", this.onEnd).off("error", this.onError).off("close", this.onClose);
    this.waitTimer.dispose();
    this.deadlineTimer?.dispose();
    return this.takeBuffered();
  }

  private get buf(): Buffer {
    return this.store.subarray(this.start, this.end);
  }

  private append(chunk: Buffer): void {
    if (this.start === this.end) {
      this.store = chunk;
      this.start = 0;
      this.end = chunk.length;
      this.owned = false;
      this.storeLent = this.reads.isLent?.(chunk) === true;
      if (this.storeLent && this.lent.push(chunk) > MAX_LENT_HELD) this.lent.shift();
      return;
    }
    if (this.owned && this.end + chunk.length <= this.store.length) {
      chunk.copy(this.store, this.end);
      this.end += chunk.length;
      // Copied: nothing here refers to it (a lent chunk always starts a store, so it is not the store).
      if (this.reads.isLent?.(chunk)) this.reads.giveBack?.(chunk);
      return;
    }
    const live = this.end - this.start;
    const next = Buffer.allocUnsafe(Math.max(live + chunk.length, live * 2, 4096));
    this.store.copy(next, 0, this.start, this.end);
    chunk.copy(next, live);
    this.store = next;
    this.start = 0;
    this.end = live + chunk.length;
    this.owned = true;
    this.storeLent = false;
    if (this.reads.isLent?.(chunk)) this.reads.giveBack?.(chunk);
  }

  /**
   * Gives back the lent chunk the store came from (see `lent`), its bytes still buffered copied
   * first. Only for an owner whose views of this reader's bytes have all been written on.
   */
  releaseLent(): void {
    if (this.lent.length === 0) return;
    if (this.storeLent) {
      this.storeLent = false;
      if (this.start < this.end) {
        this.store = Buffer.from(this.store.subarray(this.start, this.end));
        this.start = 0;
        this.end = this.store.length;
        this.owned = true;
      }
    }
    const lent = this.lent;
    this.lent = [];
    for (const chunk of lent) this.reads.giveBack?.(chunk);
  }

  /**
   * Lets go of the lent chunks without giving them back (the garbage collector takes them), for
   * an owner done with this reader while views of them may still be queued on a socket: they
   * must not be given back later by whoever reads here next, under bytes still to be written.
   */
  forgetLent(): void {
    this.lent = [];
    this.storeLent = false;
  }

  /**
   * At the end of an owner's use of this reader's bytes, all written to `dst`: gives the lent
   * chunks back when nothing is queued on `dst` any more, else lets them go (forgetLent).
   */
  settleLent(dst: Socket): void {
    if (dst.writableLength === 0) this.releaseLent();
    else this.forgetLent();
  }

  /**
   * Takes the lent chunks this reader reads from no more (all but the store), and returns what
   * gives them back, for the owner to call once every view it took of them has been written on
   * (the callback of the write that carries the last of them); null when there are none.
   */
  lentBehind(): (() => void) | null {
    const n = this.storeLent ? this.lent.length - 1 : this.lent.length;
    if (n <= 0) return null;
    const behind = this.lent.splice(0, n);
    return () => {
      for (const chunk of behind) this.reads.giveBack?.(chunk);
    };
  }

  /** Drops the first `n` buffered bytes and returns them. */
  private consume(n: number): Buffer {
    const out = viewOf(this.store, this.start, this.start + n);
    this.start += n;
    if (this.start === this.end) {
      this.store = EMPTY;
      this.start = this.end = 0;
      this.owned = false;
      this.storeLent = false;
    }
    return out;
  }

  get bufferedBytes(): number {
    return this.end - this.start;
  }

  /** The buffered bytes, not consumed (see skip); valid until the next read. */
  peek(): Buffer {
    return this.buf;
  }

  /** Consumes `n` buffered bytes that were read through peek(). */
  skip(n: number): void {
    this.consume(n);
  }

  /** Hands over everything buffered (for a transfer's prefix). */
  takeBuffered(): Buffer[] {
    const n = this.bufferedBytes;
    return n > 0 ? [this.consume(n)] : [];
  }

  /** Whether the peer closed or failed, with nothing left buffered. */
  get finished(): boolean {
    return this.bufferedBytes === 0 && (this.ended || this.failure !== null);
  }

  private notify(): void {
    if (this.watcher) {
      const watcher = this.watcher;
      this.watcher = null;
      watcher();
    }
    if (!this.waiting) return;
    const resolve = this.waitResolve;
    const reject = this.waitReject;
    this.endWait();
    this.waitTimer.disarm();
    // Woken with nothing new: the peer closed or failed.
    const done = this.bufferedBytes === this.waitBefore ? (this.failure ?? (this.ended ? "EOF" : null)) : null;
    if (done !== null) reject(new PeerClosed(done, !this.waitStarted));
    else resolve();
  }

  /** Ends the pending wait; its settling functions are let go (the caller took what it calls). */
  private endWait(): void {
    this.waiting = false;
    this.waitResolve = settleNothing;
    this.waitReject = settleNothing;
  }

  /** Waits for more bytes; `timeoutMs` 0 waits forever. Settled by notify() or the timer. */
  private more(timeoutMs: number, started: boolean): Promise<void> {
    if (this.failure) return Promise.reject(new PeerClosed(this.failure, !started));
    if (this.ended) return Promise.reject(new PeerClosed("EOF", !started));
    const wait = new Promise<void>(this.takeSettlers);
    this.waiting = true;
    this.waitBefore = this.bufferedBytes;
    this.waitStarted = started;
    this.waitNumber++;
    if (timeoutMs > 0) this.waitTimer.arm(timeoutMs);
    this.reads.start(this.socket);
    return wait;
  }

  private waitTimedOut(): void {
    // Armed only by a wait with a timeout and disarmed when it ends: the pending wait is that one.
    if (!this.waiting) return;
    const n = this.waitNumber;
    // Timers run before the event loop polls its sockets: after a busy turn, the bytes that
    // arrived in time (a request on an idle keep-alive connection) may not have been read yet.
    // They are, in this turn's poll; the wait times out after it only if nothing came.
    setImmediate(() => {
      if (!this.waiting || this.waitNumber !== n) return;
      const reject = this.waitReject;
      this.endWait();
      this.reads.stop(this.socket);
      reject(new ReadTimeout());
    });
  }

  /**
   * Calls `expired` in `ms` unless cleared before (the first byte of a response, counted from
   * the end of its request). One deadline at a time; the reader only keeps its timer.
   */
  setDeadline(ms: number, expired: () => void): void {
    this.deadlineExpired = expired;
    // Like a wait's timeout, it is called only after this turn's poll read what came in time.
    this.deadlineTimer ??= new RearmableTimer(() => {
      const due = this.deadlineExpired;
      setImmediate(() => {
        if (due !== null && this.deadlineExpired === due) due();
      });
    });
    this.deadlineTimer.arm(ms);
  }

  clearDeadline(): void {
    this.deadlineTimer?.disarm();
    this.deadlineExpired = null;
  }

  /**
   * While nobody reads (an idle keep-alive connection): reads on, and calls `onEvent` once
   * at the first byte, EOF or error, since a silent peer is the only healthy idle one.
   * null stops watching, not reading: whoever takes the connection writes a request and reads
   * its response next (what arrives meanwhile is buffered here), and the wait for that
   * response would start reading again at once (a pause and a resume per request, each a
   * change of the socket's poll registration).
   */
  watchIdle(onEvent: (() => void) | null): void {
    this.watcher = onEvent;
    if (onEvent) this.reads.start(this.socket);
  }

  /** `n` bytes if they are already buffered, else null (no waiting). */
  takeIfBuffered(n: number): Buffer | null {
    return this.bufferedBytes >= n ? this.consume(n) : null;
  }

  /** Resolves once at least one byte is buffered; PeerClosed (clean) at EOF, ReadTimeout. */
  waitForData(timeoutMs: number): Promise<void> {
    // The wait itself, not an async function around it: one promise per wait instead of three.
    return this.bufferedBytes === 0 ? this.more(timeoutMs, false) : RESOLVED;
  }

  /**
   * Reads one head (through its blank line). Over `maxBytes` without an end: 414 when
   * the first line alone is that long, else 431.
   */
  async readHead(maxBytes: number, maxFirstLine: number, timeoutMs: number): Promise<Buffer> {
    const deadline = timeoutMs > 0 ? Date.now() + timeoutMs : 0;
    let scanned = 0;
    for (;;) {
      const head = this.headFrom(scanned, maxBytes, maxFirstLine);
      if (head !== null) return head;
      scanned = this.bufferedBytes;
      const left = deadline ? deadline - Date.now() : 0;
      if (deadline && left <= 0) throw new ReadTimeout();
      await this.more(left, this.bufferedBytes > 0);
    }
  }

  /**
   * A head already buffered in whole, else null: what readHead would return without waiting
   * (the same errors), for a caller that then need not go through a promise.
   */
  takeHead(maxBytes: number, maxFirstLine: number): Buffer | null {
    return this.headFrom(0, maxBytes, maxFirstLine);
  }

  /**
   * The buffered head, searched from `scanned` buffered bytes on; null when its end is not
   * buffered yet. On a first look (nothing scanned before) it is found in text (headTextAt),
   * which the parser needs anyway; otherwise, and when that misses, in the bytes, which also
   * refuses a bare LF while the end is not there.
   */
  private headFrom(scanned: number, maxBytes: number, maxFirstLine: number): Buffer | null {
    if (scanned === 0) {
      let text = headTextAt(this.store, this.start, this.end, this.textWindow);
      // A head longer than this connection's window so far: the window grows for good, and the
      // head is looked for again in it.
      if (text === null && this.textWindow < HEAD_TEXT_WINDOW && this.end - this.start > this.textWindow) {
        this.textWindow = HEAD_TEXT_WINDOW;
        text = headTextAt(this.store, this.start, this.end, HEAD_TEXT_WINDOW);
      }
      if (text !== null) {
        this.headText = text;
        return this.consume(text.length);
      }
    }
    this.headText = null;
    const end = findHeadEnd(this.store, this.start, this.start + Math.max(0, scanned - 3), this.end);
    if (end !== -1) return this.consume(end - this.start);
    if (this.bufferedBytes > maxBytes) {
      const firstLineEnd = this.buf.indexOf(10);
      throw firstLineEnd === -1 && this.bufferedBytes > maxFirstLine
        ? new HttpError(414, "request line too long")
        : new HttpError(431, "head too large");
    }
    return null;
  }

  /** One CRLF-terminated line without its CRLF. Bare LF or CR, or over `maxBytes`: 400. */
  async readLine(maxBytes: number, timeoutMs: number): Promise<string> {
    for (;;) {
      const lf = this.buf.indexOf(10);
      if (lf > maxBytes) throw new HttpError(400, "line too long");
      if (lf !== -1) {
        if (lf === 0 || this.buf[lf - 1] !== 13) throw new HttpError(400, "bare LF");
        const line = this.consume(lf + 1).toString("latin1", 0, lf - 1);
        if (line.includes("\r")) throw new HttpError(400, "bare CR");
        return line;
      }
      if (this.bufferedBytes > maxBytes) throw new HttpError(400, "line too long");
      await this.more(timeoutMs, true);
    }
  }

  /** Exactly `n` bytes (small bodies and chunk payloads under the splice threshold). */
  async readExactly(n: number, timeoutMs: number): Promise<Buffer> {
    while (this.bufferedBytes < n) await this.more(timeoutMs, true);
    return this.consume(n);
  }

  /** Up to `max` bytes, whatever is available first; empty at EOF. */
  async readSome(max: number, timeoutMs: number): Promise<Buffer> {
    if (this.bufferedBytes === 0) {
      try {
        await this.more(timeoutMs, true);
      } catch (err) {
        if (err instanceof PeerClosed && err.code === "EOF") return Buffer.alloc(0);
        throw err;
      }
    }
    return this.consume(Math.min(max, this.bufferedBytes));
  }
}
