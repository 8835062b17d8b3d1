// The CPUs this process may use: its affinity (what Node's availableParallelism says) and, in a
// container, its CFS quota (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us / cpu.cfs_period_us),
// which Node does not read. A pod limited to 1 CPU on a 16-core node has 1 to work with.
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";

function read(path: string): string | null {
  try {
    return readFileSync(path, "latin1").trim();
  } catch {
    return null;
  }
}

/** The CFS quota in CPUs (rounded up), or null when there is none. */
export function cgroupCpuQuota(): number | null {
  const v2 = read("/sys/fs/cgroup/cpu.max")?.split(/\s+/);
  if (v2 && v2[0] !== "max") {
    const [quota, period] = [Number(v2[0]), Number(v2[1])];
    if (quota > 0 && period > 0) return Math.ceil(quota / period);
  }
  const quota = Number(read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") ?? Number.NaN);
  const period = Number(read("/sys/fs/cgroup/cpu/cpu.cfs_period_us") ?? Number.NaN);
  if (quota > 0 && period > 0) return Math.ceil(quota / period);
  return null;
}

/** CPUs to plan for: the affinity, bounded by the container's quota. */
export function usableCpus(): number {
  return Math.max(1, Math.min(availableParallelism(), cgroupCpuQuota() ?? Number.POSITIVE_INFINITY));
}
