// Opening an HTTP listener, and the engine choice, which lives here: a listener's engine
// (splice or buffered), its comparison ratio (a share of connections served buffered), and
// routes that ask for the buffered engine (their connections are handed over).
import net from "node:net";
import type tls from "node:tls";
import { formatHostPort, type HostPort } from "../base/address.js";
import { log } from "../base/log.js";
import type { Sinks } from "../observe/observation.js";
import type { ListenerEngine } from "../request/record.js";
import { connectionTls, type ListenerTlsSpec, TlsTermination } from "../tls/termination.js";
import { readAcceptedIntoBuffers } from "../transfer/accepted-socket.js";
import { stopLendingWhileStreaming } from "../transfer/read-buffers.js";
import { closeGracefully } from "../transfer/socket-handoff.js";
import type { Admission, Refusal } from "./admission.js";
import type { BufferedEngine } from "./buffered-engine.js";
import { serveClient } from "./http-session.js";
import type { ListenerContext, RunningProxy, StateSource } from "./listener-state.js";
import { ConnectionSet, startListening } from "./listening.js";

const REFUSED_BODY = "503 Service Unavailable: too many connections\n";
const REFUSED =
  "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n" +
  `content-length: ${REFUSED_BODY.length}\r\nconnection: close\r\n\r\n${REFUSED_BODY}`;

/**
 * Starts an HTTP listener whose routes and options come from `source` at each request. With
 * `tlsSpec`, connections are admitted as plain sockets, then go through the TLS handshake;
 * a certificate file that can't be used throws (TlsFileError) before anything listens.
 */
export async function startHttpListener(
  address: HostPort,
  engine: ListenerEngine,
  source: StateSource,
  sinks: Sinks,
  admission: Admission,
  tlsSpec: ListenerTlsSpec | null = null,
): Promise<RunningProxy> {
  // The address as bound (a port 0 in the config becomes the real one once listening).
  let label = `${address.host}:${address.port}`;
  const ctx: ListenerContext = { source, sinks, label };
  const clients = new ConnectionSet();
  // Connections still in their handshake: not yet the HTTP session's, closed with the listener.
  const handshaking = new Set<net.Socket>();
  // The buffered engine (http-proxy-3 on node:http), loaded and made when a connection first
  // needs it: a proxy that never uses it pays neither its start-up time nor its memory.
  let bufferedEngine: Promise<BufferedEngine> | null = null;
  const buffered = () => {
    bufferedEngine ??= import("./buffered-engine.js").then((m) => m.createBufferedEngine(ctx));
    return bufferedEngine;
  };
  if (engine === "buffered" || source().opts.bufferedRatio > 0) void buffered();
  const handOff = (client: net.Socket, alreadyRead: Buffer[]) => {
    // node:http sets TCP_NODELAY only on connections it accepts itself (the splice engine sets it too).
    client.setNoDelay(true);
    // node:http keeps what it reads as it likes: no more reads lent (one already armed goes as is, and is not given back).
    stopLendingWhileStreaming(client);
    client.pause();
    if (alreadyRead.length > 0) client.unshift(Buffer.concat(alreadyRead));
    buffered().then(
      (b) => {
        if (client.destroyed) return;
        b.server.emit("connection", client);
        client.resume();
      },
      (err: unknown) => {
        log.error({ err }, "the buffered engine could not be loaded");
        client.destroy();
      },
    );
  };
  const refuse = (client: net.Socket, reason: "max_connections" | Refusal) => {
    sinks.metrics.connectionsRefused.inc({ listener: label, reason });
    // A TLS client is in its handshake: a plain-text 503 would be garbage to it, and finishing
    // the handshake to say 503 spends the CPU an overloaded proxy lacks. It is closed, as in TCP mode.
    if (tlsSpec) return void client.destroy();
    client.write(REFUSED);
    closeGracefully(client);
  };
  const serve = (client: net.Socket) => {
    clients.add(client);
    sinks.metrics.activeConnections.inc({ listener: label });
    client.once("close", () => sinks.metrics.activeConnections.dec({ listener: label }));
    // The whole listener, or in comparison mode this connection and all its requests, goes the ordinary Node way.
    const ratio = source().opts.bufferedRatio;
    if (engine === "buffered" || (ratio > 0 && Math.random() < ratio)) return handOff(client, []);
    const tlsInfo = termination ? connectionTls(client as tls.TLSSocket) : null;
    serveClient(client, ctx, clients, handOff, tlsInfo).catch((err: unknown) => {
      log.error({ err }, "connection failed");
      client.destroy();
    });
  };
  const termination = tlsSpec
    ? new TlsTermination(tlsSpec, label, {
        secure: (s) => {
          // The TLSSocket wraps the admitted plain socket (Node keeps it as _parent).
          const raw = (s as unknown as { _parent?: net.Socket })._parent;
          if (raw) handshaking.delete(raw);
          // Decrypted bytes are read into buffers as a plain connection's are (what the handshake
          // already brought stays in the stream, ahead of them).
          if (engine !== "buffered") readAcceptedIntoBuffers(s);
          serve(s);
        },
        failed: (reason, err) => {
          sinks.metrics.tlsHandshakeFailures.inc({ listener: label, reason });
          log.debug({ listener: label, reason, err: err.message }, "TLS handshake failed");
        },
        rotated: (ok) => sinks.metrics.tlsReloads.inc({ listener: label, result: ok ? "ok" : "refused" }),
      })
    : null;
  if (termination) log.info({ listener: label, certificates: termination.describe() }, "TLS listener");
  const accept = (client: net.Socket) => {
    if (!termination) return serve(client);
    handshaking.add(client);
    client.once("close", () => handshaking.delete(client));
    termination.accept(client);
  };
  // Paused on accept: nothing is read before the connection's reader asks for it (or while it waits for room).
  const onConnection = (client: net.Socket) => {
    // The splice engine's connections read like its upstream ones (a TLS one once its handshake
    // is done, below). node:http (the buffered engine) reads its plain sockets in C++.
    if (!tlsSpec && engine !== "buffered") readAcceptedIntoBuffers(client);
    client.on("error", () => undefined);
    // Over the listener's limit: a clear 503 rather than Node's silent drop (net.Server.maxConnections),
    // so a client or load balancer knows to go elsewhere. The limit follows reloads.
    if (clients.all.size + handshaking.size >= source().opts.limits.maxConnections) return refuse(client, "max_connections");
    // Both engines behind the same admission: the comparison measures the body path only.
    admission.admit(
      client,
      "http",
      () => accept(client),
      (reason) => refuse(client, reason),
    );
  };
  const newServer = () => net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, onConnection);
  const server = newServer();
  const listening = await startListening(
    server,
    address,
    {
      closeAll: () => {
        termination?.close();
        for (const s of handshaking) s.destroy();
        clients.destroyAll();
        void bufferedEngine?.then((b) => b.close());
      },
      // Connections handed to the buffered engine are counted here and closed by it when idle.
      // A connection in its handshake has asked for nothing yet: a drain closes it.
      drain: () => {
        termination?.close();
        for (const s of handshaking) s.destroy();
        return Promise.all([clients.drain(), bufferedEngine?.then((b) => b.drain())]).then(() => undefined);
      },
    },
    newServer,
  );
  label = formatHostPort(listening.address);
  ctx.label = label;
  return listening;
}
