import type { Logger } from "pino";
import type { ApplyResult } from "../dataplane/apply.js";
import type { ObserveRequest } from "../dataplane/observe.js";
import type { ObservedState } from "../dataplane/observed.js";
import type { Operation } from "../dataplane/operations.js";
import { plan, type Plan, type PlanSettings } from "../dataplane/plan.js";
import {
  closeScope, conflictScope, emptyScope, isEmptyScope, mergeObserved, mergeScope, restrictDesired, restrictObserved, scopeSize, type Scope,
} from "../dataplane/scope.js";
import { simulate } from "../dataplane/simulate.js";
import { foldEvents, type KernelEvent } from "../dataplane/events.js";
import type { DesiredState } from "../model/types.js";
import { isOwnedAlias } from "../dataplane/ownership.js";
import { desiredNat, natDifferences, planNat, type NatTable } from "../dataplane/nat.js";
import { NftUnavailableError } from "../dataplane/nft.js";
import { gatewayDevice } from "../model/naming.js";
import type { CreationJournal } from "./creation-journal.js";
import { endpointStatus, heldStatus, learnedStatus, networkStatus, type EndpointStatus, type LearnedStatus, type NetworkStatus } from "./report.js";

// The one path that changes the host: desired → observe → plan → apply.
//
// Changes arrive as a dirty scope (what changed in desired state, what kernel
// events moved away from it); a pass observes and plans only that, with one
// `ip` process for the observation, so a VM start costs milliseconds whatever
// else the host runs. A full pass (startup, the resync timer, or a scope too
// large to read piecemeal) observes everything. A batch that ran without
// errors is trusted (simulate.ts) rather than read back; what failed is read
// again and planned once more. Passes never overlap; changes that arrive
// during one are collected into the next.

export interface ReconcileDeps {
  desired: () => DesiredState;
  observe: (request: ObserveRequest) => Promise<ObservedState>;
  apply: (operations: Operation[]) => Promise<ApplyResult>;
  /** The devices in a netdev group now (the teardown group's, before a bulk delete planned from the cache). */
  groupMembers: (group: number) => Promise<string[]>;
  /** vmrouted's nftables table (egress NAT): read it, and run an `nft -f` script. */
  nat: { list: () => Promise<NatTable | undefined>; apply: (script: string) => Promise<void> };
  settings: PlanSettings;
  log: Logger;
  /** Devices about to be created, written down first (creation-journal.ts); without it nothing is adopted. */
  journal?: Pick<CreationJournal, "annotate" | "before" | "settle">;
  /** After every pass (the BGP announcer reads the ready endpoints). Must not block. */
  onReport?: (report: ReconcileReport) => void;
  /** After every pass: what triggered it, how many operations failed (metrics). */
  onPass?: (pass: PassSummary) => void;
  /** A pass failed as a whole (metrics: vmrouted_errors_total{source="reconcile"}). */
  onError?: (error: unknown) => void;
  /** The host's IPv4 addresses as the picture has them, whenever they changed (the BGP import filter). */
  onAddresses?: (addresses: ObservedState["addresses"]) => void;
}

/** vmrouted's nftables table, as the last pass left it. */
export interface NatStatus {
  /** Some network has natOutgoing. */
  wanted: boolean;
  state: "ready" | "absent" | "degraded";
  reason: string;
}

export interface ReconcileReport {
  at: string;
  durationMs: number;
  operations: number;
  nat: NatStatus;
  networks: NetworkStatus[];
  endpoints: EndpointStatus[];
  learned: LearnedStatus[];
}

export interface PassSummary {
  trigger: string;
  full: boolean;
  operations: number;
  failedOperations: number;
  durationMs: number;
}

/** A scope larger than this is read with the full listings (a few processes) instead of per-object commands. */
const SCOPED_READ_LIMIT = 256;
const MAX_ROUNDS = 3;
/** Kernel events kept for the next pass's picture at most; more are folded in at once. */
const UNFOLDED_LIMIT = 20_000;
/**
 * Up to this many endpoints, every resync is a full listing (it costs little).
 * Above, a full listing is a third of a second of CPU at 1,000 endpoints and
 * a second and a half at 10,000, every 30 s: most of an idle host's cost.
 */
const SWEEP_BELOW = 250;
const FULL_RESYNC_EVERY = 10;
/** Above SWEEP_BELOW endpoints, every endpoint's sysctls are read once in at most this many ticks (4 minutes at 30 s). */
const SWEEP_TICKS = 8;

interface Deferred { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void }
const deferred = (): Deferred => {
  let resolve!: () => void, reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Most marks are fire-and-forget: a failed pass must reach those who wait, never end the process unhandled.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
};

/** A pass that failed is tried again after this long, doubling up to RETRY_MAX_MS while it keeps failing. */
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 30_000;

export class Reconciler {
  private dirty = emptyScope();
  private triggers = new Set<string>();
  private next: Deferred | undefined;
  private running = false;
  /** A batch is being applied (its kernel events are still arriving). */
  applying = false;
  private cache: ObservedState | undefined;
  private endpoints = new Map<string, EndpointStatus>();
  private readyChanged = true;
  private gateways = new Map<string, NetworkStatus>();
  /** Objects kept as found, as the last pass that saw them found them. */
  private held = new Map<string, EndpointStatus>();
  private learned = new Map<string, LearnedStatus>();
  private lastPass = { at: "", durationMs: 0, operations: 0 };
  /** The NAT table as last read or applied ("unknown" until a full or sweep pass has read it). */
  private natSeen: NatTable | undefined | "unknown" = "unknown";
  private nat: NatStatus = { wanted: false, state: "absent", reason: "" };
  passes = 0;
  operationsApplied = 0;
  /** Passes by trigger (tests and metrics count them). */
  readonly passesByTrigger = new Map<string, number>();

  constructor(private readonly deps: ReconcileDeps) {}

  /** Kernel events not yet folded into the picture, and when the picture was last listed whole. */
  private unfolded: Array<{ at: number; events: KernelEvent[] }> = [];
  private listedAt = 0;
  /** Namespaces whose endpoint has an ip6: their IPv6 default route is read too. */
  private netnsIpv6: ReadonlySet<string> = new Set();

  private unfoldedCount = 0;

  /** Kernel events, folded into the picture at the next pass (they mark nothing dirty: KernelWatch judges that). */
  noteKernelEvents(events: KernelEvent[], arrivedAt: number): void {
    // Without a picture and no pass running, the next pass lists everything: nothing to keep. During a
    // pass (the first one's listing included) they are kept: what changed after the listing read the
    // kernel is only in them.
    if (!this.cache && !this.running) return;
    this.unfolded.push({ at: arrivedAt, events });
    this.unfoldedCount += events.length;
    // A stream of foreign events with nothing of ours to repair brings no pass: folded now, not
    // kept for one (bounded memory). During a pass they wait for the next; that pass folds them.
    if (this.unfoldedCount >= UNFOLDED_LIMIT && !this.running) this.foldNow();
  }

  private foldNow(): void {
    const unfolded = this.unfolded;
    this.unfolded = [];
    this.unfoldedCount = 0;
    if (this.cache) this.cache = foldEvents(this.cache, unfolded.filter((c) => c.at > this.listedAt).flatMap((c) => c.events));
  }

  /** Marks objects dirty; a pass follows. Resolves when a pass has covered them. */
  mark(scope: Partial<Scope>, trigger: string): Promise<void> {
    mergeScope(this.dirty, scope);
    if (isEmptyScope(this.dirty)) return Promise.resolve();
    this.triggers.add(trigger);
    this.next ??= deferred();
    const done = this.next.promise;
    this.kick();
    return done;
  }

  /** Everything, observed and planned. */
  full(trigger: string): Promise<void> {
    return this.mark({ full: true }, trigger);
  }

  private resyncs = 0;
  private sweepFrom = 0;

  /**
   * The resync timer's tick (`listed`: this one lists everything). Links, addresses, routes and neighbours raise
   * kernel events; sysctls and namespace insides do not. Small hosts get a
   * full listing every tick. Large ones read, each tick, the sysctls and
   * namespaces of a share of their endpoints (every endpoint within 8 ticks)
   * and list everything every 10th tick, when a lost event would be found:
   * at 10,000 endpoints a full listing costs a second and a half of CPU.
   */
  resync(): { listed: boolean; done: Promise<void> } {
    const desired = this.deps.desired();
    const n = desired.endpoints.length;
    // Startup listed everything: the first full listing is FULL_RESYNC_EVERY ticks later.
    if (n <= SWEEP_BELOW || ++this.resyncs % FULL_RESYNC_EVERY === 0 || !this.cache) return { listed: true, done: this.full("resync") };
    const share = Math.max(SWEEP_BELOW, Math.ceil(n / SWEEP_TICKS));
    const devices = [...desired.endpoints].sort((a, b) => (a.device < b.device ? -1 : 1));
    if (this.sweepFrom >= n) this.sweepFrom = 0;
    const picked = devices.slice(this.sweepFrom, this.sweepFrom + share);
    this.sweepFrom += share;
    return { listed: false, done: this.mark({
      sweep: true,
      devices: new Set([...picked.map((e) => e.device), ...desired.networks.map((net) => gatewayDevice(net.name))]),
      netns: new Set(picked.flatMap((e) => (e.netns !== undefined ? [e.netns] : []))),
    }, "resync") };
  }

  /** Resolves once everything marked before this call has been through a pass. */
  flush(): Promise<void> {
    return this.next?.promise ?? Promise.resolve();
  }

  private kick(): void {
    if (this.running) return;
    this.running = true;
    setImmediate(() => void this.loop());
  }

  /** Consecutive failed passes, and the last one's error (status). */
  failing = 0;
  lastError: { at: string; message: string } | undefined;

  private async loop(): Promise<void> {
    while (this.next) {
      const done = this.next;
      const scope = this.dirty;
      const triggers = this.triggers;
      const trigger = [...triggers].sort().join("+");
      this.next = undefined;
      this.dirty = emptyScope();
      this.triggers = new Set();
      try {
        await this.pass(scope, trigger);
        this.failing = 0;
        done.resolve();
      } catch (e) {
        // Never trusted, never dropped: what was dirty stays dirty and is tried again, after a
        // backoff, with the kernel read afresh; whoever waits on it (a hook, an API call) gets the error.
        this.failing++;
        this.lastError = { at: new Date().toISOString(), message: (e as Error).message?.split("\n")[0] ?? String(e) };
        this.cache = undefined;
        this.deps.onError?.(e);
        const retryMs = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** (this.failing - 1));
        this.deps.log.error({ err: e, trigger, failing: this.failing, retryMs }, "reconcile pass failed; trying again");
        mergeScope(this.dirty, scope);
        for (const t of triggers) this.triggers.add(t);
        done.reject(e);
        await new Promise((r) => setTimeout(r, retryMs));
        this.next ??= deferred();
      }
    }
    this.running = false;
  }

  private async pass(requested: Scope, trigger: string): Promise<void> {
    const started = performance.now();
    const { log, settings } = this.deps;
    const desired = this.deps.desired();
    const phases = { observeMs: 0, planMs: 0, applyMs: 0 };
    const timed = async <T>(phase: keyof typeof phases, fn: () => Promise<T> | T): Promise<T> => {
      const t = performance.now();
      try {
        return await fn();
      } finally {
        phases[phase] += performance.now() - t;
      }
    };
    // Between listings the picture follows the kernel's events; those that arrived before the last listing began are in it.
    this.foldNow();
    const allNetns = [...new Set(desired.endpoints.flatMap((e) => (e.netns !== undefined ? [e.netns] : [])))];
    this.netnsIpv6 = new Set(desired.endpoints.flatMap((e) => (e.netns !== undefined && e.ip6 !== undefined ? [e.netns] : [])));
    const scope = closeScope(requested, desired);
    // One observation per pass, at most:
    // - all: startup, a full resync, or drift too large to read piecemeal;
    // - read: what kernel events named (a repair), one ip process;
    // - sweep: the resync's rounds between full listings: only what raises no
    //   kernel event (sysctls, namespace insides) is read, for a share of the endpoints;
    // - cached: a change of desired state (a VM start, a migrated guest going
    //   live, a learned route, a spec of 10,000 endpoints) is planned against
    //   the kernel as last seen, which every batch and every kernel event
    //   since has kept current; only the insides of its namespaces are read.
    //   What a batch then finds different (a device someone else made) fails
    //   and is read and planned again.
    const mode: "all" | "read" | "sweep" | "cached" = scope.full || !this.cache ? "all"
      : scope.sweep && !scope.fromKernel ? "sweep"
      : scope.fromKernel ? (scopeSize(scope) <= SCOPED_READ_LIMIT ? "read" : "all") : "cached";
    // A cached pass over most of what is desired (a spec of 10,000 endpoints) plans everything at once;
    // a smaller one (a thousand of 50,000 learned routes) only its scope.
    const total = desired.endpoints.length + desired.learned.length + desired.networks.length;
    const whole = mode === "all" || (mode === "cached" && scopeSize(scope) > Math.max(SCOPED_READ_LIMIT, total / 4));
    let view: ObservedState;
    if (mode === "all") {
      // Sysctls are 4 reads per device: all of them on a full resync, else only the scope's.
      const sysctlsOf = scope.full || !this.cache ? undefined : scope.devices;
      this.listedAt = performance.now();
      const observed = await timed("observeMs", () => this.deps.observe({ netns: allNetns, netnsIpv6: this.netnsIpv6, ...(sysctlsOf ? { sysctlsOf } : {}) }));
      if (sysctlsOf && this.cache)
        for (const [device, values] of this.cache.sysctls) if (!sysctlsOf.has(device) && observed.links.has(device)) observed.sysctls.set(device, values);
      view = observed;
    } else if (mode === "read") {
      view = await timed("observeMs", () => this.observeScope(scope));
    } else if (whole) {
      view = this.cache!;
    } else {
      // Sweeps read sysctls of a share of the devices; a cached pass, none. Both read their namespaces.
      const needsRead = mode === "sweep" || scope.netns.size > 0;
      const fresh = needsRead ? await timed("observeMs", () => this.deps.observe({
        netns: [...scope.netns], netnsIpv6: this.netnsIpv6, scope: { devices: [], dsts: [] }, sysctlsOf: mode === "sweep" ? scope.devices : new Set(),
      })) : undefined;
      const cache = this.cache!;
      view = restrictObserved(fresh ? {
        ...cache, sysctls: new Map([...cache.sysctls, ...fresh.sysctls]), netns: new Map([...cache.netns, ...fresh.netns]),
        ...(fresh.ipForward !== undefined ? { ipForward: fresh.ipForward } : {}),
        ...(fresh.ip6Forward !== undefined ? { ip6Forward: fresh.ip6Forward } : {}),
      } : cache, scope);
    }
    const annotate = (o: ObservedState) => (this.deps.journal ? this.deps.journal.annotate(o) : o);
    view = annotate(view);
    const { desired: planned, gateways } = whole ? { desired, gateways: undefined } : restrictDesired(desired, scope);
    // Devices leave in one bulk delete of the teardown group (one RCU wait for all of them, not one each),
    // which is only safe while nothing foreign sits in that group: asked of the kernel, not of a listing.
    let completeLinks = true;
    const planOnce = async () => {
      const p = plan(planned, view, settings, { completeLinks, ...(gateways ? { gateways } : {}) });
      if (!completeLinks || !p.operations.some((op) => op.op === "link.delete-group")) return p;
      const members = await this.deps.groupMembers(settings.teardownGroup);
      if (members.every((name) => isOwnedAlias(view.links.get(name)?.alias))) return p;
      completeLinks = false;
      return plan(planned, view, settings, { completeLinks, ...(gateways ? { gateways } : {}) });
    };

    let current = await timed("planMs", planOnce);
    // Something not ours in an endpoint's way, seen only in the picture, is read before it is believed:
    // the kernel drops routes without a route event in more ways than the picture follows (the last
    // address of a device removed; a missed event), and a phantom would hold the endpoint degraded
    // until the next full listing, minutes away on a large host.
    if (mode === "cached" || mode === "sweep") {
      const disputed = conflictScope(current, desired);
      if (disputed) {
        view = annotate(mergeObserved(view, await timed("observeMs", () => this.observeScope(disputed)), disputed));
        current = await timed("planMs", planOnce);
      }
    }
    this.logRepairs(current, trigger);
    const failures = new Map<string, string[]>();
    let operations = 0, failedOperations = 0;
    for (let round = 1; round <= MAX_ROUNDS && current.operations.length > 0; round++) {
      const ops = current.operations;
      log.debug({ trigger, round, operations: ops }, "applying planned operations");
      await this.journal("before", () => this.deps.journal?.before(ops, view));
      this.applying = true;
      const result = await timed("applyMs", () => this.deps.apply(ops)).finally(() => (this.applying = false));
      operations += result.applied;
      for (const [subject, messages] of result.failures) {
        failures.set(subject, [...(failures.get(subject) ?? []), ...messages]);
        failedOperations += messages.length;
        log.warn({ subject, errors: messages }, "operation failed");
      }
      // Trust what worked; read again what failed, and namespaces we just configured (their ifindexes).
      view = simulate(view, ops);
      const reread = this.rereadScope(ops, result.failures, desired);
      if (reread) view = annotate(mergeObserved(view, await timed("observeMs", () => this.observeScope(reread)), reread));
      current = await timed("planMs", planOnce);
    }
    await this.journal("settle", () => this.deps.journal?.settle(view));
    operations += await timed("applyMs", () => this.reconcileNat(desired, mode === "all" || mode === "sweep"));

    this.cache = whole ? view : mergeObserved(this.cache!, view, scope);
    this.noteAddresses(this.cache.addresses);
    this.record(current, scope, whole, failures);
    this.passes++;
    this.operationsApplied += operations;
    this.passesByTrigger.set(trigger, (this.passesByTrigger.get(trigger) ?? 0) + 1);
    const durationMs = Math.round((performance.now() - started) * 10) / 10;
    this.lastPass = { at: new Date().toISOString(), durationMs, operations };
    const full = whole;
    if (operations > 0)
      log.info({
        trigger, mode, operations, durationMs, ...Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, Math.round(v)])),
      }, "reconciled");
    this.deps.onPass?.({ trigger, full, operations, failedOperations, durationMs });
    // The announcer needs the ready set only when it changed (10,000 endpoints are a lot to hand over each pass).
    if (this.readyChanged) {
      this.readyChanged = false;
      this.deps.onReport?.(this.report());
    }
  }

  /**
   * vmrouted's nftables table, after the ip batches (DESIGN.md's apply order):
   * read on full and sweep passes (a change by hand raises no event),
   * otherwise planned against what was last read or applied; one `nft -f`
   * transaction when it differs. Returns the operations applied (0 or 1).
   */
  private async reconcileNat(desired: DesiredState, read: boolean): Promise<number> {
    const want = desiredNat(desired);
    try {
      if (read || this.natSeen === "unknown") this.natSeen = await this.deps.nat.list();
    } catch (e) {
      if (!(e instanceof NftUnavailableError) || want) {
        this.nat = { wanted: !!want, state: "degraded", reason: `cannot read the nftables table: ${(e as Error).message}` };
        return 0;
      }
      this.natSeen = undefined; // no nft and no network wants NAT: nothing to do
    }
    const seen = this.natSeen as NatTable | undefined;
    const script = planNat(want, seen);
    if (script) {
      const differences = natDifferences(want, seen);
      this.deps.log.info({ subject: "nat", why: differences.slice(0, 3) }, want ? "changing the NAT table" : "removing the NAT table");
      try {
        await this.deps.nat.apply(script);
        this.natSeen = want;
      } catch (e) {
        this.natSeen = "unknown";
        this.nat = { wanted: !!want, state: "degraded", reason: (e as Error).message };
        this.deps.log.warn({ subject: "nat", errors: [(e as Error).message] }, "operation failed");
        return 1;
      }
    }
    this.nat = { wanted: !!want, state: want ? "ready" : "absent", reason: "" };
    return script ? 1 : 0;
  }

  /** One `ip -batch` for the scope's devices and destinations, one per namespace in it. */
  private observeScope(scope: Scope): Promise<ObservedState> {
    return this.deps.observe({
      scope: { devices: [...scope.devices], dsts: [...scope.dsts] }, netns: [...scope.netns], netnsIpv6: this.netnsIpv6, sysctlsOf: scope.devices,
    });
  }

  /** What to read back after a batch: subjects with failures, and veths (their ifindexes prove ownership later). */
  private rereadScope(ops: Operation[], failed: Map<string, string[]>, desired: DesiredState): Scope | undefined {
    const subjects = new Set(failed.keys());
    for (const op of ops) if (op.op === "veth.create" || op.op === "netns.configure") subjects.add(op.subject);
    if (subjects.size === 0) return undefined;
    // "host": operations on no endpoint's behalf, or a batch that failed as a whole: read back everything it touched.
    const all = subjects.has("host");
    const scope = emptyScope();
    for (const op of ops) {
      if (!all && !subjects.has(op.subject)) continue;
      if ("device" in op && op.device) scope.devices.add(op.device);
      if ("dst" in op) scope.dsts.add(op.dst);
      if ("netns" in op) scope.netns.add(op.netns);
    }
    return closeScope(scope, desired);
  }

  /** Keeps the per-object results of this pass (for status) and the failures of its subjects. */
  private record(plan: Plan, scope: Scope, whole: boolean, failures: Map<string, string[]>): void {
    const before = this.endpoints;
    // What the announcer sees of an endpoint: not ready, handed over (migrated away), elevated, or normal.
    const ready = (e: EndpointStatus | undefined) => (e?.state !== "ready" ? "no" : e.migration === "source" ? "handed" : e.elevated ? "elevated" : "normal");
    // The endpoints this pass looked at; the announcer hears of it only when one of them changed readiness.
    const looked = new Set<string>(whole ? before.keys() : []);
    const heldBefore = this.heldSignature();
    if (whole) {
      this.endpoints = new Map();
      this.gateways.clear();
      this.learned.clear();
      this.held.clear();
    } else {
      this.endpoints = new Map(before);
      for (const [id, e] of before)
        if (scope.devices.has(e.device) || scope.dsts.has(`${e.ip}/32`)) {
          this.endpoints.delete(id);
          looked.add(id);
        }
      for (const [name, g] of this.gateways) if (scope.devices.has(g.device)) this.gateways.delete(name);
      for (const prefix of this.learned.keys()) if (scope.dsts.has(prefix)) this.learned.delete(prefix);
    }
    // Statuses are made once per pass for what it looked at; status calls read them.
    for (const c of plan.endpoints) {
      const now = endpointStatus(c, failures.get(c.endpoint.id));
      this.endpoints.set(now.id, now);
      const prev = before.get(now.id);
      // One info event per endpoint whose state changed.
      if (prev?.state !== now.state || prev.reason !== now.reason)
        this.deps.log.info({ endpoint: now.id, device: now.device, state: now.state, reason: now.reason || undefined }, `endpoint ${now.state}`);
    }
    for (const c of plan.endpoints) looked.add(c.endpoint.id);
    for (const id of looked) if (ready(before.get(id)) !== ready(this.endpoints.get(id))) this.readyChanged = true;
    for (const g of plan.gateways) this.gateways.set(g.network.name, networkStatus(g, this.deps.settings.gatewayKind, failures.get(`gateway:${g.network.name}`)));
    for (const h of plan.held) {
      const now = heldStatus(h);
      const prev = this.held.get(now.id);
      if (prev?.reason !== now.reason) this.deps.log.warn({ endpoint: now.id, device: now.device || undefined, reason: now.reason }, "endpoint held as found");
      this.held.set(now.id, now);
    }
    if (this.heldSignature() !== heldBefore) this.readyChanged = true;
    for (const l of plan.learned) this.learned.set(l.route.prefix, learnedStatus(l, failures.get(`learned:${l.route.prefix}`)));
  }

  /**
   * The creation journal is a crash-safety aid (adoption of devices a crash left
   * unmarked), not a precondition: a stateDir that cannot be written (full, read-only)
   * must not stop repairs. The failure is logged and counted where the write failed (files.ts).
   */
  private async journal(step: string, write: () => Promise<void> | undefined): Promise<void> {
    try {
      await write();
    } catch (e) {
      this.deps.log.warn({ step, err: (e as Error).message }, "creation journal not written; applying anyway (a crash now could leave a device unmarked)");
    }
  }

  private addressesKey = "";

  private noteAddresses(addresses: ObservedState["addresses"]): void {
    if (!this.deps.onAddresses) return;
    const key = addresses.map((a) => `${a.ip}/${a.prefixLength}${a.noprefixroute ? "n" : ""}`).sort().join(",");
    if (key === this.addressesKey) return;
    this.addressesKey = key;
    this.deps.onAddresses(addresses);
  }

  /** One endpoint's reported state, as of the pass that last looked at it. */
  endpoint(id: string): EndpointStatus | undefined {
    return this.endpoints.get(id);
  }

  /** What the announcer keeps as found: the held objects whose route the kernel still has. */
  private heldSignature(): string {
    return [...this.held.values()].map((h) => `${h.id}=${h.conditions.route}`).sort().join(",");
  }

  /** Held objects still held in the desired state (an entry that became valid, or was removed, is not). */
  private currentHeld(desired: DesiredState): EndpointStatus[] {
    const ids = new Set((desired.held ?? []).map((h) => h.id));
    const served = new Set(desired.endpoints.map((e) => e.id));
    return [...this.held.values()].filter((h) => !served.has(h.id) && (ids.has(h.id) || (desired.domainsKnown === false && h.kind === "vm")));
  }

  /** The reported state: per endpoint, gateway and learned route, as of the pass that last looked at it. */
  report(): ReconcileReport {
    const desired = this.deps.desired();
    const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : 1);
    return {
      ...this.lastPass,
      nat: this.nat,
      networks: desired.networks.flatMap((n) => this.gateways.get(n.name) ?? []).sort(byName),
      endpoints: [...desired.endpoints.flatMap((e) => this.endpoints.get(e.id) ?? []), ...this.currentHeld(desired)]
        .sort((a, b) => (a.id < b.id ? -1 : 1)),
      learned: desired.learned.flatMap((r) => this.learned.get(r.prefix) ?? []),
    };
  }

  /** One info event per endpoint or gateway about to be changed: what, and why (its problem before the change). */
  private logRepairs(current: Plan, trigger: string): void {
    if (current.operations.length === 0) return;
    const bySubject = new Map<string, Set<string>>();
    for (const op of current.operations) bySubject.set(op.subject, (bySubject.get(op.subject) ?? new Set()).add(op.op));
    if (bySubject.size > 50) {
      this.deps.log.info({ subjects: bySubject.size, operations: current.operations.length, trigger }, "changing many objects");
      return;
    }
    const why = new Map<string, string>([
      ...current.endpoints.map((c) => [c.endpoint.id, endpointStatus(c, undefined).reason] as const),
      ...current.gateways.map((g) => [`gateway:${g.network.name}`, networkStatus(g, this.deps.settings.gatewayKind, undefined).reason] as const),
    ]);
    for (const [subject, ops] of bySubject) {
      const known = this.endpoints.has(subject) || this.gateways.has(subject.replace(/^gateway:/, ""));
      const reason = subject.startsWith("learned:") ? "learned route" : !why.has(subject) ? "no longer wanted" : !known ? "new" : why.get(subject) || "device settings differ";
      this.deps.log.info({ subject, why: reason, operations: [...ops], trigger }, `changing ${subject}`);
    }
  }
}
