// Runs in a worker thread: parses and checks one config text, sends back the loaded config
// or its problems. See loadConfigFile: a big config must not stall the event loop.
import { parentPort, workerData } from "node:worker_threads";
import { ConfigError, loadConfigText } from "./load.js";

const { text, file, env } = workerData as { text: string; file: string; env: NodeJS.ProcessEnv };
try {
  parentPort?.postMessage({ ok: true, config: loadConfigText(text, file, env) });
} catch (err) {
  if (err instanceof ConfigError) parentPort?.postMessage({ ok: false, file: err.file, problems: err.problems });
  else parentPort?.postMessage({ ok: false, error: (err as Error).message });
}
