// A minimal authoritative DNS server on loopback UDP: answers A queries for any name
// with the addresses currently set. Enough to watch a cluster follow DNS changes.
import dgram from "node:dgram";

export async function startDnsServer(
  initial: string[],
): Promise<{ port: number; set(ips: string[]): void; queries: number; close(): void }> {
  let answers = initial;
  const sock = dgram.createSocket("udp4");
  const state = { queries: 0 };
  sock.on("message", (msg, rinfo) => {
    state.queries++;
    // Header (12 bytes), then the question: labels up to a zero byte, type, class.
    let i = 12;
    while (msg[i] !== 0 && i < msg.length) i += (msg[i] as number) + 1;
    const question = msg.subarray(12, i + 5);
    const qtype = msg.readUInt16BE(i + 1);
    const records = qtype === 1 ? answers : [];
    const header = Buffer.alloc(12);
    msg.copy(header, 0, 0, 2); // id
    header.writeUInt16BE(0x8180, 2); // response, recursion available, no error
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(records.length, 6);
    const rrs = records.map((ip) => {
      const rr = Buffer.alloc(16);
      rr.writeUInt16BE(0xc00c, 0); // name: pointer to the question
      rr.writeUInt16BE(1, 2); // A
      rr.writeUInt16BE(1, 4); // IN
      rr.writeUInt32BE(1, 6); // TTL 1 s
      rr.writeUInt16BE(4, 10);
      for (const [k, o] of ip.split(".").entries()) rr.writeUInt8(Number(o), 12 + k);
      return rr;
    });
    sock.send(Buffer.concat([header, question, ...rrs]), rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => sock.bind(0, "127.0.0.1", () => r()));
  return {
    port: sock.address().port,
    set: (ips) => {
      answers = ips;
    },
    get queries() {
      return state.queries;
    },
    close: () => sock.close(),
  };
}
