// The streaming-copy path: the same contract as the splice pump, through userspace.
// Used when the addon is absent, switched off, or cannot get a pipe.
import type { Socket } from "node:net";
import { giveBack, isLent, lendReads } from "./read-buffers.js";

export interface CopyOutcome {
  bytes: number;
  eof: boolean;
  error: string | null;
  side: "source" | "destination" | null;
  /** Bytes read past the requested length; they belong to the source's next message. */
  unread: Buffer[];
}

export interface CopyHandle {
  done: Promise<CopyOutcome>;
  cancel(code: string): void;
  progress(): number;
}

function errorCode(err: unknown, fallback: string): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === "string" ? code : fallback;
}

/** Copies `length` bytes (or until EOF when length < 0) from `src` to `dst` with backpressure. */
export function copyPump(src: Socket, dst: Socket, length: number, shutdownDst: boolean): CopyHandle {
  let delivered = 0;
  let queued = 0;
  let settled = false;
  let finish!: (o: CopyOutcome) => void;
  const done = new Promise<CopyOutcome>((r) => {
    finish = r;
  });
  const exact = length >= 0;
  const unread: Buffer[] = [];

  const cleanup = () => {
    src.off("data", onData);
    src.off("end", onEnd);
    src.off("error", onSrcError);
    src.off("close", onSrcClose);
    dst.off("drain", onDrain);
    dst.off("error", onDstError);
    dst.off("close", onDstClose);
    src.pause();
    lendReads(src, false);
  };
  const settle = (o: Omit<CopyOutcome, "bytes" | "unread">) => {
    if (settled) return;
    settled = true;
    cleanup();
    finish({ ...o, bytes: delivered, unread });
  };
  const maybeComplete = (eof: boolean) => {
    if (delivered !== queued) return;
    if (exact && delivered === length) settle({ eof: false, error: null, side: null });
    else if (eof) {
      if (exact) settle({ eof: true, error: "UNEXPECTED_EOF", side: "source" });
      else {
        if (shutdownDst) dst.end();
        settle({ eof: true, error: null, side: null });
      }
    }
  };

  let srcEnded = false;
  function onData(chunk: Buffer) {
    let piece = chunk;
    const lent = isLent(chunk);
    if (exact) {
      const room = length - queued;
      if (piece.length > room) {
        // Bytes of the next message outlive this copy: out of a lent buffer, they are copied.
        const rest = piece.subarray(room);
        unread.push(lent ? Buffer.from(rest) : rest);
        piece = piece.subarray(0, room);
      }
    }
    queued += piece.length;
    if (exact && queued === length) src.pause();
    const n = piece.length;
    const ok = dst.write(piece, (err) => {
      // Written (or failed): nothing refers to a lent buffer's bytes any more.
      if (lent) giveBack(chunk);
      if (err) return settle({ eof: srcEnded, error: errorCode(err, "EPIPE"), side: "destination" });
      delivered += n;
      maybeComplete(srcEnded);
    });
    if (!ok) src.pause();
  }
  function onDrain() {
    if (!settled && !(exact && queued === length)) src.resume();
  }
  function onEnd() {
    srcEnded = true;
    maybeComplete(true);
  }
  const onSrcError = (err: Error) => settle({ eof: srcEnded, error: errorCode(err, "ECONNRESET"), side: "source" });
  const onDstError = (err: Error) => settle({ eof: srcEnded, error: errorCode(err, "EPIPE"), side: "destination" });
  // A source that closes after its EOF has said everything; only the writes matter now.
  const onSrcClose = () => {
    if (!srcEnded) settle({ eof: false, error: "ECONNRESET", side: "source" });
  };
  const onDstClose = () => settle({ eof: srcEnded, error: "EPIPE", side: "destination" });

  src.on("data", onData);
  src.on("end", onEnd);
  src.on("error", onSrcError);
  src.on("close", onSrcClose);
  dst.on("drain", onDrain);
  dst.on("error", onDstError);
  dst.on("close", onDstClose);
  if (exact && length === 0) maybeComplete(false);
  else if (src.readableEnded) onEnd();
  else {
    // Every byte of the body passes through here: read it in large pieces.
    lendReads(src, true);
    src.resume();
  }

  return {
    done,
    cancel: (code) => settle({ eof: srcEnded, error: code, side: null }),
    progress: () => delivered,
  };
}
