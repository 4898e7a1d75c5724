import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { connectedPrefixes, filterImports, importRanges, type HostFacts } from "../../src/bgp/import-filter.js";
import { canonicalIpv6, isUnusableIpv6Host } from "../../src/model/ipv6.js";
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

describe("import filter, IPv6 (issue #25): every IPv4 rule, for /128s", () => {
  const facts6: HostFacts = {
    addresses: new Set([...facts.addresses, "fd99::3", "FD99:0:0:1::3"]),
    connected: [...facts.connected, "fd99::/64", "fd99:0:0:1::/64"],
    peers: new Set([...facts.peers, "fd99::fe"]),
  };
  const policy6 = { ...policy, nodeAddress6: "fd99::3", ranges: [...policy.ranges, "fd31:16::/64"], facts: facts6 };
  const services = { service: { gateway: "172.31.16.1/24", prefix6: "fd31:16::/64" } };
  const local = (eps: Parameters<typeof desired>[0]) => desired(eps, {}, services.service).endpoints;

  it("installs another host's /128 (its IPv6 next hop) and refuses the rest, each with the IPv4 rule's reason", () => {
    const routes = [
      r("fd31:16::9/128", "fd99::4"), // a workload of fd99::4: installed
      r("fd31:16::a/128", "10.1.1.4"), // an IPv4 next hop for an IPv6 prefix
      r("fd31:16::b/128", "::ffff:10.1.1.4"), // IPv4-mapped
      r("fd31:16::c/128", "fe80::1"), // link-local: no route without a device
      r("fd99::3/128", "fd99::4"), // this host's own address
      r("fd99:0:0:1::3/128", "fd99::4"), // another address of this host (another spelling in the facts)
      r("fd99::fe/128", "fd99::4"), // the reflector
      r("fd99::4/128", "fd99::5"), // another host (a next hop)
      r("fd99::77/128", "fd99::4"), // inside the fabric (connected)
      r("2001:db8::1/128", "fd99::4"), // outside every range
      r("fd31:16::/64", "fd99::4"), r("::/0", "fd99::4"), // not host routes
      r("fd31:16::20/128", "fd31:16::9"), // next hop through a learned /128
      r("fd31:16::21/128", "fd99::3"), // a path back to this host
      r("fd31:16::22/128", "FD99::3"), // the same, spelt otherwise
    ];
    const verdict = filterImports(routes, [], policy6);
    expect(verdict.install.map((x) => x.prefix)).toEqual(["fd31:16::9/128"]);
    expect(reasons(routes, [], policy6)).toEqual({
      "fd31:16::a/128": "next-hop-unusable", "fd31:16::b/128": "next-hop-unusable", "fd31:16::c/128": "next-hop-unusable",
      "fd99::3/128": "host-address", "fd99:0:0:1::3/128": "host-address", "fd99::fe/128": "peer-address", "fd99::4/128": "next-hop-address",
      "fd99::77/128": "connected-network", "2001:db8::1/128": "outside-import-ranges", "fd31:16::/64": "not-a-host-route",
      "::/0": "not-a-host-route", "fd31:16::20/128": "next-hop-via-workload", "fd31:16::21/128": "next-hop-is-this-host",
      "fd31:16::22/128": "next-hop-is-this-host",
    });
    // An IPv4 /32 with an IPv6 next hop is refused the same way.
    expect(reasons([r("172.31.16.9/32", "fd99::4")], [], policy6)).toEqual({ "172.31.16.9/32": "next-hop-unusable" });
  });

  it("a /128 of a local endpoint is a duplicate (or a migration), and its ip6 as a next hop is a loop", () => {
    const eps = local([tap("172.31.16.5", { ip6: "fd31:16::5" }), tap("172.31.16.6", { ip6: "fd31:16::6" })]);
    const v = filterImports([r("fd31:16::5/128", "fd99::4"), r("fd31:16::6/128", "fd99::4", true)], eps, policy6);
    expect([...v.duplicates]).toEqual([["tap:172.31.16.5", "fd99::4"]]);
    expect(v.install.map((x) => x.prefix)).toEqual(["fd31:16::6/128"]);
    // Another host's /128 beside ours (claims), as for /32s.
    const claimed = filterImports([], eps, { ...policy6, claims: new Map([["fd31:16::6/128", "fd99::4"]]) });
    expect([...claimed.duplicates]).toEqual([["tap:172.31.16.6", "fd99::4"]]);
  });

  it("import ranges per family: configured IPv4 ranges alone leave the IPv6 default (the networks' prefix6s)", () => {
    expect(importRanges([], ["172.31.16.0/24", "fd31:16::/64"])).toEqual(["172.31.16.0/24", "fd31:16::/64"]);
    expect(importRanges(["172.31.0.0/16"], ["172.31.16.0/24", "fd31:16::/64"])).toEqual(["172.31.0.0/16", "fd31:16::/64"]);
    expect(importRanges(["fd31::/32"], ["172.31.16.0/24", "fd31:16::/64"])).toEqual(["172.31.16.0/24", "fd31::/32"]);
  });

  it("connected IPv6 prefixes from the host's addresses, not link-local, not /128s, not noprefixroute", () => {
    expect(connectedPrefixes([
      { ip: "fd99::3", prefixLength: 64, noprefixroute: false },
      { ip: "fe80::1", prefixLength: 64, noprefixroute: false },
      { ip: "fd31:16::1", prefixLength: 128, noprefixroute: false },
      { ip: "fd31:17::1", prefixLength: 64, noprefixroute: true },
      { ip: "10.1.1.3", prefixLength: 24, noprefixroute: false },
    ])).toEqual(["10.1.1.3/24", "fd99::/64"]); // an IPv4 prefix keeps the address it was given (as before)
  });

  it("never installs an underlay address or anything outside the ranges, in either family (property)", () => {
    const hex = fc.integer({ min: 0, max: 0xffff }).map((n) => n.toString(16));
    const address6 = fc.oneof(
      hex.map((h) => `fd31:16::${h}`), hex.map((h) => `fd99::${h}`), fc.constantFrom("fd99::3", "fd99::fe", "::ffff:10.1.1.4", "fe80::1", "10.1.1.4"),
      fc.ipV6(),
    );
    const route = fc.tuple(address6, fc.constantFrom(128, 128, 128, 64, 0), address6, fc.boolean())
      .filter(([ip]) => ip.includes(":"))
      .map(([ip, len, nh, elevated]) => r(`${ip}/${len}`, nh, elevated));
    fc.assert(fc.property(fc.array(route, { maxLength: 60 }), (routes) => {
      const v = filterImports(routes, [], policy6);
      for (const x of v.install) {
        const [ip, len] = x.prefix.split("/");
        expect(len).toBe("128");
        expect(ip!.toLowerCase().startsWith("fd31:16:")).toBe(true);
        expect(x.nextHop.toLowerCase().startsWith("fd31:16:")).toBe(false);
        const hop = canonicalIpv6(x.nextHop);
        expect(hop !== undefined && !isUnusableIpv6Host(hop) && !facts6.addresses.has(hop) && !hop.startsWith("::")).toBe(true);
      }
    }));
  });
});
