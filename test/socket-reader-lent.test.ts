// What a socket reader does with the reads it is lent (transfer/read-buffers.ts): it keeps each
// until its owner gives it back, hands over those it reads from no more (lentBehind) but never
// the one its unread bytes are in, holds no more than three (the oldest let go to the garbage
// collector, never given back), and after forgetLent gives back nothing it held: bytes still
// queued on a socket from those reads must not be read over. Real sockets on loopback; the read
// switch marks every read lent and records what is given back.
import type net from "node:net";
import { afterEach, expect, test } from "vitest";
import { type ReadSwitch, SocketReader } from "../proxy/http1/socket-reader.js";
import { socketPair } from "./helpers/net.js";

const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

async function lentReader() {
  const { local, remote } = await socketPair({ allowHalfOpen: false });
  closers.push(() => {
    local.destroy();
    remote.destroy();
  });
  const given: string[] = [];
  const reads: ReadSwitch = {
    stop: (s: net.Socket) => s.pause(),
    start: (s: net.Socket) => s.resume(),
    isLent: () => true,
    giveBack: (chunk) => given.push(chunk.toString()),
  };
  const reader = new SocketReader(remote, reads);
  /** Sends `text` as one read of its own and takes it all out of the reader. */
  const read = async (text: string) => {
    local.write(text);
    const got = await reader.readSome(1024, 5000);
    expect(got.toString()).toBe(text);
  };
  /** Sends `text` and waits until the reader holds it, unread. */
  const arrive = async (text: string) => {
    local.write(text);
    await reader.waitForData(5000);
    expect(reader.peek().toString()).toBe(text);
  };
  return { reader, given, read, arrive };
}

test("lentBehind hands over the reads the reader has moved past, not the one its unread bytes are in; releaseLent gives back the rest", async () => {
  const { reader, given, read, arrive } = await lentReader();
  await read("first");
  await arrive("second");
  const back = reader.lentBehind();
  expect(back).not.toBeNull();
  expect(given).toEqual([]);
  back?.();
  expect(given).toEqual(["first"]);
  expect(reader.lentBehind()).toBeNull();
  // The unread bytes are copied out before their read is given back, and still read whole.
  reader.releaseLent();
  expect(given).toEqual(["first", "second"]);
  expect(reader.peek().toString()).toBe("second");
});

test("past three reads held, the oldest is let go and never given back", async () => {
  const { reader, given, read } = await lentReader();
  for (const t of ["a1", "a2", "a3", "a4", "a5"]) await read(t);
  reader.releaseLent();
  expect(given).toEqual(["a3", "a4", "a5"]);
});

test("after forgetLent nothing held before is given back, by releaseLent or lentBehind", async () => {
  const { reader, given, read, arrive } = await lentReader();
  await read("queued-1");
  await read("queued-2");
  reader.forgetLent();
  reader.releaseLent();
  expect(reader.lentBehind()).toBeNull();
  expect(given).toEqual([]);
  // What is read afterwards is given back as before.
  await read("next");
  await arrive("unread");
  reader.lentBehind()?.();
  expect(given).toEqual(["next"]);
});
