#!/usr/bin/env bash
# npm run build:binary: one executable, dist/sluice, that runs with no node_modules and no
# Node installed. Node's single executable applications: the CLI bundled into one CommonJS
# file (esbuild), the splice addon, the config schema and the span export worker's bundle
# carried as assets, all injected into a copy of the node binary that runs this script
# (postject).
set -euo pipefail
cd "$(dirname "$0")/.."

npm run build --silent
test -f build/Release/sluice_splice.node || { echo "build:binary: the splice addon is not built (npm run build:native)" >&2; exit 1; }
mkdir -p dist/sea

# import.meta.url has no meaning in a CommonJS bundle: give it the running file's URL.
# debug's optional supports-color is not installed: bundle a stand-in instead.
npx esbuild dist/proxy/cli.js --bundle --platform=node --format=cjs --target=node20 \
  --alias:supports-color=./scripts/no-supports-color.cjs \
  --define:import.meta.url=__sluice_import_meta_url \
  --banner:js='const __sluice_import_meta_url = require("node:url").pathToFileURL(__filename).href;' \
  --log-level=warning --outfile=dist/sea/sluice.cjs

# The span export worker runs from its own bundle, carried as an asset and started with eval.
npx esbuild dist/proxy/observe/span-export-worker.js --bundle --platform=node --format=cjs --target=node20 \
  --log-level=warning --outfile=dist/sea/span-export-worker.cjs

cat > dist/sea/sea-config.json <<JSON
{
  "main": "dist/sea/sluice.cjs",
  "output": "dist/sea/sluice.blob",
  "disableExperimentalSEAWarning": true,
  "assets": {
    "sluice_splice.node": "build/Release/sluice_splice.node",
    "sluice.schema.json": "config/sluice.schema.json",
    "span-export-worker.cjs": "dist/sea/span-export-worker.cjs"
  }
}
JSON
node --experimental-sea-config dist/sea/sea-config.json

node_bin=$(node -p process.execPath)
rm -f dist/sluice
cp "$node_bin" dist/sluice
chmod u+w dist/sluice
# postject warns about ELF note sections it does not touch; show its output only on failure.
npx postject dist/sluice NODE_SEA_BLOB dist/sea/sluice.blob \
  --sentinel-fuse NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2 >dist/sea/postject.log 2>&1 ||
  { cat dist/sea/postject.log >&2; exit 1; }
echo "dist/sluice: $(du -h dist/sluice | cut -f1), sluice $(dist/sluice --version)"
