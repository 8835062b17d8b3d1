// Reads a sluice YAML file: ${ENV} interpolation, JSON Schema validation and reference
// checks, every problem reported as file:line:col, field path and what was expected.
import { constants, existsSync, readFileSync } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { Worker } from "node:worker_threads";
import { Ajv, type ErrorObject } from "ajv";
import { type Document, isMap, isPair, isScalar, LineCounter, type Node, parseDocument, visit } from "yaml";
import { embeddedAsset } from "../base/embedded.js";
import { packageRoot } from "../base/package-root.js";
import { TlsFileError } from "../tls/material.js";
import { checkUpstreamTls } from "../tls/origination.js";
import { checkListenerTls } from "../tls/termination.js";
import { compileClusterTls, compileListenerTls } from "./compile.js";
import { type ConfigFile, durationMs, type ListenerTlsFile } from "./types.js";

const MAX_TIMER_MS = 2 ** 31 - 1;

export interface Problem {
  line: number;
  col: number;
  path: string;
  message: string;
}

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: Problem[],
  ) {
    problems.sort((a, b) => a.line - b.line || a.col - b.col);
    super(problems.map((p) => `${file}:${p.line}:${p.col}: ${p.path ? `${p.path}: ` : ""}${p.message}`).join("\n"));
    this.name = "ConfigError";
  }
}

let validator: ReturnType<Ajv["compile"]> | undefined;

export function schemaPath(): string {
  return join(packageRoot(), "config", "sluice.schema.json");
}

function validate() {
  if (!validator) {
    // verbose: errors carry their schema, so an unknown key can be matched to the known ones.
    const ajv = new Ajv({ allErrors: true, strict: false, verbose: true });
    // Durations in a unit: within what Node's timers can wait (2^31 - 1 ms; longer ones fire
    // at once), and not 0 where 0 would expire every wait at once.
    ajv.addKeyword({
      keyword: "x-duration",
      schemaType: "object",
      errors: true,
      validate: function check(schema: { min: number }, data: unknown): boolean {
        if (typeof data !== "string") return true;
        const ms = durationMs(data, Number.NaN);
        // Not a duration at all: the pattern says so.
        if (Number.isNaN(ms)) return true;
        const ok = ms >= schema.min && ms <= MAX_TIMER_MS;
        if (!ok)
          (check as unknown as { errors: unknown[] }).errors = [
            {
              keyword: "x-duration",
              message:
                ms > MAX_TIMER_MS
                  ? "must be at most 2147483647ms (about 24 days): Node's timers can't wait longer"
                  : "must be at least 1ms (0 would expire at once; leave the key out for the default)",
              params: {},
            },
          ];
        return ok;
      },
    });
    // The standalone binary carries the schema; everywhere else it is config/sluice.schema.json.
    const text = embeddedAsset("sluice.schema.json")?.toString("utf8") ?? readFileSync(schemaPath(), "utf8");
    validator = ajv.compile(JSON.parse(text));
  }
  return validator;
}

type Path = Array<string | number>;

function showPath(path: Path): string {
  return path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? p : `.${p}`)).join("");
}

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/** Replaces ${NAME} and ${NAME:-default} in scalars; a scalar that was one reference takes the value's YAML type. */
function interpolate(
  doc: Document,
  env: NodeJS.ProcessEnv,
  where: (n: Node) => { line: number; col: number },
  problems: Problem[],
): void {
  visit(doc, {
    Scalar(_key, node, path) {
      if (typeof node.value !== "string" || !node.value.includes("${")) return;
      const text = node.value;
      let missing: string | null = null;
      const replaced = text.replace(ENV_REF, (_m, name: string, fallback: string | undefined) => {
        const v = env[name];
        if (v !== undefined && v !== "") return v;
        if (fallback !== undefined) return fallback;
        missing ??= name;
        return "";
      });
      if (missing !== null) {
        problems.push({
          ...where(node),
          path: showPath(pathOf(path)),
          message: `environment variable ${missing} is not set and has no default`,
        });
        return;
      }
      const whole = /^\$\{[^}]+\}$/.test(text) && node.type === "PLAIN";
      node.value = whole ? typedScalar(replaced) : replaced;
    },
  });
}

/**
 * The value of a scalar that was one ${NAME}: the plain types a YAML scalar can have
 * (integer, float, boolean, null), else the text itself. Never parsed as YAML: an
 * environment value is data, and `[`, `*x` or `{a: 1}` stay strings.
 */
function typedScalar(v: string): unknown {
  if (/^[-+]?[0-9]+$/.test(v) || /^[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$/.test(v)) return Number(v);
  if (/^(true|True|TRUE)$/.test(v)) return true;
  if (/^(false|False|FALSE)$/.test(v)) return false;
  if (/^(null|Null|NULL|~)$/.test(v)) return null;
  return v;
}

function pathOf(ancestors: readonly unknown[]): Path {
  const out: Path = [];
  for (let i = 0; i < ancestors.length; i++) {
    const a = ancestors[i];
    if (isPair(a) && isScalar(a.key)) out.push(String(a.key.value));
    else if (Array.isArray((a as { items?: unknown[] }).items) && !isMap(a)) {
      const next = ancestors[i + 1];
      const idx = (a as { items: unknown[] }).items.indexOf(next);
      if (idx >= 0) out.push(idx);
    }
  }
  return out;
}

/** Edit distance (Levenshtein) between two short strings. */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++)
      next[j] = Math.min((row[j] ?? 0) + 1, (next[j - 1] ?? 0) + 1, (row[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length] ?? 0;
}

/** The known key a misspelt one most likely meant: at most 2 edits away (1 for short keys). */
function nearest(key: string, known: string[]): string | null {
  let best: { name: string; d: number } | null = null;
  for (const name of known) {
    const d = distance(key.toLowerCase(), name.toLowerCase());
    if (d <= (name.length <= 4 ? 1 : 2) && (best === null || d < best.d)) best = { name, d };
  }
  return best?.name ?? null;
}

function describe(e: ErrorObject): string {
  switch (e.keyword) {
    case "additionalProperties": {
      const key = (e.params as { additionalProperty: string }).additionalProperty;
      const near = nearest(key, Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {}));
      return `unknown key "${key}"${near ? ` (did you mean "${near}"?)` : ""}`;
    }
    case "required":
      return `missing required key "${(e.params as { missingProperty: string }).missingProperty}"`;
    case "enum":
      return `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(", ")}`;
    case "pattern": {
      const pattern = (e.params as { pattern: string }).pattern;
      if (pattern.includes("ms|s|m|h")) return "must be a duration like 500ms, 10s or 2m, or milliseconds";
      if (pattern.includes("6553[0-5]")) return "must be host:port, with a port from 0 to 65535";
      if (pattern.includes("\\t\\x20")) return "must not contain CR, LF or other control characters";
      if (pattern.includes("^/[\\x21")) return "must be a path starting with /, without spaces or control characters";
      return `must match ${pattern}`;
    }
    case "oneOf":
      return "must match exactly one of the allowed forms";
    case "minimum":
    case "maximum":
      return `${e.message} ${e.keyword === "maximum" && (e.params as { limit: number }).limit === MAX_TIMER_MS ? "(ms: what Node's timers can wait)" : ""}`.trim();
    default:
      return e.message ?? e.keyword;
  }
}

/** Parses and checks `text`; `file` only names it in messages. */
export function loadConfigText(text: string, file: string, env: NodeJS.ProcessEnv = process.env): ConfigFile {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, uniqueKeys: true, prettyErrors: false });
  const problems: Problem[] = [];
  const at = (offset: number) => {
    const p = lc.linePos(offset);
    return { line: p.line, col: p.col };
  };
  for (const e of doc.errors) problems.push({ ...at(e.pos[0]), path: "", message: e.message.split("\n")[0] ?? "YAML error" });
  if (problems.length) throw new ConfigError(file, problems);
  const where = (n: Node) => at(n.range?.[0] ?? 0);
  interpolate(doc, env, where, problems);
  if (problems.length) throw new ConfigError(file, problems);

  let data: unknown;
  try {
    // Aliases are expanded within a bound (yaml's maxAliasCount): a billion laughs is refused, not expanded.
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    let place = { line: 1, col: 1 };
    visit(doc, {
      Alias(_key, node) {
        place = where(node);
        return visit.BREAK;
      },
    });
    throw new ConfigError(file, [{ ...place, path: "", message: (err as Error).message }]);
  }
  const check = validate();
  if (!check(data)) {
    // Alternatives (oneOf, if/then) fail together: keep the most specific complaints,
    // and drop "wrong type" when the same value has a more telling error.
    const all = check.errors ?? [];
    const specific = all.filter((e) => !["oneOf", "if", "then", "else", "not"].includes(e.keyword));
    const errors = specific.filter(
      (e) =>
        e.keyword !== "type" ||
        !specific.some(
          (o) =>
            o !== e &&
            o.keyword !== "type" &&
            (o.instancePath === e.instancePath || o.instancePath.startsWith(`${e.instancePath}/`)),
        ),
    );
    const seen = new Set<string>();
    for (const e of errors.length ? errors : (check.errors ?? [])) {
      const path: Path = e.instancePath
        .split("/")
        .slice(1)
        .map((s) => (/^\d+$/.test(s) ? Number(s) : s.replace(/~1/g, "/").replace(/~0/g, "~")));
      let node = doc.getIn(path, true) as Node | undefined;
      let shown = path;
      if (e.keyword === "additionalProperties") {
        const key = (e.params as { additionalProperty: string }).additionalProperty;
        const parent = doc.getIn(path, true);
        if (isMap(parent)) {
          const pair = parent.items.find((p) => isScalar(p.key) && p.key.value === key);
          if (pair && isScalar(pair.key)) node = pair.key;
        }
        shown = [...path, key];
      }
      const line = `${showPath(shown)}|${describe(e)}`;
      if (seen.has(line)) continue;
      seen.add(line);
      problems.push({ ...(node ? where(node) : { line: 1, col: 1 }), path: showPath(shown), message: describe(e) });
    }
    // What the schema can't say is reported in the same pass, as far as the file's shape allows.
    try {
      resolveTlsPaths(data as ConfigFile, dirname(resolve(file)));
      checkReferences(data as ConfigFile, doc, where, problems);
    } catch {
      // A part too malformed to follow: its schema errors above say why.
    }
    throw new ConfigError(file, problems);
  }
  const config = data as ConfigFile;
  resolveTlsPaths(config, dirname(resolve(file)));
  checkReferences(config, doc, where, problems);
  if (problems.length) throw new ConfigError(file, problems);
  return config;
}

/** What the schema can't say: names that must exist, regexes that must compile, unique listeners. */
function checkReferences(
  config: ConfigFile,
  doc: Document,
  where: (n: Node) => { line: number; col: number },
  problems: Problem[],
): void {
  const clusters = new Set(Object.keys(config.clusters ?? {}));
  const report = (path: Path, message: string) => {
    const node = doc.getIn(path, true) as Node | undefined;
    problems.push({ ...(node ? where(node) : { line: 1, col: 1 }), path: showPath(path), message });
  };
  const names = new Set<string>();
  const addresses = new Set<string>();
  config.listeners.forEach((l, i) => {
    if (names.has(l.name)) report(["listeners", i, "name"], `listener name "${l.name}" is used twice`);
    // Port 0 asks the system for a free port: never a clash.
    if (addresses.has(l.address) && !l.address.endsWith(":0"))
      report(["listeners", i, "address"], `address ${l.address} is used by two listeners`);
    names.add(l.name);
    addresses.add(l.address);
    if (l.cluster !== undefined && !clusters.has(l.cluster))
      report(["listeners", i, "cluster"], `no cluster named "${l.cluster}"`);
    if (l.tls) {
      const at = ["listeners", i, "tls"];
      if (l.protocol === "tcp") report(at, "tls is for http listeners (a tcp listener passes TLS through untouched)");
      else checkTlsFiles(() => checkListenerTls(compileListenerTls(l.tls as ListenerTlsFile)), l.tls, at, report);
    }
    (l.routes ?? []).forEach((r, j) => {
      if (r.forward && !clusters.has(r.forward.cluster))
        report(["listeners", i, "routes", j, "forward", "cluster"], `no cluster named "${r.forward.cluster}"`);
      if (r.match.path?.regex !== undefined) {
        try {
          new RegExp(r.match.path.regex);
        } catch (err) {
          report(
            ["listeners", i, "routes", j, "match", "path", "regex"],
            `invalid regular expression: ${(err as Error).message}`,
          );
        }
      }
      (r.match.headers ?? []).forEach((h, k) => {
        if (h.regex === undefined) return;
        try {
          new RegExp(h.regex);
        } catch (err) {
          report(
            ["listeners", i, "routes", j, "match", "headers", k, "regex"],
            `invalid regular expression: ${(err as Error).message}`,
          );
        }
      });
    });
  });
  checkClusterTls(config, report);
}

function checkClusterTls(config: ConfigFile, report: (path: Path, message: string) => void): void {
  for (const [name, c] of Object.entries(config.clusters ?? {}))
    if (c.tls) {
      const t = c.tls;
      checkTlsFiles(() => checkUpstreamTls(compileClusterTls(t)), t, ["clusters", name, "tls"], report);
    }
}

/** Every PEM path of the config, with where it is, for resolving and reporting. */
function tlsPaths(config: ConfigFile): Array<{ owner: Record<string, unknown>; key: string }> {
  const out: Array<{ owner: Record<string, unknown>; key: string }> = [];
  const add = (owner: object | undefined, ...keys: string[]) => {
    for (const key of keys)
      if (owner && typeof (owner as Record<string, unknown>)[key] === "string")
        out.push({ owner: owner as Record<string, unknown>, key });
  };
  for (const l of config.listeners ?? []) {
    for (const c of l.tls?.certificates ?? []) add(c, "cert", "key");
    add(l.tls?.client_certificate, "ca");
  }
  for (const c of Object.values(config.clusters ?? {})) add(c.tls, "ca", "cert", "key");
  return out;
}

/** Relative PEM paths are taken from the config file's directory (workers get absolute ones). */
function resolveTlsPaths(config: ConfigFile, dir: string): void {
  for (const { owner, key } of tlsPaths(config)) owner[key] = resolve(dir, owner[key] as string);
}

/** Reads a TLS block's files as the runtime will; a bad one is reported at the field that names it. */
function checkTlsFiles(check: () => void, block: object, at: Path, report: (path: Path, message: string) => void): void {
  try {
    check();
  } catch (err) {
    if (!(err instanceof TlsFileError)) report(at, (err as Error).message);
    else {
      const field = findField(block, err.file);
      report(field ? [...at, ...field] : at, err.message);
    }
  }
}

/** The path inside `block` of the string field holding `value`. */
function findField(block: unknown, value: string, path: Path = []): Path | null {
  if (block === value) return path;
  if (block && typeof block === "object")
    for (const [k, v] of Object.entries(block)) {
      const hit = findField(v, value, [...path, Array.isArray(block) ? Number(k) : k]);
      if (hit) return hit;
    }
  return null;
}

/** Config files larger than this are refused: a config is kilobytes (parsing costs about 0.7 s of CPU per MiB). */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/**
 * Reads a config file without ever blocking the event loop on it: opened non-blocking, refused
 * unless it is a regular file (a FIFO swapped in would otherwise stall every connection and the
 * admin port) and no larger than MAX_CONFIG_BYTES, then read asynchronously.
 */
export async function readConfigText(file: string): Promise<string> {
  const fail = (message: string) => new ConfigError(file, [{ line: 0, col: 0, path: "", message }]);
  let fh: FileHandle;
  try {
    fh = await open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    throw fail(`cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw fail("not a regular file (a FIFO, socket, device or directory can't be a config)");
    if (st.size > MAX_CONFIG_BYTES) throw fail(`${st.size} bytes: larger than the ${MAX_CONFIG_BYTES}-byte limit for a config`);
    return await fh.readFile("utf8");
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw fail(`cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  } finally {
    await fh.close();
  }
}

/** Texts up to this size are parsed in place: about 20 ms of CPU, less than a worker takes to start. */
const IN_PLACE_BYTES = 32 * 1024;
/** A worker thread that has not answered by then is stopped and the config refused. */
const OFF_THREAD_TIMEOUT_MS = 120_000;

/**
 * Reads, parses and checks a config file. Parsing costs about 0.7 s of CPU per MiB: a big
 * config is parsed in a worker thread, so a reload never stalls the connections being served.
 * Where no worker can be started (the single-file binary carries no module for one), it is
 * parsed in place.
 */
export async function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Promise<ConfigFile> {
  const text = await readConfigText(file);
  if (Buffer.byteLength(text) <= IN_PLACE_BYTES) return loadConfigText(text, file, env);
  const off = await loadOffThread(text, file, env);
  return off === "unavailable" ? loadConfigText(text, file, env) : off;
}

type WorkerAnswer =
  | { ok: true; config: ConfigFile }
  | { ok: false; file: string; problems: Problem[] }
  | { ok: false; error: string };

function loadOffThread(text: string, file: string, env: NodeJS.ProcessEnv): Promise<ConfigFile | "unavailable"> {
  const url = new URL("./load-worker.js", import.meta.url);
  if (url.protocol !== "file:" || !existsSync(url)) return Promise.resolve("unavailable");
  return new Promise((resolve, reject) => {
    const worker = new Worker(url, { workerData: { text, file, env: { ...env } } });
    const timer = setTimeout(() => {
      void worker.terminate();
      reject(new ConfigError(file, [{ line: 0, col: 0, path: "", message: "took too long to parse" }]));
    }, OFF_THREAD_TIMEOUT_MS);
    const settle = () => {
      clearTimeout(timer);
      void worker.terminate();
    };
    worker.once("message", (a: WorkerAnswer) => {
      settle();
      if (a.ok) resolve(a.config);
      else if ("problems" in a) reject(new ConfigError(a.file, a.problems));
      else reject(new Error(a.error));
    });
    worker.once("error", (err) => {
      settle();
      reject(err);
    });
    worker.once("exit", () => {
      clearTimeout(timer);
      reject(new ConfigError(file, [{ line: 0, col: 0, path: "", message: "the parser stopped without an answer" }]));
    });
  });
}
