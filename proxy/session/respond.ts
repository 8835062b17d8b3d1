// Answers sluice writes itself on a client connection: error responses, then a graceful close.
import type { Socket } from "node:net";
import { errorResponse } from "../http1/errors.js";
import { closeGracefully } from "../transfer/socket-handoff.js";

/** Writes a complete error response and closes the connection after it. */
export function sendErrorAndClose(socket: Socket, status: number, detail: string): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  socket.write(errorResponse(status, detail));
  // Reads what the peer still sends, so its close is seen at once; a hard stop after 2 s.
  closeGracefully(socket);
}
