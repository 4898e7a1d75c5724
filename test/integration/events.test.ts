import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { assertLabReady, Daemon, Netns, netState, rootSnapshot, runId, waitFor } from "../helpers/lab.js";

// Kernel events, with the full resync an hour away so that only events can
// explain what happens: vmrouted's own changes raise no further pass, foreign
// objects raise none at all, and drift of its own objects is repaired by the
// event it raises.

const id = runId();
let host: Netns;
let task: Netns;
let daemon: Daemon;
let rootBefore = "";

const spec = (n: number) => [
  "endpoints:",
  ...Array.from({ length: n }, (_, i) => `  - { kind: tap, network: service, ip: 172.31.16.${10 + i} }`),
  `  - { kind: netns, network: service, ip: 172.31.16.200, netns: ${task.name} }`,
].join("\n") + "\n";
const eventPasses = async () => (await daemon.status()).reconcile.passesByTrigger["kernel event"] ?? 0;
const routeTo = async (ip: string) => (await host.json<Array<{ dst: string; protocol?: string }>>(["-4", "route", "show", "proto", "94"])).some((r) => r.dst === ip);
/** Events take 30 ms to be judged; a second is plenty for any pass they would cause to have run. */
const quiet = () => new Promise((r) => setTimeout(r, 1000));

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  host = await Netns.create(`vmrt-${id}-host`);
  task = await Netns.create(`vmrt-${id}-t1`);
  daemon = await Daemon.create(host, { resyncSeconds: 3600 });
  await daemon.start();
  const r = await daemon.ctl(["apply", "-f", "-"], spec(20));
  expect(r.exitCode, r.stderr).toBe(0);
});

afterAll(async () => {
  await daemon?.cleanup();
  await task?.destroy();
  await host?.destroy();
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("kernel events", () => {
  it("a pass that applied operations is followed by no pass caused by its own kernel events", async () => {
    await quiet();
    const before = await eventPasses();
    const opsBefore = (await daemon.status()).reconcile.operationsApplied;
    for (const n of [60, 5, 40]) {
      const r = await daemon.ctl(["apply", "-f", "-"], spec(n));
      expect(r.exitCode, r.stderr).toBe(0);
      await quiet();
    }
    const status = await daemon.status();
    expect(status.reconcile.operationsApplied).toBeGreaterThan(opsBefore + 100); // the batches really ran
    expect(status.endpoints.every((e) => e.state === "ready")).toBe(true);
    expect(await eventPasses()).toBe(before);
  });

  it("events about objects that are not vmrouted's trigger no pass", async () => {
    const before = await eventPasses();
    // A tap with one of our names' shape, a bridge, routes, neighbours and addresses, none ours.
    await host.ip(["tuntap", "add", "dev", "tap-0123456789", "mode", "tap"]);
    await host.ip(["link", "set", "tap-0123456789", "up", "group", "94"]);
    await host.ip(["link", "add", "br-foreign", "type", "bridge"]);
    await host.ip(["link", "set", "br-foreign", "up"]);
    await host.ip(["address", "add", "10.77.0.1/24", "dev", "br-foreign"]);
    await host.ip(["route", "add", "10.88.0.0/16", "via", "10.77.0.9", "proto", "static"]);
    await host.ip(["neigh", "add", "10.77.0.9", "lladdr", "02:00:00:00:00:09", "dev", "br-foreign", "nud", "permanent"]);
    await host.ip(["route", "add", "10.99.9.9/32", "dev", "tap-0123456789", "proto", "94"]); // our protocol, but no workload's
    const foreign = await netState(host.name);
    await quiet();
    expect(await eventPasses()).toBe(before + 1); // only the proto-94 route to no workload: ours to remove
    expect(await routeTo("10.99.9.9")).toBe(false);
    await host.ip(["route", "del", "10.88.0.0/16"]);
    await host.ip(["neigh", "del", "10.77.0.9", "dev", "br-foreign"]);
    await host.ip(["link", "del", "br-foreign"]);
    await host.ip(["link", "del", "tap-0123456789"]);
    await quiet();
    expect(await eventPasses()).toBe(before + 1);
    expect(foreign).toContain("tap-0123456789"); // the foreign objects were there, untouched, while they lasted
  });

  it("between listings the picture follows foreign routes: one that came is a conflict, one whose device went is none", async () => {
    const endpoint = async (ip: string) => (await daemon.status()).endpoints.find((e) => e.ip === ip);
    const routesTo = (ip: string) => host.json<Array<{ dst: string; dev?: string; protocol?: string; metric?: number }>>(["-4", "route", "show", `${ip}/32`]);
    for (const dev of ["rb-gone", "rb-here"]) {
      await host.ip(["tuntap", "add", "dev", dev, "mode", "tap"]);
      await host.ip(["link", "set", dev, "up"]);
    }
    // Listed by a full pass: a foreign route (no proto: boot) to an IP that is no workload's yet.
    await host.ip(["route", "add", "172.31.16.150/32", "dev", "rb-gone"]);
    expect((await daemon.request("POST", "/v1/reconcile")).status).toBe(200);
    // Came after the listing, with the very metric vmrouted's route would have: `route replace` would take it over.
    await host.ip(["route", "add", "172.31.16.152/32", "dev", "rb-here", "proto", "static", "metric", "1024"]);
    // The kernel flushes rb-gone's route with the device, and says nothing about the route.
    await host.ip(["link", "del", "rb-gone"]);
    await quiet();
    try {
      for (const ip of ["172.31.16.150", "172.31.16.152"]) {
        const r = await daemon.ctl(["tap", "add", "--network", "service", "--ip", ip]);
        expect(r.exitCode, r.stderr).toBe(0);
      }
      expect(await endpoint("172.31.16.150")).toMatchObject({ state: "ready" });
      expect(await routesTo("172.31.16.150")).toEqual([expect.objectContaining({ protocol: "94" })]);
      expect(await endpoint("172.31.16.152")).toMatchObject({ state: "degraded", reason: expect.stringContaining("protocol 4") });
      expect(await routesTo("172.31.16.152")).toEqual([expect.objectContaining({ dev: "rb-here", protocol: "4", metric: 1024 })]);
    } finally {
      for (const ip of ["172.31.16.150", "172.31.16.152"]) await daemon.ctl(["tap", "remove", ip]);
      await host.ip(["link", "del", "rb-here"]);
    }
  });

  it("a foreign route the kernel dropped without an event (its device's last address removed) holds no endpoint back", async () => {
    const endpoint = async (ip: string) => (await daemon.status()).endpoints.find((e) => e.ip === ip);
    await host.ip(["link", "add", "fx0", "type", "veth", "peer", "name", "fx1"]);
    try {
      for (const dev of ["fx0", "fx1"]) await host.ip(["link", "set", dev, "up"]);
      await host.ip(["address", "add", "10.77.0.1/24", "dev", "fx0"]);
      await host.ip(["route", "add", "172.31.16.160/32", "dev", "fx0", "proto", "static"]);
      expect((await daemon.request("POST", "/v1/reconcile")).status).toBe(200);
      // IPv4 goes from fx0 with its last address, and its routes with it: the kernel sends no route event for them.
      await host.ip(["address", "del", "10.77.0.1/24", "dev", "fx0"]);
      expect(await host.json<unknown[]>(["-4", "route", "show", "172.31.16.160/32"])).toEqual([]);
      await quiet();
      const r = await daemon.ctl(["tap", "add", "--network", "service", "--ip", "172.31.16.160"]);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(await endpoint("172.31.16.160")).toMatchObject({ state: "ready" });
      expect(await routeTo("172.31.16.160")).toBe(true);
    } finally {
      await daemon.ctl(["tap", "remove", "172.31.16.160"]);
      await host.ip(["link", "del", "fx0"], false);
    }
  });

  it("a /32 deleted by hand is repaired by its event (the resync is an hour away)", async () => {
    const before = await eventPasses();
    const e = (await daemon.status()).endpoints.find((x) => x.ip === "172.31.16.12")!;
    await host.ip(["route", "del", "172.31.16.12/32", "dev", e.device, "proto", "94", "metric", "1024"]);
    await waitFor(() => routeTo("172.31.16.12"), 2000, "the route to be repaired");
    await quiet();
    expect(await eventPasses()).toBe(before + 1);
  });

  it("a tap, a neighbour entry and a downed device are repaired by their events", async () => {
    const status = await daemon.status();
    const [a, b, c] = ["172.31.16.13", "172.31.16.14", "172.31.16.15"].map((ip) => status.endpoints.find((x) => x.ip === ip)!);
    const ifindex = async (dev: string) => (await host.json<Array<{ ifindex: number }>>(["link", "show", "dev", dev]))[0]?.ifindex;
    const oldIndex = await ifindex(a!.device);
    await host.ip(["link", "del", a!.device]);
    await host.ip(["neigh", "del", b!.ip, "dev", b!.device]);
    await host.ip(["link", "set", c!.device, "down"]);
    await waitFor(async () => {
      const s = await daemon.status();
      return [a, b, c].every((x) => s.endpoints.find((y) => y.id === x!.id)?.state === "ready") && (await routeTo(a!.ip));
    }, 3000, "the three endpoints to be ready again");
    expect(await ifindex(a!.device)).not.toBe(oldIndex);
    const neigh = await host.json<Array<{ dst: string; state?: string[] }>>(["neigh", "show", "dev", b!.device]);
    expect(neigh).toContainEqual(expect.objectContaining({ dst: b!.ip, state: ["PERMANENT"] }));
  });

  it("a namespace that appears is noticed without a resync (a waiting netns endpoint is set up)", async () => {
    const late = `vmrt-${id}-late`;
    const r = await daemon.ctl(["netns", "add", late, "--network", "service", "--ip", "172.31.16.201"]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect((await daemon.status()).endpoints.find((e) => e.ip === "172.31.16.201")?.state).toBe("pending");
    const ns = await Netns.create(late);
    try {
      await waitFor(async () => (await daemon.status()).endpoints.find((e) => e.ip === "172.31.16.201")?.state === "ready", 3000, "the endpoint to be set up");
    } finally {
      await daemon.ctl(["netns", "remove", late]);
      await ns.destroy();
    }
  });
});
