// The least a Node proxy can do: each client connection paired with its own upstream
// connection, bytes passed both ways as they arrive (no HTTP parsing, routing, pool, limits,
// timers, metrics or logs). Not a proxy anyone should run: bench/http.ts measures it as the
// floor of what any proxy written on Node's sockets costs per request.
//   node dist/bench/node-floor-proxy.js <listen port> <upstream port>
import net from "node:net";

const [port, upstream] = process.argv.slice(2).map(Number);
net
  .createServer({ noDelay: true }, (client) => {
    const up = net.connect({ port: upstream as number, host: "127.0.0.1", noDelay: true });
    client.pipe(up);
    up.pipe(client);
    const close = () => {
      client.destroy();
      up.destroy();
    };
    for (const s of [client, up]) s.on("error", close).on("close", close);
  })
  .listen(port, "127.0.0.1");
