// What an HTTP listener serves right now, and what it reports to; a reload swaps the state,
// requests in flight keep theirs.
import type { HttpProxyOptions } from "../config/http-options.js";
import type { Sinks } from "../observe/observation.js";
import type { RouteTable } from "../routing/route-table.js";
import type { Cluster } from "../upstream/cluster.js";
import type { Listening } from "./listening.js";

export interface HttpListenerState {
  opts: HttpProxyOptions;
  routes: RouteTable;
  clusters: Map<string, Cluster>;
}

export type StateSource = () => HttpListenerState;

/** Everything a listener's sessions share: the current state, the sinks, the listener's label. */
export interface ListenerContext {
  source: StateSource;
  sinks: Sinks;
  /** host:port, the `listener` label of connection metrics. */
  label: string;
}

export type RunningProxy = Listening;
