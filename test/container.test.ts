// The Dockerfile, built and run with podman: a request proxied through the running
// container, spliced; non-root, no compiler, HEALTHCHECK passing, SIGTERM exits 0.
// Base images cannot be pulled here: test/container/make-base-images.sh makes them
// from Debian's packages and this machine's Node. Skipped where podman is not installed.
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { request } from "undici";
import { afterAll, beforeAll, expect, test } from "vitest";
import { parseAllDocuments, stringify } from "yaml";
import type { Listening } from "../proxy/session/listening.js";
import { demoBodySha256, startDemoUpstream } from "../proxy/tools/demo-upstream.js";
import { freePort, waitForPort } from "../proxy/tools/ports.js";
import { kubeTool } from "./helpers/kube-tools.js";
import { hashStream } from "./helpers/net.js";
import { hasPodman, LIMITS, makeBaseImages, podman, startContainer } from "./helpers/podman.js";
import { tempDir } from "./helpers/tmp.js";

const run = promisify(execFile);
const IMAGE = "localhost/sluice:test";
const NAME = `sluice-test-${process.pid}`;

let demo: Listening;

beforeAll(async () => {
  if (!hasPodman) return;
  demo = await startDemoUpstream({ host: "127.0.0.1", port: 0 });
  await makeBaseImages();
  await podman(["build", "--format", "docker", "--pull=never", "--network", "host", ...LIMITS, "-t", IMAGE, "."], 600_000);
}, 900_000);

afterAll(async () => {
  if (!hasPodman) return;
  await podman(["rm", "-f", NAME]).catch(() => undefined);
  await demo.close();
  // The image and the builder stage this run left behind (about 1 GB); the base images stay for the next run.
  await podman(["rmi", "-f", IMAGE]).catch(() => undefined);
  const dangling = await podman([
    "images",
    "-q",
    "--filter",
    "dangling=true",
    "--filter",
    "since=docker.io/library/node:20-bookworm",
  ]);
  if (dangling) await podman(["rmi", "-f", ...dangling.split("\n")]).catch(() => undefined);
});

test.skipIf(!hasPodman)(
  "the image proxies a spliced 100 MiB body as a non-root user without a compiler, is healthy, and stops cleanly on SIGTERM",
  async () => {
    const port = await freePort();
    const admin = await freePort();
    await startContainer(NAME, [
      "-e",
      `SLUICE_LISTEN=127.0.0.1:${port}`,
      "-e",
      `APP_ADDRESS=127.0.0.1:${demo.address.port}`,
      "-e",
      `SLUICE_ADMIN=127.0.0.1:${admin}`,
      IMAGE,
    ]);
    await waitForPort(port);

    const size = 100 << 20;
    const r = await request(`http://127.0.0.1:${port}/bytes/${size}`);
    expect(r.statusCode).toBe(200);
    expect(await hashStream(r.body)).toEqual({ hash: demoBodySha256(size), bytes: size });

    // The body went through the splice engine inside the container (what came with the head is copied).
    const metrics = await (await request(`http://127.0.0.1:${admin}/metrics`)).body.text();
    const moved = (path: string) =>
      Number(
        new RegExp(`^sluice_body_bytes_total\\{engine="splice",direction="response",path="${path}"\\} (\\d+)$`, "m").exec(
          metrics,
        )?.[1],
      );
    expect(moved("spliced") + moved("copied")).toBe(size);
    expect(moved("spliced")).toBeGreaterThan(size * 0.99);

    // The HEALTHCHECK asks the admin address the running config gives (here from SLUICE_ADMIN, not the default 9901).
    await podman(["healthcheck", "run", NAME]);
    expect(await podman(["exec", NAME, "node", "-e", "process.stdout.write(String(process.getuid()))"])).toBe("1000");
    // Nothing but Node and its libraries: no shell, no compiler.
    await expect(podman(["exec", NAME, "/bin/sh", "-c", "true"])).rejects.toThrow();
    for (const tool of ["/usr/bin/g++", "/usr/bin/cc", "/usr/bin/make", "/usr/bin/apt-get"])
      expect(
        await podman(["exec", NAME, "node", "-e", `process.stdout.write(String(require("fs").existsSync("${tool}")))`]),
      ).toBe("false");
    expect(await podman(["inspect", NAME, "--format", "{{.Config.User}}"])).toBe("1000:1000");
    // Half the size of an image on the slim Node base (317 MB when it was one): Node is most of it.
    const bytes = Number(await podman(["image", "inspect", IMAGE, "--format", "{{.Size}}"]));
    expect(bytes).toBeLessThan(160e6);

    const t0 = performance.now();
    await podman(["stop", "--time", "20", NAME]);
    expect(performance.now() - t0).toBeLessThan(10_000);
    expect(await podman(["inspect", NAME, "--format", "{{.State.ExitCode}}"])).toBe("0");
    const logs = await podman(["logs", NAME]);
    expect(logs).toMatch(/"msg":"splice engine loaded"/);
    expect(logs).toMatch(/"msg":"drained"/);
  },
);

test.skipIf(!hasPodman)("workers: auto runs one worker per CPU of the container's limit, not of the machine", async () => {
  // A limit of 1 CPU (and of 2 where the machine has them: podman refuses more than it has).
  for (const cpus of availableParallelism() >= 2 ? ["1", "2"] : ["1"]) {
    const port = await freePort();
    const name = `${NAME}-cpus-${cpus}`;
    await startContainer(name, [
      `--cpus=${cpus}`,
      IMAGE,
      "--listen",
      `127.0.0.1:${port}`,
      "--upstream",
      `127.0.0.1:${demo.address.port}`,
      "--workers",
      "auto",
    ]);
    try {
      await waitForPort(port, 600);
      let logs = "";
      for (let i = 0; i < 100 && !logs.includes('"msg":"sluice running"'); i++) {
        logs = await podman(["logs", name]);
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(logs).toMatch(new RegExp(`"workers":${cpus},[^\n]*"msg":"sluice running"`));
    } finally {
      await podman(["rm", "-f", name]).catch(() => undefined);
    }
  }
});

test.skipIf(!hasPodman)(
  "the chart's rendered pod runs under podman kube play: a request reaches the app through the sidecar, spliced, from the ConfigMap's config",
  async () => {
    const dir = tempDir("kube-play");
    const [app, appProxy, proxy, admin] = [await freePort(), await freePort(), await freePort(), await freePort()];
    // The app is the image's own demo upstream (its proxy on another port, unused). Classic
    // sidecar: podman 4.3 cannot run native sidecar init containers.
    const values = {
      app: {
        image: { repository: "localhost/sluice", tag: "test", pullPolicy: "Never" },
        port: app,
        args: ["demo", "--port", String(appProxy), "--upstream-port", String(app)],
      },
      image: { repository: "localhost/sluice", tag: "test", pullPolicy: "Never" },
      sidecar: { native: false },
      replicaCount: 1,
      ports: { proxy, admin },
      admin: { bindAddress: "127.0.0.1" },
      preStopSleepSeconds: 0,
    };
    writeFileSync(join(dir, "values.json"), JSON.stringify(values));
    const { stdout } = await run(
      kubeTool("helm"),
      ["template", "shop", "helm/sluice", "--kube-version", "v1.27.4", "-f", join(dir, "values.json")],
      { maxBuffer: 16 << 20 },
    );
    // Host networking keeps every port on loopback here, and podman then refuses port
    // mappings: the containers' port lists go (probes get the numbers they named); the
    // Service has no meaning to podman. Nothing else is changed.
    const docs = parseAllDocuments(stdout)
      .map((d) => d.toJS())
      .filter((o) => o !== null && o.kind !== "Service");
    for (const d of docs.filter((o) => o.kind === "Deployment")) {
      const pod = d.spec.template.spec;
      for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
        const named = Object.fromEntries(
          (c.ports ?? []).map((p: { name: string; containerPort: number }) => [p.name, p.containerPort]),
        );
        delete c.ports;
        for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"])
          if (c[probe]?.httpGet) c[probe].httpGet.port = named[c[probe].httpGet.port] ?? c[probe].httpGet.port;
      }
    }
    const kube = join(dir, "pod.yaml");
    writeFileSync(kube, docs.map((d) => stringify(d)).join("---\n"));
    // podman kube play takes no --ulimit: the same limits (raising them is not permitted here), from a config file.
    const conf = join(dir, "containers.conf");
    writeFileSync(conf, '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n');
    const env = { ...process.env, CONTAINERS_CONF: conf };
    await run("podman", ["kube", "play", "--network", "host", kube], { env, timeout: 120_000 });
    try {
      await waitForPort(proxy, 1200); // up to a minute
      const size = 10 << 20;
      let r = await request(`http://127.0.0.1:${proxy}/bytes/${size}`);
      // sluice may be up before the app: 502/503 until the app listens.
      for (let i = 0; i < 100 && r.statusCode !== 200; i++) {
        await r.body.dump();
        await new Promise((res) => setTimeout(res, 100));
        r = await request(`http://127.0.0.1:${proxy}/bytes/${size}`);
      }
      expect(r.statusCode).toBe(200);
      expect(await hashStream(r.body)).toEqual({ hash: demoBodySha256(size), bytes: size });
      const metrics = await (await request(`http://127.0.0.1:${admin}/metrics`)).body.text();
      const spliced = Number(
        /^sluice_body_bytes_total\{engine="splice",direction="response",path="spliced"\} (\d+)$/m.exec(metrics)?.[1],
      );
      expect(spliced).toBeGreaterThan(size * 0.99);
      const ready = await request(`http://127.0.0.1:${admin}/readyz`);
      expect(ready.statusCode).toBe(200);
      await ready.body.dump();
    } finally {
      await run("podman", ["kube", "down", kube], { env, timeout: 120_000 }).catch(() => undefined);
    }
  },
);
