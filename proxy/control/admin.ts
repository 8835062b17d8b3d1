// The admin listener: liveness, readiness, the effective config and the last reload's
// outcome. Served with node:http; it is not on the data path.
import http from "node:http";
import type { HostPort } from "../base/address.js";
import type { ConfigFile } from "../config/types.js";
import { httpServerHooks, type Listening, startListening } from "../session/listening.js";
import { isLoopback, redact } from "./redact.js";

export interface AdminSource {
  /** The config in force, or null before the first valid one. */
  config(): ConfigFile | null;
  lastReload(): { at: Date; ok: boolean; errors: string[]; restartPending?: string[] } | null;
  /** False while draining. */
  accepting(): boolean;
  /** The metrics page. */
  metrics(): Promise<{ contentType: string; text: string }>;
  /** Serve /config to peers that are not on this host (admin.expose_config). */
  exposeConfig(): boolean;
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-store",
  });
  res.end(text);
}

export function startAdmin(at: HostPort, source: AdminSource): Promise<Listening> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") return json(res, 405, { error: "GET only" });
    switch (path) {
      case "/healthz":
        return json(res, 200, { status: "ok" });
      case "/readyz": {
        const ready = source.config() !== null && source.accepting();
        return json(res, ready ? 200 : 503, { ready, lastReload: source.lastReload() });
      }
      case "/config": {
        // Probes and scrapers reach the admin port from the network; the config is for this host.
        if (!isLoopback(req.socket.remoteAddress) && !source.exposeConfig())
          return json(res, 403, {
            error: "/config is served on loopback only (admin.expose_config: true serves it to the network)",
          });
        const cfg = source.config();
        return cfg ? json(res, 200, redact(cfg)) : json(res, 503, { error: "no configuration loaded" });
      }
      case "/metrics":
        source.metrics().then(
          ({ contentType, text }) => {
            res.writeHead(200, { "content-type": contentType, "cache-control": "no-store" });
            res.end(text);
          },
          (err: Error) => json(res, 500, { error: err.message }),
        );
        return;
      case "/reload": {
        const r = source.lastReload();
        return json(res, r === null || r.ok ? 200 : 500, r ?? { ok: true, errors: [] });
      }
      default:
        return json(res, 404, { error: "not found", endpoints: ["/healthz", "/readyz", "/config", "/reload", "/metrics"] });
    }
  });
  server.headersTimeout = 5000;
  server.requestTimeout = 10_000;
  return startListening(server, at, httpServerHooks(server));
}
