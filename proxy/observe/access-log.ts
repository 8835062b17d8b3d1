// The end of every request: its metrics, and with `access_log` on, one JSON line.
import { log } from "../base/log.js";
import { type EngineLabel, recordRequest } from "./metrics.js";

export interface RequestRecord {
  engine: EngineLabel;
  route: string;
  /** null when no response head went out (aborted, client gone). */
  status: number | null;
  seconds: number;
  method: string;
  path: string;
  client: string;
  /** Body bytes from the client and to it (null where the engine does not count them). */
  bytesIn: number | null;
  bytesOut: number | null;
}

// On when the command line or the config file turns it on; a reload can change the file's.
const sources = { flag: false, file: false };
let accessLog = false;
const access = log.child({ log: "access" });

export function setAccessLog(enabled: boolean, from: "flag" | "file" = "flag"): void {
  sources[from] = enabled;
  accessLog = sources.flag || sources.file;
}

export function requestDone(r: RequestRecord): void {
  recordRequest(r.engine, r.route, r.status, r.seconds);
  if (!accessLog) return;
  access.info(
    {
      method: r.method,
      path: r.path,
      route: r.route,
      status: r.status,
      engine: r.engine,
      bytesIn: r.bytesIn,
      bytesOut: r.bytesOut,
      ms: Math.round(r.seconds * 1e4) / 10,
      client: r.client,
    },
    "request",
  );
}
