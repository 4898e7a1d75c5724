import { parseIpv4, parsePrefix, type Prefix } from "../model/ipv4.js";
import { canonicalIpv6, ipv6Value, isLinkLocal6, isUnusableIpv6Host, parsePrefix6, prefix6Of } from "../model/ipv6.js";
import type { Endpoint, LearnedRoute } from "../model/types.js";

// Pure: which best paths other speakers announce become kernel routes. Every
// host installs what it imports with a metric that wins by longest match, so
// an import filter is what stands between one misconfigured or hostile BGP
// speaker and the fleet's control plane (a hypervisor's address, the
// reflector's, a next hop, or 8.8.8.8 routed into a tap's /32). Like Calico
// (its IP pools' blocks only) and kube-router (pod CIDRs only), only host
// routes inside the workload ranges are taken, and never what must stay on
// the underlay, whatever the ranges say.

export type RejectReason =
  | "not-a-host-route" // a /24, a default route, an IPv6 /64: not one workload
  | "next-hop-unusable" // a next hop of the other family, or an IPv6 one no route can use (link-local, IPv4-mapped, ...)
  | "outside-import-ranges"
  | "host-address" // one of this host's own addresses
  | "peer-address" // a BGP peer's address (the reflector's)
  | "next-hop-address" // the next hop of some path (another host)
  | "connected-network" // inside a network directly connected to this host (the fabric)
  | "next-hop-via-workload" // its next hop would resolve through a workload route (a loop)
  | "next-hop-is-this-host"
  | "duplicate" // a local ready endpoint has this IP (not a live migration)
  | "max-learned"; // bgp.maxLearned reached: new prefixes wait

export const REJECT_REASONS: RejectReason[] = [
  "not-a-host-route", "next-hop-unusable", "outside-import-ranges", "host-address", "peer-address", "next-hop-address", "connected-network",
  "next-hop-via-workload", "next-hop-is-this-host", "duplicate", "max-learned",
];

export interface RejectedPath {
  prefix: string;
  nextHop: string;
  reason: RejectReason;
}

/** What the host knows of itself and its peers (kernel addresses, gobgpd's neighbours). */
export interface HostFacts {
  /** Every IPv4 and IPv6 address of this host (node.address and node.address6 included; IPv6 in any spelling). */
  addresses: ReadonlySet<string>;
  /** Directly connected IPv4 and IPv6 prefixes ("10.1.1.0/24", "fd99::/64"), not vmrouted's own gateways (noprefixroute). */
  connected: readonly string[];
  /** gobgpd's neighbours. */
  peers: ReadonlySet<string>;
}

export function emptyHostFacts(): HostFacts {
  return { addresses: new Set(), connected: [], peers: new Set() };
}

export function sameHostFacts(a: HostFacts, b: HostFacts): boolean {
  const key = (f: HostFacts) => JSON.stringify([[...f.addresses].sort(), f.connected, [...f.peers].sort()]);
  return key(a) === key(b);
}

export interface ImportPolicy {
  nodeAddress: string;
  /** node.address6: this host's IPv6 next hop. */
  nodeAddress6?: string;
  /** Where a workload prefix may lie ("a.b.c.d/len", "fd31:16::/64"): importRanges(). */
  ranges: readonly string[];
  maxLearned: number;
  facts: HostFacts;
  /** Other hosts' paths to this host's workload IPs (bgp/claims.ts): prefix → next hop. */
  claims?: ReadonlyMap<string, string>;
}

export interface ImportVerdict {
  install: LearnedRoute[];
  rejected: RejectedPath[];
  /** Local endpoints another host announces too (not a migration): endpoint id → the other host's next hop. */
  duplicates: Map<string, string>;
  /** maxLearned refused some prefix. */
  limited: boolean;
}

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * A route's prefix and next hop as numbers (bigints for IPv6), parsed once per route object: the
 * importer keeps the object of an unchanged route, and the filter runs again with every change of
 * the learned set (50,000 routes streaming in are re-filtered every 250 ms).
 */
interface Parsed {
  v6: boolean;
  /** The prefix's address (IPv6: RFC 5952). */
  ip: string;
  value: number | bigint | undefined;
  length: number;
  /** The next hop, canonical (IPv6: RFC 5952). */
  nextHopText: string;
  /** The next hop as a number of the prefix's family; undefined when it is of the other family or unusable. */
  nextHop: number | bigint | undefined;
}
const parsedRoutes = new WeakMap<object, Parsed>();
function parsed(r: { prefix: string; nextHop: string }): Parsed {
  let p = parsedRoutes.get(r);
  if (!p) {
    if (r.prefix.includes(":")) {
      const slash = r.prefix.indexOf("/");
      const ip = canonicalIpv6(r.prefix.slice(0, slash)) ?? "";
      const lengthText = r.prefix.slice(slash + 1);
      const length = slash > 0 && /^\d{1,3}$/.test(lengthText) && Number(lengthText) <= 128 ? Number(lengthText) : -1;
      const hop = canonicalIpv6(r.nextHop);
      p = {
        v6: true, ip, value: ip ? ipv6Value(ip) : undefined, length,
        nextHopText: hop ?? r.nextHop, nextHop: hop && usableNextHop6(hop) ? ipv6Value(hop) : undefined,
      };
    } else {
      const prefix = parsePrefix(r.prefix);
      p = { v6: false, ip: prefix?.address ?? "", value: prefix ? parseIpv4(prefix.address) : undefined, length: prefix?.length ?? -1, nextHopText: r.nextHop, nextHop: parseIpv4(r.nextHop) };
    }
    parsedRoutes.set(r, p);
  }
  return p;
}

/**
 * An IPv6 next hop a route can use: not link-local, loopback, multicast, IPv4-mapped or
 * translated (the model's rule), nor anything else in ::/8 (IPv4-compatible ::a.b.c.d and the like).
 */
function usableNextHop6(canonical: string): boolean {
  return !isUnusableIpv6Host(canonical) && ipv6Value(canonical) >> 120n !== 0n;
}


interface Prefix6N { base: bigint; shift: bigint }
function prefix6N(text: string): Prefix6N | undefined {
  const p = parsePrefix6(text);
  return p ? { base: ipv6Value(p.base) >> BigInt(128 - p.length), shift: BigInt(128 - p.length) } : undefined;
}
const in6 = (list: Prefix6N[], value: bigint | undefined) => value !== undefined && list.some((p) => value >> p.shift === p.base);

/**
 * The verdict on every learned best path. `installed`: what was installed
 * before (past maxLearned, what is already in stays and only new prefixes
 * are refused, so the limit never makes a host drop a route it had).
 */
export function filterImports(
  learned: Iterable<LearnedRoute>, endpoints: readonly Endpoint[], policy: ImportPolicy, installed: ReadonlySet<string> = new Set(),
): ImportVerdict {
  const ranges = policy.ranges.flatMap((r) => (r.includes(":") ? [] : parsePrefix(r) ?? []));
  const ranges6 = policy.ranges.flatMap((r) => (r.includes(":") ? prefix6N(r) ?? [] : []));
  const connected = policy.facts.connected.flatMap((c) => (c.includes(":") ? [] : parsePrefix(c) ?? []));
  const connected6 = policy.facts.connected.flatMap((c) => (c.includes(":") ? prefix6N(c) ?? [] : []));
  const in4 = (list: Prefix[], value: number | undefined) => value !== undefined && list.some((p) => value >= p.base && value < p.base + p.size);
  const inAny = (list4: Prefix[], list6: Prefix6N[], value: number | bigint | undefined) =>
    typeof value === "bigint" ? in6(list6, value) : in4(list4, value);
  // IPv6 addresses compared in one spelling (RFC 5952).
  const canonical = (ip: string) => (ip.includes(":") ? canonicalIpv6(ip) ?? ip : ip);
  const addresses = new Set([...policy.facts.addresses].map(canonical));
  const peers = new Set([...policy.facts.peers].map(canonical));
  const self = new Set([policy.nodeAddress, ...(policy.nodeAddress6 ? [canonical(policy.nodeAddress6)] : [])]);
  const all = [...learned].sort((a, b) => compare(a.prefix, b.prefix));
  const ready = endpoints.filter((e) => e.deviceOnly === undefined);
  // One map for both families (an IPv4 and an IPv6 text never collide).
  const local = new Map<string, Endpoint>();
  for (const e of ready) {
    local.set(e.ip, e);
    if (e.ip6) local.set(canonical(e.ip6), e);
  }
  // The other hosts: next hops outside the workload space (a next hop inside it is refused anyway, and
  // must not let a hostile path deny a real workload its route by naming it as a next hop).
  const nextHops = new Set<string>();
  for (const r of all) {
    const { nextHop, nextHopText } = parsed(r);
    if (nextHop !== undefined && !inAny(ranges, ranges6, nextHop)) nextHops.add(nextHopText);
  }

  const rejected: RejectedPath[] = [];
  const duplicates = new Map<string, string>();
  const candidates: LearnedRoute[] = [];
  const reject = (r: LearnedRoute, reason: RejectReason) => rejected.push({ prefix: r.prefix, nextHop: r.nextHop, reason });
  for (const r of all) {
    const { v6, ip, value, length, nextHop, nextHopText } = parsed(r);
    if (value === undefined || length !== (v6 ? 128 : 32)) reject(r, "not-a-host-route");
    else if (self.has(nextHopText) || addresses.has(nextHopText)) reject(r, "next-hop-is-this-host");
    else if (nextHop === undefined) reject(r, "next-hop-unusable");
    else if (addresses.has(ip) || self.has(ip)) reject(r, "host-address");
    else if (peers.has(ip)) reject(r, "peer-address");
    else if (nextHops.has(ip)) reject(r, "next-hop-address");
    else if (inAny(connected, connected6, value)) reject(r, "connected-network");
    else if (!inAny(ranges, ranges6, value)) reject(r, "outside-import-ranges");
    // A next hop inside the workload ranges (where every learned route lies) or a local workload's address
    // would be reached through a vmrouted route: a loop. (A learned route outside the ranges is never installed,
    // so a hostile /32 for another host's address cannot deny that host's routes.)
    else if (local.has(nextHopText) || inAny(ranges, ranges6, nextHop)) reject(r, "next-hop-via-workload");
    else {
      const mine = local.get(ip);
      // The elevated path of a VM that just moved away must win over our /32 until we let go (migration).
      if (mine && !(r.elevated && !mine.elevated)) {
        if (!r.elevated && mine.migration === undefined) {
          duplicates.set(mine.id, r.nextHop);
          reject(r, "duplicate");
        }
        continue;
      }
      candidates.push(r);
    }
  }
  // Another host's path beside ours (the best-path stream shows ours only): a duplicate too.
  for (const [prefix, nextHop] of policy.claims ?? []) {
    const mine = local.get(canonical(prefix.split("/")[0]!));
    if (mine && mine.migration === undefined && !duplicates.has(mine.id)) duplicates.set(mine.id, nextHop);
  }
  // The limit: what was installed stays; new prefixes in order until it is reached.
  const install: LearnedRoute[] = [];
  let room = policy.maxLearned - candidates.filter((r) => installed.has(r.prefix)).length;
  let limited = false;
  for (const r of candidates) {
    if (installed.has(r.prefix)) install.push(r);
    else if (room > 0) {
      install.push(r);
      room--;
    } else {
      limited = true;
      reject(r, "max-learned");
    }
  }
  return { install, rejected, duplicates, limited };
}

/**
 * The import ranges, per family: bgp.importPrefixes of that family, or by default the networks'
 * prefixes of that family (their IPv4 prefixes and prefix6s). So a config that lists only IPv4
 * ranges (written before dual stack) still imports /128s inside the networks' prefix6s.
 */
export function importRanges(configured: readonly string[], networkPrefixes: readonly string[]): string[] {
  const isV6 = (p: string) => p.includes(":");
  const pick = (v6: boolean) => {
    const mine = configured.filter((p) => isV6(p) === v6);
    return mine.length ? mine : networkPrefixes.filter((p) => isV6(p) === v6);
  };
  return [...pick(false), ...pick(true)];
}

/** Connected prefixes (IPv4 and IPv6) from a host's addresses, leaving out those without a prefix route (vmrouted's gateways) and link-local ones. */
export function connectedPrefixes(addresses: ReadonlyArray<{ ip: string; prefixLength: number; noprefixroute: boolean }>): string[] {
  const out = new Set<string>();
  for (const a of addresses) {
    if (a.noprefixroute) continue;
    if (a.ip.includes(":")) {
      const prefix = a.prefixLength < 128 && !isLinkLocal6(a.ip) ? prefix6Of(a.ip, a.prefixLength) : undefined;
      if (prefix) out.add(prefix);
      continue;
    }
    if (a.prefixLength >= 32) continue;
    const p = parsePrefix(`${a.ip}/${a.prefixLength}`);
    if (p) out.add(`${p.address}/${p.length}`);
  }
  return [...out].sort();
}

