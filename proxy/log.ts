// One structured logger for the whole process: JSON lines, level from SLUICE_LOG_LEVEL.
import { pino } from "pino";

export const log = pino({
  name: "sluice",
  level: process.env.SLUICE_LOG_LEVEL ?? "info",
});
