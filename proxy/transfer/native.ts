// Loads the splice addon if it can be loaded here; its absence is a supported state
// (not Linux, no compiler, SLUICE_SPLICE=off) and is reported once.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getSystemErrorName } from "node:util";
import { embeddedAsset, isEmbedded } from "../base/embedded.js";
import { log } from "../base/log.js";
import { packageRoot } from "../base/package-root.js";

export interface DirectionResult {
  bytes: number;
  /** Bytes taken from the source; more than `bytes` only when a transfer failed with bytes in the pipe. */
  read: number;
  eof: boolean;
  error: string | null;
  side: "source" | "destination" | null;
}

/**
 * How a transfer ended, as the addon reports it: numbers only (objects made in C++ field by field
 * cost more than the rest of the report). `directions` is 1 or 2; each direction's four numbers
 * are for directionResult(); a missing second direction's are undefined.
 */
export type NativeReport = (
  pipeSize: number,
  directions: number,
  bytes0: number,
  read0: number,
  flags0: number,
  error0: number,
  bytes1?: number,
  read1?: number,
  flags1?: number,
  error1?: number,
) => void;

/** The pump's code for a source that ended before the length it was to deliver (pump.h). */
const UNEXPECTED_EOF = -1000;
const SIDES = [null, "source", "destination"] as const;

/** A direction's result from its numbers in a NativeReport: flags bit 0 is EOF, bits 1-2 the side; error an errno. */
export function directionResult(bytes: number, read: number, flags: number, error: number): DirectionResult {
  return {
    bytes,
    read,
    eof: (flags & 1) !== 0,
    error: error === 0 ? null : error === UNEXPECTED_EOF ? "UNEXPECTED_EOF" : getSystemErrorName(-error),
    side: SIDES[(flags >> 1) & 3] ?? null,
  };
}

export interface PoolStats {
  inUse: number;
  idle: number;
  created: number;
  closed: number;
  acquireFailures: number;
  bytesMoved: number;
  pipeSize: number;
  maxIdle: number;
  maxPipes: number;
  systemMaxPipeSize: number;
  transfers: number;
  /** Sockets holding a splice endpoint (a duplicate descriptor and a poll handle). */
  endpoints: number;
}

export interface SpliceAddon {
  /** A socket's endpoint (a duplicate of `fd` and a poll handle), kept until release(). */
  endpoint(fd: number): number;
  /** The socket is gone: closes its endpoint, cancelling a transfer still using it. */
  release(endpoint: number): boolean;
  /** length -1: until EOF; shutdownDst: half-close the destination after the source's EOF. */
  start(src: number, dst: number, length: number, shutdownDst: boolean, cb: NativeReport): number;
  tunnel(a: number, b: number, cb: NativeReport): number;
  cancel(id: number): boolean;
  progress(id: number): number;
  configure(pipeSize: number, maxIdle: number, maxPipes: number): number;
  /** Closes idle pipes, the longest idle first, until at most `keep` are left. */
  trim(keep: number): number;
  stats(): PoolStats;
  /** Writes `head` (Latin-1) and `body` to socket `fd` in one non-blocking call: the bytes sent, or -errno. */
  send(fd: number, head: string, body?: Buffer): number;
  /** A second descriptor for `fd` (close-on-exec), or -errno. */
  dup(fd: number): number;
  /** A listening socket with SO_REUSEPORT on a numeric address (close-on-exec, non-blocking), or -errno. */
  listenReusePort(address: string, port: number, backlog: number): number;
}

export type Availability = { addon: SpliceAddon; reason: null } | { addon: null; reason: string };

let cached: Availability | undefined;

function load(): Availability {
  if (process.env.SLUICE_SPLICE === "off") return { addon: null, reason: "SLUICE_SPLICE=off" };
  if (process.platform !== "linux") return { addon: null, reason: `splice() needs Linux (this is ${process.platform})` };
  try {
    const require = createRequire(import.meta.url);
    const explicit = process.env.SLUICE_ADDON_PATH;
    if (!explicit && isEmbedded()) return loadEmbedded();
    const addon = (explicit ? require(explicit) : require("node-gyp-build")(packageRoot())) as SpliceAddon;
    return { addon, reason: null };
  } catch (err) {
    return { addon: null, reason: `splice addon not loadable: ${(err as Error).message.split("\n")[0]}` };
  }
}

/**
 * The binary carries the addon as an asset: dlopen() needs a file, so it is written to a
 * private temporary directory, loaded, and removed (the mapping outlives the file). The
 * directory must be writable and allow executables: SLUICE_ADDON_DIR names one; otherwise
 * the temporary directory, then /dev/shm and XDG_RUNTIME_DIR are tried (a read-only root
 * filesystem has no writable /tmp, and /dev/shm is often mounted noexec).
 */
function loadEmbedded(): Availability {
  const bytes = embeddedAsset("sluice_splice.node");
  if (!bytes) return { addon: null, reason: "this binary was built without the splice addon" };
  const given = process.env.SLUICE_ADDON_DIR;
  const dirs = given ? [given] : [tmpdir(), "/dev/shm", process.env.XDG_RUNTIME_DIR].filter((d): d is string => !!d);
  const failures: string[] = [];
  for (const base of [...new Set(dirs)]) {
    let dir: string | null = null;
    try {
      dir = mkdtempSync(join(base, "sluice-addon-"));
      const file = join(dir, "sluice_splice.node");
      writeFileSync(file, bytes, { mode: 0o500 });
      const mod = { exports: {} };
      process.dlopen(mod, file);
      return { addon: mod.exports as SpliceAddon, reason: null };
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      failures.push(`${base}: ${e.code && e.code !== "ERR_DLOPEN_FAILED" ? e.code : e.message.split("\n")[0]}`);
    } finally {
      if (dir) rmSync(dir, { recursive: true, force: true });
    }
  }
  return {
    addon: null,
    reason: `the splice addon could not be unpacked into a directory that allows executables (${failures.join("; ")}): set SLUICE_ADDON_DIR to one, such as an emptyDir volume on a read-only pod`,
  };
}

/**
 * Idle pipes are returned over time: every few seconds half of those idle are closed. A busy
 * proxy keeps its pipes in use; an idle one gives back the pipe pages it holds (they count
 * against the user's pipe-user-pages-soft, which a pod's app may share).
 */
const IDLE_DECAY_MS = 5000;

function decayIdlePipes(addon: SpliceAddon): void {
  const timer = setInterval(() => {
    const idle = addon.stats().idle;
    if (idle > 0) addon.trim(Math.floor(idle / 2));
  }, IDLE_DECAY_MS);
  timer.unref();
}

/** The addon, or null with the reason logged once per process. */
export function spliceAddon(): SpliceAddon | null {
  if (cached === undefined) {
    cached = load();
    if (cached.addon === null) log.warn({ reason: cached.reason }, "splice unavailable: bodies will be copied");
    else decayIdlePipes(cached.addon);
  }
  return cached.addon;
}

export function spliceUnavailableReason(): string | null {
  spliceAddon();
  return cached?.reason ?? null;
}
