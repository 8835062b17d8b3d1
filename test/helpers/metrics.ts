// Reading a running proxy's Prometheus registry in tests that run sluice in-process.
import type { Metrics } from "../../proxy/observe/metrics.js";

/** A metric's value for the series with these labels (others may differ), 0 if there is none yet. */
export async function metricValue(metrics: Metrics, name: string, labels: Record<string, string>): Promise<number> {
  const m = await metrics.registry.getSingleMetric(name)?.get();
  const match = m?.values.find((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want));
  return match?.value ?? 0;
}

/** The sum of a metric's series with these labels, whatever their others: 0 if there is none yet. */
export async function metricSum(metrics: Metrics, name: string, labels: Record<string, string>): Promise<number> {
  const m = await metrics.registry.getSingleMetric(name)?.get();
  const matching = m?.values.filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want)) ?? [];
  return matching.reduce((sum, v) => sum + v.value, 0);
}
