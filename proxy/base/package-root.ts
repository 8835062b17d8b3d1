// The directory holding binding.gyp and config/: found by walking up from this module,
// so it works from proxy/*.ts (tests) and dist/proxy/*.js (built) alike.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let root: string | undefined;

export function packageRoot(): string {
  if (root) return root;
  const start = dirname(fileURLToPath(import.meta.url));
  let dir = start;
  while (!existsSync(join(dir, "binding.gyp"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`binding.gyp not found above ${start}`);
    dir = up;
  }
  root = dir;
  return dir;
}
