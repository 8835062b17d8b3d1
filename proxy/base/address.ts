// "host:port" parsing for listeners and upstreams, with IPv6 in brackets.
export interface HostPort {
  host: string;
  port: number;
}

export function parseHostPort(text: string, what: string): HostPort {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port < 0 || port > 65535) throw new Error(`${what}: expected host:port, got "${text}"`);
  return { host: (m[1] ?? m[2]) as string, port };
}

export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
