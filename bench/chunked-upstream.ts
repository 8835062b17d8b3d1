// The Node upstream of the chunked-body benches, in a process of its own: one per proxy
// measured, so that two proxies loaded at once never wait on one event loop (sharing one moved
// either's CPU per request by up to half). GET /chunked/N answers 1 MiB in chunks of N bytes
// (Node's http sends each write as one chunk); a POST (an upload) is read whole and answered
// with how many bytes it had.
//   node dist/bench/chunked-upstream.js <port>
import http from "node:http";

const port = Number(process.argv[2]);
const pieces = new Map<number, Buffer>();

http
  .createServer((req, res) => {
    if (req.method === "POST") {
      let n = 0;
      req.on("data", (c: Buffer) => {
        n += c.length;
      });
      req.on("end", () => res.end(String(n)));
      return;
    }
    const size = Number(req.url?.split("/")[2]);
    if (!(size > 0)) {
      res.writeHead(404).end();
      return;
    }
    const piece = pieces.get(size) ?? Buffer.alloc(size, 97);
    pieces.set(size, piece);
    res.writeHead(200, { "content-type": "application/octet-stream" });
    let sent = 0;
    const more = () => {
      while (sent < 1 << 20) {
        sent += piece.length;
        if (!res.write(piece)) return void res.once("drain", more);
      }
      res.end();
    };
    more();
  })
  .listen(port, "127.0.0.1");
