import { describe, expect, it } from "vitest";
import { heldByAnother, hookCallStale, vmEndpoints, type DomainRecord } from "../../src/libvirt/domains.js";
import { resolveNetworks, EndpointClaims } from "../../src/model/resolve.js";

// Issue #22: the order of a domain's hook calls (the shim's BOOT_ID:NS
// sequence, never the wall clock), and a virt-clone'd domain refused at
// prepare without disturbing the domain it was cloned from.

const networks = (() => {
  const r = resolveNetworks({ service: { gateway: "172.31.16.1/24" } }, {});
  if (!r.ok) throw new Error(r.error);
  return r.value;
})();
const iface = (ip: string, tap = `tap-${ip.split(".")[3]!.padStart(10, "0")}`) => ({ network: "service", ip, mac: "52:54:00:00:00:01", tap });
const record = (name: string, lifecycle: DomainRecord["lifecycle"], ifaces = [iface("172.31.16.5")]): DomainRecord =>
  ({ name, lifecycle, interfaces: ifaces, seq: 0 });

const BOOT = "5f3d204d-f960-4c03-88d5-4f37f05d0edd";
const NEXT_BOOT = "0b7c8e41-2a9d-4f6e-b1c3-9d8e7f6a5b4c";
const NOW = Date.UTC(2026, 11, 4); // ms

describe("hook call order", () => {
  it("within one boot an older call is refused and a newer or equal one applied", () => {
    expect(hookCallStale(`${BOOT}:5000`, `${BOOT}:4999`, NOW)).toMatch(/a later hook call \(.*:5000\) was already applied/);
    expect(hookCallStale(`${BOOT}:5000`, `${BOOT}:5000`, NOW)).toBeUndefined();
    expect(hookCallStale(`${BOOT}:5000`, `${BOOT}:5001`, NOW)).toBeUndefined();
    // Compared as numbers, not as text.
    expect(hookCallStale(`${BOOT}:999`, `${BOOT}:1000`, NOW)).toBeUndefined();
    expect(hookCallStale(`${BOOT}:1000`, `${BOOT}:999`, NOW)).toBeDefined();
  });

  it("a call from another boot is applied, whatever its clock says (the monotonic clock restarts at boot)", () => {
    expect(hookCallStale(`${BOOT}:900000000000000`, `${NEXT_BOOT}:1`, NOW)).toBeUndefined();
  });

  it("the wall clock orders nothing once the shim sends its boot id: a record from an older shim never holds off a newer one", () => {
    const aheadWall = `${BigInt(NOW + 3_600_000) * 1_000_000n}`; // an old shim's seq from a clock an hour ahead
    expect(hookCallStale(aheadWall, `${BOOT}:1`, NOW)).toBeUndefined();
    expect(hookCallStale(`${BOOT}:9000000000`, `${BigInt(NOW) * 1_000_000n}`, NOW)).toBeUndefined();
  });

  it("an older shim's digits are ordered among themselves only while the last one is not ahead of the clock", () => {
    const wall = (ms: number) => `${BigInt(ms) * 1_000_000n}`;
    expect(hookCallStale(wall(NOW - 10), wall(NOW - 20), NOW)).toBeDefined();
    expect(hookCallStale(wall(NOW - 20), wall(NOW - 10), NOW)).toBeUndefined();
    // The clock stepped back an hour after the last call: later calls are applied.
    expect(hookCallStale(wall(NOW + 3_600_000), wall(NOW), NOW)).toBeUndefined();
  });

  it("a call without a sequence, or a domain without one, is applied", () => {
    expect(hookCallStale(undefined, `${BOOT}:1`, NOW)).toBeUndefined();
    expect(hookCallStale(`${BOOT}:5`, undefined, NOW)).toBeUndefined();
  });
});

describe("a domain whose IP another domain holds", () => {
  const open = () => true;

  it("is refused at prepare while the holder runs with its tap open, or is starting; naming the holder", () => {
    const orig = record("orig", "running");
    expect(heldByAnother([orig], "orig-clone", [iface("172.31.16.5")], open)).toBe("ip 172.31.16.5 is held by running domain 'orig'");
    expect(heldByAnother([record("orig", "prepared")], "orig-clone", [iface("172.31.16.5")], open))
      .toBe("ip 172.31.16.5 is held by starting domain 'orig'");
    // The same tap for another IP (metadata edited by hand after a clone).
    expect(heldByAnother([orig], "orig-clone", [iface("172.31.16.9", orig.interfaces[0]!.tap)], open))
      .toBe(`tap ${orig.interfaces[0]!.tap} (for ip 172.31.16.9) is held by running domain 'orig'`);
  });

  it("is not refused by itself, a stopped or defined holder, another IP, or a running holder whose tap is no longer open", () => {
    expect(heldByAnother([record("vm", "running")], "vm", [iface("172.31.16.5")], open)).toBeUndefined();
    expect(heldByAnother([record("a", "stopped"), record("b", "defined")], "c", [iface("172.31.16.5")], open)).toBeUndefined();
    expect(heldByAnother([record("a", "running")], "c", [iface("172.31.16.6")], open)).toBeUndefined();
    // `virsh destroy a; virsh start c`: a's qemu is gone (carrier off), its stopped call not yet here.
    const closed = (tap: string) => tap !== iface("172.31.16.5").tap;
    expect(heldByAnother([record("a", "running")], "c", [iface("172.31.16.5")], closed)).toBeUndefined();
  });

  it("never demotes a running domain: of two claiming one IP, the running one keeps it whatever the names", () => {
    // "a-clone" sorts before "orig": by name alone the starting clone took the original's endpoint.
    const r = vmEndpoints([record("orig", "running"), record("a-clone", "prepared")], networks, new EndpointClaims(networks));
    expect(r.endpoints.map((e) => [e.domain, e.ip, e.deviceOnly ?? "routed"])).toEqual([["orig", "172.31.16.5", "routed"]]);
    expect(r.rejected.map((x) => x.domain)).toEqual(["a-clone"]);
    // A starting domain keeps it over a stopped one; results stay in name order.
    const s = vmEndpoints([record("b", "stopped"), record("c", "prepared"), record("a", "running", [iface("172.31.16.7")])], networks, new EndpointClaims(networks));
    expect(s.endpoints.map((e) => e.domain)).toEqual(["a", "c"]);
    expect(s.rejected.map((x) => x.domain)).toEqual(["b"]);
  });
});
