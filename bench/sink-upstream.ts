// An upstream for bench/fairness.ts, in its own process: GET answers 1 KiB; POST reads the
// whole body, however it is chunked, and answers only at its end.
import http from "node:http";

const body = Buffer.alloc(1024, 97);
http
  .createServer((req, res) => {
    if (req.method !== "POST") return res.end(body);
    req.on("data", () => undefined);
    req.on("end", () => res.end("ok"));
  })
  .listen(Number(process.argv[2]), "127.0.0.1");
