import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { filterImports, type HostFacts } from "../../src/bgp/import-filter.js";
import type { LearnedRoute } from "../../src/model/types.js";
import { desired, tap } from "../helpers/fixtures.js";

// The import filter (fleet trust): what another BGP speaker announces is
// installed only if it can be a workload of another host.

const facts: HostFacts = {
  addresses: new Set(["10.1.1.3", "192.168.7.3", "172.31.16.1"]),
  connected: ["10.1.1.0/24", "192.168.7.0/24"],
  peers: new Set(["10.1.1.1"]),
};
const policy = { nodeAddress: "10.1.1.3", ranges: ["172.31.16.0/24"], maxLearned: 1000, facts };
const r = (prefix: string, nextHop = "10.1.1.4", elevated = false): LearnedRoute => ({ prefix, nextHop, elevated });
const reasons = (routes: LearnedRoute[], endpoints = desired([]).endpoints, p = policy) =>
  Object.fromEntries(filterImports(routes, endpoints, p).rejected.map((x) => [x.prefix, x.reason]));

describe("import filter", () => {
  it("installs another host's workload /32 and refuses what could hijack the host, each with its reason", () => {
    const routes = [
      r("172.31.16.9/32"), // a workload of 10.1.1.4: installed
      r("10.1.1.3/32"), // this host's own address
      r("192.168.7.3/32"), // another address of this host
      r("10.1.1.1/32"), // the reflector
      r("10.1.1.4/32", "10.1.1.5"), // another host (a next hop)
      r("10.1.1.77/32"), // inside the fabric (connected)
      r("8.8.8.8/32"), // outside every range
      r("172.31.16.0/24"), r("0.0.0.0/0"), // not host routes
      r("172.31.16.20/32", "172.31.16.9"), // next hop through a learned /32
      r("172.31.16.21/32", "10.1.1.3"), // a path back to this host
      r("172.31.16.1/32"), // the gateway, an address of this host
    ];
    const verdict = filterImports(routes, desired([]).endpoints, policy);
    expect(verdict.install.map((x) => x.prefix)).toEqual(["172.31.16.9/32"]);
    expect(reasons(routes)).toEqual({
      "10.1.1.3/32": "host-address", "192.168.7.3/32": "host-address", "10.1.1.1/32": "peer-address", "10.1.1.4/32": "next-hop-address",
      "10.1.1.77/32": "connected-network", "8.8.8.8/32": "outside-import-ranges", "172.31.16.0/24": "not-a-host-route",
      "0.0.0.0/0": "not-a-host-route", "172.31.16.20/32": "next-hop-via-workload", "172.31.16.21/32": "next-hop-is-this-host",
      "172.31.16.1/32": "host-address",
    });
  });

  it("reports a duplicate (a local ready endpoint announced by another host), never a live migration's elevated path", () => {
    const local = desired([tap("172.31.16.5"), tap("172.31.16.6")]).endpoints;
    const v = filterImports([r("172.31.16.5/32"), r("172.31.16.6/32", "10.1.1.4", true)], local, policy);
    expect([...v.duplicates]).toEqual([["tap:172.31.16.5", "10.1.1.4"]]);
    // The elevated path of a VM that moved there wins over our /32 (migration), and is no duplicate.
    expect(v.install.map((x) => x.prefix)).toEqual(["172.31.16.6/32"]);
    // Our own endpoint in a migration phase is never a duplicate either.
    const settling = local.map((e) => (e.ip === "172.31.16.5" ? { ...e, migration: "settling" as const, elevated: true } : e));
    expect(filterImports([r("172.31.16.5/32")], settling, policy).duplicates.size).toBe(0);
  });

  it("maxLearned: past it new prefixes are refused and what was installed stays; it clears when the count drops", () => {
    const routes = Array.from({ length: 150 }, (_, i) => r(`172.31.16.${i + 2}/32`));
    const first = filterImports(routes, [], { ...policy, maxLearned: 100 });
    expect(first.install).toHaveLength(100);
    expect(first.limited).toBe(true);
    expect(first.rejected.filter((x) => x.reason === "max-learned")).toHaveLength(50);
    // The ones installed stay, whatever order new ones come in.
    const installed = new Set(first.install.map((x) => x.prefix));
    const shuffled = filterImports([...routes].reverse(), [], { ...policy, maxLearned: 100 }, installed);
    expect(new Set(shuffled.install.map((x) => x.prefix))).toEqual(installed);
    // 60 withdrawn: 90 left, under the limit, nothing refused for it.
    const after = filterImports(routes.slice(60), [], { ...policy, maxLearned: 100 }, installed);
    expect(after.install).toHaveLength(90);
    expect(after.limited).toBe(false);
  });

  it("never installs an underlay address or anything outside the ranges, whatever is announced (property)", () => {
    const octet = fc.integer({ min: 0, max: 255 });
    const address = fc.oneof(
      fc.tuple(octet, octet).map(([a, b]) => `172.31.16.${a % 256}`.replace(/\.\d+$/, `.${b}`)),
      fc.tuple(octet, octet).map(([a, b]) => `10.1.${a % 2}.${b}`),
      fc.tuple(octet, octet, octet, octet).map((o) => o.join(".")),
    );
    const route = fc.tuple(address, fc.constantFrom(32, 32, 32, 24, 0), address, fc.boolean())
      .map(([ip, len, nh, elevated]) => r(`${ip}/${len}`, nh, elevated));
    fc.assert(fc.property(fc.array(route, { maxLength: 60 }), (routes) => {
      const v = filterImports(routes, [], policy);
      // Other hosts: next hops outside the workload ranges (one inside is refused, and must not deny a workload its route).
      const nextHops = new Set(routes.map((x) => x.nextHop).filter((nh) => !nh.startsWith("172.31.16.")));
      for (const x of v.install) {
        const [ip, len] = x.prefix.split("/");
        expect(len).toBe("32");
        expect(ip!.startsWith("172.31.16.")).toBe(true);
        expect(facts.addresses.has(ip!) || facts.peers.has(ip!) || nextHops.has(ip!)).toBe(false);
        expect(x.nextHop.startsWith("172.31.16.")).toBe(false);
      }
      expect(v.install.length + v.rejected.length).toBeLessThanOrEqual(routes.length);
    }));
  });
});
