// A socket's handle as the transfer layer reads it (transfer/socket-handoff.ts handleOf): through
// the symbol net.Socket keeps it under, found on a probe, it must be exactly what Node's own
// `_handle` gives, for every kind of socket sluice holds and at every stage of one's life.
import { readFileSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";
import { expect, test } from "vitest";
import { fdOf, handleOf, handleReadDirectly, streamFd } from "../proxy/transfer/socket-handoff.js";
import { selfSigned } from "./helpers/certs.js";
import { listen, settle } from "./helpers/net.js";
import { tempDir } from "./helpers/tmp.js";

const nodeHandle = (s: net.Socket) => (s as unknown as { _handle: unknown })._handle ?? null;

test("on this Node the handle is read through its symbol (else the test below compares _handle with itself)", () => {
  expect(handleReadDirectly).toBe(true);
});

test("handleOf gives what _handle gives: connecting, connected, accepted, TLS, and null once destroyed", async () => {
  const server = net.createServer();
  const port = await listen(server);
  const accepted = new Promise<net.Socket>((r) => server.once("connection", r));
  const client = net.connect({ port, host: "127.0.0.1" });
  // Connecting: the handle exists, its descriptor too.
  expect(handleOf(client)).not.toBeNull();
  expect(handleOf(client)).toBe(nodeHandle(client));
  await new Promise<void>((r) => client.once("connect", () => r()));
  const serverSide = await accepted;
  for (const s of [client, serverSide]) {
    expect(handleOf(s)).toBe(nodeHandle(s));
    expect(streamFd(s)).toBeGreaterThan(2);
  }
  client.destroy();
  serverSide.destroy();
  // destroy() drops the handle at once.
  expect(handleOf(client)).toBeNull();
  expect(fdOf(handleOf(client))).toBe(-1);
  server.close();

  const pair = selfSigned(tempDir("socket-handle"), "localhost", ["DNS:localhost"]);
  const tlsServer = tls.createServer({ key: readFileSync(pair.key), cert: readFileSync(pair.cert) });
  const tlsPort = await listen(tlsServer as unknown as net.Server);
  const secure = new Promise<tls.TLSSocket>((r) => tlsServer.once("secureConnection", r));
  const tlsClient = tls.connect({ port: tlsPort, host: "127.0.0.1", servername: "localhost", rejectUnauthorized: false });
  await new Promise<void>((r) => tlsClient.once("secureConnect", () => r()));
  const tlsServerSide = await secure;
  for (const s of [tlsClient, tlsServerSide]) {
    expect(handleOf(s)).not.toBeNull();
    expect(handleOf(s)).toBe(nodeHandle(s));
  }
  tlsClient.destroy();
  tlsServerSide.destroy();
  expect(handleOf(tlsClient)).toBeNull();
  tlsServer.close();
  await settle();
});
