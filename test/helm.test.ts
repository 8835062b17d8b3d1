// The Helm chart, rendered without the helm binary (not installable here) by
// test/helm/render.go: Go's text/template with sprig and Helm's own functions, the same
// engine Helm uses. Each rendering is checked as Kubernetes would see it: valid YAML, every
// object valid against the Kubernetes OpenAPI schemas (kubernetes-models), references that
// resolve, the chart's values schema, and the ConfigMap's config accepted by sluice itself.
import { execFile, spawn } from "node:child_process";
import { cpSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { Ajv } from "ajv";
import { Deployment } from "kubernetes-models/apps/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ConfigMap, Service } from "kubernetes-models/v1";
import { request } from "undici";
import { beforeAll, expect, test } from "vitest";
import { parseAllDocuments } from "yaml";
import { startDemoUpstream } from "../proxy/tools/demo-upstream.js";
import { freePort, waitForPort } from "../proxy/tools/ports.js";
import { tempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const CHART = resolve("helm/sluice");
const dir = tempDir("helm");
const renderer = join(dir, "render");

// biome-ignore lint/suspicious/noExplicitAny: manifests are checked field by field below
type Obj = any;

beforeAll(async () => {
  // GOPATH mode against Debian's Go packages (golang-github-masterminds-sprig-dev, golang-k8s-sigs-yaml-dev).
  await run("go", ["build", "-o", renderer, "test/helm/render.go"], {
    env: { ...process.env, GO111MODULE: "off", GOPATH: "/usr/share/gocode", GOCACHE: join(dir, "gocache"), GOFLAGS: "" },
    timeout: 300_000,
  });
}, 300_000);

interface Rendered {
  values: Obj;
  manifests: Record<string, string>;
  notes: string;
  objects: Obj[];
}

let n = 0;
async function render(values: Obj, opts: { chart?: string; kube?: string; name?: string } = {}): Promise<Rendered> {
  const file = join(dir, `values-${n++}.yaml`);
  writeFileSync(file, JSON.stringify(values));
  const { stdout } = await run(
    renderer,
    ["-name", opts.name ?? "shop", "-namespace", "web", "-kube-version", opts.kube ?? "v1.30.2", "-f", file, opts.chart ?? CHART],
    { maxBuffer: 16 << 20 },
  );
  const out = JSON.parse(stdout) as Omit<Rendered, "objects">;
  const objects: Obj[] = [];
  for (const [path, text] of Object.entries(out.manifests)) {
    for (const doc of parseAllDocuments(text)) {
      expect(doc.errors, `${path}: ${doc.errors.join("; ")}`).toEqual([]);
      const o = doc.toJS();
      if (o !== null) objects.push(o);
    }
  }
  return { ...out, objects };
}

const renderError = (values: Obj, opts: { kube?: string } = {}) =>
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

const schema = JSON.parse(readFileSync(join(CHART, "values.schema.json"), "utf8"));
const validateValues = new Ajv({ allErrors: true, strict: false }).compile(schema);

/** What every rendering must satisfy: schemas, labels, references, sluice's own verdict on its config. */
async function checkRendering(r: Rendered, chartValues: Obj): Promise<void> {
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
  writeFileSync(file, cm.data["sluice.yaml"]);
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
  if (chartValues === null) return;
  expect(validateValues(chartValues), JSON.stringify(validateValues.errors)).toBe(true);
  expect(r.notes.trim()).not.toBe("");
}

const minimal = { app: { image: { repository: "registry.example.com/shop/api", tag: "1.4.2" }, port: 3000 } };

test("default: a native sidecar (init container, restartPolicy Always) in front of the app, Service to sluice", async () => {
  const r = await render(minimal);
  await checkRendering(r, r.values);
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
  await checkRendering(r, r.values);
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
  await checkRendering(r, r.values);
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

test("values are checked by values.schema.json, and the app image is required", async () => {
  const defaults = (await render(minimal)).values;
  const bad: Array<[string, Obj]> = [
    ["port as a string", { ports: { proxy: "8080", admin: 9901 } }],
    ["zero workers", { workers: 0 }],
    ["an unknown key", { sidecars: { native: true } }],
    ["an unknown otel protocol", { otel: { protocol: "grpc" } }],
  ];
  for (const [what, change] of bad) expect(validateValues({ ...defaults, ...change }), what).toBe(false);
  expect(validateValues({ ...defaults, app: { ...defaults.app, image: { repository: "" } } })).toBe(false);
  expect(await renderError({})).toMatch(/app.image.repository is required/);
});

test("another chart adds the sidecar to its own Deployment with the named templates", async () => {
  const chart = join(dir, "consumer");
  cpSync("test/helm/consumer", chart, { recursive: true });
  mkdirSync(join(chart, "charts"));
  symlinkSync(CHART, join(chart, "charts", "sluice"));
  const r = await render({}, { chart, name: "shop" });
  await checkRendering(r, null);
  expect(validateValues(r.values.sluice), JSON.stringify(validateValues.errors)).toBe(true);
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
