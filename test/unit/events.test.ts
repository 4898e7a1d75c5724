import { describe, expect, it } from "vitest";
import { driftScope, foldEvents, indexDesired, lastPerObject, parseMonitorRecord, type KernelEvent } from "../../src/dataplane/events.js";
import type { ObservedState } from "../../src/dataplane/observed.js";
import { splitRecords } from "../../src/dataplane/monitor.js";
import { desired, SERVICE, settings, tap } from "../helpers/fixtures.js";

// Kernel events as `ip -N -d monitor label` prints them (iproute2 6.1), judged
// against a desired state: what is the echo of vmrouted's own batch, what is drift.

const d = desired([tap("172.31.16.5", { mac: "52:54:00:00:00:05" })]);
const dev = d.endpoints[0]!.device;
const index = indexDesired(d);
const judge = (text: string) => driftScope(splitRecords(text).flatMap((r) => parseMonitorRecord(r) ?? []), index, settings);
const link = (flags: string, group: string, alias?: string, deleted = false) =>
  `[LINK]${deleted ? "Deleted " : ""}7: ${dev}: <${flags}> mtu 1500 qdisc noop state DOWN group ${group} \n    link/[1] fe:54:00:00:00:05 brd ff:ff:ff:ff:ff:ff promiscuity 0 \n    tun type tap pi off vnet_hdr on persist on \n${alias ? `    alias ${alias}\n` : ""}`;

describe("kernel events", () => {
  it("parses links (alias, group, flags), routes (numeric), neighbours and addresses", () => {
    const records = splitRecords(link("NO-CARRIER,BROADCAST,MULTICAST,UP", "94", "vmrouted:tap:172.31.16.5") +
      `[ROUTE]1 172.31.16.5 dev ${dev} table 254 proto 94 scope 253 metric 1024 linkdown \n` +
      "[ROUTE]Deleted 1 10.5.0.0/16 via 172.31.16.9 dev eth0 table 254 proto 96 scope 0 metric 512 onlink \n" +
      `[NEIGH]172.31.16.5 dev ${dev} lladdr 52:54:00:00:00:05 PERMANENT \n` +
      "[ADDR]3: virgw-x    inet 172.31.16.1/24 scope 0 noprefixroute virgw-x\n       valid_lft forever preferred_lft forever\n");
    expect(records.map((r) => parseMonitorRecord(r))).toEqual([
      { kind: "link", deleted: false, name: dev, up: true, carrier: false, group: 94, alias: "vmrouted:tap:172.31.16.5", mac: "fe:54:00:00:00:05", mtu: 1500 },
      { kind: "route", deleted: false, dst: "172.31.16.5/32", device: dev, protocol: 94, metric: 1024, table: 254, scope: 253, type: "unicast" },
      { kind: "route", deleted: true, dst: "10.5.0.0/16", device: "eth0", via: "172.31.16.9", protocol: 96, metric: 512, table: 254, scope: 0, type: "unicast" },
      { kind: "neigh", deleted: false, device: dev, ip: "172.31.16.5", mac: "52:54:00:00:00:05", permanent: true },
      { kind: "addr", deleted: false, device: "virgw-x", cidr: "172.31.16.1/24" },
    ]);
  });

  it("ignores the echo of vmrouted's own batch: a tap created down, then set up and marked, its route and neighbour", () => {
    const scope = judge(link("BROADCAST,MULTICAST", "0") + link("NO-CARRIER,BROADCAST,MULTICAST,UP", "94", "vmrouted:tap:172.31.16.5") +
      `[ROUTE]1 172.31.16.5 dev ${dev} table 254 proto 94 scope 253 metric 1024 linkdown \n` +
      `[NEIGH]172.31.16.5 dev ${dev} lladdr 52:54:00:00:00:05 PERMANENT \n` +
      // and the removal of a route it no longer wants (the old metric)
      `[ROUTE]Deleted 1 172.31.16.5 dev ${dev} table 254 proto 94 scope 253 \n`);
    expect(scope).toEqual({ devices: new Set(), dsts: new Set() });
  });

  it("finds drift: a deleted /32, a tap set down, a permanent neighbour deleted by hand (FAILED, then Deleted)", () => {
    expect(judge(`[ROUTE]Deleted 1 172.31.16.5 dev ${dev} table 254 proto 94 scope 253 metric 1024 \n`).dsts).toEqual(new Set(["172.31.16.5/32"]));
    expect(judge(link("BROADCAST,MULTICAST", "94", "vmrouted:tap:172.31.16.5")).devices).toEqual(new Set([dev]));
    expect(judge(`[NEIGH]172.31.16.5 dev ${dev} FAILED \n[NEIGH]Deleted 172.31.16.5 dev ${dev} FAILED \n`).devices).toEqual(new Set([dev]));
    // A foreign route to a workload's IP: a conflict to report.
    expect(judge("[ROUTE]1 172.31.16.5 dev eth9 table 254 proto 4 scope 253 \n").dsts).toEqual(new Set(["172.31.16.5/32"]));
  });

  it("finds an endpoint device whose MTU is not its network's, and ignores the echo of setting it", () => {
    const up = link("NO-CARRIER,BROADCAST,MULTICAST,UP", "94", "vmrouted:tap:172.31.16.5");
    expect(judge(up.replace("mtu 1500", "mtu 1400")).devices).toEqual(new Set([dev]));
    // The network says 9000: 1500 is drift, the echo of `link set ... mtu 9000` is not.
    const jumbo = indexDesired(desired([tap("172.31.16.5", { mac: "52:54:00:00:00:05" })], {}, { ...SERVICE, mtu: 9000 }));
    const judgeJumbo = (text: string) => driftScope(splitRecords(text).flatMap((r) => parseMonitorRecord(r) ?? []), jumbo, settings);
    expect(judgeJumbo(up).devices).toEqual(new Set([dev]));
    expect(judgeJumbo(link("BROADCAST,MULTICAST", "0") + up.replace("mtu 1500", "mtu 9000")).devices).toEqual(new Set());
  });

  it("ignores what is not vmrouted's: foreign devices, routes, traffic's neighbour entries, other tables", () => {
    const scope = judge(
      "[LINK]9: br0: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc noop state DOWN group 0 \n    link/[1] 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff\n" +
      "[ROUTE]1 10.88.0.0/16 via 10.77.0.9 dev br0 table 254 proto 4 scope 0 \n" +
      `[NEIGH]172.31.16.77 dev ${dev} lladdr 52:54:00:00:00:77 STALE \n` +
      "[NEIGH]10.77.0.9 dev br0 lladdr 02:00:00:00:00:09 REACHABLE \n" +
      `[ROUTE]1 172.31.16.5 dev ${dev} table 100 proto 4 scope 253 \n`);
    expect(scope).toEqual({ devices: new Set(), dsts: new Set() });
  });

  it("keeps the last state of each object, in arrival order", () => {
    const events = ["a", "b", "a"].map((name, i) => ({ kind: "link" as const, deleted: false, name, up: i === 2, carrier: false, group: 0 }));
    expect(lastPerObject(events)).toEqual([events[1], events[2]]);
  });

  it("parses a route added without proto as boot (iproute2 leaves it unsaid) and a route's type", () => {
    expect(parseMonitorRecord("[ROUTE]1 172.31.16.9 dev rb1 table 254 scope 253 \n")).toMatchObject({ protocol: 3, type: "unicast" });
    expect(parseMonitorRecord("[ROUTE]6 10.9.0.0/16 table 254 proto 4 scope 0 \n")).toMatchObject({ protocol: 4, type: "blackhole" });
  });
});

describe("the kernel picture between listings", () => {
  const empty = (): ObservedState => ({ links: new Map(), addresses: [], routes: [], neighbours: [], sysctls: new Map(), netns: new Map() });
  const events = (text: string): KernelEvent[] => splitRecords(text).flatMap((r) => parseMonitorRecord(r) ?? []);
  const foreignTap = (name: string, flags: string, deleted = false) =>
    `[LINK]${deleted ? "Deleted " : ""}9: ${name}: <${flags}> mtu 1500 qdisc noop state DOWN group default \n    link/[1] 02:00:00:00:00:09 brd ff:ff:ff:ff:ff:ff\n`;

  it("learns foreign routes to any destination, and forgets them when deleted", () => {
    const seen = foldEvents(empty(), events("[ROUTE]1 172.31.16.9 dev rb1 table 254 scope 253 \n[ROUTE]1 10.0.0.0/8 via 10.77.0.1 dev br0 table 254 proto 4 scope 0 metric 5 \n"));
    expect(seen.routes).toEqual([
      { dst: "172.31.16.9/32", device: "rb1", protocol: 3, scope: 253, type: "unicast", metric: 0 },
      { dst: "10.0.0.0/8", device: "br0", gateway: "10.77.0.1", protocol: 4, scope: 0, type: "unicast", metric: 5 },
    ]);
    expect(foldEvents(seen, events("[ROUTE]Deleted 1 172.31.16.9 dev rb1 table 254 scope 253 \n")).routes.map((r) => r.dst)).toEqual(["10.0.0.0/8"]);
    // Other tables are not the picture's.
    expect(foldEvents(empty(), events("[ROUTE]1 172.31.16.9 dev rb1 table 100 scope 253 \n")).routes).toEqual([]);
  });

  it("drops a device's routes when it goes away or down, as the kernel does without a route event", () => {
    // What the bench's runbook did: a foreign tap with a route to a future workload IP, then `ip tuntap del`.
    let seen = foldEvents(empty(), events("[ROUTE]1 172.31.16.9 dev rb1 table 254 scope 253 \n[ROUTE]1 172.31.16.8 dev rb2 table 254 scope 253 \n"));
    seen = foldEvents(seen, events(foreignTap("rb1", "BROADCAST,MULTICAST", true)));
    expect(seen.routes.map((r) => r.dst)).toEqual(["172.31.16.8/32"]);
    seen = foldEvents(seen, events(foreignTap("rb2", "BROADCAST,MULTICAST")));
    expect(seen.routes).toEqual([]);
    // A route added after the device came back up stays.
    seen = foldEvents(seen, events(foreignTap("rb2", "BROADCAST,MULTICAST,UP,LOWER_UP") + "[ROUTE]1 172.31.16.8 dev rb2 table 254 scope 253 \n"));
    expect(seen.routes.map((r) => r.dst)).toEqual(["172.31.16.8/32"]);
  });

  it("updates listed links and forgets deleted ones with their addresses and neighbours; unlisted devices stay unknown", () => {
    const start = empty();
    start.links.set(dev, { name: dev, group: 94, up: true, carrier: true, alias: "vmrouted:tap:172.31.16.5", kind: "tun", ifindex: 7 });
    start.neighbours.push({ device: dev, ip: "172.31.16.5", mac: "52:54:00:00:00:05", permanent: true });
    start.sysctls.set(dev, { proxyArp: "1" });
    const down = foldEvents(start, events(link("BROADCAST,MULTICAST", "94", "vmrouted:tap:172.31.16.5")));
    expect(down.links.get(dev)).toMatchObject({ up: false, carrier: false, kind: "tun", ifindex: 7, alias: "vmrouted:tap:172.31.16.5", mtu: 1500 });
    const resized = foldEvents(start, events(link("BROADCAST,MULTICAST,UP", "94", "vmrouted:tap:172.31.16.5").replace("mtu 1500", "mtu 9000")));
    expect(resized.links.get(dev)?.mtu).toBe(9000);
    const gone = foldEvents(start, events(link("BROADCAST,MULTICAST", "94", "vmrouted:tap:172.31.16.5", true)));
    expect([gone.links.size, gone.neighbours.length, gone.sysctls.size]).toEqual([0, 0, 0]);
    expect(foldEvents(start, events(foreignTap("rb7", "UP"))).links.has("rb7")).toBe(false);
    expect(start.links.get(dev)?.up).toBe(true); // pure: the input is untouched
  });
});
