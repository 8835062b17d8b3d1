// One structured logger for the whole process: JSON lines, level from SLUICE_LOG_LEVEL;
// human-readable when stdout is a terminal (SLUICE_LOG_FORMAT=json|pretty overrides).
import { pino } from "pino";
import pretty from "pino-pretty";

const format = process.env.SLUICE_LOG_FORMAT || (process.stdout.isTTY ? "pretty" : "json");

export const log = pino(
  { name: "sluice", level: process.env.SLUICE_LOG_LEVEL ?? "info" },
  // Synchronous: no worker thread, and nothing lost when the process exits right after.
  format === "pretty" ? pretty({ sync: true, colorize: process.stdout.isTTY === true }) : undefined,
);
