// How the HTTP session wants upstream connections made and read: Nagle off, half-open
// allowed, a SocketReader on each, and with splice one shared read buffer. A cluster with
// TLS gets TLS connections (tls/origination.ts); their bodies are copied, never spliced.
import net from "node:net";
import tls from "node:tls";
import type { HostPort } from "../base/address.js";
import { SocketReader } from "../http1/socket-reader.js";
import { isTlsError, type UpstreamTls } from "../tls/origination.js";
import { spliceAddon } from "../transfer/native.js";
import type { Connector, UpstreamConnection } from "../upstream/pool.js";

/**
 * Upstream sockets read into this one buffer, and the callback passes a copy of what came
 * on as a 'data' event, instead of Node allocating a 64 KiB buffer for every read: fewer
 * body bytes reach userspace ahead of a splice, and far less short-lived external memory.
 * About 14% less CPU per spliced 1 MiB response in an A/B here; neutral for small ones.
 * Without splice every body byte is read, and Node's own larger reads copy less: 40% less
 * CPU than this in the same A/B.
 */
const READ_BUFFER = Buffer.allocUnsafe(16 * 1024);

export const httpConnector: Connector = {
  connect(endpoint: HostPort): net.Socket {
    const opts: net.NetConnectOpts = { ...endpoint, allowHalfOpen: true, noDelay: true };
    if (spliceAddon() === null) return net.connect(opts);
    let socket: net.Socket | null = null;
    opts.onread = {
      buffer: READ_BUFFER,
      callback: (n, buf) => {
        socket?.emit("data", Buffer.from(buf.subarray(0, n)));
        return true;
      },
    };
    socket = net.connect(opts);
    return socket;
  },
  readyEvent: "connect",
  reader: (socket) => new SocketReader(socket),
};

/** Connections of a cluster with TLS: ready once the handshake and verification are done. */
export function tlsConnector(upstreamTls: UpstreamTls): Connector {
  return {
    connect(endpoint: HostPort): net.Socket {
      const s = tls.connect(upstreamTls.connectOptions(endpoint));
      s.setNoDelay(true);
      return s;
    },
    readyEvent: "secureConnect",
    isTlsFailure: isTlsError,
    reader: (socket) => new SocketReader(socket),
  };
}

/** The reader of a connection this connector made. */
export const readerOf = (up: UpstreamConnection): SocketReader => up.reader as SocketReader;
