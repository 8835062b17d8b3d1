// One keep-alive HTTP/1.1 connection to the OTLP collector, posting one export at a time: the
// head is made once but for its length, the head and the batch leave in one write, and the
// answer is read with the proxy's own strict response parser. node:http's client cost the export
// worker about 600 µs of CPU per export at the rate exports come (a few dozen a second: its code
// never runs often enough to be optimized), this about 130 (docs/BENCHMARKS.md).
import net from "node:net";
import tls from "node:tls";
import { HttpError } from "../http1/errors.js";
import { CHUNK_LINE } from "../http1/grammar.js";
import { parseResponseHead } from "../http1/head.js";
import { PeerClosed, SocketReader } from "../http1/socket-reader.js";

const MAX_HEAD = 16 * 1024;
const MAX_LINE = 8 * 1024;
/** An OTLP answer is an ExportTraceServiceResponse, a few bytes; a larger one is not read. */
const MAX_ANSWER = 1 << 20;

/** The collector answered with a status other than 2xx. */
export class CollectorStatus extends Error {
  constructor(readonly status: number) {
    super(`collector answered ${status}`);
    this.name = "CollectorStatus";
  }
}

export class CollectorConnection {
  private readonly socket: net.Socket;
  private readonly reader: SocketReader;
  private posting = false;
  /** False once the connection cannot carry another export (closed, answered with close, failed). */
  private reusable = true;
  private timedOut = false;
  /** The socket's error, which says more than the reader's code for it (connect ECONNREFUSED 127.0.0.1:4318). */
  private failure: Error | null = null;

  constructor(url: URL, trust: { ca?: string; cert?: string; key?: string } = {}) {
    const host = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname;
    const secure = url.protocol === "https:";
    const port = Number(url.port) || (secure ? 443 : 80);
    this.socket = secure
      ? tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, ALPNProtocols: ["http/1.1"], ...trust })
      : net.connect({ host, port });
    this.socket.setNoDelay(true);
    this.reader = new SocketReader(this.socket);
    this.socket.once("close", () => {
      this.reusable = false;
    });
    this.socket.on("error", (err) => {
      this.failure ??= err;
    });
    this.idle();
  }

  /** Whether it may carry another export, now or after the one it is posting. */
  get usable(): boolean {
    return this.reusable && !this.socket.destroyed;
  }

  /** Whether an export may be posted on it now. */
  get free(): boolean {
    return this.reusable && !this.posting && !this.socket.destroyed;
  }

  /**
   * Posts `head` (the head through its blank line) and `parts` (the body), and reads the answer:
   * resolves on 2xx, rejects otherwise, and always within `timeoutMs` (the connection is then
   * closed). `written` is called once the body's buffers are no longer used (handed to the
   * kernel, or dropped with the connection).
   */
  async post(head: string, parts: readonly Buffer[], timeoutMs: number, written: () => void): Promise<void> {
    this.posting = true;
    this.socket.ref();
    this.reader.watchIdle(null);
    const timer = setTimeout(() => {
      this.timedOut = true;
      this.socket.destroy();
    }, timeoutMs);
    let status: number;
    let sent = false;
    try {
      this.socket.cork();
      this.socket.write(head, "latin1");
      for (let i = 0; i < parts.length - 1; i++) this.socket.write(parts[i] as Buffer);
      this.socket.write(parts[parts.length - 1] as Buffer, () => {
        sent = true;
        written();
      });
      this.socket.uncork();
      status = await this.answer();
    } catch (err) {
      this.reusable = false;
      this.socket.destroy();
      if (this.timedOut) throw new Error("collector did not answer in time");
      if (err instanceof PeerClosed) throw this.failure ?? new Error(`collector closed the connection (${err.code})`);
      // The parser's words are a proxy's (the "upstream"): said to be about the collector's answer.
      if (err instanceof HttpError) throw new Error(`the collector's answer cannot be read: ${err.message}`);
      throw err;
    } finally {
      clearTimeout(timer);
      this.posting = false;
      if (this.reusable) this.idle();
      else this.socket.destroy();
    }
    // Answered before the collector had all of the body (a 413 at the head): what it has not
    // read would be taken for the next export's start, so the connection goes. An answer after
    // it, read in full, leaves the connection for the next export, a refusal too.
    if (!sent) this.close();
    if (status < 200 || status > 299) throw new CollectorStatus(status);
  }

  /** Reads the answer's head and body; its status. */
  private async answer(): Promise<number> {
    let res = parseResponseHead(await this.reader.readHead(MAX_HEAD, MAX_LINE, 0), this.reader.headText);
    // Interim answers (100 Continue) before the final one.
    while (res.status >= 100 && res.status < 200) {
      if (res.status === 101) throw new HttpError(502, "collector switched protocols");
      res = parseResponseHead(await this.reader.readHead(MAX_HEAD, MAX_LINE, 0), this.reader.headText);
    }
    if (res.version === "1.0" || res.connection.includes("close")) this.reusable = false;
    if (res.transferChunked) await this.skipChunked();
    else if (res.contentLength !== null) await this.skip(res.contentLength);
    else if (res.status === 204 || res.status === 304) {
      // No body.
    } else {
      // Delimited by the close (or an unknown transfer coding): read to the end, not reused.
      this.reusable = false;
      await this.skipToEnd();
    }
    return res.status;
  }

  private async skip(n: number): Promise<void> {
    if (n > MAX_ANSWER) throw new HttpError(502, "collector's answer too large");
    while (n > 0) n -= (await this.reader.readSome(n, 0)).length || this.eof();
  }

  private async skipChunked(): Promise<void> {
    let total = 0;
    for (;;) {
      const m = CHUNK_LINE.exec(await this.reader.readLine(MAX_LINE, 0));
      if (!m) throw new HttpError(502, "collector's chunk line is malformed");
      const size = Number.parseInt(m[1] as string, 16);
      if (size === 0) break;
      total += size;
      if (total > MAX_ANSWER) throw new HttpError(502, "collector's answer too large");
      await this.skip(size);
      if ((await this.reader.readLine(MAX_LINE, 0)) !== "") throw new HttpError(502, "collector's chunk is longer than its size");
    }
    // Trailer fields, up to the blank line.
    while ((await this.reader.readLine(MAX_LINE, 0)) !== "");
  }

  private async skipToEnd(): Promise<void> {
    let total = 0;
    for (;;) {
      const got = (await this.reader.readSome(MAX_ANSWER, 0)).length;
      if (got === 0) return;
      total += got;
      if (total > MAX_ANSWER) throw new HttpError(502, "collector's answer too large");
    }
  }

  private eof(): never {
    throw new PeerClosed("EOF", false);
  }

  /**
   * Between exports: a byte, the end or an error from the collector means the connection is not
   * used again. It does not keep the process alive (a proxy that stops does not wait for it).
   */
  private idle(): void {
    this.socket.unref();
    if (this.reader.bufferedBytes > 0) {
      this.close();
      return;
    }
    this.reader.watchIdle(() => {
      if (this.posting) return;
      this.reusable = false;
      this.socket.destroy();
    });
  }

  close(): void {
    this.reusable = false;
    this.socket.destroy();
  }
}
