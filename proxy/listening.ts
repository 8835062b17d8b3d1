// Binding a server and stopping it, the same way for every kind of listener.
import net from "node:net";
import type { HostPort } from "./address.js";

export interface Listening {
  address: HostPort;
  /** Stops accepting and closes every connection. */
  close(): Promise<void>;
  /** Stops accepting; open connections finish what they are doing. */
  stopAccepting(): Promise<void>;
}

/** Listens on `at`; a bind error rejects. `closeAll` ends the open connections on close(). */
export async function startListening(server: net.Server, at: HostPort, closeAll: () => void): Promise<Listening> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(at.port, at.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address() as net.AddressInfo;
  return {
    address: { host: addr.address, port: addr.port },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        closeAll();
      }),
    // The listening socket closes now; server.close()'s callback would wait for every connection.
    stopAccepting: async () => void server.close(),
  };
}

/** A loopback port nothing listens on right now (bound, then released). */
export async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", () => r()));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  return port;
}

/** Resolves once something accepts connections on the loopback port. */
export async function waitForPort(port: number, tries = 100): Promise<void> {
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
