// Reading a running proxy's Prometheus registry in tests that run sluice in-process.
import type { Metrics } from "../../proxy/observe/metrics.js";

/**
 * A metric's value over every series with these labels, whatever their others (a counter's
 * engine, say), summed: 0 if there is none yet. For counters and gauges, not histograms.
 */
export async function metricValue(metrics: Metrics, name: string, labels: Record<string, string>): Promise<number> {
  const m = await metrics.registry.getSingleMetric(name)?.get();
  const matching = m?.values.filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want)) ?? [];
  return matching.reduce((sum, v) => sum + v.value, 0);
}
