import { canonicalIpv6, isUnusableIpv6Host } from "../model/ipv6.js";

// What vmrouted announces, as plain data: one IPv4 unicast /32 per ready
// endpoint, and one IPv6 unicast /128 per ready endpoint with an ip6 (when the
// node has an IPv6 next hop, node.address6). Pure; the announcer diffs these
// against its record.

export interface BgpPath {
  /** "a.b.c.d/32", or "<ipv6>/128" (RFC 5952) with an IPv6 next hop */
  prefix: string;
  nextHop: string;
  communities: number[];
  localPref?: number;
}

export interface AnnouncePolicy {
  nextHop: string;
  /**
   * The IPv6 next hop of the /128s (node.address6, canonical). Without it no
   * /128 is announced: an IPv4 next hop for an IPv6 prefix would be sent as
   * the IPv4-mapped ::ffff:a.b.c.d, which no host can route to.
   */
  nextHop6?: string;
  /** "ASN:VALUE" strings from the config. */
  communities: string[];
  localPref?: number;
  /** Marks the elevated path of a VM that just moved here (every host prefers it). */
  migrationCommunity: string;
}

/** A ready endpoint to announce; elevated while a live-migrated VM settles on this host. */
export interface Announcement {
  ip: string;
  /** The endpoint's IPv6 address: a /128 beside the /32, with the same attributes. */
  ip6?: string;
  elevated?: boolean;
}

/** The local-pref of an elevated path: above any normal one (BGP prefers the highest local-pref first). */
export const ELEVATED_LOCAL_PREF_BONUS = 100;
const DEFAULT_LOCAL_PREF = 100;

export function encodeCommunity(text: string): number {
  const [asn, value] = text.split(":").map(Number);
  return (asn! * 65536) + value!;
}

/** The endpoint's IPv4 /32. */
export function pathFor(a: Announcement, policy: AnnouncePolicy): BgpPath {
  return hostPath(`${a.ip}/32`, policy.nextHop, a.elevated === true, policy);
}

/** The attributes of a /32 or /128: the same communities, local-pref and elevation rules for both families. */
function hostPath(prefix: string, nextHop: string, elevated: boolean, policy: AnnouncePolicy): BgpPath {
  if (elevated)
    return {
      prefix,
      nextHop,
      communities: [...policy.communities, policy.migrationCommunity].map(encodeCommunity),
      localPref: (policy.localPref ?? DEFAULT_LOCAL_PREF) + ELEVATED_LOCAL_PREF_BONUS,
    };
  return {
    prefix,
    nextHop,
    communities: policy.communities.map(encodeCommunity),
    ...(policy.localPref !== undefined ? { localPref: policy.localPref } : {}),
  };
}

/**
 * The endpoint's IPv6 /128 with next hop policy.nextHop6, or undefined: no ip6, or no usable
 * IPv6 next hop (none configured, or one that is link-local, loopback, IPv4-mapped, ...).
 */
export function path6For(a: Announcement, policy: AnnouncePolicy): BgpPath | undefined {
  if (a.ip6 === undefined || !usableNextHop6(policy.nextHop6)) return undefined;
  const ip6 = canonicalIpv6(a.ip6);
  if (!ip6) return undefined;
  return hostPath(`${ip6}/128`, canonicalIpv6(policy.nextHop6!)!, a.elevated === true, policy);
}

/** An IPv6 next hop other hosts can route to: a global or unique-local unicast address. */
export function usableNextHop6(nextHop6: string | undefined): boolean {
  return nextHop6 !== undefined && !isUnusableIpv6Host(nextHop6);
}

/** Every path of an endpoint: its /32, and its /128 when it has an ip6 and the node an IPv6 next hop. */
export function pathsFor(a: Announcement, policy: AnnouncePolicy): BgpPath[] {
  const v6 = path6For(a, policy);
  return v6 ? [pathFor(a, policy), v6] : [pathFor(a, policy)];
}

/** Is this an IPv6 path (a /128)? */
export const isIpv6Path = (p: { prefix: string }): boolean => p.prefix.includes(":");

export function samePath(a: BgpPath, b: BgpPath): boolean {
  return a.prefix === b.prefix && a.nextHop === b.nextHop && a.localPref === b.localPref &&
    a.communities.length === b.communities.length && a.communities.every((c, i) => c === b.communities[i]);
}

export interface AnnouncementDiff {
  announce: BgpPath[];
  withdraw: BgpPath[];
}

/**
 * desired vs the record of what may be in gobgpd. A changed path is simply
 * announced again (gobgpd replaces a local path with the same prefix).
 */
export function diffAnnouncements(desired: Map<string, BgpPath>, record: Map<string, BgpPath>): AnnouncementDiff {
  const announce: BgpPath[] = [];
  const withdraw: BgpPath[] = [];
  for (const [prefix, path] of desired) {
    const had = record.get(prefix);
    if (!had || !samePath(had, path)) announce.push(path);
  }
  for (const [prefix, path] of record) if (!desired.has(prefix)) withdraw.push(path);
  return { announce, withdraw };
}
