import { describe, expect, it } from "vitest";
import { driftScope, indexDesired, lastPerObject, parseMonitorRecord } from "../../src/dataplane/events.js";
import { splitRecords } from "../../src/dataplane/monitor.js";
import { desired, settings, tap } from "../helpers/fixtures.js";

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
      { kind: "link", deleted: false, name: dev, up: true, group: 94, alias: "vmrouted:tap:172.31.16.5", mac: "fe:54:00:00:00:05" },
      { kind: "route", deleted: false, dst: "172.31.16.5/32", device: dev, protocol: 94, metric: 1024, table: 254 },
      { kind: "route", deleted: true, dst: "10.5.0.0/16", device: "eth0", via: "172.31.16.9", protocol: 96, metric: 512, table: 254 },
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
    const events = ["a", "b", "a"].map((name, i) => ({ kind: "link" as const, deleted: false, name, up: i === 2, group: 0 }));
    expect(lastPerObject(events)).toEqual([events[1], events[2]]);
  });
});
