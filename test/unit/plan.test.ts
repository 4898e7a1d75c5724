import { describe, expect, it } from "vitest";
import { plan } from "../../src/dataplane/plan.js";
import { renderBatchLine, renderNetnsLines, type Operation } from "../../src/dataplane/operations.js";
import { changedScope } from "../../src/dataplane/scope.js";
import { applyToModel } from "../helpers/fake-kernel.js";
import { desired, netns, observedWithNetns, SERVICE, settings, tap } from "../helpers/fixtures.js";

const converge = (d: ReturnType<typeof desired>, o = observedWithNetns("task-1")) => applyToModel(o, plan(d, o, settings).operations);

describe("planner", () => {
  it("keeps a held entry's device, route and its network's gateway as found, and reports them", () => {
    const dark = { gateway: "172.31.17.1/24" };
    const before = converge(desired([tap("172.31.16.10"), { kind: "tap", network: "dark", ip: "172.31.17.10" } as never], { dark }));
    const darkTap = [...before.links.values()].find((l) => l.alias === "vmrouted:tap:172.31.17.10")!.name;
    // The network left the config: its entry no longer resolves and is held.
    const now = desired([tap("172.31.16.10"), { kind: "tap", network: "dark", ip: "172.31.17.10" } as never]);
    expect(now.held?.map((h) => h.id)).toEqual(["tap:172.31.17.10"]);
    const p = plan(now, before, settings);
    expect(p.operations).toEqual([]);
    expect(p.held).toMatchObject([{ held: { id: "tap:172.31.17.10" }, link: { name: darkTap }, routed: true }]);
    // Without the hold, the same plan deletes them (what the hold prevents).
    const unheld = plan({ ...now, held: [] }, before, settings).operations.map(renderBatchLine);
    expect(unheld).toEqual(expect.arrayContaining([`link del dev ${darkTap}`, "link del dev virgw-dark"]));
  });

  it("keeps every vm-class device, route and neighbour as found while the domains are unknown", () => {
    const vm = { ...tap("172.31.16.20"), name: "tap-vm20" };
    const before = converge(desired([vm]));
    const link = before.links.get("tap-vm20")!;
    const asVm = { ...before, links: new Map([...before.links, ["tap-vm20", { ...link, alias: "vmrouted:vm:172.31.16.20" }]]) };
    const unknown = { ...desired([]), domainsKnown: false };
    const p = plan(unknown, asVm, settings);
    expect(p.operations.map(renderBatchLine).filter((l) => l?.includes("tap-vm20") || l?.includes("172.31.16.20"))).toEqual([]);
    expect(p.held).toMatchObject([{ held: { id: "vm:172.31.16.20", kind: "vm", ip: "172.31.16.20", network: "service" }, routed: true }]);
    // Known (libvirt answered, no such domain): removed.
    expect(plan({ ...unknown, domainsKnown: true }, asVm, settings).operations.map(renderBatchLine)).toContain("link del dev tap-vm20");
  });

  it("creates gateway, taps, veths, routes, neighbours and sysctls from nothing", () => {
    const d = desired([tap("172.31.16.10"), netns("172.31.16.31", "task-1")]);
    const ops = plan(d, observedWithNetns("task-1"), settings).operations;
    const lines = ops.map(renderBatchLine).filter(Boolean);
    expect(lines).toContain("link add virgw-service type bridge");
    expect(lines).toContain("address replace 172.31.16.1/24 dev virgw-service noprefixroute");
    const tapDev = d.endpoints.find((e) => e.kind === "tap")!.device;
    expect(lines).toContain(`tuntap add dev ${tapDev} mode tap one_queue vnet_hdr`);
    expect(lines).toContain(`route replace 172.31.16.10/32 dev ${tapDev} proto 94 scope link metric 1024`);
    expect(lines.some((l) => l!.startsWith(`neigh replace 172.31.16.10 lladdr 52:54:00:`) && l!.endsWith("nud permanent"))).toBe(true);
    expect(ops.filter((o) => o.op === "sysctl.set").map((o) => (o as { key: string }).key)).toEqual(expect.arrayContaining([
      "net/ipv4/ip_forward", `net/ipv4/conf/${tapDev}/proxy_arp`, `net/ipv4/neigh/${tapDev}/proxy_delay`, `net/ipv4/conf/${tapDev}/rp_filter`,
    ]));
    expect(ops.some((o) => o.op === "netns.configure" && o.netns === "task-1" && o.gateway === "172.31.16.1" && o.cidr === "172.31.16.31/24")).toBe(true);
    // Order: devices exist before anything is set on them, routes come after links are up.
    const idx = (pred: (l: string) => boolean) => lines.findIndex((l) => pred(l!));
    expect(idx((l) => l.startsWith("tuntap add"))).toBeLessThan(idx((l) => l.startsWith(`link set dev ${tapDev}`)));
    expect(idx((l) => l.startsWith(`link set dev ${tapDev}`))).toBeLessThan(idx((l) => l.startsWith("route replace 172.31.16.10")));
  });

  it("is idempotent: planning against the state just applied yields no operations", () => {
    const d = desired([tap("172.31.16.10"), tap("172.31.16.11", { name: "tap-custom" }), netns("172.31.16.31", "task-1")]);
    const after = converge(d);
    const again = plan(d, after, settings);
    expect(again.operations).toEqual([]);
    expect(again.endpoints.every((c) => c.routeOk && c.neighbourOk && c.innerOk && c.badSysctls.length === 0)).toBe(true);
  });

  it("changes only what differs (a changed MAC updates the neighbour and tap MAC, nothing else)", () => {
    const before = converge(desired([tap("172.31.16.10", { mac: "52:54:00:00:00:01" })]));
    const ops = plan(desired([tap("172.31.16.10", { mac: "52:54:00:00:00:02" })]), before, settings).operations;
    expect(ops.map((o) => o.op).sort()).toEqual(["link.set", "neighbour.replace"]);
    expect(ops.find((o) => o.op === "link.set")).toMatchObject({ mac: "fe:54:00:00:00:02" });
  });

  it("repairs drift: a deleted route, a reset sysctl, a downed tap", () => {
    const d = desired([tap("172.31.16.10")]);
    const s = converge(d);
    const dev = d.endpoints[0]!.device;
    s.routes = s.routes.filter((r) => r.device !== dev);
    s.sysctls.get(dev)!.rpFilter = "0";
    s.links.get(dev)!.up = false;
    const ops = plan(d, s, settings).operations;
    expect(ops.map((o) => o.op).sort()).toEqual(["link.set", "route.replace", "sysctl.set"]);
    expect(plan(d, applyToModel(s, ops), settings).operations).toEqual([]);
  });

  it("removes exactly what it created, devices in one group delete", () => {
    const full = desired([tap("172.31.16.10"), tap("172.31.16.11"), netns("172.31.16.31", "task-1")]);
    const s = converge(full);
    const keep = desired([tap("172.31.16.10")]);
    // Only a complete listing of links proves the teardown group holds nothing foreign.
    expect(plan(keep, s, settings).operations.filter((o) => o.op === "link.delete-group")).toEqual([]);
    const ops = plan(keep, s, settings, { completeLinks: true }).operations;
    expect(ops.filter((o) => o.op === "link.set").every((o) => (o as { group?: number }).group === 95)).toBe(true);
    expect(ops.filter((o) => o.op === "link.delete-group")).toHaveLength(1);
    expect(ops.some((o) => o.op === "route.delete")).toBe(false); // the kernel drops routes with their devices
    const after = applyToModel(s, ops);
    expect([...after.links.keys()].sort()).toEqual([keep.endpoints[0]!.device, "virgw-service"].sort());
    expect(plan(keep, after, settings).operations).toEqual([]);
  });

  it("removes a runtime network's gateway device when the network goes", () => {
    const withNet = desired([], { extra: { gateway: "172.31.17.1/24" } });
    const s = converge(withNet);
    expect(s.links.has("virgw-extra")).toBe(true);
    const ops = plan(desired([]), s, settings).operations;
    expect(ops).toEqual([expect.objectContaining({ op: "link.delete", device: "virgw-extra" })]);
  });

  it("falls back to single deletes when something not ours sits in the teardown group", () => {
    const s = converge(desired([tap("172.31.16.10")]));
    s.links.set("foreign0", { name: "foreign0", kind: "tun", group: 95, up: true, carrier: false });
    const ops = plan(desired([]), s, settings).operations;
    expect(ops.some((o) => o.op === "link.delete-group")).toBe(false);
    expect(ops.filter((o) => o.op === "link.delete")).toHaveLength(1);
    expect(applyToModel(s, ops).links.has("foreign0")).toBe(true);
  });

  it("rescues a wanted device stranded in the teardown group before the group is deleted", () => {
    const d = desired([tap("172.31.16.10")]);
    const s = converge(desired([tap("172.31.16.10"), tap("172.31.16.11")]));
    s.links.get(d.endpoints[0]!.device)!.group = 95; // crash between "set group" and "del group"
    const ops = plan(d, s, settings).operations;
    const after = applyToModel(s, ops);
    expect(after.links.has(d.endpoints[0]!.device)).toBe(true);
    expect(plan(d, after, settings).operations).toEqual([]);
  });

  it("never touches what it does not own", () => {
    const d = desired([tap("172.31.16.10")]);
    const o = observedWithNetns();
    const dev = d.endpoints[0]!.device;
    o.links.set(dev, { name: dev, kind: "tun", tunType: "tap", vnetHdr: true, group: 0, up: true, carrier: false }); // look-alike, no alias
    o.links.set("virgw-service", { name: "virgw-service", kind: "bridge", group: 0, up: true, carrier: true });
    o.links.set("tap-other", { name: "tap-other", kind: "tun", tunType: "tap", group: 94, up: true, carrier: false });
    o.routes.push({ dst: "172.31.16.99/32", device: "tap-other", protocol: 4, scope: 253, type: "unicast", metric: 0 });
    const p = plan(d, o, settings);
    const touched = p.operations.filter((op) => "device" in op).map((op) => (op as { device: string }).device);
    expect(touched.filter((t) => t === dev || t === "virgw-service" || t === "tap-other")).toEqual([]);
    expect(p.endpoints[0]!.conflict).toMatch(/not owned/);
    expect(p.gateways[0]!.conflict).toMatch(/not owned/);
  });

  it("leaves a foreign route to a workload IP alone and reports the conflict", () => {
    const d = desired([tap("172.31.16.10")]);
    const o = observedWithNetns();
    o.routes.push({ dst: "172.31.16.10/32", device: "eth9", protocol: 4, scope: 253, type: "unicast", metric: 0 });
    const p = plan(d, o, settings);
    expect(p.operations.some((op) => op.subject === d.endpoints[0]!.id)).toBe(false);
    expect(p.endpoints[0]!.conflict).toMatch(/protocol 4/);
  });

  it("waits for a namespace that does not exist yet", () => {
    const d = desired([netns("172.31.16.31", "task-9")]);
    const p = plan(d, observedWithNetns(), settings);
    expect(p.endpoints[0]!.pending).toMatch(/task-9/);
    expect(p.operations.some((op) => op.subject === d.endpoints[0]!.id)).toBe(false);
  });

  it("deletes a gateway's connected route and foreign addresses on its own device", () => {
    const d = desired([]);
    const s = converge(d);
    s.routes.push({ dst: "172.31.16.0/24", device: "virgw-service", protocol: 2, scope: 253, type: "unicast", metric: 0 });
    s.addresses.push({ device: "virgw-service", ip: "10.9.9.9", prefixLength: 8, noprefixroute: false });
    const ops = plan(d, s, settings).operations;
    expect(ops.map(renderBatchLine)).toEqual(expect.arrayContaining([
      "address del 10.9.9.9/8 dev virgw-service", "route del 172.31.16.0/24 dev virgw-service proto 2",
    ]));
  });

  it("recreates a device of the wrong kind", () => {
    const d = desired([tap("172.31.16.10")]);
    const s = converge(d);
    s.links.get(d.endpoints[0]!.device)!.vnetHdr = false;
    const ops = plan(d, s, settings).operations.map((o) => o.op);
    expect(ops.slice(0, 2)).toEqual(["link.delete", "tap.create"]);
  });
});

describe("device-only endpoints (a VM between prepare and started, or stopped and release)", () => {
  const vm = (deviceOnly?: string) => {
    const d = desired([tap("172.31.16.20")]);
    const e = d.endpoints[0]!;
    d.endpoints[0] = { ...e, id: "vm:172.31.16.20", kind: "vm", domain: "vm1", ...(deviceOnly ? { deviceOnly } : {}) };
    return d;
  };

  it("creates the tap without route or neighbour, then adds them when the domain starts", () => {
    const prepared = converge(vm("domain vm1 is not running"));
    const dev = vm().endpoints[0]!.device;
    expect(prepared.links.get(dev)).toMatchObject({ kind: "tun", up: true });
    expect(prepared.routes.filter((r) => r.device === dev)).toEqual([]);
    expect(plan(vm("not running"), prepared, settings).operations).toEqual([]);
    const started = plan(vm(), prepared, settings).operations.map((o) => o.op).sort();
    expect(started).toEqual(["neighbour.replace", "route.replace"]);
  });

  it("removes route and neighbour but keeps the tap when the domain stops", () => {
    const running = converge(vm());
    const ops = plan(vm("domain vm1 stopped"), running, settings).operations;
    expect(ops.map((o) => o.op).sort()).toEqual(["neighbour.delete", "route.delete"]);
    const stopped = applyToModel(running, ops);
    expect(stopped.links.has(vm().endpoints[0]!.device)).toBe(true);
    expect(plan(vm("domain vm1 stopped"), stopped, settings).operations).toEqual([]);
  });
});

describe("per-network MTU (taps, both ends of a veth)", () => {
  const endpoints = [tap("172.31.16.10"), netns("172.31.16.31", "task-1")];
  const withMtu = (mtu?: number) => desired(endpoints, {}, { ...SERVICE, ...(mtu !== undefined ? { mtu } : {}) });
  const devices = (d: ReturnType<typeof desired>) => ({
    tapDev: d.endpoints.find((e) => e.kind === "tap")!.device, vethDev: d.endpoints.find((e) => e.kind === "netns")!.device,
  });
  const inner = (o: ReturnType<typeof converge>) => o.netns.get("task-1")!.inner!;
  const mtuOps = (ops: Operation[]) => ops.filter((o) => (o.op === "link.set" && o.mtu !== undefined) || o.op === "netns.configure");

  it("gives new devices their network's MTU: after `tuntap add` in the same batch, on the veth's host end, and on eth0 inside", () => {
    const d = withMtu(9000);
    const { tapDev, vethDev } = devices(d);
    const ops = plan(d, observedWithNetns("task-1"), settings).operations;
    const lines = ops.map(renderBatchLine).filter(Boolean) as string[];
    const tapCreated = lines.indexOf(`tuntap add dev ${tapDev} mode tap one_queue vnet_hdr`);
    const tapSet = lines.findIndex((l) => l.startsWith(`link set dev ${tapDev} `) && l.includes(" mtu 9000 "));
    expect(tapCreated).toBeGreaterThanOrEqual(0);
    expect(tapSet).toBeGreaterThan(tapCreated);
    expect(lines.some((l) => l.startsWith(`link set dev ${vethDev} `) && l.includes(" mtu 9000 "))).toBe(true);
    const configure = ops.find((o) => o.op === "netns.configure") as Extract<Operation, { op: "netns.configure" }>;
    expect(renderNetnsLines(configure)).toContain(`link set dev eth0 alias vmrouted:netns:172.31.16.31 address ${configure.mac} mtu 9000 up`);
    const after = applyToModel(observedWithNetns("task-1"), ops);
    expect([after.links.get(tapDev)?.mtu, after.links.get(vethDev)?.mtu, inner(after).mtu]).toEqual([9000, 9000, 9000]);
    expect(plan(d, after, settings).operations).toEqual([]);
  });

  it("changes the MTU of existing devices, and nothing else, when the network's MTU changes", () => {
    const before = converge(withMtu());
    const d = withMtu(9000);
    const { tapDev, vethDev } = devices(d);
    const ops = plan(d, before, settings).operations;
    expect(ops.filter((o) => o.op !== "netns.configure")).toEqual([
      { subject: "netns:172.31.16.31", op: "link.set", device: vethDev, mtu: 9000 },
      { subject: "tap:172.31.16.10", op: "link.set", device: tapDev, mtu: 9000 },
    ]);
    expect(ops.filter((o) => o.op === "netns.configure")).toEqual([expect.objectContaining({ netns: "task-1", mtu: 9000 })]);
    const after = applyToModel(before, ops);
    expect([after.links.get(tapDev)?.mtu, after.links.get(vethDev)?.mtu, inner(after).mtu]).toEqual([9000, 9000, 9000]);
    expect(plan(d, after, settings).operations).toEqual([]);
  });

  it("puts devices back to the kernel's 1500 when the network's MTU is removed", () => {
    const before = converge(withMtu(9000));
    const d = withMtu();
    const { tapDev, vethDev } = devices(d);
    const ops = plan(d, before, settings).operations;
    expect(mtuOps(ops).map((o) => [o.op, "device" in o ? o.device : "", o.op === "link.set" || o.op === "netns.configure" ? o.mtu : 0]))
      .toEqual([["link.set", vethDev, 1500], ["link.set", tapDev, 1500], ["netns.configure", "eth0", 1500]]);
    const after = applyToModel(before, ops);
    expect([after.links.get(tapDev)?.mtu, after.links.get(vethDev)?.mtu, inner(after).mtu]).toEqual([1500, 1500, 1500]);
    expect(plan(d, after, settings).operations).toEqual([]);
  });

  it("repairs an MTU changed by hand on the host end or inside the namespace", () => {
    const d = withMtu(9000);
    const { tapDev, vethDev } = devices(d);
    const s = converge(d);
    s.links.get(tapDev)!.mtu = 1400;
    inner(s).mtu = 1400;
    const p = plan(d, s, settings);
    expect(p.endpoints.map((c) => [c.endpoint.kind, c.mtuOk, c.innerOk])).toEqual([["netns", true, false], ["tap", false, true]]);
    expect(mtuOps(p.operations)).toEqual([
      { subject: "tap:172.31.16.10", op: "link.set", device: tapDev, mtu: 9000 },
      expect.objectContaining({ op: "netns.configure", mtu: 9000 }),
    ]);
    expect(p.operations.some((o) => "device" in o && o.device === vethDev)).toBe(false);
    expect(plan(d, applyToModel(s, p.operations), settings).operations).toEqual([]);
  });

  it("leaves held endpoints' devices at the MTU they have, whatever their network says", () => {
    // A held entry (its network left the config) whose tap someone set to 1400: kept as found.
    const dark = { gateway: "172.31.17.1/24", mtu: 9000 };
    const darkTap = { kind: "tap", network: "dark", ip: "172.31.17.10" } as never;
    const before = converge(desired([tap("172.31.16.10"), darkTap], { dark }));
    const heldDev = [...before.links.values()].find((l) => l.alias === "vmrouted:tap:172.31.17.10")!.name;
    expect(before.links.get(heldDev)?.mtu).toBe(9000);
    before.links.get(heldDev)!.mtu = 1400;
    const now = desired([tap("172.31.16.10"), darkTap]);
    expect(plan(now, before, settings).operations).toEqual([]);
    // vm-class devices while the domains are unknown: their network's MTU changes, they keep theirs; a wanted tap on it follows.
    const vm = { ...tap("172.31.16.20"), name: "tap-vm20" };
    const running = converge(desired([vm, tap("172.31.16.10")]));
    const asVm = { ...running, links: new Map([...running.links, ["tap-vm20", { ...running.links.get("tap-vm20")!, alias: "vmrouted:vm:172.31.16.20" }]]) };
    const unknown = { ...desired([tap("172.31.16.10")], {}, { ...SERVICE, mtu: 9000 }), domainsKnown: false };
    const p = plan(unknown, asVm, settings);
    expect(p.held.map((h) => h.held.id)).toEqual(["vm:172.31.16.20"]);
    expect(mtuOps(p.operations)).toEqual([expect.objectContaining({ op: "link.set", device: unknown.endpoints[0]!.device, mtu: 9000 })]);
    expect(p.operations.some((o) => "device" in o && o.device === "tap-vm20")).toBe(false);
  });

  it("marks a network's endpoints dirty when its MTU changes (the endpoints themselves are unchanged)", () => {
    const before = withMtu();
    const after = withMtu(9000);
    const { tapDev, vethDev } = devices(after);
    const scope = changedScope(before, after);
    expect([...scope.devices].sort()).toEqual([tapDev, vethDev, "virgw-service"].sort());
    expect(scope.netns).toEqual(new Set(["task-1"]));
    // Another setting (DNS) changes no device: the endpoints stay out.
    expect([...changedScope(before, desired(endpoints, {}, { ...SERVICE, dns: ["10.0.0.53"] })).devices]).toEqual(["virgw-service"]);
  });
});
