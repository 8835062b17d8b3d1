// The socket reader finds a head's end in the Latin-1 text of what is buffered on a first look
// (the parser's text, handed on as headText), and in the bytes otherwise: heads longer than that
// text's window, heads arriving in pieces, a blank line cut by the window's edge. Real sockets on
// loopback: every head and the body after it come out byte for byte, whatever the pieces.
import { createHash } from "node:crypto";
import { expect, test } from "vitest";
import { HttpError } from "../proxy/http1/errors.js";
import type { SocketReader } from "../proxy/http1/socket-reader.js";
import { prng } from "./helpers/corpus.js";
import { readerPair } from "./helpers/net.js";

const MAX = 64 * 1024;

/** A request head of about `size` bytes (a long X-Pad field), ending in its blank line. */
function headOf(n: number, size: number, bodyLength: number): string {
  const start = `POST /m/${n} HTTP/1.1\r\nHost: a\r\nContent-Length: ${bodyLength}\r\n`;
  const pad = Math.max(0, size - start.length - 2 - "X-Pad: \r\n".length);
  return `${start}X-Pad: ${"p".repeat(pad)}\r\n\r\n`;
}

async function readOne(reader: SocketReader): Promise<{ head: Buffer; text: string | null }> {
  const head = reader.takeHead(MAX, MAX) ?? (await reader.readHead(MAX, MAX, 5000));
  return { head, text: reader.headText };
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

test("heads of every size around the text window, with bodies holding blank lines, sent whole or in random pieces: each head and body intact, the text given equal to the head's", async () => {
  const rand = prng(0x4ead);
  // Sizes on both sides of a connection's first window (512) and of the 2 KiB one, and far past it.
  const sizes = [60, 500, 510, 511, 512, 513, 514, 600, 2040, 2046, 2047, 2048, 2049, 2050, 2052, 3000, 20000];
  const messages: Array<{ head: string; body: Buffer }> = [];
  for (let n = 0; n < 60; n++) {
    const size = sizes[n % sizes.length] as number;
    // Bodies with blank lines and heads in them: only the framing says where they end.
    const body = Buffer.from(`\r\n\r\nGET /not-a-head HTTP/1.1\r\n\r\n${"b".repeat(Math.floor(rand() * 3000))}`, "latin1");
    messages.push({ head: headOf(n, size, body.length), body });
  }
  const wire = Buffer.concat(messages.flatMap((m) => [Buffer.from(m.head, "latin1"), m.body]));
  for (const pieces of ["whole", "random"] as const) {
    const { reader, peer, close } = await readerPair();
    try {
      if (pieces === "whole") peer.write(wire);
      else
        void (async () => {
          for (let at = 0; at < wire.length; ) {
            const n = 1 + Math.floor(rand() * 4000);
            peer.write(wire.subarray(at, at + n));
            at += n;
            if (rand() < 0.3) await new Promise((r) => setTimeout(r, 1));
          }
        })();
      let textsGiven = 0;
      for (const m of messages) {
        const { head, text } = await readOne(reader);
        expect(head.toString("latin1")).toBe(m.head);
        if (text !== null) {
          expect(text).toBe(m.head);
          textsGiven++;
        }
        // A head longer than the window is never found in its text.
        if (m.head.length > 2048) expect(text).toBeNull();
        const body = await reader.readExactly(m.body.length, 5000);
        expect(sha(body)).toBe(sha(m.body));
      }
      expect(reader.bufferedBytes).toBe(0);
      // Sent whole, every head within the window is found in text.
      if (pieces === "whole") expect(textsGiven).toBe(messages.filter((m) => m.head.length <= 2048).length);
    } finally {
      close();
    }
  }
});

test("a blank line cut by the text window's edge is found in the bytes; a bare LF in a head not yet whole is refused at once", async () => {
  const { reader, peer, close } = await readerPair();
  try {
    // The head's blank line spans bytes 2046-2049: the window of 2048 holds only its first half.
    const head = headOf(0, 2050, 0);
    expect(head.length).toBe(2050);
    peer.write(`${head}GET /next HTTP/1.1\r\nHost: a\r\n\r\n`);
    const first = await readOne(reader);
    expect(first.head.toString("latin1")).toBe(head);
    expect(first.text).toBeNull();
    const second = await readOne(reader);
    expect(second.text).toBe("GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    peer.write("GET / HTTP/1.1\nHost: a");
    await reader.waitForData(5000);
    let refused: unknown = null;
    try {
      await readOne(reader);
    } catch (err) {
      refused = err;
    }
    expect(refused).toBeInstanceOf(HttpError);
    expect((refused as HttpError).status).toBe(400);
  } finally {
    close();
  }
});
