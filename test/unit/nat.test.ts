import { readFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  canonicalJson, desiredNat, minimalCover, natDifferences, parseNftTable, planNat, type NatTable,
} from "../../src/dataplane/nat.js";
import { applyNft, listNatTable, nftErrorLine, NftUnavailableError } from "../../src/dataplane/nft.js";
import { formatIpv4, parsePrefix } from "../../src/model/ipv4.js";
import type { DesiredState, LearnedRoute, Network } from "../../src/model/types.js";

// Egress NAT, pure parts: the desired table, the parse of real `nft -j` output
// (fixtures captured from nftables 1.0.6 in a test namespace) and the plan.

const fixture = (name: string): unknown => JSON.parse(readFileSync(join(import.meta.dirname, "../fixtures", name), "utf8"));

const net = (name: string, cidr: string, natOutgoing = false): Network => {
  const [gateway, len] = cidr.split("/");
  return { name, gateway: gateway!, prefixLength: Number(len), source: "config", natOutgoing, guest: { dhcp: true, dns: [], leaseSeconds: 3600 } };
};
const learned = (prefix: string): LearnedRoute => ({ prefix, nextHop: "10.99.0.2", elevated: false });
const state = (networks: Network[], routes: LearnedRoute[] = []): DesiredState => ({ networks, endpoints: [], learned: routes });

/** The desired state the fixtures were captured from (test/fixtures/nft-vmrouted.json). */
const fixtureState = state(
  [net("service", "172.31.16.1/24", true), net("extra", "172.31.17.1/24"), net("tenant", "10.20.0.1/16", true)],
  [learned("172.31.16.50/32"), learned("192.168.50.7/32"), learned("192.168.60.0/24")],
);

const setOf = (t: NatTable | undefined, name: string) => t?.sets.find((s) => s.name === name)?.elements;

/** What `nft -j list table ip vmrouted` prints for a table (as nft 1.0.6 does: a /32 as a bare address, one flag as a string). */
function asNftJson(t: NatTable): unknown {
  const base = { family: "ip", table: "vmrouted" };
  const elem = (e: string) => (e.endsWith("/32") ? e.slice(0, -3) : { prefix: { addr: e.split("/")[0], len: Number(e.split("/")[1]) } });
  return {
    nftables: [
      { metainfo: { version: "1.0.6", release_name: "Lester Gooch #5", json_schema_version: 1 } },
      { table: { family: "ip", name: "vmrouted", handle: 9 } },
      ...t.sets.map((s, i) => ({ set: { ...base, name: s.name, type: s.type, handle: i + 2, flags: s.flags, ...(s.elements.length ? { elem: s.elements.map(elem) } : {}) } })),
      ...t.chains.flatMap((c) => [
        { chain: { ...base, name: c.name, handle: 1, type: c.type, hook: c.hook, prio: c.prio, policy: c.policy } },
        ...c.rules.map((r, i) => ({ rule: { ...base, chain: c.name, handle: 10 + i, expr: JSON.parse(r.expr.replace('"flags":["fully-random"]', '"flags":"fully-random"')) } })),
      ]),
    ],
  };
}

describe("egress NAT: desired table", () => {
  it("is no table at all when no network has natOutgoing", () => {
    expect(desiredNat(state([net("service", "172.31.16.1/24")], [learned("10.1.2.3/32")]))).toBeUndefined();
    expect(desiredNat(state([]))).toBeUndefined();
  });

  it("has the NAT networks' prefixes, and every network's and learned route's prefix", () => {
    const t = desiredNat(fixtureState)!;
    expect(setOf(t, "nat_prefixes")).toEqual(["10.20.0.0/16", "172.31.16.0/24"]);
    // 172.31.16.50/32 (another host's workload on a local network) is inside 172.31.16.0/24: left out.
    expect(setOf(t, "all_prefixes")).toEqual(["10.20.0.0/16", "172.31.16.0/24", "172.31.17.0/24", "192.168.50.7/32", "192.168.60.0/24"]);
    expect(t.chains).toHaveLength(1);
    expect(t.chains[0]).toMatchObject({ name: "postrouting", type: "nat", hook: "postrouting", prio: 100, policy: "accept" });
    expect(t.chains[0]!.rules.map((r) => r.text)).toEqual(["ip saddr @nat_prefixes ip daddr != @all_prefixes masquerade fully-random"]);
  });

  it("writes a minimal cover: no duplicates, nothing inside another prefix (nft refuses overlapping intervals without auto-merge)", () => {
    const p = (s: string) => parsePrefix(s)!;
    expect(minimalCover([p("10.0.0.5/32"), p("10.0.0.0/8"), p("10.0.0.5/32"), p("10.1.0.0/16"), p("11.0.0.0/8"), p("9.255.255.255/32")]))
      .toEqual(["9.255.255.255/32", "10.0.0.0/8", "11.0.0.0/8"]);
    // Adjacent prefixes stay as they are (nft keeps them apart without auto-merge).
    expect(minimalCover([p("10.0.0.128/25"), p("10.0.0.0/25")])).toEqual(["10.0.0.0/25", "10.0.0.128/25"]);
    // A gateway address is not the prefix's base.
    expect(minimalCover([p("172.31.16.1/24")])).toEqual(["172.31.16.0/24"]);
  });

  it("property: the cover is sorted, disjoint, and covers exactly the same addresses", () => {
    const prefix = fc.tuple(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: 8, max: 32 }))
      .map(([v, len]) => parsePrefix(`${formatIpv4(v)}/${len}`)!);
    fc.assert(fc.property(fc.array(prefix, { maxLength: 30 }), fc.array(fc.integer({ min: 0, max: 2 ** 32 - 1 }), { maxLength: 20 }), (ps, probes) => {
      const cover = minimalCover(ps).map((s) => parsePrefix(s)!);
      for (let i = 1; i < cover.length; i++) expect(cover[i - 1]!.base + cover[i - 1]!.size).toBeLessThanOrEqual(cover[i]!.base);
      const inside = (list: typeof cover, v: number) => list.some((p) => v >= p.base && v < p.base + p.size);
      for (const v of [...probes, ...ps.map((p) => p.base), ...ps.map((p) => p.base + p.size - 1)]) expect(inside(cover, v)).toBe(inside(ps, v));
    }));
  });
});

describe("egress NAT: the table as nft lists it", () => {
  it("parses real nft -j output (nftables 1.0.6) into exactly the desired table", () => {
    const observed = parseNftTable(fixture("nft-vmrouted.json"));
    expect(observed).toBeDefined();
    expect(setOf(observed, "all_prefixes")).toEqual(["10.20.0.0/16", "172.31.16.0/24", "172.31.17.0/24", "192.168.50.7/32", "192.168.60.0/24"]);
    expect(natDifferences(desiredNat(fixtureState), observed)).toEqual([]);
    expect(planNat(desiredNat(fixtureState), observed)).toBeUndefined();
    // What the comparison keys are: handles and the rule's text do not count.
    expect(observed!.chains[0]!.rules[0]!.text).toBeUndefined();
  });

  it("is undefined for output without the table, and ignores every other table's objects", () => {
    expect(parseNftTable({ nftables: [{ metainfo: { version: "1.0.6" } }] })).toBeUndefined();
    expect(parseNftTable({})).toBeUndefined();
    expect(parseNftTable(null)).toBeUndefined();
    const real = fixture("nft-vmrouted.json") as { nftables: unknown[] };
    const foreign = [
      { table: { family: "inet", name: "vmrouted", handle: 3 } },
      { chain: { family: "inet", table: "vmrouted", name: "postrouting", handle: 1, type: "nat", hook: "postrouting", prio: 100, policy: "accept" } },
      { rule: { family: "inet", table: "vmrouted", chain: "postrouting", handle: 2, expr: [{ counter: { packets: 1, bytes: 2 } }] } },
      { table: { family: "ip", name: "filter", handle: 4 } },
      { set: { family: "ip", table: "filter", name: "all_prefixes", type: "ipv4_addr", handle: 1, elem: ["1.2.3.4"] } },
      { counter: { family: "ip", table: "filter", name: "c", handle: 2, packets: 0, bytes: 0 } },
    ];
    const mixed = { nftables: [real.nftables[0], ...foreign, ...real.nftables.slice(1)] };
    expect(parseNftTable(mixed)).toEqual(parseNftTable(real));
    expect(parseNftTable({ nftables: [real.nftables[0], ...foreign] })).toBeUndefined();
  });

  it("normalizes: element order, a bare address and its /32, one flag as a string or a list, key order", () => {
    const desired = desiredNat(fixtureState)!;
    const reordered = JSON.parse(JSON.stringify(fixture("nft-vmrouted.json"))) as { nftables: Array<Record<string, Record<string, unknown>>> };
    for (const item of reordered.nftables) {
      if (item.set) item.set.elem = [...(item.set.elem as unknown[])].reverse().map((e) => (e === "192.168.50.7" ? { prefix: { addr: "192.168.50.7", len: 32 } } : e));
      if (item.set) item.set.flags = "interval";
      if (item.rule) item.rule = Object.fromEntries(Object.entries(item.rule).reverse());
    }
    expect(natDifferences(desired, parseNftTable(reordered))).toEqual([]);
    expect(parseNftTable(asNftJson(desired))).toEqual(parseNftTable(fixture("nft-vmrouted.json")));
    expect(canonicalJson({ b: 1, a: { flags: "x", d: [{ z: 1, y: 2 }] } })).toBe('{"a":{"d":[{"y":2,"z":1}],"flags":["x"]},"b":1}');
  });

  it("sees every kind of drift in real output: table flags, foreign elements, an extra rule, chain and counter", () => {
    // Captured after, by hand: add element { 203.0.113.0/24, 198.51.100.10-198.51.100.20 }, add rule ... counter comment "by hand",
    // add chain extra, add counter hits, add table { flags dormant } (nft 1.0.6 lists a dormant table's flags as garbage: "hits").
    const observed = parseNftTable(fixture("nft-vmrouted-drift.json"))!;
    const diffs = natDifferences(desiredNat(fixtureState), observed);
    expect(diffs).toEqual([
      expect.stringMatching(/^table ip vmrouted: attributes \{"flags":\[.*\]\}, want none$/),
      "table ip vmrouted: set all_prefixes has unexpected 198.51.100.10-198.51.100.20, 203.0.113.0/24",
      "table ip vmrouted: unexpected chain extra",
      "table ip vmrouted: chain postrouting has 2 rule(s) that differ from the 1 wanted",
      expect.stringMatching(/^table ip vmrouted: unexpected \{"counter":\{.*"name":"hits"/),
    ]);
    expect(observed.chains.find((c) => c.name === "postrouting")!.rules[1]!.expr).toContain("by hand");
    const script = planNat(desiredNat(fixtureState), observed)!;
    expect(script.split("\n").slice(0, 3)).toEqual(["add table ip vmrouted", "delete table ip vmrouted", "table ip vmrouted {"]);
  });

  it("reports what is missing from the kernel's table", () => {
    const desired = desiredNat(fixtureState)!;
    const fewer = state([net("service", "172.31.16.1/24", true)]);
    expect(natDifferences(desired, desiredNat(fewer))).toEqual([
      "table ip vmrouted: set all_prefixes lacks 10.20.0.0/16, 172.31.17.0/24, 192.168.50.7/32, 192.168.60.0/24",
      "table ip vmrouted: set nat_prefixes lacks 10.20.0.0/16",
    ]);
    const noRule = { ...desired, chains: desired.chains.map((c) => ({ ...c, rules: [] })) };
    expect(natDifferences(desired, noRule)).toEqual(["table ip vmrouted: chain postrouting has 0 rule(s) that differ from the 1 wanted"]);
    const regular = { ...desired, chains: desired.chains.map((c) => ({ name: c.name, extra: "", rules: c.rules })) };
    expect(natDifferences(desired, regular)).toEqual(["table ip vmrouted: chain postrouting is declared differently"]);
    expect(natDifferences(desired, { ...desired, sets: [] })).toEqual([
      "table ip vmrouted: set all_prefixes is missing", "table ip vmrouted: set nat_prefixes is missing",
    ]);
  });
});

describe("egress NAT: plan", () => {
  const lines = (s: string | undefined) => s?.trimEnd().split("\n") ?? [];

  it("creates the whole table in one script: sets before the chain that uses them", () => {
    const script = planNat(desiredNat(state([net("service", "172.31.16.1/24", true), net("extra", "172.31.17.1/24")], [learned("192.168.50.7/32")])), undefined);
    expect(lines(script)).toEqual([
      "add table ip vmrouted",
      "delete table ip vmrouted",
      "table ip vmrouted {",
      "\tset all_prefixes {",
      "\t\ttype ipv4_addr",
      "\t\tflags interval",
      "\t\telements = { 172.31.16.0/24, 172.31.17.0/24, 192.168.50.7/32 }",
      "\t}",
      "\tset nat_prefixes {",
      "\t\ttype ipv4_addr",
      "\t\tflags interval",
      "\t\telements = { 172.31.16.0/24 }",
      "\t}",
      "\tchain postrouting {",
      "\t\ttype nat hook postrouting priority 100; policy accept;",
      "\t\tip saddr @nat_prefixes ip daddr != @all_prefixes masquerade fully-random",
      "\t}",
      "}",
    ]);
  });

  it("is nothing when the tables are equal, and nothing when neither exists", () => {
    const d = desiredNat(fixtureState);
    expect(planNat(d, d)).toBeUndefined();
    expect(planNat(undefined, undefined)).toBeUndefined();
  });

  it("deletes the table when no network wants NAT (creating it first, so a table already gone is no error)", () => {
    expect(planNat(undefined, parseNftTable(fixture("nft-vmrouted.json")))).toBe("add table ip vmrouted\ndelete table ip vmrouted\n");
  });

  it("rewrites the whole table on any difference, naming no other table, never flushing", () => {
    const d = desiredNat(fixtureState)!;
    const moreLearned = desiredNat({ ...fixtureState, learned: [...fixtureState.learned, learned("203.0.113.9/32")] });
    const script = planNat(moreLearned, d)!;
    expect(script).toContain("203.0.113.9/32");
    for (const l of lines(script)) {
      expect(l).not.toMatch(/\bflush\b/);
      if (/\btable\b/.test(l)) expect(l).toMatch(/^(add table|delete table|table) ip vmrouted( \{)?$/);
    }
  });

  it("wraps long element lists over several lines", () => {
    const many = Array.from({ length: 20 }, (_, i) => learned(`192.168.${i}.7/32`));
    const script = planNat(desiredNat(state([net("service", "172.31.16.1/24", true)], many)), undefined)!;
    const start = script.indexOf("elements = {");
    const block = script.slice(start, script.indexOf("}", start) + 1);
    expect(block.split("\n")).toHaveLength(3);
    expect(block.match(/\d+\.\d+\.\d+\.\d+\/\d+/g)).toHaveLength(21);
  });

  it("property: planning against the parse of the applied table yields nothing", () => {
    const cidr = fc.tuple(fc.integer({ min: 1, max: 223 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 1, max: 254 }), fc.integer({ min: 8, max: 30 }))
      .map(([a, b, c, d, len]) => `${a}.${b}.${c}.${d}/${len}`);
    const networks = fc.array(fc.tuple(cidr, fc.boolean()), { minLength: 1, maxLength: 6 })
      .map((list) => list.map(([c, nat], i) => net(`n${i}`, c, nat)));
    const routes = fc.array(cidr.map((c) => learned(c.replace(/\/\d+$/, "/32"))), { maxLength: 10 });
    fc.assert(fc.property(networks, routes, (ns, rs) => {
      const d = desiredNat(state(ns, rs));
      if (!ns.some((n) => n.natOutgoing)) {
        expect(d).toBeUndefined();
        return;
      }
      expect(planNat(d, undefined)).toBeDefined();
      expect(planNat(d, parseNftTable(asNftJson(d!)))).toBeUndefined();
    }));
  });
});

describe("nft adapter: errors", () => {
  it("makes one line of nft's error: the message and the script line it points at", () => {
    const script = "add table ip vmrouted\ntable ip vmrouted {\n\tset s {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.0.0.0/8, 10.1.0.0/16 }\n\t}\n}\n";
    // Real nft 1.0.6 stderr for this script.
    const stderr = "/proc/4242/fd/21:6:28-38: Error: conflicting intervals specified\n\t\telements = { 10.0.0.0/8, 10.1.0.0/16 }\n\t\t             ~~~~~~~~~~  ^^^^^^^^^^^\n";
    expect(nftErrorLine(stderr, script)).toBe("conflicting intervals specified (line 6: elements = { 10.0.0.0/8, 10.1.0.0/16 })");
    expect(nftErrorLine("Error: Could not process rule: Operation not permitted\n", script)).toBe("Could not process rule: Operation not permitted");
    expect(nftErrorLine("", script)).toBeUndefined();
  });

  it("tells nft not installed apart from every other failure", async () => {
    const path = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      await expect(listNatTable()).rejects.toBeInstanceOf(NftUnavailableError);
      await expect(applyNft("add table ip vmrouted\n")).rejects.toThrow("nft is not installed (package nftables)");
    } finally {
      process.env.PATH = path;
    }
  });
});
