import { endpointIps, hostPrefix } from "../model/ipv6.js";
import type { Logger } from "pino";
import type { DomainRecord } from "../libvirt/domains.js";
import { watchGuestAnnouncement, type AnnounceWatch } from "../libvirt/guest-announce.js";
import { watchLifecycle } from "../libvirt/events.js";
import { settled, wentLive, type Migration } from "../libvirt/migration.js";
import type { DesiredStore } from "../state/desired.js";
import type { Metrics } from "./metrics.js";

// The effects of live migration on this host (the rules are libvirt/migration.ts):
// a capture on each tap of an incoming migration until the guest announces
// itself, libvirt's resume events as the fallback, and the end of settling.
// Each makes one change on the desired state's writer; the reconciler and the
// announcer do the rest (elevated route and path, then normal ones).

export interface MigrationDeps {
  store: DesiredStore;
  log: Logger;
  metrics: Metrics;
  /** libvirt URI for the resume events (libvirt disabled: none). */
  libvirtUri?: string;
  settleSeconds: number;
  /** Whether another host still announces any of these prefixes (gobgpd's RIB); false without BGP. */
  othersAnnounce: (prefixes: string[]) => Promise<boolean>;
  /** Resolves when every change so far has been through a reconcile pass (for the switch-over time). */
  settledPass: () => Promise<void>;
}

export class MigrationWatch {
  private captures = new Map<string, AnnounceWatch[]>();
  private readonly events: { stop(): void } | undefined;
  private readonly ticker: NodeJS.Timeout;
  /** When libvirt said a target domain resumed, and when its guest was heard: how late the capture fires. */
  private resumedAt = new Map<string, number>();
  private checking = false;

  constructor(private readonly deps: MigrationDeps) {
    deps.store.subscribe((next, previous) => this.follow(next.domains, previous.domains));
    this.follow(deps.store.current.domains, new Map());
    this.events = deps.libvirtUri ? watchLifecycle(deps.libvirtUri, (e) => {
      if (e.event !== "Resumed") return;
      this.resumedAt.set(e.domain, Date.now());
      void this.live(e.domain, "resume", Date.now());
    }) : undefined;
    this.ticker = setInterval(() => void this.settle(), 1000);
    this.ticker.unref();
  }

  stop(): void {
    clearInterval(this.ticker);
    this.events?.stop();
    for (const w of this.captures.values()) for (const c of w) c.stop();
    this.captures.clear();
  }

  /** Captures follow the targets; a target that ends without going live is a failed (or cancelled) migration. */
  private follow(next: ReadonlyMap<string, DomainRecord>, previous: ReadonlyMap<string, DomainRecord>): void {
    for (const d of next.values())
      if (d.migration?.phase === "target" && !this.captures.has(d.name)) {
        this.captures.set(d.name, []);
        // The taps are made by the pass that follows this change: capture once it has run.
        void this.deps.settledPass().then(() => this.capture(d.name, 0));
      }
    for (const [name, watches] of this.captures)
      if (next.get(name)?.migration?.phase !== "target") {
        for (const w of watches) w.stop();
        this.captures.delete(name);
      }
    for (const p of previous.values()) {
      const now = next.get(p.name);
      if (p.migration?.phase === "target" && !now?.migration) {
        this.deps.metrics.migrations.inc({ result: "failed" });
        this.deps.log.warn({ domain: p.name }, "incoming migration ended before the guest ran here (cancelled or failed): nothing of it is left");
      }
    }
  }

  /** Captures on a target's taps; one that fails (a tap remade) is started again while the domain is a target. */
  private capture(domain: string, attempt: number): void {
    const d = this.deps.store.current.domains.get(domain);
    const watches = this.captures.get(domain);
    if (d?.migration?.phase !== "target" || !watches) return;
    for (const w of watches) w.stop();
    watches.length = 0;
    for (const i of d.interfaces)
      watches.push(watchGuestAnnouncement(i.tap, i.mac, (by, at) => void this.live(domain, by, at), (message) => {
        this.deps.log.warn({ domain, tap: i.tap, attempt }, `${message}; trying again (libvirt's resume event is the fallback)`);
        if (attempt < 10) setTimeout(() => this.capture(domain, attempt + 1), 500).unref();
      }));
    if (attempt === 0) this.deps.log.info({ domain, taps: d.interfaces.map((i) => i.tap) }, "incoming migration: tap ready, no route or path until the guest runs here");
  }

  /** The guest runs here: route and path go up elevated. */
  private async live(domain: string, by: NonNullable<Migration["liveBy"]>, at: number): Promise<void> {
    const changed = await this.deps.store.change(`libvirt: ${domain} live`, (d) => {
      const record = d.domains.get(domain);
      const migration = wentLive(record?.migration, by, at);
      if (!record || migration === record.migration) return { next: {}, result: false };
      return { next: { domains: new Map(d.domains).set(domain, { ...record, ...(migration ? { migration } : {}) }) }, result: true };
    });
    if (!changed) {
      if (by !== "resume" && this.resumedAt.has(domain)) this.resumedAt.delete(domain);
      return;
    }
    await this.deps.settledPass();
    const routedMs = Date.now() - at;
    this.deps.metrics.switchover.observe(routedMs / 1000);
    const resumed = this.resumedAt.get(domain);
    this.deps.log.info({ domain, liveBy: by, routedMs, ...(resumed !== undefined ? { sinceResumeEventMs: at - resumed } : {}) },
      `migrated here: ${domain} routed and announced with preference (settling ${this.deps.settleSeconds} s)`);
  }

  /** Settling domains whose time is over and whose source has withdrawn become normal. */
  private async settle(): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      const now = Date.now();
      for (const d of this.deps.store.current.domains.values()) {
        if (d.migration?.phase !== "settling" || now - d.migration.since < this.deps.settleSeconds * 1000) continue;
        const others = await this.deps.othersAnnounce(d.interfaces.flatMap((i) => endpointIps(i).map(hostPrefix))).catch(() => true);
        if (!settled(d.migration, now, this.deps.settleSeconds * 1000, others)) continue;
        await this.deps.store.change(`libvirt: ${d.name} settled`, (s) => {
          const record = s.domains.get(d.name);
          if (record?.migration?.phase !== "settling") return { next: {}, result: undefined };
          const { migration: _, ...rest } = record;
          return { next: { domains: new Map(s.domains).set(d.name, rest) }, result: undefined };
        });
        this.deps.metrics.migrations.inc({ result: "completed" });
        this.resumedAt.delete(d.name);
        this.deps.log.info({ domain: d.name }, "migration settled: route and path back to normal preference");
      }
    } finally {
      this.checking = false;
    }
  }
}
