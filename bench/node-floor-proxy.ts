// The least a Node proxy can do: each client connection paired with its own upstream
// connection, bytes passed both ways as they arrive (no HTTP parsing, routing, pool, limits,
// timers, metrics or logs). Not a proxy anyone should run: bench/http.ts measures it as the
// floor of what any proxy written on Node's sockets costs per request, and bench/tls.ts, given
// a certificate, as the floor of any Node proxy that terminates TLS (Node's own TLS socket).
//   node dist/bench/node-floor-proxy.js <listen port> <upstream port> [<cert.pem> <key.pem> [<TLS 1.3 suite>]]
import { readFileSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";

const [port, upstream, cert, key, suite] = process.argv.slice(2);

const pair = (client: net.Socket) => {
  const up = net.connect({ port: Number(upstream), host: "127.0.0.1", noDelay: true });
  client.pipe(up);
  up.pipe(client);
  const close = () => {
    client.destroy();
    up.destroy();
  };
  for (const s of [client, up]) s.on("error", close).on("close", close);
};

const server =
  cert && key
    ? tls.createServer(
        {
          cert: readFileSync(cert),
          key: readFileSync(key),
          noDelay: true,
          // One suite when asked (bench/tls.ts gives every proxy the same); else Node's defaults, as sluice's.
          ...(suite ? { minVersion: "TLSv1.3" as const, ciphers: suite } : {}),
        },
        pair,
      )
    : net.createServer({ noDelay: true }, pair);
server.listen(Number(port), "127.0.0.1");
