// Cheap attacks must not starve other clients: a client uploading a body in 1-byte chunks as
// fast as it can, next to a client making ordinary requests through the same process.
import http from "node:http";
import net from "node:net";
import { request } from "undici";
import { expect, test } from "vitest";
import { listen } from "./helpers/net.js";
import { proxyTo } from "./helpers/proxy.js";

test("a client streaming 1-byte chunks does not hold up an ordinary client; its body arrives whole, re-chunked", async () => {
  let received = 0;
  let chunksSeen = 0;
  const upstream = http.createServer((req, res) => {
    req.on("data", (c: Buffer) => {
      received += c.length;
      chunksSeen++;
    });
    req.on("end", () => res.end("ok"));
  });
  const port = await listen(upstream as unknown as net.Server);
  const p = await proxyTo({ host: "127.0.0.1", port });

  // The attack: 1-byte chunks, 8 KiB of them per write, for 3 s.
  const tiny = Buffer.from("1\r\nX\r\n".repeat(8192 / 6));
  const perWrite = Math.floor(8192 / 6);
  let sentPayload = 0;
  const attacker = net.connect(p.port, "127.0.0.1");
  attacker.on("error", () => undefined);
  attacker.write("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  let attacking = true;
  const attack = (async () => {
    while (attacking) {
      sentPayload += perWrite;
      if (!attacker.write(tiny)) await new Promise((r) => attacker.once("drain", r));
    }
    attacker.write("0\r\n\r\n");
  })();
  const answer = new Promise<string>((resolve) => {
    let text = "";
    attacker.on("data", (d: Buffer) => {
      text += d.toString("latin1");
      if (text.endsWith("ok")) resolve(text);
    });
  });

  // The ordinary client, meanwhile.
  const latencies: number[] = [];
  const until = performance.now() + 3000;
  while (performance.now() < until) {
    const t = performance.now();
    const r = await request(`${p.url}/hello`);
    expect(r.statusCode).toBe(200);
    await r.body.dump();
    latencies.push(performance.now() - t);
  }
  attacking = false;
  await attack;
  expect(await answer).toMatch(/^HTTP\/1\.1 200 /);
  expect(received).toBe(sentPayload);
  latencies.sort((a, b) => a - b);
  const worst = latencies[latencies.length - 1] as number;
  console.log(
    `fairness: ${latencies.length} ordinary requests, median ${latencies[latencies.length >> 1]?.toFixed(1)} ms, worst ${worst.toFixed(1)} ms; ${sentPayload} 1-byte chunks arrived as ${chunksSeen} reads`,
  );
  // Served all along: no request waits behind the attacker for long.
  expect(latencies.length).toBeGreaterThan(10);
  expect(worst).toBeLessThan(1000);
  attacker.destroy();
  await p.close();
  upstream.close();
}, 60_000);
