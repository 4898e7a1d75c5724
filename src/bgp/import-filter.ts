import { parseIpv4, parsePrefix, type Prefix } from "../model/ipv4.js";
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
  | "not-a-host-route" // a /24, a default route: not one workload
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
  "not-a-host-route", "outside-import-ranges", "host-address", "peer-address", "next-hop-address", "connected-network",
  "next-hop-via-workload", "next-hop-is-this-host", "duplicate", "max-learned",
];

export interface RejectedPath {
  prefix: string;
  nextHop: string;
  reason: RejectReason;
}

/** What the host knows of itself and its peers (kernel addresses, gobgpd's neighbours). */
export interface HostFacts {
  /** Every IPv4 address of this host (node.address included). */
  addresses: ReadonlySet<string>;
  /** Directly connected IPv4 prefixes ("10.1.1.0/24"), not vmrouted's own gateways (noprefixroute). */
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
  /** Where a workload prefix may lie ("a.b.c.d/len"). */
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
 * A route's prefix and next hop as numbers, parsed once per route object: the importer keeps the
 * object of an unchanged route, and the filter runs again with every change of the learned set
 * (50,000 routes streaming in are re-filtered every 250 ms).
 */
interface Parsed { ip: string; value: number | undefined; length: number; nextHop: number | undefined }
const parsedRoutes = new WeakMap<object, Parsed>();
function parsed(r: { prefix: string; nextHop: string }): Parsed {
  let p = parsedRoutes.get(r);
  if (!p) {
    const prefix = parsePrefix(r.prefix);
    p = { ip: prefix?.address ?? "", value: prefix ? parseIpv4(prefix.address) : undefined, length: prefix?.length ?? -1, nextHop: parseIpv4(r.nextHop) };
    parsedRoutes.set(r, p);
  }
  return p;
}


/**
 * The verdict on every learned best path. `installed`: what was installed
 * before (past maxLearned, what is already in stays and only new prefixes
 * are refused, so the limit never makes a host drop a route it had).
 */
export function filterImports(
  learned: Iterable<LearnedRoute>, endpoints: readonly Endpoint[], policy: ImportPolicy, installed: ReadonlySet<string> = new Set(),
): ImportVerdict {
  const ranges = policy.ranges.flatMap((r) => parsePrefix(r) ?? []);
  const connected = policy.facts.connected.flatMap((c) => parsePrefix(c) ?? []);
  const inAny = (list: Prefix[], value: number | undefined) => value !== undefined && list.some((p) => value >= p.base && value < p.base + p.size);
  const all = [...learned].sort((a, b) => compare(a.prefix, b.prefix));
  const local = new Map(endpoints.filter((e) => e.deviceOnly === undefined).map((e) => [e.ip, e]));
  // The other hosts: next hops outside the workload space (a next hop inside it is refused anyway, and
  // must not let a hostile path deny a real workload its route by naming it as a next hop).
  const nextHops = new Set([...new Set(all.map((r) => r.nextHop))].filter((nh) => !inAny(ranges, parseIpv4(nh))));

  const rejected: RejectedPath[] = [];
  const duplicates = new Map<string, string>();
  const candidates: LearnedRoute[] = [];
  const reject = (r: LearnedRoute, reason: RejectReason) => rejected.push({ prefix: r.prefix, nextHop: r.nextHop, reason });
  for (const r of all) {
    const { ip, value, length, nextHop } = parsed(r);
    if (value === undefined || length !== 32) reject(r, "not-a-host-route");
    else if (r.nextHop === policy.nodeAddress || policy.facts.addresses.has(r.nextHop)) reject(r, "next-hop-is-this-host");
    else if (policy.facts.addresses.has(ip) || ip === policy.nodeAddress) reject(r, "host-address");
    else if (policy.facts.peers.has(ip)) reject(r, "peer-address");
    else if (nextHops.has(ip)) reject(r, "next-hop-address");
    else if (inAny(connected, value)) reject(r, "connected-network");
    else if (!inAny(ranges, value)) reject(r, "outside-import-ranges");
    // A next hop inside the workload ranges (where every learned route lies) or a local workload's address
    // would be reached through a vmrouted route: a loop. (A learned route outside the ranges is never installed,
    // so a hostile /32 for another host's address cannot deny that host's routes.)
    else if (local.has(r.nextHop) || inAny(ranges, nextHop)) reject(r, "next-hop-via-workload");
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
    const mine = local.get(prefix.split("/")[0]!);
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

/** The import ranges: bgp.importPrefixes, or by default the networks' prefixes. */
export function importRanges(configured: readonly string[], networkPrefixes: readonly string[]): string[] {
  return configured.length ? [...configured] : [...networkPrefixes];
}

/** Connected prefixes from a host's addresses, leaving out those without a prefix route (vmrouted's gateways). */
export function connectedPrefixes(addresses: ReadonlyArray<{ ip: string; prefixLength: number; noprefixroute: boolean }>): string[] {
  const out = new Set<string>();
  for (const a of addresses) {
    if (a.noprefixroute || a.prefixLength >= 32) continue;
    const p = parsePrefix(`${a.ip}/${a.prefixLength}`);
    if (p) out.add(`${p.address}/${p.length}`);
  }
  return [...out].sort();
}

