// Loopback port helpers for tools, tests and benchmarks: not used by the proxy itself.
import net from "node:net";

/** A loopback port nothing listens on right now (bound, then released). */
export async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", () => r()));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  return port;
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
