// The forwarding process of the transfer benchmark: accepts on an ephemeral port and
// tunnels every connection to the receiver, with the pump given on the command line (auto or copy).
import net from "node:net";
import { spliceAddon } from "../proxy/transfer/native.js";
import { tunnel } from "../proxy/transfer/transfer.js";

const [pump, receiverPort] = [process.argv[2] as "auto" | "copy", Number(process.argv[3])];
const pipeSize = Number(process.env.BENCH_PIPE_SIZE ?? 0);
const addon = spliceAddon();
if (pipeSize > 0 && addon) addon.configure(pipeSize, addon.stats().maxIdle, 0);
const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) => {
  const upstream = net.connect({ port: receiverPort, host: "127.0.0.1", allowHalfOpen: true }, () => {
    tunnel(client, upstream, { pump }).catch((err: unknown) => {
      process.stderr.write(`forwarder: ${String(err)}\n`);
    });
  });
});
server.listen(0, "127.0.0.1", () => {
  process.send?.({ port: (server.address() as net.AddressInfo).port });
});
