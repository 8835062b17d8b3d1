// podman as these machines run it: runc (crun fails on their cgroups), limits given
// explicitly (raising them is not permitted here), base images made locally.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { has } from "../../bench/measure.js";

const run = promisify(execFile);

export const hasPodman = has("podman");

/** --ulimit flags for `podman run` and `podman build`. */
export const LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"];

/** Runs podman with runc; resolves with its trimmed stdout. */
export const podman = (args: string[], timeout = 60_000): Promise<string> =>
  run("podman", ["--runtime", "runc", ...args], { timeout, maxBuffer: 16 << 20 }).then((r) => r.stdout.trim());

/** Makes the Debian-based Node base images the Dockerfile names, where they can't be pulled (once). */
export const makeBaseImages = (): Promise<unknown> => run("test/container/make-base-images.sh", [], { timeout: 600_000 });

/** `podman run -d` on the host's network with the limits above; `args` are more options, the image and its arguments. */
export const startContainer = (name: string, args: string[]): Promise<string> =>
  podman(["run", "-d", "--name", name, "--network", "host", ...LIMITS, ...args]);
