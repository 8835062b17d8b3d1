// Certificates, keys and CA bundles read from PEM files and checked before anything uses
// them: a file that can't be read, holds no certificate, or a key that doesn't belong to its
// certificate is refused with the file's name, and whatever ran before keeps running.
import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";

/** A PEM file that can't be used, and why. */
export class TlsFileError extends Error {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`${file}: ${reason}`);
    this.name = "TlsFileError";
  }
}

/** PEM files are kilobytes; anything larger is not one. */
const MAX_PEM_BYTES = 1024 * 1024;

/** Reads a small regular file (never a FIFO: a read would block the event loop). */
export function readPem(file: string): Buffer {
  let bytes: Buffer;
  try {
    const st = statSync(file);
    if (!st.isFile()) throw new TlsFileError(file, "not a regular file");
    if (st.size > MAX_PEM_BYTES) throw new TlsFileError(file, `${st.size} bytes: too large for a PEM file`);
    bytes = readFileSync(file);
  } catch (err) {
    if (err instanceof TlsFileError) throw err;
    throw new TlsFileError(file, `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!bytes.includes("-----BEGIN ")) throw new TlsFileError(file, "not PEM (no -----BEGIN line)");
  return bytes;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** Every certificate in a PEM file, parsed; a file with none is refused. */
export function readCertificates(file: string): { pem: Buffer; certs: X509Certificate[] } {
  const pem = readPem(file);
  const blocks = pem.toString("latin1").match(PEM_CERT) ?? [];
  if (blocks.length === 0) throw new TlsFileError(file, "no certificate in it");
  const certs = blocks.map((b, i) => {
    try {
      return new X509Certificate(b);
    } catch (err) {
      throw new TlsFileError(file, `certificate ${i + 1} can't be parsed: ${(err as Error).message}`);
    }
  });
  return { pem, certs };
}

function readKey(file: string): { pem: Buffer; key: KeyObject } {
  const pem = readPem(file);
  try {
    return { pem, key: createPrivateKey(pem) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === "ERR_MISSING_PASSPHRASE" ? "the key is encrypted (a passphrase is not supported)" : (err as Error).message;
    throw new TlsFileError(file, `no usable private key: ${why}`);
  }
}

/** A certificate chain with its key, checked to belong together, and the names it serves. */
export interface KeyPair {
  certFile: string;
  keyFile: string;
  cert: Buffer;
  key: Buffer;
  leaf: X509Certificate;
  /** DNS names of the leaf (subjectAltName, else the subject's CN), lower case. */
  names: string[];
  /** The leaf's validity, for the log and metrics. */
  notAfter: Date;
}

/** The leaf's DNS names: its subjectAltName DNS entries, or its CN when it has none. */
export function dnsNames(leaf: X509Certificate): string[] {
  const san = leaf.subjectAltName;
  if (san) {
    const names = san
      .split(/,\s*/)
      .filter((e) => e.startsWith("DNS:"))
      .map((e) => e.slice(4).toLowerCase());
    if (names.length > 0) return names;
  }
  const cn = /(?:^|\n)CN=([^\n]+)/.exec(leaf.subject);
  return cn?.[1] ? [cn[1].toLowerCase()] : [];
}

export function readKeyPair(certFile: string, keyFile: string): KeyPair {
  const { pem: cert, certs } = readCertificates(certFile);
  const { pem: key, key: keyObject } = readKey(keyFile);
  const leaf = certs[0] as X509Certificate;
  if (!leaf.checkPrivateKey(keyObject))
    throw new TlsFileError(keyFile, `this key does not belong to the certificate in ${certFile}`);
  return { certFile, keyFile, cert, key, leaf, names: dnsNames(leaf), notAfter: new Date(leaf.validTo) };
}

/** A CA bundle: at least one certificate. */
export function readCaBundle(file: string): Buffer {
  return readCertificates(file).pem;
}

/** What identifies a file's current content cheaply: a Secret update swaps the symlinked directory. */
export function fileStamp(file: string): string {
  try {
    const st = statSync(file);
    return `${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch (err) {
    return `missing:${(err as NodeJS.ErrnoException).code ?? "?"}`;
  }
}

/** A client certificate's subject as one line ("CN=alice, O=Acme"): what routes match and logs show. */
export function subjectLine(subject: string): string {
  return subject.split("\n").filter(Boolean).reverse().join(", ");
}
