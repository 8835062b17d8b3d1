// TLS termination for an HTTP listener: certificates chosen by SNI (exact names, then
// wildcards, then the first certificate), optional client certificates checked against a CA,
// ALPN http/1.1 (or http/1.0), never h2, and certificates that rotate in place: when their files change, new
// handshakes get the new ones and established connections keep theirs. The listener does
// admission on the plain socket first, then hands it here; only a finished handshake reaches
// the HTTP session.
import type net from "node:net";
import tls from "node:tls";
import { log } from "../base/log.js";
import { fileStamp, type KeyPair, readCaBundle, readKeyPair, subjectLine, TlsFileError } from "./material.js";

/** A listener's TLS, compiled (config/compile.ts): file paths are absolute. */
export interface ListenerTlsSpec {
  certificates: ReadonlyArray<{ cert: string; key: string }>;
  minVersion: "TLSv1.2" | "TLSv1.3";
  /** OpenSSL cipher list (TLS 1.2) and TLS 1.3 suites, colon-separated. */
  ciphers: string;
  /** CA bundle that client certificates are checked against; null: none asked for. */
  clientCa: string | null;
  /** A client without a valid certificate is refused at the handshake (else it is served, unverified). */
  clientCertRequired: boolean;
  handshakeTimeoutMs: number;
  /** How often the files are checked for a new version (a Secret update, a renewal). */
  watchIntervalMs: number;
}

/**
 * Mozilla's "intermediate" TLS 1.2 ciphers (forward secret AEADs only) after the TLS 1.3 suites:
 * a string with no TLS 1.3 suite would leave TLS 1.3 without any.
 */
export const DEFAULT_CIPHERS = [
  "TLS_AES_128_GCM_SHA256",
  "TLS_AES_256_GCM_SHA384",
  "TLS_CHACHA20_POLY1305_SHA256",
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-CHACHA20-POLY1305",
].join(":");

/** Why a handshake failed, in a few words fit for a metric label. */
export type HandshakeFailure = "timeout" | "closed" | "no_client_certificate" | "bad_client_certificate" | "protocol";

export function handshakeFailureOf(err: NodeJS.ErrnoException, socket?: tls.TLSSocket): HandshakeFailure {
  // Node checks a client certificate after OpenSSL's handshake and closes the socket when it
  // fails; the reason is left on the socket, and what reaches here is the close.
  if (socket?.authorizationError) return "bad_client_certificate";
  const code = err.code ?? "";
  const text = `${code} ${err.message}`.toLowerCase();
  if (code === "ERR_TLS_HANDSHAKE_TIMEOUT") return "timeout";
  if (text.includes("peer did not return a certificate")) return "no_client_certificate";
  if (text.includes("certificate")) return "bad_client_certificate";
  if (code === "ECONNRESET" || code === "EPIPE" || text.includes("socket hang up")) return "closed";
  return "protocol";
}

/** What a connection's TLS says, read once at the end of its handshake. */
export interface ConnectionTls {
  protocol: string | null;
  cipher: string | null;
  serverName: string | null;
  /** The client certificate's subject when it was verified against the CA; else null. */
  clientSubject: string | null;
}

const connectionTlsCache = new WeakMap<tls.TLSSocket, ConnectionTls>();

/** A connection's TLS facts, read once per connection whichever engine asks (the buffered one asks per request). */
export function connectionTls(s: tls.TLSSocket): ConnectionTls {
  let info = connectionTlsCache.get(s);
  if (!info) {
    info = readConnectionTls(s);
    connectionTlsCache.set(s, info);
  }
  return info;
}

function readConnectionTls(s: tls.TLSSocket): ConnectionTls {
  let clientSubject: string | null = null;
  if (s.authorized) {
    const peer = s.getPeerX509Certificate();
    if (peer) clientSubject = subjectLine(peer.subject);
  }
  const name = (s as tls.TLSSocket & { servername?: string | false }).servername;
  return {
    protocol: s.getProtocol(),
    cipher: s.getCipher()?.name ?? null,
    serverName: typeof name === "string" ? name : null,
    clientSubject,
  };
}

interface Loaded {
  pairs: KeyPair[];
  ca: Buffer | null;
  contexts: tls.SecureContext[];
  exact: Map<string, tls.SecureContext>;
  /** "*.example.com" as ".example.com": matches one more label in front. */
  wildcard: Map<string, tls.SecureContext>;
  stamp: string;
}

function filesOf(spec: ListenerTlsSpec): string[] {
  return [...spec.certificates.flatMap((c) => [c.cert, c.key]), ...(spec.clientCa ? [spec.clientCa] : [])];
}

function contextOptions(spec: ListenerTlsSpec, pair: KeyPair, ca: Buffer | null): tls.SecureContextOptions {
  return {
    cert: pair.cert,
    key: pair.key,
    minVersion: spec.minVersion,
    ciphers: spec.ciphers,
    honorCipherOrder: true,
    ...(ca ? { ca } : {}),
  };
}

/** Reads and checks every file of `spec`; throws TlsFileError naming the file that is wrong. */
function load(spec: ListenerTlsSpec): Loaded {
  const stamp = filesOf(spec).map(fileStamp).join("|");
  const pairs = spec.certificates.map((c) => readKeyPair(c.cert, c.key));
  const ca = spec.clientCa ? readCaBundle(spec.clientCa) : null;
  const contexts: tls.SecureContext[] = [];
  const exact = new Map<string, tls.SecureContext>();
  const wildcard = new Map<string, tls.SecureContext>();
  for (const [i, pair] of pairs.entries()) {
    let ctx: tls.SecureContext;
    try {
      ctx = tls.createSecureContext(contextOptions(spec, pair, ca));
    } catch (err) {
      throw new TlsFileError(spec.certificates[i]?.cert ?? "?", `refused by OpenSSL: ${(err as Error).message}`);
    }
    contexts.push(ctx);
    // The first certificate to name a host serves it.
    for (const name of pair.names) {
      if (name.startsWith("*.")) {
        if (!wildcard.has(name.slice(1))) wildcard.set(name.slice(1), ctx);
      } else if (!exact.has(name)) exact.set(name, ctx);
    }
  }
  return { pairs, ca, contexts, exact, wildcard, stamp };
}

/** Checks a listener's TLS files as a start or a reload would (for `sluice validate`). */
export function checkListenerTls(spec: ListenerTlsSpec): void {
  load(spec);
}

export interface TerminationHooks {
  /** A handshake finished: the connection is ready for HTTP. */
  secure(socket: tls.TLSSocket): void;
  /** A handshake failed; the socket is already destroyed. */
  failed(reason: HandshakeFailure, err: Error): void;
  /** The certificates were reloaded from changed files (or could not be). */
  rotated?(ok: boolean, detail: string): void;
}

export class TlsTermination {
  private current: Loaded;
  private readonly server: tls.Server;
  private timer: NodeJS.Timeout | undefined;

  /** Throws TlsFileError when a file is missing or wrong. */
  constructor(
    readonly spec: ListenerTlsSpec,
    private readonly label: string,
    hooks: TerminationHooks,
  ) {
    this.current = load(spec);
    this.server = tls.createServer({
      ...this.defaultOptions(),
      SNICallback: (name, cb) => cb(null, this.contextFor(name)),
      requestCert: spec.clientCa !== null,
      rejectUnauthorized: spec.clientCertRequired,
      // HTTP/1.0 clients offer http/1.0 (curl --http1.0 does); nginx accepts it too. h2 is not offered.
      ALPNProtocols: ["http/1.1", "http/1.0"],
      handshakeTimeout: spec.handshakeTimeoutMs,
      allowHalfOpen: true,
      pauseOnConnect: true,
    });
    this.server.on("secureConnection", (s: tls.TLSSocket) => hooks.secure(s));
    this.server.on("tlsClientError", (err: NodeJS.ErrnoException, s: tls.TLSSocket) => {
      s.destroy();
      hooks.failed(handshakeFailureOf(err, s), err);
    });
    this.timer = setInterval(() => this.refresh(hooks), spec.watchIntervalMs);
    this.timer.unref();
  }

  private defaultOptions(): tls.SecureContextOptions {
    return contextOptions(this.spec, this.current.pairs[0] as KeyPair, this.current.ca);
  }

  /** The certificate for an SNI name: exact, then wildcard (one label), then the first one. */
  contextFor(serverName: string): tls.SecureContext {
    const name = serverName.toLowerCase().replace(/\.$/, "");
    const c = this.current;
    const hit = c.exact.get(name);
    if (hit) return hit;
    const dot = name.indexOf(".");
    if (dot > 0) {
      const wild = c.wildcard.get(name.slice(dot));
      if (wild) return wild;
    }
    return c.contexts[0] as tls.SecureContext;
  }

  /** Starts the handshake on an admitted plain connection. */
  accept(raw: net.Socket): void {
    this.server.emit("connection", raw);
  }

  /** Loads the files again if any of them changed; a failure keeps what was loaded. */
  refresh(hooks?: Pick<TerminationHooks, "rotated">): boolean {
    const stamp = filesOf(this.spec).map(fileStamp).join("|");
    if (stamp === this.current.stamp) return false;
    try {
      const next = load(this.spec);
      this.current = next;
      this.server.setSecureContext({ ...this.defaultOptions() });
      const names = next.pairs.map((p) => `${p.names.join(",") || "(no name)"} until ${p.notAfter.toISOString()}`);
      log.info({ listener: this.label, certificates: names }, "TLS certificates reloaded");
      hooks?.rotated?.(true, names.join("; "));
      return true;
    } catch (err) {
      // Remember the broken version so it is reported once, not at every check.
      this.current = { ...this.current, stamp };
      const detail = err instanceof TlsFileError ? err.message : String(err);
      log.error({ listener: this.label, err: detail }, "TLS files changed but can't be used: the certificates in use stay");
      hooks?.rotated?.(false, detail);
      return false;
    }
  }

  /** The certificates being served (for the log at start). */
  describe(): string[] {
    return this.current.pairs.map((p) => `${p.names.join(",") || "(no name)"} until ${p.notAfter.toISOString()}`);
  }

  close(): void {
    clearInterval(this.timer);
  }
}
