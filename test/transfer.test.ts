// The transfer layer on real loopback sockets, through the splice engine and through
// the streaming copy, which must keep the same contract.
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import { PeerClosed, SocketReader } from "../proxy/http1/socket-reader.js";
import { readAcceptedIntoBuffers } from "../proxy/transfer/accepted-socket.js";
import { idleCheckEveryMs, idleWatchPeriods } from "../proxy/transfer/idle-watch.js";
import { spliceAddon } from "../proxy/transfer/native.js";
import { readSwitchFor } from "../proxy/transfer/read-buffers.js";
import { TransferError, transfer, tunnel } from "../proxy/transfer/transfer.js";
import { destroyAll, forwardingPairs, openFds, receive, sendRandom, settle } from "./helpers/net.js";

const addon = spliceAddon();
const MiB = 1 << 20;

beforeAll(() => {
  expect(addon, "the splice addon must be built for these tests (npm install builds it)").not.toBeNull();
});

/** Open fds, not counting the pool's idle pipes (two fds each, kept on purpose). */
function fdsInUse(): number {
  return openFds() - 2 * (addon?.stats().idle ?? 0);
}

function poolSettled() {
  const s = addon?.stats();
  if (!s) return;
  expect(s.inUse).toBe(0);
  expect(s.transfers).toBe(0);
  expect(s.idle).toBeLessThanOrEqual(s.maxIdle);
}

describe.each([
  { engine: "splice" as const, opt: "auto" as const },
  { engine: "copy" as const, opt: "copy" as const },
])("$engine path", ({ engine, opt }) => {
  const pipeSize = addon?.stats().pipeSize ?? 65536;

  test.each([0, 1, pipeSize - 1, pipeSize, pipeSize + 1, 10 * MiB])(
    "moves exactly %i bytes, then the same sockets carry the next message",
    async (size) => {
      const { sender, fin, fout, receiver } = await forwardingPairs();
      const rx = receive(receiver, size);
      const tx = sendRandom(sender, size);
      const r = await transfer(fin, fout, { length: size, pump: opt });
      expect(r.bytes).toBe(size);
      expect(r.pump).toBe(size === 0 ? "copy" : engine);
      expect(r.splicedBytes + r.copiedBytes).toBe(size);
      const got = await rx;
      expect(got.bytes).toBe(size);
      expect(got.hash).toBe(await tx);
      // Keep-alive: both sockets are Node's again and carry what follows, in order.
      const next = once(fin, "data");
      fin.resume();
      sender.write("NEXT-REQUEST");
      expect(String((await next)[0])).toBe("NEXT-REQUEST");
      const tail = once(receiver, "data");
      receiver.resume();
      fout.write("NEXT-RESPONSE");
      expect(String((await tail)[0])).toBe("NEXT-RESPONSE");
      destroyAll(sender, fin, fout, receiver);
    },
  );

  test("bytes Node already buffered go first and the next message's bytes stay with the source", async () => {
    const { sender, fin, fout, receiver } = await forwardingPairs();
    const body = Buffer.alloc(300_000, 7);
    body.write("start", 0);
    body.write("end", body.length - 3);
    sender.write(body);
    sender.write("NEXT");
    // Node reads ahead into the stream's buffer before the transfer begins.
    fin.pause();
    fin.read(0);
    await new Promise((r) => setTimeout(r, 50));
    expect(fin.readableLength).toBeGreaterThan(0);
    const rx = receive(receiver, body.length);
    const r = await transfer(fin, fout, { length: body.length, pump: opt });
    expect(r.bytes).toBe(body.length);
    expect(r.copiedBytes).toBeGreaterThan(0);
    expect((await rx).hash).toBe(createHash("sha256").update(body).digest("hex"));
    const next = once(fin, "data");
    fin.resume();
    expect(String((await next)[0])).toBe("NEXT");
    destroyAll(sender, fin, fout, receiver);
  });

  test("a caller-supplied prefix longer than the body leaves the rest unread on the source", async () => {
    const { sender, fin, fout, receiver } = await forwardingPairs();
    const rx = receive(receiver, 10);
    const r = await transfer(fin, fout, { length: 10, pump: opt, prefix: [Buffer.from("0123456789NEXT")] });
    expect(r.bytes).toBe(10);
    expect((await rx).hash).toBe(createHash("sha256").update("0123456789").digest("hex"));
    const next = once(fin, "data");
    fin.resume();
    expect(String((await next)[0])).toBe("NEXT");
    destroyAll(sender, fin, fout, receiver);
  });

  test.each([
    { queued: 0, label: "an idle destination" },
    { queued: 8 * MiB, label: "a destination still holding 8 MiB its peer has not read" },
  ])("a lead (a response head) goes before the body's first bytes and the rest, in order, to $label", async ({ queued }) => {
    const { sender, fin, fout, receiver } = await forwardingPairs();
    const size = 3_000_000;
    const lead = `HTTP/1.1 200 OK\r\nContent-Length: ${size}\r\n\r\n`;
    const prefix = [Buffer.from("first-"), randomBytes(1000)];
    const rest = randomBytes(size - 1006);
    const before = Buffer.alloc(queued, 3);
    if (queued > 0) {
      receiver.pause();
      fout.write(before);
      expect(fout.writableLength).toBeGreaterThan(0);
    }
    sender.write(rest);
    const done = transfer(fin, fout, { length: size, prefix, lead, pump: opt });
    const got = await receive(receiver, queued + lead.length + size);
    const r = await done;
    expect(r.bytes).toBe(size);
    expect(r.pump).toBe(engine);
    expect(got.bytes).toBe(queued + lead.length + size);
    const want = createHash("sha256").update(before).update(lead, "latin1");
    for (const part of [...prefix, rest]) want.update(part);
    expect(got.hash).toBe(want.digest("hex"));
    destroyAll(sender, fin, fout, receiver);
  });

  test.each([
    { dir: "upstream", size: 1024 * MiB },
    { dir: "downstream", size: 1024 * MiB },
  ])("1 GiB $dir arrives byte-identical", async ({ dir, size }) => {
    const { sender, fin, fout, receiver } = await forwardingPairs();
    // "downstream" runs the other way through the same kind of pair.
    const [src, dst, from, to] = dir === "upstream" ? [fin, fout, sender, receiver] : [fout, fin, receiver, sender];
    const rx = receive(to, size);
    const tx = sendRandom(from, size);
    const r = await transfer(src, dst, { length: size, pump: opt });
    expect(r.bytes).toBe(size);
    expect(r.pump).toBe(engine);
    if (engine === "splice") expect(r.splicedBytes).toBeGreaterThan(size - 4 * MiB);
    const got = await rx;
    expect(got.bytes).toBe(size);
    expect(got.hash).toBe(await tx);
    destroyAll(sender, fin, fout, receiver);
  });

  test("until EOF: everything up to the source's EOF, passed on as a half-close", async () => {
    const { sender, fin, fout, receiver } = await forwardingPairs();
    const rx = receive(receiver);
    const tx = sendRandom(sender, 3 * MiB + 5, { end: true });
    const r = await transfer(fin, fout, { pump: opt, shutdownDestination: true });
    expect(r.eof).toBe(true);
    expect(r.bytes).toBe(3 * MiB + 5);
    const got = await rx; // resolves on 'end', so the half-close arrived
    expect(got.bytes).toBe(3 * MiB + 5);
    expect(got.hash).toBe(await tx);
    // The source is Node's again and reports its EOF itself.
    fin.resume();
    await vi.waitFor(() => expect(fin.readableEnded).toBe(true));
    destroyAll(sender, fin, fout, receiver);
  });

  test("tunnel: both directions until both EOFs, each half-close propagated", async () => {
    const { sender: client, fin, fout, receiver: server } = await forwardingPairs();
    const fdsBefore = fdsInUse();
    const t = tunnel(fin, fout, { pump: opt });
    // Client sends and half-closes; the server sees its EOF while still able to answer.
    const atServer = receive(server);
    const up = await sendRandom(client, 2 * MiB + 3, { end: true });
    const gotUp = await atServer;
    expect(gotUp.hash).toBe(up);
    const atClient = receive(client);
    const down = await sendRandom(server, 5 * MiB + 1, { end: true });
    const gotDown = await atClient;
    expect(gotDown.hash).toBe(down);
    const r = await t;
    expect(r).toMatchObject({ pump: engine, aToB: 2 * MiB + 3, bToA: 5 * MiB + 1 });
    destroyAll(client, server);
    await settle();
    expect(fdsInUse()).toBeLessThanOrEqual(fdsBefore);
    poolSettled();
  });

  describe("faults leave no fd or pipe behind", () => {
    let fdsBefore = 0;
    beforeAll(async () => {
      await settle();
      fdsBefore = fdsInUse();
    });
    afterAll(async () => {
      await settle();
      expect(fdsInUse()).toBe(fdsBefore);
      poolSettled();
    });

    test("source closes mid-body: UNEXPECTED_EOF with the exact bytes delivered", async () => {
      const { sender, fin, fout, receiver } = await forwardingPairs();
      const rx = receive(receiver);
      const sent = await sendRandom(sender, 3 * MiB + 11, { end: true });
      const err = await transfer(fin, fout, { length: 8 * MiB, pump: opt }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TransferError);
      expect(err).toMatchObject({ code: "UNEXPECTED_EOF", side: "source", bytes: [3 * MiB + 11] });
      fout.end();
      const got = await rx;
      expect(got.bytes).toBe(3 * MiB + 11);
      expect(got.hash).toBe(sent);
      destroyAll(sender, fin, fout, receiver);
      await settle();
    });

    test("source resets mid-body: ECONNRESET on the source", async () => {
      const { sender, fin, fout, receiver } = await forwardingPairs();
      receiver.resume();
      const t = transfer(fin, fout, { length: 8 * MiB, pump: opt }).catch((e: unknown) => e);
      sender.write(Buffer.alloc(MiB));
      await new Promise((r) => setTimeout(r, 50));
      sender.resetAndDestroy();
      const err = await t;
      expect(err).toMatchObject({ code: "ECONNRESET", side: "source" });
      expect((err as TransferError).bytes[0]).toBeLessThanOrEqual(MiB);
      destroyAll(fin, fout, receiver);
      await settle();
    });

    test("destination resets mid-body: an error on the destination with the bytes delivered", async () => {
      const { sender, fin, fout, receiver } = await forwardingPairs();
      const t = transfer(fin, fout, { length: 64 * MiB, pump: opt }).catch((e: unknown) => e);
      sendRandom(sender, 64 * MiB).catch(() => undefined);
      let seen = 0;
      receiver.on("data", (c: Buffer) => {
        seen += c.length;
        if (seen > 2 * MiB) receiver.resetAndDestroy();
      });
      const err = (await t) as TransferError;
      expect(err).toBeInstanceOf(TransferError);
      expect(["ECONNRESET", "EPIPE"]).toContain(err.code);
      expect(err.side).toBe("destination");
      expect(err.bytes[0]).toBeGreaterThanOrEqual(2 * MiB);
      destroyAll(sender, fin, fout);
      await settle();
    });

    test("cancel by AbortSignal while the source stalls", async () => {
      const { sender, fin, fout, receiver } = await forwardingPairs();
      receiver.resume();
      sender.write(Buffer.alloc(1000));
      const ac = new AbortController();
      const t = transfer(fin, fout, { length: MiB, pump: opt, signal: ac.signal }).catch((e: unknown) => e);
      setTimeout(() => ac.abort(), 50);
      expect(await t).toMatchObject({ code: "ECANCELED", bytes: [1000] });
      destroyAll(sender, fin, fout, receiver);
      await settle();
    });

    test("idle timeout cuts a stalled transfer with ETIMEDOUT, within a second of the timeout", async () => {
      const { sender, fin, fout, receiver } = await forwardingPairs();
      receiver.resume();
      sender.write(Buffer.alloc(5000));
      const err = await transfer(fin, fout, { length: MiB, pump: opt, idleTimeoutMs: 100 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: "ETIMEDOUT", bytes: [5000] });
      // The check runs often enough that a long timeout is kept to within a second (60 s was cut at up to 75 s).
      for (const idle of [100, 4000, 60_000, 3_600_000]) expect(idleCheckEveryMs(idle)).toBeLessThanOrEqual(Math.min(1000, idle));
      destroyAll(sender, fin, fout, receiver);
      await settle();
    });

    test("transfers share an idle check: a stalled one is cut, one flowing beside it is not, and the check stops after them", async () => {
      const stalled = await forwardingPairs();
      const flowing = await forwardingPairs();
      stalled.receiver.resume();
      const got = receive(flowing.receiver, 40 * 1000);
      stalled.sender.write(Buffer.alloc(1000));
      const idleTimeoutMs = 400;
      const startedAt = performance.now();
      let cutAfter = 0;
      const cut = transfer(stalled.fin, stalled.fout, { length: MiB, pump: opt, idleTimeoutMs }).catch((e: unknown) => {
        cutAfter = performance.now() - startedAt;
        return e;
      });
      const moved = transfer(flowing.fin, flowing.fout, { length: 40 * 1000, pump: opt, idleTimeoutMs });
      // 40 writes 25 ms apart: about a second in all, far longer than the timeout, never idle that long.
      for (let i = 0; i < 40; i++) {
        flowing.sender.write(Buffer.alloc(1000, i));
        await new Promise((r) => setTimeout(r, 25));
        if (i === 10) expect(idleWatchPeriods()).toContain(idleCheckEveryMs(idleTimeoutMs));
      }
      expect(await cut).toMatchObject({ code: "ETIMEDOUT", bytes: [1000] });
      // Never before its timeout (timers may fire a millisecond early).
      expect(cutAfter).toBeGreaterThanOrEqual(idleTimeoutMs - 5);
      expect((await moved).bytes).toBe(40 * 1000);
      const sent = createHash("sha256");
      for (let i = 0; i < 40; i++) sent.update(Buffer.alloc(1000, i));
      expect(await got).toMatchObject({ bytes: 40 * 1000, hash: sent.digest("hex") });
      // With nobody left to check, the shared interval stops at its next tick.
      await new Promise((r) => setTimeout(r, 3 * idleCheckEveryMs(idleTimeoutMs)));
      expect(idleWatchPeriods()).not.toContain(idleCheckEveryMs(idleTimeoutMs));
      destroyAll(
        stalled.sender,
        stalled.fin,
        stalled.fout,
        stalled.receiver,
        flowing.sender,
        flowing.fin,
        flowing.fout,
        flowing.receiver,
      );
      await settle();
    });

    test("a tunnel whose peer resets ends with the error and both sockets destroyed", async () => {
      const { sender: client, fin, fout, receiver: server } = await forwardingPairs();
      server.resume();
      const t = tunnel(fin, fout, { pump: opt }).catch((e: unknown) => e);
      client.write(Buffer.alloc(100_000));
      await new Promise((r) => setTimeout(r, 50));
      client.resetAndDestroy();
      const err = (await t) as TransferError;
      expect(err).toBeInstanceOf(TransferError);
      expect(err.code).toBe("ECONNRESET");
      expect(err.bytes[0]).toBe(100_000);
      expect(fin.destroyed && fout.destroyed).toBe(true);
      destroyAll(server);
      await settle();
    });
  });

  test("1000 concurrent transfers all arrive intact", async () => {
    const fdsBefore = fdsInUse();
    const pairs = await Promise.all(Array.from({ length: 1000 }, () => forwardingPairs()));
    const results = await Promise.all(
      pairs.map(async ({ sender, fin, fout, receiver }, i) => {
        const size = 1 + ((i * 7919) % (256 * 1024));
        const rx = receive(receiver, size);
        const tx = sendRandom(sender, size, { block: 65536 });
        const r = await transfer(fin, fout, { length: size, pump: opt });
        const got = await rx;
        destroyAll(sender, fin, fout, receiver);
        return r.bytes === size && got.hash === (await tx);
      }),
    );
    expect(results.filter((ok) => !ok)).toHaveLength(0);
    await settle(10);
    expect(fdsInUse()).toBeLessThanOrEqual(fdsBefore);
    poolSettled();
  });

  test("no transfer stalls: 300 sequential 1 MiB transfers on one keep-alive pair", async () => {
    const { sender, fin, fout, receiver } = await forwardingPairs();
    let slowest = 0;
    for (let i = 0; i < 300; i++) {
      const rx = receive(receiver, MiB);
      const tx = sendRandom(sender, MiB);
      const t0 = performance.now();
      await transfer(fin, fout, { length: MiB, pump: opt });
      slowest = Math.max(slowest, performance.now() - t0);
      expect((await rx).hash).toBe(await tx);
      receiver.pause();
    }
    // A missed wake-up shows as a transfer parked for a poll timeout or a 200 ms TCP cork.
    expect(slowest).toBeLessThan(1000);
    destroyAll(sender, fin, fout, receiver);
  });
});

describe("splice endpoints", () => {
  test("a keep-alive pair makes its two endpoints once, keeps them for every body, and frees them with the sockets", async () => {
    if (!addon) return;
    await settle();
    const fdsBefore = fdsInUse();
    const endpointsBefore = addon.stats().endpoints;
    const { sender, fin, fout, receiver } = await forwardingPairs();
    const fdsWithSockets = fdsInUse();
    let fdsAfterFirst = 0;
    for (let i = 0; i < 20; i++) {
      const rx = receive(receiver, MiB);
      const tx = sendRandom(sender, MiB);
      const r = await transfer(fin, fout, { length: MiB });
      expect(r.pump).toBe("splice");
      expect((await rx).hash).toBe(await tx);
      receiver.pause();
      // One duplicate per socket, made by the first body and never again.
      expect(addon.stats().endpoints).toBe(endpointsBefore + 2);
      if (i === 0) fdsAfterFirst = fdsInUse();
      else expect(fdsInUse()).toBe(fdsAfterFirst);
    }
    expect(fdsAfterFirst).toBe(fdsWithSockets + 2);
    destroyAll(sender, fin, fout, receiver);
    await settle();
    expect(addon.stats().endpoints).toBe(endpointsBefore);
    expect(fdsInUse()).toBe(fdsBefore);
    poolSettled();
  });

  test("a kept endpoint does not hold the connection open: the peer sees the close, or the reset", async () => {
    await settle();
    const endpointsBefore = addon?.stats().endpoints;
    for (const how of ["destroy", "reset"] as const) {
      const { sender, fin, fout, receiver } = await forwardingPairs();
      const rx = receive(receiver, 4096);
      const tx = sendRandom(sender, 4096);
      expect((await transfer(fin, fout, { length: 4096 })).pump).toBe("splice");
      expect((await rx).hash).toBe(await tx);
      receiver.resume();
      const seen = new Promise<string>((resolve) => {
        receiver.once("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
        receiver.once("end", () => resolve("end"));
      });
      if (how === "destroy") fout.destroy();
      else fout.resetAndDestroy();
      // Were the duplicate kept past Node's close, no FIN or RST would leave and this would hang.
      expect(await seen).toBe(how === "destroy" ? "end" : "ECONNRESET");
      destroyAll(sender, fin, receiver);
    }
    await settle();
    expect(addon?.stats().endpoints).toBe(endpointsBefore);
  });

  test("one socket read by one transfer while another writes to it: both bodies intact", async () => {
    const { sender, fin, fout, receiver } = await forwardingPairs();
    const size = 16 * MiB;
    const up = receive(receiver, size);
    const upSent = sendRandom(sender, size);
    const down = receive(sender, size);
    const downSent = sendRandom(receiver, size);
    const [a, b] = await Promise.all([transfer(fin, fout, { length: size }), transfer(fout, fin, { length: size })]);
    expect([a.pump, b.pump]).toEqual(["splice", "splice"]);
    expect((await up).hash).toBe(await upSent);
    expect((await down).hash).toBe(await downSent);
    destroyAll(sender, fin, fout, receiver);
    await settle();
    poolSettled();
  });
});

describe("pipe pool", () => {
  test("counters account for every pipe; the cap makes a transfer fall back to copying", async () => {
    if (!addon) return;
    const before = addon.stats();
    const size = addon.configure(before.pipeSize, before.maxIdle, 1);
    expect(size).toBe(before.pipeSize);
    try {
      const a = await forwardingPairs();
      const b = await forwardingPairs();
      a.sender.write("x");
      // Transfer A holds the only pipe while it waits for the rest of its body.
      const ta = transfer(a.fin, a.fout, { length: 2 });
      const rb = receive(b.receiver, 5);
      b.sender.write("hello");
      const tb = await transfer(b.fin, b.fout, { length: 5 });
      expect(tb.pump).toBe("copy");
      expect(tb.fallbackReason).toMatch(/EAGAIN/);
      expect((await rb).bytes).toBe(5);
      expect(addon.stats().acquireFailures).toBe(before.acquireFailures + 1);
      a.sender.write("y");
      expect((await ta).pump).toBe("splice");
      destroyAll(a.sender, a.fin, a.fout, a.receiver, b.sender, b.fin, b.fout, b.receiver);
    } finally {
      addon.configure(before.pipeSize, before.maxIdle, before.maxPipes);
    }
    const after = addon.stats();
    expect(after.inUse).toBe(0);
    expect(after.created - after.closed).toBe(after.idle);
    expect(after.bytesMoved).toBeGreaterThan(before.bytesMoved);
  });

  test("pipe size is bounded by the system maximum and idle pipes by the cap", async () => {
    if (!addon) return;
    const before = addon.stats();
    try {
      expect(addon.configure(1 << 30, 2, 0)).toBe(before.systemMaxPipeSize);
      const pairs = await Promise.all(Array.from({ length: 5 }, () => forwardingPairs()));
      await Promise.all(
        pairs.map(async (p) => {
          const rx = receive(p.receiver, 1000);
          p.sender.write(Buffer.alloc(1000));
          await transfer(p.fin, p.fout, { length: 1000 });
          await rx;
        }),
      );
      const s = addon.stats();
      expect(s.idle).toBeLessThanOrEqual(2);
      expect(s.inUse).toBe(0);
      for (const p of pairs) destroyAll(p.sender, p.fin, p.fout, p.receiver);
    } finally {
      addon.configure(before.pipeSize, before.maxIdle, before.maxPipes);
    }
  });
});

describe("a reader that starts and stops a socket by its handle (a socket read through onread)", () => {
  test("bytes a copied body's last read took past its end, and then the peer's EOF, still reach the reader", async () => {
    const { sender, fin, fout, receiver } = await forwardingPairs();
    expect(readAcceptedIntoBuffers(fin)).toBe(true);
    const reads = readSwitchFor(fin);
    expect(reads).toBeDefined();
    const reader = new SocketReader(fin, reads);
    sender.write("HEAD");
    expect(String(await reader.readSome(100, 5000))).toBe("HEAD");
    // The body and what follows it in one write: the copy reads past the body's end and puts
    // the rest back in the stream's buffer, which the reader's next start must deliver.
    const body = randomBytes(100_000);
    sender.write(Buffer.concat([body, Buffer.from("NEXT")]));
    const rx = receive(receiver, body.length);
    const r = await transfer(fin, fout, { length: body.length, prefix: reader.takeBuffered(), pump: "copy" });
    expect(r.bytes).toBe(body.length);
    expect((await rx).hash).toBe(createHash("sha256").update(body).digest("hex"));
    expect(String(await reader.readExactly(4, 5000))).toBe("NEXT");
    sender.end();
    // readSome says EOF with no bytes; a wait for data, with PeerClosed.
    expect((await reader.readSome(100, 5000)).length).toBe(0);
    await expect(reader.waitForData(5000)).rejects.toBeInstanceOf(PeerClosed);
    destroyAll(sender, fin, fout, receiver);
  });

  /** A source read through onread with a reader on it that has read a first message ("HEAD"). */
  async function readerAfterHead() {
    const pairs = await forwardingPairs();
    expect(readAcceptedIntoBuffers(pairs.fin)).toBe(true);
    const reader = new SocketReader(pairs.fin, readSwitchFor(pairs.fin));
    pairs.sender.write("HEAD");
    expect(String(await reader.readSome(100, 5000))).toBe("HEAD");
    return { ...pairs, reader };
  }

  test("a spliced body passes the reader by (none of its bytes reach it), and the next message does reach it", async () => {
    const { sender, fin, fout, receiver, reader } = await readerAfterHead();
    const body = randomBytes(3 * MiB);
    const rx = receive(receiver, body.length);
    const t = transfer(fin, fout, { length: body.length, prefix: reader.takeBuffered() });
    sender.write(Buffer.concat([body, Buffer.from("NEXT")]));
    const r = await t;
    expect(r.pump).toBe("splice");
    expect(r.splicedBytes).toBe(body.length);
    expect((await rx).hash).toBe(createHash("sha256").update(body).digest("hex"));
    expect(String(await reader.readExactly(4, 5000))).toBe("NEXT");
    destroyAll(sender, fin, fout, receiver);
  });

  test("a splice that cannot start is copied, and still none of the body reaches the reader", async () => {
    if (!addon) return;
    const before = addon.stats();
    addon.configure(before.pipeSize, before.maxIdle, 1);
    const holder = await forwardingPairs();
    try {
      // Another transfer holds the only pipe while it waits for the rest of its body.
      holder.sender.write("x");
      const held = transfer(holder.fin, holder.fout, { length: 2 });
      const { sender, fin, fout, receiver, reader } = await readerAfterHead();
      const body = randomBytes(300_000);
      const rx = receive(receiver, body.length);
      const t = transfer(fin, fout, { length: body.length, prefix: reader.takeBuffered() });
      sender.write(Buffer.concat([body, Buffer.from("NEXT")]));
      const r = await t;
      expect(r.pump).toBe("copy");
      expect(r.fallbackReason).toMatch(/EAGAIN/);
      expect((await rx).hash).toBe(createHash("sha256").update(body).digest("hex"));
      expect(String(await reader.readExactly(4, 5000))).toBe("NEXT");
      holder.sender.write("y");
      expect((await held).pump).toBe("splice");
      destroyAll(sender, fin, fout, receiver);
    } finally {
      addon.configure(before.pipeSize, before.maxIdle, before.maxPipes);
      destroyAll(holder.sender, holder.fin, holder.fout, holder.receiver);
    }
    // A copy that shares its bytes with the reader never ends: fail in seconds, not minutes.
  }, 30_000);
});
