// The socket reader's waits share one timer per connection, re-armed for each timed wait and
// disarmed (not cleared) when it ends. Real sockets on loopback: a wait times out when it should,
// a timer left from an earlier wait never ends a later one, and a closed connection's timers stop.
import { expect, test } from "vitest";
import { RearmableTimer } from "../proxy/base/rearmable-timer.js";
import { ReadTimeout } from "../proxy/http1/socket-reader.js";
import { readerPair } from "./helpers/net.js";

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("a timed wait that is answered leaves its timer behind harmlessly: a later wait without a timeout is not ended by it", async () => {
  const { reader, peer, close } = await readerPair();
  try {
    const first = reader.waitForData(100);
    peer.write("a");
    await first;
    reader.takeBuffered();
    // The timer armed for the first wait would fire about now; this wait has no timeout.
    let settled = false;
    const second = reader.waitForData(0).then(() => {
      settled = true;
    });
    await pause(400);
    expect(settled).toBe(false);
    peer.write("b");
    await second;
    expect(reader.takeBuffered().map(String)).toEqual(["b"]);
  } finally {
    close();
  }
});

test("each timed wait gets its whole timeout, and a wait nobody answers times out", async () => {
  const { reader, peer, close } = await readerPair();
  try {
    // Fifteen waits of a second answered after 100 ms each: none times out, though the first
    // began 1.5 s ago (the timer is pushed back by every wait, not left at the first one's end).
    for (let i = 0; i < 15; i++) {
      const w = reader.waitForData(1000);
      await pause(100);
      peer.write("x");
      await w;
      reader.takeBuffered();
    }
    const t0 = performance.now();
    await expect(reader.waitForData(200)).rejects.toBeInstanceOf(ReadTimeout);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(190);
    // A different timeout after it: its own length.
    await expect(reader.waitForData(50)).rejects.toBeInstanceOf(ReadTimeout);
  } finally {
    close();
  }
});

test("bytes that arrived before the deadline win over a timeout that fires first because the process was busy", async () => {
  const { reader, peer, close } = await readerPair();
  try {
    const w = reader.waitForData(300);
    await pause(100);
    // The peer's bytes are in the socket 200 ms before the deadline, but the process is busy
    // until 400 ms after it. The busy turn ends in the check phase, so the next turn of the
    // event loop runs its timers before it polls the socket: a request on an idle keep-alive
    // connection was lost this way (the connection closed under it).
    await new Promise<void>((r) =>
      setImmediate(() => {
        peer.write("x");
        const until = performance.now() + 600;
        while (performance.now() < until);
        r();
      }),
    );
    await expect(w).resolves.toBeUndefined();
    expect(reader.takeBuffered().map(String)).toEqual(["x"]);
    // Nothing arrives: the wait still times out.
    await expect(reader.waitForData(100)).rejects.toBeInstanceOf(ReadTimeout);
  } finally {
    close();
  }
});

test("a deadline fires once when not cleared, never when cleared, and a timer stops for good when disposed", async () => {
  let fired = 0;
  const t = new RearmableTimer(() => fired++);
  t.arm(50);
  await pause(300);
  expect(fired).toBe(1);
  t.arm(50);
  t.disarm();
  await pause(300);
  expect(fired).toBe(1);
  t.arm(50);
  t.dispose();
  await pause(300);
  expect(fired).toBe(1);

  const { reader, close } = await readerPair();
  try {
    let expired = 0;
    reader.setDeadline(50, () => expired++);
    await pause(300);
    expect(expired).toBe(1);
    reader.setDeadline(50, () => expired++);
    reader.clearDeadline();
    await pause(300);
    expect(expired).toBe(1);
  } finally {
    close();
  }
});

test("a re-armed timer fires its whole delay after the last arm, and a shorter delay than the pending timer's takes effect at once", async () => {
  let firedAt = 0;
  const t = new RearmableTimer(() => {
    firedAt = performance.now();
  });
  // Waits for the timer, however slow the machine: only when it fired is measured.
  const fired = async () => {
    for (let waited = 0; firedAt === 0 && waited < 10_000; waited += 20) await pause(20);
    expect(firedAt).toBeGreaterThan(0);
  };
  // Re-armed while pending: not before 200 ms after the second arm, though its timer was set by the first.
  t.arm(200);
  await pause(150);
  const second = performance.now();
  t.arm(200);
  await fired();
  expect(firedAt - second).toBeGreaterThanOrEqual(195);

  // A long delay, then a short one before it fires: the short one ends it, long before the long one would.
  firedAt = 0;
  const t1 = performance.now();
  t.arm(20_000);
  t.arm(50);
  await fired();
  expect(firedAt - t1).toBeGreaterThanOrEqual(45);
  expect(firedAt - t1).toBeLessThan(10_000);
  t.dispose();
});
