import type { Logger } from "pino";
import type { LearnedRoute } from "../model/types.js";
import type { GobgpClient, PeerInfo, RibPath } from "./gobgp.js";

// The other hosts' workload routes, from gobgpd's best paths (kube-router's
// route injection): a WatchEvent stream of best-path changes, whose first
// message is every current best path, and a full ListPath comparison on every
// resync (after kube-router #1738: a missed event must not leave a stale
// route). The result is published to the desired state's writer; the planner
// turns it into kernel routes `<prefix> via <next hop> proto 96`.
//
// A fresh stream's first message is gobgpd's RIB as it is now, which right
// after a gobgpd (re)start is empty or partial: its sessions come up seconds
// later. So after every (re)connect the set only grows (new and changed paths
// are taken at once) until gobgpd's peers are Established and have sent their
// End-of-RIB (or, without graceful restart, have been up a few seconds; at
// worst SYNC_TIMEOUT_MS), and a moment more; then a full listing replaces it, withdrawals
// included. A gobgpd restart therefore removes no kernel route of a host
// whose paths the fabric kept.
//
// Taken: every IPv4 and IPv6 unicast best path that came from another speaker
// (one stream and one listing per family; a peer that has no IPv6 sends no
// IPv6 End-of-RIB and is not waited for, see gobgp.ts listPeers). What of it is
// installed is the import filter's decision (bgp/import-filter.ts: host routes
// inside the workload ranges only, never an underlay address), made where the
// local endpoints and the host's addresses are known (state/resolve.ts). While gobgpd is away the set stays
// as it was: the sessions, not vmrouted, decide what the fabric withdrew, and
// a reconnect's snapshot says it.

/** Without graceful restart there is no End-of-RIB to wait for: a session up this long has sent its table. */
const SETTLE_WITHOUT_EOR_S = 3;
/**
 * After the peers say they are done, a moment more: FRR sends its End-of-RIB
 * before the paths it holds back for its update coalescing (about a second).
 */
const SETTLE_AFTER_SYNC_MS = 2500;
/** How long a withdrawal waits for the stream to prove it is not gobgpd shutting down. */
const WITHDRAW_DELAY_MS = 1000;
/** A peer that never comes (a dead reflector) does not hold withdrawals back longer than this. */
const SYNC_TIMEOUT_MS = 120_000;
/**
 * While paths stream in (a reflector sending 50,000), at most one publication
 * per this many ms: each is a new desired state, diffed and planned whole.
 * A few changes go at once, each (QUICK_CHANGES per window): a migrated VM's
 * /32 and then its /128, which come in two UPDATEs a few ms apart, must not
 * wait for each other (the /128 waited 250 ms behind its /32: 13 more
 * replies lost in a migration than IPv4's).
 */
const PUBLISH_EVERY_MS = 250;
const QUICK_CHANGES = 32;

/** Prefix changes published in the current window of PUBLISH_EVERY_MS. */
export interface PublishWindow { start: number; changes: number }

/**
 * Pure: how long a publication of `pending` prefix changes waits (ms). At once while the
 * window's changes stay few (a migrated VM's paths, one by one); otherwise one per
 * PUBLISH_EVERY_MS after the last (a reflector's stream, many sets coalesced into one).
 */
export function publishWait(now: number, lastPublishAt: number, window: PublishWindow, pending: number): number {
  const changes = now - window.start >= PUBLISH_EVERY_MS ? 0 : window.changes;
  if (changes + pending <= QUICK_CHANGES) return 0;
  return Math.max(0, lastPublishAt + PUBLISH_EVERY_MS - now);
}

/** Pure: the window after a publication of `published` changes at `now`. */
export function afterPublication(now: number, window: PublishWindow, published: number): PublishWindow {
  const current = now - window.start >= PUBLISH_EVERY_MS ? { start: now, changes: 0 } : window;
  return { start: current.start, changes: current.changes + published };
}

/** Pure: gobgpd's RIB holds everything its peers have, as far as they tell. */
export function peersSynced(peers: PeerInfo[]): boolean {
  return peers.length > 0 && peers.every((p) => p.state === "established" &&
    (p.endOfRib?.negotiated ? p.endOfRib.received : (p.uptimeSeconds ?? 0) >= SETTLE_WITHOUT_EOR_S));
}

export interface ImporterDeps {
  address: string;
  connect: (address: string) => GobgpClient;
  /** Encoded (ASN * 65536 + value): marks an elevated path (a VM that just moved there). */
  migrationCommunity: number;
  /** Hands the newest set to the writer; complete: it reflects a synced RIB (withdrawals included). */
  publish: (routes: ReadonlyMap<string, LearnedRoute>, complete: boolean) => Promise<void>;
  log: Logger;
  retryMs?: number;
  onFailure?: () => void;
  /** gobgpd's neighbours, learned at every (re)connect before any path is published (the import filter refuses their addresses). */
  onPeers?: (peers: string[]) => Promise<void> | void;
}

/**
 * Pure: another speaker's best path as a learned route, or undefined (ours, or withdrawn). Every
 * prefix is kept, /24s and default routes too: the import filter refuses them, and counts and lists
 * them (bgp/import-filter.ts), so an operator sees what the fabric tried to hand this host.
 */
export function learnedFrom(path: RibPath, migrationCommunity: number): LearnedRoute | undefined {
  if (path.isFromLocal || path.isWithdraw || !path.nextHop) return undefined;
  return { prefix: path.prefix, nextHop: path.nextHop, elevated: path.communities.includes(migrationCommunity) };
}

/** A batch of watch changes applied to a set, in place (per prefix, the newest entry wins). */
export function applyBestPaths(routes: Map<string, LearnedRoute>, paths: RibPath[], migrationCommunity: number): Map<string, LearnedRoute> {
  for (const p of paths) {
    const route = learnedFrom(p, migrationCommunity);
    if (!route) routes.delete(p.prefix); // withdrawn, or its best path is now ours: nothing to route elsewhere
    else {
      const had = routes.get(route.prefix);
      // The same route again (a reflector re-sending after a restart) keeps its object: nothing changed.
      if (!had || had.nextHop !== route.nextHop || had.elevated !== route.elevated) routes.set(route.prefix, route);
    }
  }
  return routes;
}

/** Pure: a listing, except where the watched set is newer (prefixes the stream spoke about while it was taken). */
export function listingWithNewer(listed: Map<string, LearnedRoute>, watched: ReadonlyMap<string, LearnedRoute>, touched: Iterable<string>): Map<string, LearnedRoute> {
  for (const prefix of touched) {
    const w = watched.get(prefix);
    if (w) listed.set(prefix, w);
    else listed.delete(prefix);
  }
  return listed;
}

export function sameRoutes(a: ReadonlyMap<string, LearnedRoute>, b: ReadonlyMap<string, LearnedRoute>): boolean {
  if (a.size !== b.size) return false;
  for (const [prefix, r] of a) {
    const o = b.get(prefix);
    if (!o || o.nextHop !== r.nextHop || o.elevated !== r.elevated) return false;
  }
  return true;
}

export class Importer {
  state: "connecting" | "up" | "down" = "connecting";
  reason = "not connected yet";
  /** Full comparisons that found the watched set wrong (each one a missed event). */
  corrections = 0;
  private routes = new Map<string, LearnedRoute>();
  private published: ReadonlyMap<string, LearnedRoute> | undefined;
  private client: GobgpClient | undefined;
  private cancel: (() => void) | undefined;
  private stopped = false;
  private publishing: Promise<void> = Promise.resolve();
  private pending = false;
  /** Since the last (re)connect, gobgpd's peers have sent what they have: a listing can be compared. */
  private synced = false;
  /** Since the last (re)connect, a listing has confirmed the watched set: it is the whole truth, withdrawals included. */
  private complete = false;
  private publishedSynced = false;
  private lastPublishAt = -Infinity;
  /** Prefix changes waiting for the next publication, and those published in the current window (PUBLISH_EVERY_MS). */
  private pendingChanges = 0;
  private window: PublishWindow = { start: -Infinity, changes: 0 };
  /** While a comparison lists: the prefixes the stream has spoken about since it began. */
  private touched: Set<string> | undefined;

  constructor(private readonly deps: ImporterDeps) {}

  get count(): number {
    return this.routes.size;
  }

  start(): void {
    void this.loop();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.withdrawTimer);
    this.cancel?.();
    this.client?.close();
  }

  private withdrawing = new Map<string, RibPath>();
  private withdrawTimer: NodeJS.Timeout | undefined;

  private flushWithdrawals(client: GobgpClient): void {
    this.withdrawTimer ??= setTimeout(() => {
      this.withdrawTimer = undefined;
      if (this.client !== client || this.withdrawing.size === 0) return;
      applyBestPaths(this.routes, [...this.withdrawing.values()], this.deps.migrationCommunity);
      const changes = this.withdrawing.size;
      this.withdrawing.clear();
      this.schedulePublish(changes);
    }, WITHDRAW_DELAY_MS);
  }

  /** Waits until gobgpd's peers have sent all they have, then takes gobgpd's listing as the whole truth. */
  private async sync(client: GobgpClient): Promise<void> {
    const started = Date.now();
    while (!this.stopped && this.client === client && Date.now() - started < SYNC_TIMEOUT_MS) {
      const peers = await client.listPeers().catch(() => [] as PeerInfo[]);
      if (peersSynced(peers)) break;
      await new Promise((r) => setTimeout(r, 500).unref());
    }
    await new Promise((r) => setTimeout(r, SETTLE_AFTER_SYNC_MS).unref());
    if (this.stopped || this.client !== client) return;
    this.synced = true;
    // The set becomes complete (withdrawals included) only from a listing compared with it.
    while (!this.stopped && this.client === client && !(await this.compare()))
      await new Promise((r) => setTimeout(r, 1000).unref());
    if (this.stopped || this.client !== client) return;
    this.complete = true;
    this.schedulePublish(this.routes.size);
  }

  /**
   * The resync's full comparison: gobgpd's best paths listed, and taken over
   * if the watched set differs. A listing takes a while (a second at 50,000
   * paths) and the stream goes on meanwhile: for the prefixes it spoke about
   * during the listing, and those whose withdrawal waits, the watched set is
   * the newer and stays. Returns false when gobgpd could not list.
   */
  async compare(): Promise<boolean> {
    const client = this.client;
    if (this.state !== "up" || !client || !this.synced) return true;
    const touched = new Set(this.withdrawing.keys());
    this.touched = touched;
    let listed: RibPath[];
    try {
      listed = await client.listBestPaths();
    } catch (e) {
      this.deps.log.warn({ err: (e as Error).message }, "ListPath for the learned-route comparison failed");
      return false;
    } finally {
      if (this.touched === touched) this.touched = undefined;
    }
    if (client !== this.client) return true;
    const fresh = listingWithNewer(applyBestPaths(new Map(), listed, this.deps.migrationCommunity), this.routes, touched);
    if (sameRoutes(fresh, this.routes)) return true;
    this.corrections++;
    this.deps.log.warn({ watched: this.routes.size, listed: fresh.size }, "learned routes differed from gobgpd's RIB (a missed event); taking the listing");
    this.routes = fresh;
    this.schedulePublish(fresh.size);
    return true;
  }

  private async loop(): Promise<void> {
    let first = true;
    while (!this.stopped) {
      if (!first) await new Promise((r) => setTimeout(r, this.deps.retryMs ?? 1000).unref());
      first = false;
      if (this.stopped) return;
      const client = this.deps.connect(this.deps.address);
      this.client = client;
      this.synced = false;
      this.complete = false;
      // The peers first: a path to the reflector's own address must meet a filter that knows it.
      try {
        await this.deps.onPeers?.((await client.listPeers()).map((p) => p.address));
      } catch (e) {
        this.deps.log.warn({ err: (e as Error).message }, "cannot list gobgpd's peers; they are refused by address once known");
      }
      if (this.stopped) return;
      const watch = client.watchBestPaths((paths, initial) => {
        if (this.touched) for (const p of paths) this.touched.add(p.prefix);
        if (initial) {
          // Only what it adds or changes counts until the RIB is known complete (see above).
          for (const p of paths) {
            const route = learnedFrom(p, this.deps.migrationCommunity);
            if (route) applyBestPaths(this.routes, [p], this.deps.migrationCommunity);
          }
          if (this.state !== "up") this.deps.log.info({ gobgp: this.deps.address, learned: this.routes.size }, "importing other hosts' routes from gobgpd");
          this.state = "up";
          this.reason = "";
          void this.sync(client);
        } else {
          // Withdrawals wait a moment: a gobgpd that is being stopped (SIGTERM) withdraws everything it
          // learned into the stream just before it ends, and that is not the fabric withdrawing anything.
          const gone = paths.filter((p) => !learnedFrom(p, this.deps.migrationCommunity));
          const kept = paths.filter((p) => learnedFrom(p, this.deps.migrationCommunity));
          applyBestPaths(this.routes, kept, this.deps.migrationCommunity);
          for (const p of kept) this.withdrawing.delete(p.prefix);
          for (const p of gone) this.withdrawing.set(p.prefix, p);
          if (gone.length) this.flushWithdrawals(client);
        }
        this.schedulePublish(paths.length);
      });
      this.cancel = watch.cancel;
      const why = await watch.ended;
      this.withdrawing.clear(); // the stream ended right after them: gobgpd was going away
      this.cancel = undefined;
      this.client = undefined;
      client.close();
      if (this.stopped) return;
      // The set stays as it is until a new snapshot replaces it.
      if (this.state !== "down") this.deps.log.warn({ reason: why }, "lost gobgpd's best-path stream; learned routes kept until it is back");
      this.deps.onFailure?.();
      this.state = "down";
      this.reason = why;
    }
  }

  /**
   * One publication at a time, always of the newest set (a 50,000-path snapshot is one change, not 50,000).
   * `changes`: how many prefixes this call is for; a few go at once, a stream waits its turn.
   */
  private schedulePublish(changes: number): void {
    this.pendingChanges += changes;
    if (this.pending) return;
    this.pending = true;
    this.publishing = this.publishing.then(async () => {
      const wait = publishWait(performance.now(), this.lastPublishAt, this.window, this.pendingChanges);
      await new Promise((r) => (wait > 0 ? setTimeout(r, wait).unref() : setImmediate(r)));
      this.pending = false;
      this.lastPublishAt = performance.now();
      this.window = afterPublication(this.lastPublishAt, this.window, this.pendingChanges);
      this.pendingChanges = 0;
      const complete = this.complete;
      if (this.published && this.publishedSynced === complete && sameRoutes(this.routes, this.published)) return;
      // A copy: the writer's state must never change under it.
      const routes: ReadonlyMap<string, LearnedRoute> = new Map(this.routes);
      try {
        await this.deps.publish(routes, complete);
        this.published = routes;
        this.publishedSynced = complete;
      } catch (e) {
        this.deps.log.error({ err: (e as Error).message }, "publishing learned routes failed");
      }
    });
  }
}
