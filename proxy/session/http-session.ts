// One client connection of the splice engine: a keep-alive loop of requests. Each request
// is read and parsed, decided (answer here or forward), forwarded through the retry loop,
// and finished once with its record, whatever happened.
import type net from "node:net";
import { log } from "../base/log.js";
import { HttpError } from "../http1/errors.js";
import { parseRequestHead, type RequestHead } from "../http1/head.js";
import { PeerClosed, ReadTimeout, SocketReader } from "../http1/socket-reader.js";
import { observeFailedHead, RequestObservation } from "../observe/observation.js";
import { COMPLETED, outcome, RequestFailure } from "../request/outcome.js";
import { addressesOf, type ClientTls, RequestRecord } from "../request/record.js";
import { decide, type LocalAnswer } from "../routing/decision.js";
import { readSwitchFor } from "../transfer/read-buffers.js";
import { closeGracefully, resetConnection } from "../transfer/socket-handoff.js";
import { type ClientSide, type SessionNext, spliceTry } from "./exchange.js";
import { forward } from "./forward.js";
import type { ListenerContext } from "./listener-state.js";
import type { ConnectionSet } from "./listening.js";
import { sendErrorAndClose } from "./respond.js";

/** A locally generated response; the connection stays open when the request allows it. */
function respondLocally(client: net.Socket, req: RequestHead, closing: boolean, answer: LocalAnswer): boolean {
  // A refused request (a CONNECT not enabled) closes: what the client sends next may be tunnel bytes.
  const keep = req.keepAlive && req.framing.kind === "none" && !closing && answer.outcome !== "client_protocol";
  const bytes = Buffer.from(req.method === "HEAD" ? "" : answer.body);
  let head = `HTTP/1.1 ${answer.status} ${answer.reason}\r\n`;
  for (const [n, v] of answer.headers) head += `${n}: ${v}\r\n`;
  head += `content-length: ${Buffer.byteLength(answer.body)}\r\n${keep ? "" : "connection: close\r\n"}\r\n`;
  client.write(Buffer.concat([Buffer.from(head, "latin1"), bytes]));
  return keep;
}

/** Hands a connection to the buffered engine, with the bytes already read in front of its stream. */
export type HandOff = (client: net.Socket, alreadyRead: Buffer[]) => void;

export async function serveClient(
  client: net.Socket,
  ctx: ListenerContext,
  conns: ConnectionSet,
  handOff: HandOff,
  tls: ClientTls | null = null,
): Promise<void> {
  client.setNoDelay(true);
  client.on("error", () => undefined);
  // Read once: each of the socket's address getters asks it again (four per request otherwise).
  const addresses = addressesOf(client);
  const reader = new SocketReader(client, readSwitchFor(client));
  const side: ClientSide = {
    client,
    reader,
    opts: ctx.source().opts,
    closing: () => conns.draining,
    tunnels: ctx.sinks.metrics.activeTunnels,
  };
  let first = true;
  for (;;) {
    // Each request sees the configuration current when its head arrived.
    let state = ctx.source();
    const { opts } = state;
    let req: RequestHead;
    let head: Buffer;
    try {
      // An idle keep-alive connection may wait longer than a request may take to arrive.
      // While it waits it is idle: a drain closes it.
      if (!first) conns.setIdle(client, true);
      await reader.waitForData(first ? opts.timeouts.headMs : opts.timeouts.keepAliveMs);
      conns.setIdle(client, false);
      const { maxHeadBytes, maxUriBytes } = opts.limits;
      // Nearly always the whole head came in the bytes just awaited: no promise for it then.
      head =
        reader.takeHead(maxHeadBytes, maxUriBytes + 64) ??
        (await reader.readHead(maxHeadBytes, maxUriBytes + 64, opts.timeouts.headMs));
      state = ctx.source();
      req = parseRequestHead(head, opts.limits, reader.headText);
    } catch (err) {
      if (err instanceof HttpError) {
        sendErrorAndClose(client, err.status, err.message);
        observeFailedHead(ctx.sinks, "splice", addresses, err.status, err.message);
      } else if (err instanceof ReadTimeout && reader.bufferedBytes > 0) {
        sendErrorAndClose(client, 408, "request head not received in time");
        observeFailedHead(ctx.sinks, "splice", addresses, 408, "request head not received in time");
      } else if (err instanceof PeerClosed && !err.clean) {
        client.destroy();
        if (reader.bufferedBytes > 0)
          observeFailedHead(ctx.sinks, "splice", addresses, null, `client closed mid-head (${err.code})`);
      } else {
        // Idle past its timeout, or the client's own EOF: a FIN. The socket reads on until the
        // client closes too (a paused socket would not see that close: it stops reading).
        closeGracefully(client);
      }
      return;
    }
    first = false;
    side.opts = state.opts;

    // Routes may match on the verified client certificate (TLS listeners with client_certificate).
    const view = tls === null ? req : Object.assign(req, { clientSubject: tls.clientSubject });
    const decision = decide(view, state);
    if (decision.kind === "forward" && decision.buffered) {
      // From here on this connection is the buffered engine's: it gets the head again,
      // and whatever else was read, in front of the socket's stream.
      handOff(client, [head, ...reader.detach()]);
      return;
    }
    const rec = new RequestRecord({
      engine: "splice",
      method: req.method,
      path: req.path,
      version: req.version,
      host: req.host,
      fields: req,
      client: addresses,
      requestIds: state.opts.forwarding.requestId,
      tls,
    });
    rec.route = decision.route;
    const observation = new RequestObservation(ctx.sinks, rec);
    let next: SessionNext;
    if (decision.kind === "answer") {
      next = respondLocally(client, req, conns.draining, decision) ? "keep-alive" : "close";
      rec.status = decision.status;
      rec.response = {
        bytes: req.method === "HEAD" ? 0 : Buffer.byteLength(decision.body),
        spliced: 0,
        copied: 0,
        pipeSize: null,
      };
      rec.response.copied = rec.response.bytes;
      rec.outcome = outcome(decision.outcome, "route");
    } else {
      rec.cluster = decision.clusterName;
      try {
        next = await forward(rec, decision, observation, (t, traceHeaders, lastTry) =>
          spliceTry(side, rec, req, decision, t, traceHeaders, lastTry),
        );
        rec.outcome = rec.lastTry?.outcome ?? COMPLETED.response_body;
      } catch (err) {
        const f = err instanceof RequestFailure ? err : new RequestFailure(outcome("proxy_internal", "route", String(err)), null);
        if (f.outcome.code === "proxy_internal") log.error({ err }, "exchange failed");
        rec.outcome = f.outcome;
        answerFailure(client, rec, f);
        next = "consumed";
      }
    }
    observation.finish();
    if (next === "consumed") return;
    if (next === "close") {
      closeGracefully(client);
      return;
    }
  }
}

/** What the client gets when a request failed: an error response if no head went out, else a reset. */
function answerFailure(client: net.Socket, rec: RequestRecord, f: RequestFailure): void {
  if (rec.status !== null) {
    // A reset, not a FIN: a truncated body must never look complete.
    log.debug({ outcome: f.outcome }, "response aborted");
    resetConnection(client);
  } else if (f.status !== null) {
    rec.status = f.status;
    sendErrorAndClose(client, f.status, f.outcome.detail ?? f.outcome.code);
  } else client.destroy();
}
