#!/usr/bin/env node
// Keeps the chart's values schema carrying sluice's own config schema, so `helm template` and
// `helm install` refuse routes, limits, timeouts and config that sluice would refuse to load.
// `node scripts/chart-schema.mjs` rewrites helm/sluice/values.schema.json from
// config/sluice.schema.json; with --check it only says whether the file is up to date.
import { readFileSync, writeFileSync } from "node:fs";

const valuesFile = new URL("../helm/sluice/values.schema.json", import.meta.url);
const sluice = JSON.parse(readFileSync(new URL("../config/sluice.schema.json", import.meta.url), "utf8"));
const before = readFileSync(valuesFile, "utf8");
const values = JSON.parse(before);
const listener = sluice.definitions.listener.properties;

values.properties.routes = {
  description: "sluice routes tried before the catch-all route to the app (sluice's route schema)",
  type: "array",
  items: { $ref: "#/definitions/route" },
};
values.properties.limits = { ...listener.limits, description: "listener limits, in sluice's config format" };
values.properties.timeouts = { ...listener.timeouts, description: "listener timeouts, in sluice's config format" };
values.properties.config = {
  description: "merged last over the generated sluice config: any of sluice's top-level settings",
  type: "object",
  additionalProperties: false,
  properties: sluice.properties,
};
// sluice's definitions, under their own names: the copied parts refer to them.
values.definitions = sluice.definitions;

const after = `${JSON.stringify(values, null, 2)}\n`;
if (process.argv.includes("--check")) {
  // Compared as data: the formatter may lay the file out its own way.
  if (JSON.stringify(values) !== JSON.stringify(JSON.parse(before))) {
    console.error("helm/sluice/values.schema.json is out of date: run node scripts/chart-schema.mjs");
    process.exit(1);
  }
} else writeFileSync(valuesFile, after);
