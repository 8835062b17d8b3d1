// The Helm chart under real Helm 4 (from the npm package that ships it: helpers/kube-tools.ts):
// `helm lint --strict`, `helm template` and `helm install --dry-run`. Each rendering is checked
// as Kubernetes would see it: valid YAML, every object valid against the Kubernetes OpenAPI
// schemas (kubernetes-models), references that resolve, and the ConfigMap's config accepted
// by sluice itself. Bad values, sluice's config among them, are refused by Helm.
import { execFile, spawn } from "node:child_process";
import { cpSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { Deployment } from "kubernetes-models/apps/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ConfigMap, Service } from "kubernetes-models/v1";
import { request } from "undici";
import { beforeAll, expect, test } from "vitest";
import { parseAllDocuments } from "yaml";
import { startDemoUpstream } from "../proxy/tools/demo-upstream.js";
import { freePort, waitForPort } from "../proxy/tools/ports.js";
import { makeCa, type Pair, type TestCa } from "./helpers/certs.js";
import { kubeTool } from "./helpers/kube-tools.js";
import { tempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const CHART = resolve("helm/sluice");
const dir = tempDir("helm");
let helm = "";

// biome-ignore lint/suspicious/noExplicitAny: manifests are checked field by field below
type Obj = any;

let testCa: TestCa;
let testPair: Pair;

beforeAll(() => {
  helm = kubeTool("helm");
  testCa = makeCa(dir);
  testPair = testCa.issue("sluice-test", { san: ["DNS:shop.example.com"] });
}, 300_000);

interface Rendered {
  objects: Obj[];
}

let n = 0;
/** `helm template` with `values` (a -f file) and extra flags (--set…); its objects. */
async function render(
  values: Obj,
  opts: { chart?: string; kube?: string; name?: string; flags?: string[] } = {},
): Promise<Rendered> {
  const file = join(dir, `values-${n++}.json`);
  writeFileSync(file, JSON.stringify(values));
  const { stdout } = await run(
    helm,
    [
      "template",
      opts.name ?? "shop",
      opts.chart ?? CHART,
      "--namespace",
      "web",
      "--kube-version",
      opts.kube ?? "v1.30.2",
      "-f",
      file,
      ...(opts.flags ?? []),
    ],
    { maxBuffer: 16 << 20 },
  );
  const objects: Obj[] = [];
  for (const doc of parseAllDocuments(stdout)) {
    expect(doc.errors, doc.errors.join("; ")).toEqual([]);
    const o = doc.toJS();
    if (o !== null) objects.push(o);
  }
  return { objects };
}

/** What Helm says when it refuses to render (empty when it renders). */
const renderError = (values: Obj, opts: { kube?: string; flags?: string[] } = {}) =>
  render(values, opts).then(
    () => "",
    (e: { stderr: string }) => e.stderr,
  );

const kind = (r: Rendered, k: string) => r.objects.filter((o) => o.kind === k);
const one = (r: Rendered, k: string) => {
  const all = kind(r, k);
  expect(all, k).toHaveLength(1);
  return all[0];
};

/**
 * The sluice container's Secret volumes as files under a scratch root: tls.crt and tls.key of
 * one test certificate, any other item a CA bundle.
 */
function mountSecrets(r: Rendered): string {
  const root = join(dir, `root-${n}`);
  for (const d of kind(r, "Deployment")) {
    const pod = d.spec.template.spec;
    const c = [...(pod.initContainers ?? []), ...pod.containers].find((x: Obj) => x.name === "sluice");
    for (const m of c?.volumeMounts ?? []) {
      const vol = pod.volumes.find((x: Obj) => x.name === m.name);
      if (!vol?.secret) continue;
      expect(vol.secret.items, `${m.name}: the Secret's keys are named`).toBeDefined();
      mkdirSync(join(root, m.mountPath), { recursive: true });
      for (const item of vol.secret.items) {
        const from = item.key === "tls.crt" ? testPair.cert : item.key === "tls.key" ? testPair.key : testCa.cert;
        cpSync(from, join(root, m.mountPath, item.path));
      }
    }
  }
  return root;
}

/** What every rendering must satisfy: schemas, labels, references, sluice's own verdict on its config. */
async function checkRendering(r: Rendered): Promise<void> {
  const models: Record<string, new (o: Obj) => { validate(): void }> = {
    Deployment,
    Service,
    ConfigMap,
    PodDisruptionBudget,
    ServiceMonitor,
  };
  for (const o of r.objects) {
    expect(o.apiVersion, JSON.stringify(o).slice(0, 80)).toBeTruthy();
    expect(o.metadata?.name).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
    const Model = models[o.kind];
    expect(Model, `no schema for ${o.kind}`).toBeDefined();
    expect(() => new (Model as NonNullable<typeof Model>)(o).validate()).not.toThrow();
  }
  // Everything this chart renders is labelled the recommended way.
  for (const o of r.objects.filter((o) => o.metadata.labels?.["helm.sh/chart"]?.startsWith("sluice-"))) {
    for (const l of ["name", "instance", "version", "managed-by"])
      expect(o.metadata.labels[`app.kubernetes.io/${l}`], `${o.kind} ${l}`).toBeTruthy();
  }

  const cm = kind(r, "ConfigMap").find((c) => c.metadata.name.endsWith("-sluice-config"));
  expect(cm).toBeDefined();
  const file = join(dir, `${cm.metadata.name}-${n++}.yaml`);
  // Secrets the pod mounts are made up under a scratch root, at their mount paths with their
  // items' names: the config's certificate files must be exactly what the pod would have.
  const root = mountSecrets(r);
  writeFileSync(file, cm.data["sluice.yaml"].replaceAll("/etc/sluice-tls/", `${root}/etc/sluice-tls/`));
  const v = await run(process.execPath, ["dist/proxy/cli.js", "validate", file]);
  expect(v.stdout).toBe(`${file}: ok\n`);

  for (const d of kind(r, "Deployment")) {
    const pod = d.spec.template.spec;
    const labels = d.spec.template.metadata.labels;
    for (const [k, val] of Object.entries(d.spec.selector.matchLabels)) expect(labels[k]).toBe(val);
    const containers: Obj[] = [...(pod.initContainers ?? []), ...pod.containers];
    const sluice = containers.filter((c) => c.name === "sluice");
    expect(sluice).toHaveLength(1);
    const c = sluice[0];
    // Every mount has its volume, every configMap volume its ConfigMap.
    for (const m of c.volumeMounts) expect(pod.volumes.map((x: Obj) => x.name)).toContain(m.name);
    for (const vol of pod.volumes.filter((x: Obj) => x.configMap))
      expect(kind(r, "ConfigMap").map((x) => x.metadata.name)).toContain(vol.configMap.name);
    const portNames = c.ports.map((p: Obj) => p.name);
    for (const p of ["startupProbe", "livenessProbe", "readinessProbe"]) expect(portNames).toContain(c[p].httpGet.port);
    expect(c.readinessProbe.httpGet.path).toBe("/readyz");
    expect(c.livenessProbe.httpGet.path).toBe("/healthz");
    const allPorts = containers.flatMap((x) => (x.ports ?? []).map((p: Obj) => p.name));
    expect(new Set(allPorts).size).toBe(allPorts.length);
    // Least privilege.
    expect(c.securityContext).toMatchObject({
      runAsNonRoot: true,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ["ALL"] },
    });
    expect(c.resources.limits.memory).toBeTruthy();
    // Drain fits in the grace period: preStop sleep + drain + margin.
    const cfg = parseAllDocuments(cm.data["sluice.yaml"])[0]?.toJS();
    const drain = Number(String(cfg.drain_timeout).replace(/s$/, ""));
    const sleep = Number(c.lifecycle?.preStop?.exec?.command?.[1] ?? 0);
    expect(pod.terminationGracePeriodSeconds).toBe(sleep + drain + 5);
    expect(c.args).toEqual(["--config", "/etc/sluice/sluice.yaml"]);
    expect(c.volumeMounts[0]).toMatchObject({ mountPath: "/etc/sluice", readOnly: true });
    expect(c.volumeMounts[0].subPath).toBeUndefined();
  }
  for (const s of kind(r, "Service")) {
    const pods = kind(r, "Deployment").filter((d) =>
      Object.entries(s.spec.selector).every(([k, val]) => d.spec.template.metadata.labels[k] === val),
    );
    expect(pods).toHaveLength(1);
    const pod = pods[0].spec.template.spec;
    const named = [...(pod.initContainers ?? []), ...pod.containers].flatMap((c: Obj) => (c.ports ?? []).map((p: Obj) => p.name));
    for (const p of s.spec.ports) expect(named).toContain(p.targetPort);
    expect(s.spec.ports.find((p: Obj) => p.name === "http")?.targetPort).toBe("sluice");
  }
}

const minimal = { app: { image: { repository: "registry.example.com/shop/api", tag: "1.4.2" }, port: 3000 } };

test("default: a native sidecar (init container, restartPolicy Always) in front of the app, Service to sluice", async () => {
  const r = await render(minimal);
  await checkRendering(r);
  const d = one(r, "Deployment");
  const pod = d.spec.template.spec;
  expect(pod.initContainers.map((c: Obj) => c.name)).toEqual(["sluice"]);
  expect(pod.initContainers[0].restartPolicy).toBe("Always");
  expect(pod.containers.map((c: Obj) => c.name)).toEqual(["app"]);
  expect(pod.automountServiceAccountToken).toBe(false);
  const cfg = parseAllDocuments(one(r, "ConfigMap").data["sluice.yaml"])[0]?.toJS();
  expect(cfg.clusters.app.endpoints).toEqual(["127.0.0.1:3000"]);
  expect(cfg.listeners[0].address).toBe("0.0.0.0:8080");
  expect(kind(r, "PodDisruptionBudget")).toHaveLength(0);
  expect(kind(r, "ServiceMonitor")).toHaveLength(0);
  expect(one(r, "Service").spec.ports).toHaveLength(1);
});

test("classic sidecar for clusters before 1.29; native there is refused with the reason", async () => {
  const r = await render({ ...minimal, sidecar: { native: false } }, { kube: "v1.27.4" });
  await checkRendering(r);
  const pod = one(r, "Deployment").spec.template.spec;
  expect(pod.initContainers).toBeUndefined();
  expect(pod.containers.map((c: Obj) => c.name)).toEqual(["app", "sluice"]);
  expect(pod.containers[1].restartPolicy).toBeUndefined();
  expect(await renderError(minimal, { kube: "v1.28.9" })).toMatch(/sidecar.native needs Kubernetes >= 1.29/);
});

test("everything on: OTel, workers, access log, routes, limits, PDB, ServiceMonitor; the rendered config runs and proxies", async () => {
  const demo = await startDemoUpstream({ host: "127.0.0.1", port: 0 });
  const [proxy, admin] = [await freePort(), await freePort()];
  const values = {
    ...minimal,
    app: { ...minimal.app, port: demo.address.port },
    ports: { proxy, admin },
    admin: { bindAddress: "127.0.0.1" },
    drainTimeoutSeconds: 40,
    preStopSleepSeconds: 0,
    workers: "auto",
    accessLog: true,
    limits: { max_body_bytes: 1 << 30 },
    timeouts: { head: "10s", first_byte: "30s" },
    routes: [{ name: "ping", match: { path: { exact: "/ping" } }, respond: { status: 200, body: "pong\n" } }],
    config: { splice: { threshold: 131072 } },
    otel: { endpoint: "http://otel-collector.observability:4318", samplerRatio: 0.25, resourceAttributes: "team=shop" },
    env: [{ name: "SLUICE_LOG_LEVEL", value: "warn" }],
    podDisruptionBudget: { enabled: true, maxUnavailable: 1 },
    serviceMonitor: { enabled: true, labels: { release: "prom" } },
  };
  const r = await render(values);
  await checkRendering(r);
  const c = one(r, "Deployment").spec.template.spec.initContainers[0];
  const env = Object.fromEntries(c.env.map((e: Obj) => [e.name, e.value ?? e.valueFrom]));
  expect(env).toMatchObject({
    OTEL_EXPORTER_OTLP_ENDPOINT: "http://otel-collector.observability:4318",
    OTEL_SERVICE_NAME: "shop-sluice",
    OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
    OTEL_TRACES_SAMPLER_ARG: "0.25",
    OTEL_RESOURCE_ATTRIBUTES: "k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE),team=shop",
    SLUICE_LOG_LEVEL: "warn",
  });
  expect(c.lifecycle).toBeUndefined();
  expect(one(r, "Deployment").spec.template.spec.terminationGracePeriodSeconds).toBe(45);
  expect(one(r, "PodDisruptionBudget").spec).toMatchObject({ maxUnavailable: 1 });
  const sm = one(r, "ServiceMonitor");
  expect(sm.metadata.labels.release).toBe("prom");
  const svc = one(r, "Service");
  expect(svc.spec.ports.map((p: Obj) => p.name)).toContain(sm.spec.endpoints[0].port);
  for (const [k, val] of Object.entries(sm.spec.selector.matchLabels)) expect(svc.metadata.labels[k]).toBe(val);

  // The ConfigMap's file, run by sluice: the extra route answers, the rest reaches the app.
  const file = join(dir, "from-chart.yaml");
  writeFileSync(file, one(r, "ConfigMap").data["sluice.yaml"]);
  const child = spawn(process.execPath, ["dist/proxy/cli.js", "--config", file], { stdio: "ignore" });
  try {
    await waitForPort(proxy);
    const ping = await request(`http://127.0.0.1:${proxy}/ping`);
    expect(await ping.body.text()).toBe("pong\n");
    const bytes = await request(`http://127.0.0.1:${proxy}/bytes/300000`);
    expect((await bytes.body.arrayBuffer()).byteLength).toBe(300000);
    // workers: auto: the primary is ready once every worker serves.
    await waitForPort(admin);
    let status = 0;
    for (let i = 0; i < 50 && status !== 200; i++) {
      const ready = await request(`http://127.0.0.1:${admin}/readyz`);
      status = ready.statusCode;
      await ready.body.dump();
      if (status !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    expect(status).toBe(200);
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
    await demo.close();
  }
});

test("TLS values: the listener's Secret, a client CA, and TLS to the app, each mounted as a directory and named in the config", async () => {
  const r = await render({
    ...minimal,
    tls: { secretName: "shop-tls", minVersion: "TLSv1.3", clientCA: { secretName: "partners-ca", required: false } },
    upstreamTLS: { enabled: true, serverName: "api.local", caSecretName: "app-ca", clientCertSecretName: "sluice-client" },
  });
  await checkRendering(r);
  const cfg = parseAllDocuments(one(r, "ConfigMap").data["sluice.yaml"])[0]?.toJS();
  expect(cfg.listeners[0].tls).toEqual({
    certificates: [{ cert: "/etc/sluice-tls/listener/tls.crt", key: "/etc/sluice-tls/listener/tls.key" }],
    min_version: "TLSv1.3",
    client_certificate: { ca: "/etc/sluice-tls/client-ca/ca.crt", required: false },
  });
  expect(cfg.clusters.app.tls).toEqual({
    server_name: "api.local",
    ca: "/etc/sluice-tls/upstream-ca/ca.crt",
    cert: "/etc/sluice-tls/upstream-client/tls.crt",
    key: "/etc/sluice-tls/upstream-client/tls.key",
  });
  const pod = one(r, "Deployment").spec.template.spec;
  const secrets = Object.fromEntries(pod.volumes.filter((v: Obj) => v.secret).map((v: Obj) => [v.name, v.secret.secretName]));
  expect(secrets).toEqual({
    "sluice-tls": "shop-tls",
    "sluice-client-ca": "partners-ca",
    "sluice-upstream-ca": "app-ca",
    "sluice-upstream-client": "sluice-client",
  });
  // Directory mounts (a subPath would never see a renewal), read-only.
  const mounts = pod.initContainers[0].volumeMounts.filter((m: Obj) => m.name in secrets);
  expect(mounts).toHaveLength(4);
  for (const m of mounts) expect(m).toMatchObject({ readOnly: true, mountPath: expect.stringMatching(/^\/etc\/sluice-tls\//) });
  for (const m of mounts) expect(m.subPath).toBeUndefined();
  // Without tls values: no Secret, no tls block.
  const plain = await render(minimal);
  expect(one(plain, "Deployment").spec.template.spec.volumes.filter((v: Obj) => v.secret)).toEqual([]);
  expect(parseAllDocuments(one(plain, "ConfigMap").data["sluice.yaml"])[0]?.toJS().listeners[0].tls).toBeUndefined();
  // A version the schema doesn't know is refused by Helm.
  expect(await renderError({ ...minimal, tls: { secretName: "x", minVersion: "TLSv1.1" } })).toMatch(/minVersion/);
});

test("helm lint --strict passes on each of chart-testing's ci/*-values.yaml; on bare defaults it names the missing app image", async () => {
  const files = readdirSync(join(CHART, "ci")).filter((f) => f.endsWith("-values.yaml"));
  expect(files.length).toBeGreaterThanOrEqual(3);
  for (const f of files) {
    const kube = f.startsWith("classic") ? ["--kube-version", "v1.27.4"] : [];
    const r = await run(helm, ["lint", "--strict", CHART, "-f", join(CHART, "ci", f), ...kube]);
    expect(r.stdout, f).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
  }
  const bare = await run(helm, ["lint", "--strict", CHART]).then(
    () => "",
    (e: { stdout: string }) => e.stdout,
  );
  expect(bare).toMatch(/app\/image\/repository/);
});

test("values are checked by Helm against values.schema.json, which carries sluice's config schema", async () => {
  const bad: Array<[string, Obj, RegExp]> = [
    ["port as a string", { ports: { proxy: "8080", admin: 9901 } }, /ports\/proxy/],
    ["zero workers", { workers: 0 }, /workers/],
    ["an unknown key", { sidecars: { native: true } }, /sidecars/],
    ["an unknown otel protocol", { otel: { protocol: "grpc" } }, /otel\/protocol/],
    ["no app image", { app: { image: { repository: "" } } }, /app\/image\/repository/],
    // What sluice itself would refuse, refused before anything is deployed:
    ["a route with a misspelt key", { routes: [{ name: "x", match: {}, forward: { clusterr: "app" } }] }, /routes\/0/],
    ["a limit of the wrong type", { limits: { max_body_bytes: "1G" } }, /limits\/max_body_bytes/],
    ["an unknown timeout", { timeouts: { heads: "10s" } }, /timeouts/],
    ["a duration without a unit", { timeouts: { head: "10" } }, /timeouts\/head/],
    ["an unknown top-level setting", { config: { splice: { thresold: 1 } } }, /config\/splice/],
  ];
  for (const [what, change, where] of bad) {
    const values = { ...minimal, ...change, app: { ...minimal.app, ...(change.app ?? {}) } };
    expect(await renderError(values), what).toMatch(where);
  }
  // --set gives strings: a sampler ratio given that way is accepted, a wrong one is not.
  const set = await render(minimal, { flags: ["--set", "otel.endpoint=http://c:4318", "--set", "otel.samplerRatio=0.1"] });
  const env = one(set, "Deployment").spec.template.spec.initContainers[0].env;
  expect(env.find((e: Obj) => e.name === "OTEL_TRACES_SAMPLER_ARG")?.value).toBe("0.1");
  expect(await renderError(minimal, { flags: ["--set", "otel.samplerRatio=1.5"] })).toMatch(/otel\/samplerRatio/);
  // The chart's copy of sluice's schema is the current one.
  await run(process.execPath, ["scripts/chart-schema.mjs", "--check"]);
});

test("pods roll when a setting sluice reads only at start changes (workers, telemetry), not when routes change", async () => {
  const checksum = async (values: Obj) =>
    one(await render(values), "Deployment").spec.template.metadata.annotations["checksum/sluice-restart"];
  const base = await checksum(minimal);
  expect(base).toMatch(/^[0-9a-f]{64}$/);
  expect(await checksum({ ...minimal, routes: [{ name: "p", match: {}, respond: { status: 204 } }] })).toBe(base);
  expect(await checksum({ ...minimal, timeouts: { head: "5s" } })).toBe(base);
  expect(await checksum({ ...minimal, workers: 2 })).not.toBe(base);
  expect(await checksum({ ...minimal, config: { telemetry: { tracing: { enabled: false } } } })).not.toBe(base);
});

test("helm install --dry-run renders the release with its notes", async () => {
  const file = join(dir, "install-values.json");
  writeFileSync(file, JSON.stringify(minimal));
  const { stdout } = await run(
    helm,
    ["install", "shop", CHART, "--namespace", "web", "--dry-run=client", "-o", "json", "-f", file],
    {
      maxBuffer: 16 << 20,
    },
  );
  const release = JSON.parse(stdout);
  expect(release.info.notes).toMatch(/shop-sluice/);
  expect(release.manifest).toMatch(/kind: Deployment/);
});

test("another chart adds the sidecar to its own Deployment with the named templates", async () => {
  const chart = join(dir, "consumer");
  cpSync("test/helm/consumer", chart, { recursive: true });
  mkdirSync(join(chart, "charts"));
  symlinkSync(CHART, join(chart, "charts", "sluice"));
  const r = await render({}, { chart, name: "shop" });
  await checkRendering(r);
  // Only the user's Deployment and Service, plus sluice's ConfigMap.
  expect(r.objects.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
    "ConfigMap/shop-sluice-config",
    "Deployment/shop-shop",
    "Service/shop-shop",
  ]);
  const pod = one(r, "Deployment").spec.template.spec;
  expect(pod.initContainers[0]).toMatchObject({ name: "sluice", restartPolicy: "Always" });
  expect(pod.containers.map((c: Obj) => c.name)).toEqual(["web"]);
  const cfg = parseAllDocuments(one(r, "ConfigMap").data["sluice.yaml"])[0]?.toJS();
  expect(cfg.clusters.app.endpoints).toEqual(["127.0.0.1:8000"]);
});
