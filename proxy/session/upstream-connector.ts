// How the HTTP session wants upstream connections made and read: Nagle off, half-open
// allowed, a SocketReader on each, and with splice one shared read buffer. A cluster with
// TLS gets TLS connections (tls/origination.ts); their bodies are copied, never spliced.
import net from "node:net";
import tls from "node:tls";
import type { HostPort } from "../base/address.js";
import { SocketReader } from "../http1/socket-reader.js";
import { isTlsError, type UpstreamTls } from "../tls/origination.js";
import { spliceAddon } from "../transfer/native.js";
import { lendWhileStreaming, markReadsIntoBuffers, readIntoBuffers, readSwitchFor } from "../transfer/read-buffers.js";
import type { Connector, UpstreamConnection } from "../upstream/pool.js";

export const httpConnector: Connector = {
  connect(endpoint: HostPort): net.Socket {
    const opts: net.NetConnectOpts = { ...endpoint, allowHalfOpen: true, noDelay: true };
    if (spliceAddon() === null) return net.connect(opts);
    // With splice, reads land where transfer/read-buffers.ts says (a small shared buffer, 64 KiB
    // lent ones while bytes stream in, larger lent ones while a body is copied). Without it
    // every body byte is read, and Node's own 64 KiB reads cost less than 16 KiB reads copied out.
    let socket: net.Socket | null = null;
    opts.onread = readIntoBuffers(() => socket);
    socket = net.connect(opts);
    markReadsIntoBuffers(socket);
    lendWhileStreaming(socket);
    return socket;
  },
  readyEvent: "connect",
  reader: (socket) => new SocketReader(socket, readSwitchFor(socket)),
};

/** Connections of a cluster with TLS: ready once the handshake and verification are done. */
export function tlsConnector(upstreamTls: UpstreamTls): Connector {
  return {
    connect(endpoint: HostPort): net.Socket {
      // Decrypted records are read as a plain connection's bytes are (no lent buffers: see read-buffers.ts).
      let s: tls.TLSSocket | null = null;
      // `onread` is a documented option of tls.connect that @types/node does not list.
      const onread = readIntoBuffers(() => s);
      s = tls.connect({ ...upstreamTls.connectOptions(endpoint), onread } as tls.ConnectionOptions);
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
