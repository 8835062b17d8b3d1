// A worker (node:cluster) ignores SIGHUP from its first moment: a terminal's hang-up reaches the
// whole process group, and reloads are the primary's business. cli.ts imports this module first,
// so a HUP can kill a starting worker only during Node's own start-up, before any of our code.
import cluster from "node:cluster";

if (cluster.isWorker) process.on("SIGHUP", () => {});
