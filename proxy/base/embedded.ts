// The standalone binary (Node's single executable applications): the bundled JavaScript
// runs with the addon and the config schema carried inside as assets, not on disk.
import { createRequire } from "node:module";

type SeaModule = typeof import("node:sea");

let sea: SeaModule | null | undefined;

function seaModule(): SeaModule | null {
  if (sea === undefined) {
    try {
      // node:sea exists from Node 20.12; before that nothing can be embedded anyway.
      sea = createRequire(import.meta.url)("node:sea") as SeaModule;
    } catch {
      sea = null;
    }
  }
  return sea;
}

/** True when running as the standalone binary. */
export function isEmbedded(): boolean {
  return seaModule()?.isSea() ?? false;
}

/** An asset carried in the binary, or null when absent (or not running as the binary). */
export function embeddedAsset(name: string): Buffer | null {
  if (!isEmbedded()) return null;
  try {
    return Buffer.from((seaModule() as SeaModule).getAsset(name));
  } catch {
    return null;
  }
}

/** How to start this program again as a child process: [command, ...leading args]. */
export function selfCommand(cliPath: () => string): [string, ...string[]] {
  return isEmbedded() ? [process.execPath] : [process.execPath, cliPath()];
}

/**
 * process.argv as commander expects it ([node, script, ...args]). node:cluster starts a
 * worker as `execPath <primary's argv[1]> ...args`; inside the binary every argument is the
 * program's, so a worker finds that path as its first argument and drops it.
 */
export function commandLine(isClusterWorker: boolean): string[] {
  const argv = process.argv;
  if (isEmbedded() && isClusterWorker) return [...argv.slice(0, 2), ...argv.slice(3)];
  return argv;
}
