// Binding a server and stopping it, the same way for every kind of listener.
import type net from "node:net";
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
