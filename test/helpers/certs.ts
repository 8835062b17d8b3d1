// Certificates for TLS tests, made with the openssl command line: a CA, leaf certificates it
// signs (server or client, with DNS/IP names, or already expired), and a self-signed one.
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

const openssl = (dir: string, ...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });

export interface Pair {
  cert: string;
  key: string;
}

export interface TestCa extends Pair {
  /** A leaf signed by this CA: names as subjectAltName entries ("DNS:a.test", "IP:127.0.0.1"). */
  issue(name: string, opts?: { cn?: string; san?: string[]; expired?: boolean; client?: boolean; o?: string }): Pair;
}

/** A P-256 key in `file`. */
function newKey(dir: string, file: string): void {
  openssl(dir, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", file);
}

export function makeCa(dir: string, name = "sluice test CA"): TestCa {
  const base = name.replace(/\W+/g, "-");
  const key = join(dir, `${base}.key`);
  const cert = join(dir, `${base}.pem`);
  newKey(dir, key);
  openssl(dir, "req", "-x509", "-key", key, "-out", cert, "-days", "3", "-subj", `/CN=${name}`);
  let serial = 1;
  return {
    cert,
    key,
    issue(leafName, opts = {}) {
      const leafKey = join(dir, `${leafName}.key`);
      const leafCert = join(dir, `${leafName}.pem`);
      const csr = join(dir, `${leafName}.csr`);
      const ext = join(dir, `${leafName}.ext`);
      newKey(dir, leafKey);
      // The usual order, most general first: printed the RFC 4514 way it reads "CN=..., O=...".
      const subject = `${opts.o ? `/O=${opts.o}` : ""}/CN=${opts.cn ?? leafName}`;
      openssl(dir, "req", "-new", "-key", leafKey, "-out", csr, "-subj", subject);
      const lines = [opts.client ? "extendedKeyUsage=clientAuth" : "extendedKeyUsage=serverAuth"];
      if (opts.san?.length) lines.push(`subjectAltName=${opts.san.join(",")}`);
      writeFileSync(ext, `${lines.join("\n")}\n`);
      // -days -1: notAfter a day before now, an expired certificate.
      openssl(
        dir,
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        cert,
        "-CAkey",
        key,
        "-set_serial",
        String(serial++),
        "-days",
        opts.expired ? "-1" : "2",
        "-extfile",
        ext,
        "-out",
        leafCert,
      );
      return { cert: leafCert, key: leafKey };
    },
  };
}

/** A self-signed certificate (no CA will vouch for it). */
export function selfSigned(dir: string, name: string, san: string[]): Pair {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.pem`);
  newKey(dir, key);
  openssl(
    dir,
    "req",
    "-x509",
    "-key",
    key,
    "-out",
    cert,
    "-days",
    "2",
    "-subj",
    `/CN=${name}`,
    "-addext",
    `subjectAltName=${san.join(",")}`,
  );
  return { cert, key };
}
