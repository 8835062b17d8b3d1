// Writes N bytes to host:port as fast as the socket takes them, then half-closes.
import net from "node:net";

const [port, total] = [Number(process.argv[2]), Number(process.argv[3])];
const block = Buffer.alloc(1 << 20, 0x5a);
const sock = net.connect({ port, host: "127.0.0.1", allowHalfOpen: true }, () => {
  let left = total;
  const more = () => {
    while (left > 0) {
      const n = Math.min(left, block.length);
      left -= n;
      if (!sock.write(n === block.length ? block : block.subarray(0, n))) return void sock.once("drain", more);
    }
    sock.end();
  };
  more();
});
sock.resume();
sock.on("end", () => sock.destroy());
