// Loopback port helpers for tools, tests and benchmarks: not used by the proxy itself.
import { readFileSync } from "node:fs";
import net from "node:net";

/** Where the kernel takes outgoing connections' local ports from. */
function ephemeralPorts(): { low: number; high: number } {
  try {
    const [low, high] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
    if (low && high) return { low, high };
  } catch {
    // Not Linux: the IANA range.
  }
  return { low: 49152, high: 65535 };
}

/** Binds `port` (0: any) on loopback and releases it; the port, or null when it is taken. */
async function probe(port: number): Promise<number | null> {
  const server = net.createServer();
  const bound = await new Promise<boolean>((resolve) => {
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => resolve(true));
  });
  if (!bound) return null;
  const got = (server.address() as net.AddressInfo).port;
  await new Promise((r) => server.close(r));
  return got;
}

const LOWEST = 10_000;

/**
 * A loopback port nothing listens on right now, for a process started next to listen on.
 * Chosen below the kernel's ephemeral range: a port from that range can be taken, between this
 * check and the listener's bind, as the local port of any outgoing connection on the machine
 * (a test once failed so: EADDRINUSE); ports below it are only ever taken by a listener.
 */
export async function freePort(): Promise<number> {
  const { low } = ephemeralPorts();
  if (low - LOWEST >= 1000) {
    for (let i = 0; i < 50; i++) {
      const port = await probe(LOWEST + Math.floor(Math.random() * (low - LOWEST)));
      if (port !== null) return port;
    }
  }
  const any = await probe(0);
  if (any === null) throw new Error("no loopback port to listen on");
  return any;
}

/**
 * Resolves once something accepts connections on the loopback port; gives up after `tries`
 * looks 50 ms apart (30 s by default: a process with workers, on a slow and busy machine, can
 * take well over the 5 s this once allowed to start listening).
 */
export async function waitForPort(port: number, tries = 600): Promise<void> {
  for (let i = 0; i < tries; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (up) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port}`);
}
