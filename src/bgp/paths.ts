// What vmrouted announces, as plain data: one IPv4 unicast /32 per ready
// endpoint. Pure; the announcer diffs these against its record.

export interface BgpPath {
  /** "a.b.c.d/32" */
  prefix: string;
  nextHop: string;
  communities: number[];
  localPref?: number;
}

export interface AnnouncePolicy {
  nextHop: string;
  /** "ASN:VALUE" strings from the config. */
  communities: string[];
  localPref?: number;
  /** Marks the elevated path of a VM that just moved here (every host prefers it). */
  migrationCommunity: string;
}

/** A ready endpoint to announce; elevated while a live-migrated VM settles on this host. */
export interface Announcement {
  ip: string;
  elevated?: boolean;
}

/** The local-pref of an elevated path: above any normal one (BGP prefers the highest local-pref first). */
export const ELEVATED_LOCAL_PREF_BONUS = 100;
const DEFAULT_LOCAL_PREF = 100;

export function encodeCommunity(text: string): number {
  const [asn, value] = text.split(":").map(Number);
  return (asn! * 65536) + value!;
}

export function pathFor(a: Announcement, policy: AnnouncePolicy): BgpPath {
  if (a.elevated)
    return {
      prefix: `${a.ip}/32`,
      nextHop: policy.nextHop,
      communities: [...policy.communities, policy.migrationCommunity].map(encodeCommunity),
      localPref: (policy.localPref ?? DEFAULT_LOCAL_PREF) + ELEVATED_LOCAL_PREF_BONUS,
    };
  return {
    prefix: `${a.ip}/32`,
    nextHop: policy.nextHop,
    communities: policy.communities.map(encodeCommunity),
    ...(policy.localPref !== undefined ? { localPref: policy.localPref } : {}),
  };
}

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
