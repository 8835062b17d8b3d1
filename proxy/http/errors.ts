// Errors that end an exchange with a known HTTP status, and the short plain-text
// responses sluice sends for them.
import type { Socket } from "node:net";
import { closeGracefully } from "../socket-handoff.js";

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

/** Writes a complete error response and closes the connection after it. */
export function sendErrorAndClose(socket: Socket, status: number, detail: string): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const body = `${status} ${REASONS[status] ?? "Error"}: ${detail}\n`;
  socket.write(
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
      `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
  // Reads what the peer still sends, so its close is seen at once; a hard stop after 2 s.
  closeGracefully(socket);
}
