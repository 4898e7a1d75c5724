import type { Logger } from "pino";
import { canonicalIpv6 } from "../model/ipv6.js";
import type { GobgpClient, RibPath } from "./gobgp.js";

// Other hosts' claims on this host's workload IPs, for duplicate detection.
// The best-path stream cannot show them: for a prefix this host announces,
// gobgpd's best path is our own, and the other host's path (which the
// reflector passes on when it prefers it) sits beside it unseen. So every
// few seconds gobgpd is asked for every path of this host's ready /32s and
// /128s (one ListPath with exact prefixes per family) and the remote ones are
// published. A path carrying the migration community is a live migration,
// never a claim.

/** Pure: prefix → the next hop of another host's path to it (a /32's or a /128's). */
export function remoteClaims(paths: RibPath[], migrationCommunity: number, nodeAddress: string, nodeAddress6?: string): Map<string, string> {
  const claims = new Map<string, string>();
  const self6 = nodeAddress6 !== undefined ? canonicalIpv6(nodeAddress6) : undefined;
  for (const p of paths) {
    if (p.isFromLocal || p.isWithdraw || !p.nextHop || p.nextHop === nodeAddress || (self6 !== undefined && p.nextHop === self6) ||
      p.communities.includes(migrationCommunity)) continue;
    if (!claims.has(p.prefix) || p.nextHop < claims.get(p.prefix)!) claims.set(p.prefix, p.nextHop);
  }
  return claims;
}

export interface ClaimWatchDeps {
  client: GobgpClient;
  /** This host's ready endpoints' prefixes: "<ip>/32", and "<ip6>/128" for those with an ip6. */
  prefixes: () => string[];
  migrationCommunity: number;
  nodeAddress: string;
  /** node.address6 (our own /128s' next hop). */
  nodeAddress6?: string;
  publish: (claims: ReadonlyMap<string, string>) => Promise<void>;
  log: Logger;
  intervalMs?: number;
}

export class ClaimWatch {
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  private last = "";

  constructor(private readonly deps: ClaimWatchDeps) {}

  start(): void {
    this.timer = setInterval(() => void this.tick(), this.deps.intervalMs ?? 2000);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const prefixes = this.deps.prefixes();
      const paths = prefixes.length ? await this.deps.client.listPathsOf(prefixes) : [];
      const claims = remoteClaims(paths, this.deps.migrationCommunity, this.deps.nodeAddress, this.deps.nodeAddress6);
      const key = JSON.stringify([...claims].sort());
      if (key === this.last) return;
      await this.deps.publish(claims);
      this.last = key;
    } catch (e) {
      // gobgpd away: the claims stay as last seen (the importer reports the connection).
      this.deps.log.debug({ err: (e as Error).message }, "cannot list this host's prefixes in gobgpd");
    } finally {
      this.busy = false;
    }
  }
}
