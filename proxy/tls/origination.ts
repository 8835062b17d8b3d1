// TLS to an upstream: verification on by default (the system's CAs, as Node bundles them, or a
// given bundle), SNI from the endpoint's name or a configured one, an optional client
// certificate (mTLS), ALPN http/1.1. A failed verification is the upstream's TLS failure:
// answered 502, never retried blindly, never downgraded to plain text.
import { isIP } from "node:net";
import tls from "node:tls";
import type { HostPort } from "../base/address.js";
import { fileStamp, readCaBundle, readKeyPair } from "./material.js";
import { DEFAULT_CIPHERS } from "./termination.js";

/** A cluster's TLS, compiled: file paths absolute. */
export interface UpstreamTlsSpec {
  /** SNI and the name the certificate is checked against; null: the endpoint's host when it is a name. */
  serverName: string | null;
  /** CA bundle; null: Node's bundled Mozilla CAs. */
  ca: string | null;
  /** false only when the config says so explicitly: any certificate is accepted. */
  verify: boolean;
  cert: string | null;
  key: string | null;
  minVersion: "TLSv1.2" | "TLSv1.3";
}

function filesOf(spec: UpstreamTlsSpec): string[] {
  return [spec.ca, spec.cert, spec.key].filter((f): f is string => f !== null);
}

function buildContext(spec: UpstreamTlsSpec): tls.SecureContext {
  const pair = spec.cert && spec.key ? readKeyPair(spec.cert, spec.key) : null;
  return tls.createSecureContext({
    minVersion: spec.minVersion,
    ciphers: DEFAULT_CIPHERS,
    ...(spec.ca ? { ca: readCaBundle(spec.ca) } : {}),
    ...(pair ? { cert: pair.cert, key: pair.key } : {}),
  });
}

/** Checks a cluster's TLS files as a start would (for `sluice validate`). */
export function checkUpstreamTls(spec: UpstreamTlsSpec): void {
  buildContext(spec);
}

/** Makes the TLS options of upstream connections; files that change are read again for new connections. */
export class UpstreamTls {
  private context: tls.SecureContext;
  private stamp: string;

  /** Throws TlsFileError when a file is missing or wrong. */
  constructor(readonly spec: UpstreamTlsSpec) {
    this.stamp = filesOf(spec).map(fileStamp).join("|");
    this.context = buildContext(spec);
  }

  /** The name sent as SNI and checked in the certificate. */
  serverName(endpoint: HostPort): string | undefined {
    if (this.spec.serverName) return this.spec.serverName;
    return isIP(endpoint.host) === 0 ? endpoint.host : undefined;
  }

  private currentContext(): tls.SecureContext {
    const stamp = filesOf(this.spec).map(fileStamp).join("|");
    if (stamp !== this.stamp) {
      this.stamp = stamp;
      try {
        this.context = buildContext(this.spec);
      } catch {
        // A half-written renewal: the previous files' context stays until the next change.
      }
    }
    return this.context;
  }

  /** Options for tls.connect to `endpoint` (host and port included). */
  connectOptions(endpoint: HostPort): tls.ConnectionOptions {
    const servername = this.serverName(endpoint);
    const name = servername ?? endpoint.host;
    return {
      host: endpoint.host,
      port: endpoint.port,
      secureContext: this.currentContext(),
      ...(servername ? { servername } : {}),
      ALPNProtocols: ["http/1.1"],
      rejectUnauthorized: this.spec.verify,
      // With an IP endpoint and no server_name, the certificate must name the IP (Node checks IP SANs).
      checkServerIdentity: (_host, cert) => tls.checkServerIdentity(name, cert),
    };
  }
}

/** OpenSSL's and Node's codes for a TLS failure (as opposed to a TCP one). */
export function isTlsError(err: NodeJS.ErrnoException): boolean {
  const code = err.code ?? "";
  if (code.startsWith("ERR_TLS_") || code.startsWith("ERR_SSL_")) return true;
  if (/CERT|SELF_SIGNED|UNABLE_TO_|_SIGNATURE|HOSTNAME_MISMATCH/.test(code)) return true;
  return (err as { library?: string }).library === "SSL routines";
}
