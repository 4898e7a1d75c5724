import { describe, expect, it } from "vitest";
import { applyHook, lifecycleAfter, vmEndpoints, type DomainRecord } from "../../src/libvirt/domains.js";
import { EndpointClaims, resolveEndpoint, resolveNetworks } from "../../src/model/resolve.js";
import type { EndpointInput } from "../../src/model/spec.js";

/** Claims with one other endpoint already in them (an API tap, say). */
function claimed(input: EndpointInput): EndpointClaims {
  const claims = new EndpointClaims(networks);
  const r = resolveEndpoint(input, networks);
  if (!r.ok || claims.claim(r.value)) throw new Error("fixture endpoint does not resolve");
  return claims;
}

const networks = (() => {
  const r = resolveNetworks({ service: { gateway: "172.31.16.1/24" } }, {});
  if (!r.ok) throw new Error(r.error);
  return r.value;
})();
const iface = (ip: string, tap = `tap-${ip.split(".")[3]!.padStart(10, "0")}`) => ({ network: "service", ip, mac: "52:54:00:00:00:01", tap });

describe("hook lifecycle", () => {
  it("follows libvirt's start and stop order", () => {
    let domains: ReadonlyMap<string, DomainRecord> = new Map();
    const ev = (op: string, subop: string) => (domains = applyHook(domains, { domain: "vm1", op, subop, interfaces: [iface("172.31.16.5")] }, 1));
    const states: string[] = [];
    for (const [op, sub] of [["prepare", "begin"], ["start", "begin"], ["started", "begin"], ["stopped", "end"], ["release", "end"]]) {
      ev(op!, sub!);
      states.push(domains.get("vm1")!.lifecycle);
    }
    expect(states).toEqual(["prepared", "prepared", "running", "stopped", "defined"]);
    expect(lifecycleAfter("reconnect", "begin")).toBe("running");
    expect(lifecycleAfter("migrate", "begin")).toBe("prepared");
    expect(lifecycleAfter("restore", "begin")).toBeUndefined();
  });

  it("rejects unknown operations and odd sub-operations", () => {
    expect(() => lifecycleAfter("frobnicate", "begin")).toThrow(/unknown hook operation/);
    expect(() => lifecycleAfter("started", "be gin; rm")).toThrow(/unknown hook sub-operation/);
  });
});

describe("VM endpoints from domains", () => {
  const record = (name: string, lifecycle: DomainRecord["lifecycle"], ips: string[]): DomainRecord =>
    ({ name, lifecycle, interfaces: ips.map((ip) => iface(ip)), seq: 0 });

  it("routes running domains, keeps only the tap while preparing or stopped, nothing when defined", () => {
    const r = vmEndpoints([record("a", "running", ["172.31.16.5"]), record("b", "prepared", ["172.31.16.6"]),
      record("c", "stopped", ["172.31.16.7"]), record("d", "defined", ["172.31.16.8"])], networks, new EndpointClaims(networks));
    expect(r.endpoints.map((e) => [e.domain, e.id, e.deviceOnly ?? "routed"])).toEqual([
      ["a", "vm:172.31.16.5", "routed"], ["b", "vm:172.31.16.6", "domain b is starting"], ["c", "vm:172.31.16.7", "domain c is stopped"],
    ]);
  });

  it("rejects, without failing the rest, interfaces that conflict or do not resolve", () => {
    const r = vmEndpoints([
      record("a", "running", ["172.31.16.5"]), record("b", "running", ["172.31.16.5"]),
      { name: "c", lifecycle: "running", interfaces: [{ network: "nope", ip: "172.31.16.9", mac: "52:54:00:00:00:09", tap: "tap-c" }], seq: 0 },
      { name: "d", lifecycle: "running", interfaces: [{ network: "service", ip: "172.31.16.10", mac: "52:54:00:00:00:0a", tap: "tap;reboot" }], seq: 0 },
      record("e", "running", ["172.31.16.11"]),
    ], networks, claimed({ kind: "tap", network: "service", ip: "172.31.16.11" }));
    expect(r.endpoints.map((e) => e.domain)).toEqual(["a"]);
    expect(r.rejected.map((x) => [x.domain, x.reason.replace(/ .*/, "")])).toEqual([["b", "ip"], ["c", "unknown"], ["d", "tap"], ["e", "ip"]]);
  });
});
