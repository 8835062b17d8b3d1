// The least a Node proxy that splices can do: each client connection paired with its own
// upstream connection; requests passed on as they arrive; of each response, the head and the
// body bytes read with it written in one call, and a body's rest (at least the splice
// threshold) moved by sluice's addon, exactly as sluice moves it (the same endpoints, pipe pool,
// pump and completion callback). No parsing beyond finding the head's end and Content-Length,
// no routing, pool, limits, timers, metrics or logs. Not a proxy anyone should run: bench/http.ts
// measures it as the floor under sluice's per-request cost on spliced bodies (GETs only, no
// chunked responses: the bench's workloads). Responses are read as Node reads by default (64 KiB
// at a time); FLOOR_READ=<bytes> reads them into one shared buffer of that size instead, each
// read copied out (how sluice read every response before its first reads had a buffer of
// their own: docs/BENCHMARKS.md).
//   node dist/bench/node-splice-floor.js <listen port> <upstream port>
import net from "node:net";
import { spliceAddon } from "../proxy/transfer/native.js";
import { restartReading, stopReading, streamHandle } from "../proxy/transfer/socket-handoff.js";

const [port, upstream] = process.argv.slice(2).map(Number);
const THRESHOLD = 256 * 1024;
const loaded = spliceAddon();
if (!loaded) throw new Error("the splice addon is needed");
const addon = loaded;
// sluice's own pool settings (proxy/control/runtime.ts with the defaults): 1 MiB pipes, 8 idle.
const size = Math.min(addon.stats().pipeSize, addon.stats().systemMaxPipeSize);
addon.configure(size, Math.floor((8 << 20) / size), addon.stats().maxPipes);

/** The response's Content-Length, from its head's bytes (0 when absent). */
function contentLength(head: Buffer, end: number): number {
  const text = head.toString("latin1", 0, end).toLowerCase();
  const at = text.indexOf("\r\ncontent-length:");
  return at < 0 ? 0 : Number.parseInt(text.slice(at + 17, text.indexOf("\r\n", at + 17)), 10);
}

function endpoint(socket: net.Socket): number {
  const id = addon?.endpoint(streamHandle(socket)?.fd ?? -1) as number;
  socket.once("close", () => addon?.release(id));
  return id;
}

net
  .createServer({ noDelay: true }, (client) => {
    const small = Number(process.env.FLOOR_READ ?? 0);
    const shared = small > 0 ? Buffer.allocUnsafe(small) : null;
    const up = net.connect({
      port: upstream as number,
      host: "127.0.0.1",
      noDelay: true,
      ...(shared
        ? {
            onread: {
              buffer: shared,
              callback: (n: number, b: Buffer) => {
                onUp(Buffer.from(b.subarray(0, n)));
                return true;
              },
            },
          }
        : {}),
    });
    const close = () => {
      client.destroy();
      up.destroy();
    };
    for (const s of [client, up]) s.on("error", close).on("close", close);
    client.on("data", (c: Buffer) => up.write(c));
    let ends: [number, number] | null = null;
    let head: Buffer | null = null;
    /** Body bytes of the current response still to pass on without splicing. */
    let left = 0;
    if (!shared) up.on("data", (c: Buffer) => onUp(c));
    function onUp(c: Buffer) {
      if (left > 0) {
        left -= c.length;
        client.write(c);
        return;
      }
      head = head === null ? c : Buffer.concat([head, c]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      const whole = head;
      head = null;
      const body = whole.subarray(end + 4);
      const rest = contentLength(whole, end) - body.length;
      if (rest < THRESHOLD) {
        left = rest;
        client.write(whole);
        return;
      }
      // Written straight to the kernel, as sluice writes a head with its body's first bytes.
      const fd = streamHandle(client)?.fd ?? -1;
      if (addon.send(fd, whole.toString("latin1", 0, end + 4), body) !== whole.length) return close();
      stopReading(up);
      ends ??= [endpoint(up), endpoint(client)];
      addon.start(ends[0], ends[1], rest, false, (_pipe, _dirs, _bytes, _read, _flags, error) => {
        if (error !== 0) close();
        else restartReading(up);
      });
    }
  })
  .listen(port, "127.0.0.1");
