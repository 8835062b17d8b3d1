// A Prometheus histogram whose observations cost a comparison with the last one's label values
// (else a map lookup per label) and three additions: the request path counts into plain arrays,
// and the registry turns them into samples only when /metrics is scraped. prom-client's own
// Histogram checks and hashes the label object on every observation (about 9k instructions per
// request here: docs/BENCHMARKS.md).
// Registered as a prom-client metric (name, help, type, aggregator, get), so exposition,
// the cluster workers' aggregation and the default metrics stay prom-client's.
import type { Registry } from "prom-client";

interface Series {
  readonly labels: Record<string, string>;
  /** Observations per bucket (not cumulative); the last slot is above every bound. */
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

/** One label's values: the next label's level, or at the last label the series. */
type Level = Map<string, Level | Series>;

interface Sample {
  labels: Record<string, string | number>;
  value: number;
  metricName: string;
}

export class TalliedHistogram<L extends string> {
  readonly type = "histogram";
  readonly aggregator = "sum";
  /** Series by their label values, one level per label: each value's hash is its own, cached by V8 on the string. */
  private tree: Level = new Map();
  private series: Series[] = [];
  /**
   * The last observation's label values (the caller's array, which it does not change after) and
   * its series: a request nearly always has the values the one before had.
   */
  private lastValues: readonly string[] = [];
  private lastSeries: Series | null = null;

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly labelNames: readonly L[],
    private readonly bounds: readonly number[],
    registry: Registry,
  ) {
    registry.registerMetric(this as never);
  }

  /**
   * Counts one observation. `values` are the label values in `labelNames` order; callers pass
   * the same few strings again and again (constants and config names), whose hashes V8 keeps.
   */
  observe(values: readonly string[], v: number): void {
    if (values.length !== this.labelNames.length)
      throw new Error(`${this.name}: ${this.labelNames.length} label values expected`);
    let s = this.lastSeries;
    if (s === null || !sameStrings(values, this.lastValues)) {
      s = this.seriesOf(values);
      this.lastSeries = s;
      this.lastValues = values;
    }
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > (b[i] as number)) i++;
    s.counts[i] = (s.counts[i] as number) + 1;
    s.sum += v;
    s.count++;
  }

  /** The series of these label values, made on first use. */
  private seriesOf(values: readonly string[]): Series {
    let level = this.tree;
    const last = values.length - 1;
    for (let i = 0; i < last; i++) {
      const value = values[i] as string;
      let next = level.get(value) as Level | undefined;
      if (next === undefined) {
        next = new Map();
        level.set(value, next);
      }
      level = next;
    }
    let s = level.get(values[last] as string) as Series | undefined;
    if (s === undefined) {
      const labels: Record<string, string> = {};
      this.labelNames.forEach((n, i) => {
        labels[n] = values[i] as string;
      });
      s = { labels, counts: new Float64Array(this.bounds.length + 1), sum: 0, count: 0 };
      level.set(values[last] as string, s);
      this.series.push(s);
    }
    return s;
  }

  reset(): void {
    this.tree = new Map();
    this.series = [];
    this.lastSeries = null;
    this.lastValues = [];
  }

  /** Samples as prom-client's Histogram gives them: cumulative buckets, +Inf, sum and count. */
  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: Sample[] }> {
    const values: Sample[] = [];
    for (const s of this.series) {
      let acc = 0;
      this.bounds.forEach((le, i) => {
        acc += s.counts[i] as number;
        values.push({ labels: { le, ...s.labels }, value: acc, metricName: `${this.name}_bucket` });
      });
      values.push({ labels: { le: "+Inf", ...s.labels }, value: s.count, metricName: `${this.name}_bucket` });
      values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

/** Whether `a` and `b` hold equal strings, in order (the same string objects, nearly always: compared at once). */
function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
