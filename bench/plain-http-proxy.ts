// The ordinary Node reverse proxy, as its README shows it: node:http + http-proxy-3 with a
// keep-alive agent, nothing else (no routing, metrics or limits). bench/http.ts runs it next
// to sluice's buffered engine, which is the same library doing sluice's per-request work.
//   node dist/bench/plain-http-proxy.js <listen port> <upstream port>
import http from "node:http";
import { createProxyServer } from "http-proxy-3";

const [port, upstream] = process.argv.slice(2).map(Number);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 });
const proxy = createProxyServer({ target: { host: "127.0.0.1", port: upstream as number }, agent });
proxy.on("error", (_err: Error, _req: unknown, res: unknown) => {
  if (res instanceof http.ServerResponse && !res.headersSent) res.writeHead(502).end();
});
http.createServer((req, res) => proxy.web(req, res)).listen(port, "127.0.0.1");
