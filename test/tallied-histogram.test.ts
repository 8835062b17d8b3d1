// The request-duration histogram is counted by sluice and exposed through prom-client: its
// exposition must be what prom-client's own Histogram prints for the same observations,
// alone and when the primary sums the workers' registries.
import { AggregatorRegistry, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { TalliedHistogram } from "../proxy/observe/tallied-histogram.js";

const NAMES = ["engine", "route", "status_class", "outcome"] as const;
const BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

function pair() {
  const ours = new Registry();
  const theirs = new Registry();
  const tallied = new TalliedHistogram("d_seconds", "help text", NAMES, BOUNDS, ours);
  const reference = new Histogram({
    name: "d_seconds",
    help: "help text",
    labelNames: NAMES,
    buckets: BOUNDS,
    registers: [theirs],
  });
  const observe = (values: [string, string, string, string], v: number) => {
    tallied.observe(values, v);
    reference.observe({ engine: values[0], route: values[1], status_class: values[2], outcome: values[3] }, v);
  };
  return { ours, theirs, observe, tallied };
}

/** Random observations over a few label sets, values on and around the bounds included. */
function feed(observe: (values: [string, string, string, string], v: number) => void, n: number, seed: number): void {
  let x = seed;
  const rand = () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x / 2147483648;
  };
  const sets: [string, string, string, string][] = [
    ["splice", "app", "2xx", "completed"],
    ["copy", "app", "2xx", "completed"],
    ["buffered", "none", "5xx", "upstream_refused"],
    ["copy", 'a "quoted"\\route', "aborted", "client_closed"],
  ];
  for (let i = 0; i < n; i++) {
    const set = sets[Math.floor(rand() * sets.length)] as [string, string, string, string];
    const r = rand();
    const v =
      r < 0.2 ? (BOUNDS[Math.floor(rand() * BOUNDS.length)] as number) : r < 0.25 ? 0 : r < 0.3 ? 100 : rand() * rand() * 5;
    observe(set, v);
  }
}

describe("tallied histogram", () => {
  it("prints what prom-client's Histogram prints for the same observations", async () => {
    const { ours, theirs, observe } = pair();
    expect(await ours.metrics()).toBe(await theirs.metrics());
    feed(observe, 5000, 7);
    const text = await ours.metrics();
    expect(text).toMatch(
      /^d_seconds_bucket\{le="\+Inf",engine="splice",route="app",status_class="2xx",outcome="completed"\} \d+$/m,
    );
    expect(text).toBe(await theirs.metrics());
  });

  it("sums across workers as prom-client's Histogram does", async () => {
    const workers = [pair(), pair(), pair()];
    for (const [i, w] of workers.entries()) feed(w.observe, 1000 * (i + 1), 11 + i);
    const json = async (pick: (w: (typeof workers)[number]) => Registry) =>
      Promise.all(workers.map((w) => pick(w).getMetricsAsJSON()));
    const ours = await AggregatorRegistry.aggregate(await json((w) => w.ours)).metrics();
    const theirs = await AggregatorRegistry.aggregate(await json((w) => w.theirs)).metrics();
    expect(ours).toMatch(/^d_seconds_count\{engine="copy",route="app",status_class="2xx",outcome="completed"\} \d+$/m);
    expect(ours).toBe(theirs);
  });

  it("forgets on reset, and refuses label values of the wrong number", async () => {
    const { ours, theirs, observe, tallied } = pair();
    feed(observe, 100, 3);
    ours.resetMetrics();
    theirs.resetMetrics();
    expect(await ours.metrics()).toBe(await theirs.metrics());
    expect(() => tallied.observe(["splice", "app"], 1)).toThrow(/4 label values/);
  });

  it("counts runs of the same labels (as the request path sends them, a new array each time) into their own series, before and after a reset", async () => {
    const { ours, theirs, observe } = pair();
    // Equal strings made apart (as a config's names are), and values that differ in one label only.
    const made = (s: string) => [...s].join("");
    const runs: Array<[[string, string, string, string], number]> = [
      [["splice", "app", "2xx", "completed"], 7],
      [["splice", made("app"), "2xx", made("completed")], 3],
      [["splice", "app", "2xx", "client_closed"], 2],
      [["splice", "app", "5xx", "client_closed"], 1],
      [["copy", "app", "5xx", "client_closed"], 4],
      [["splice", "app", "2xx", "completed"], 5],
    ];
    let v = 0;
    for (const [values, n] of runs)
      for (let i = 0; i < n; i++) {
        v += 0.01;
        observe([...values], v);
      }
    expect(await ours.metrics()).toMatch(
      /^d_seconds_count\{engine="splice",route="app",status_class="2xx",outcome="completed"\} 15$/m,
    );
    expect(await ours.metrics()).toBe(await theirs.metrics());
    // The series the last observations went to is gone after a reset: the same labels again start a new one.
    ours.resetMetrics();
    theirs.resetMetrics();
    observe(["splice", "app", "2xx", "completed"], 0.5);
    expect(await ours.metrics()).toMatch(
      /^d_seconds_count\{engine="splice",route="app",status_class="2xx",outcome="completed"\} 1$/m,
    );
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });
});
