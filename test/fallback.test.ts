// With SLUICE_SPLICE=off the same API moves the same bytes through the copy path and
// says why; this file runs in its own process, so the loader sees the variable first.
import { createHash } from "node:crypto";
import { expect, test } from "vitest";
import { destroyAll, forwardingPairs, receive, sendRandom } from "./helpers/net.js";

process.env.SLUICE_SPLICE = "off";
const { transfer, tunnel } = await import("../proxy/transfer/transfer.js");
const { spliceAddon, spliceUnavailableReason } = await import("../proxy/transfer/native.js");

test("SLUICE_SPLICE=off: no addon, and transfers say they were copied and why", async () => {
  expect(spliceAddon()).toBeNull();
  expect(spliceUnavailableReason()).toBe("SLUICE_SPLICE=off");
  const { sender, fin, fout, receiver } = await forwardingPairs();
  const size = 5 * (1 << 20) + 3;
  const rx = receive(receiver, size);
  const tx = sendRandom(sender, size);
  const r = await transfer(fin, fout, { length: size });
  expect(r).toMatchObject({
    pump: "copy",
    bytes: size,
    splicedBytes: 0,
    copiedBytes: size,
    fallbackReason: "SLUICE_SPLICE=off",
  });
  expect((await rx).hash).toBe(await tx);
  destroyAll(sender, fin, fout, receiver);
});

test("SLUICE_SPLICE=off: tunnels are copied too", async () => {
  const { sender: client, fin, fout, receiver: server } = await forwardingPairs();
  const t = tunnel(fin, fout);
  const atServer = receive(server);
  client.end("ping");
  expect((await atServer).hash).toBe(createHash("sha256").update("ping").digest("hex"));
  const atClient = receive(client);
  server.end("pong!");
  expect((await atClient).bytes).toBe(5);
  expect(await t).toMatchObject({ pump: "copy", aToB: 4, bToA: 5, fallbackReason: "SLUICE_SPLICE=off" });
  destroyAll(client, server);
});
