// Errors that end an exchange with a known HTTP status, and the short plain-text
// responses sluice sends for them.

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "HttpError";
  }
}

export const REASONS: Record<number, string> = {
  400: "Bad Request",
  404: "Not Found",
  408: "Request Timeout",
  413: "Content Too Large",
  414: "URI Too Long",
  417: "Expectation Failed",
  431: "Request Header Fields Too Large",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
};

/** A complete plain-text error response that closes the connection. */
export function errorResponse(status: number, detail: string): string {
  const body = `${status} ${REASONS[status] ?? "Error"}: ${detail}\n`;
  return (
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\n${status === 503 ? "retry-after: 1\r\n" : ""}connection: close\r\n\r\n${body}`
  );
}
