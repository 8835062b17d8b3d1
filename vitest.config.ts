import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Real sockets and 1 GiB bodies: generous per-test limits, forked workers so fd
    // counts in one file are not disturbed by another.
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: "forks",
    fileParallelism: false,
    // Warnings and errors stay visible; the proxy's info lines would drown the report.
    env: { SLUICE_LOG_LEVEL: "warn" },
  },
});
