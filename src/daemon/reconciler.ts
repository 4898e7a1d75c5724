import type { Logger } from "pino";
import type { ApplyResult } from "../dataplane/apply.js";
import type { EndpointCheck, GatewayCheck, LearnedCheck } from "../dataplane/check.js";
import type { ObserveRequest } from "../dataplane/observe.js";
import type { ObservedState } from "../dataplane/observed.js";
import type { Operation } from "../dataplane/operations.js";
import { plan, type Plan, type PlanSettings } from "../dataplane/plan.js";
import { closeScope, emptyScope, isEmptyScope, mergeObserved, mergeScope, restrictDesired, scopeSize, type Scope } from "../dataplane/scope.js";
import { simulate } from "../dataplane/simulate.js";
import type { DesiredState } from "../model/types.js";
import type { CreationJournal } from "./creation-journal.js";
import { endpointStatus, learnedStatus, networkStatus, type EndpointStatus, type LearnedStatus, type NetworkStatus } from "./report.js";

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
  settings: PlanSettings;
  log: Logger;
  /** Devices about to be created, written down first (creation-journal.ts); without it nothing is adopted. */
  journal?: Pick<CreationJournal, "annotate" | "before" | "settle">;
  /** After every pass (the BGP announcer reads the ready endpoints). Must not block. */
  onReport?: (report: ReconcileReport) => void;
  /** After every pass: what triggered it, how many operations failed (metrics). */
  onPass?: (pass: PassSummary) => void;
}

export interface ReconcileReport {
  at: string;
  durationMs: number;
  operations: number;
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

interface Deferred { promise: Promise<void>; resolve: () => void }
const deferred = (): Deferred => {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
};

export class Reconciler {
  private dirty = emptyScope();
  private triggers = new Set<string>();
  private next: Deferred | undefined;
  private running = false;
  /** A batch is being applied (its kernel events are still arriving). */
  applying = false;
  private cache: ObservedState | undefined;
  private endpoints = new Map<string, EndpointCheck>();
  private gateways = new Map<string, GatewayCheck>();
  private learned = new Map<string, LearnedCheck>();
  private failures = new Map<string, string[]>();
  private lastPass = { at: "", durationMs: 0, operations: 0 };
  passes = 0;
  operationsApplied = 0;
  /** Passes by trigger (tests and metrics count them). */
  readonly passesByTrigger = new Map<string, number>();

  constructor(private readonly deps: ReconcileDeps) {}

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

  /** Resolves once everything marked before this call has been through a pass. */
  flush(): Promise<void> {
    return this.next?.promise ?? Promise.resolve();
  }

  private kick(): void {
    if (this.running) return;
    this.running = true;
    setImmediate(() => void this.loop());
  }

  private async loop(): Promise<void> {
    while (this.next) {
      const done = this.next;
      const scope = this.dirty;
      const trigger = [...this.triggers].sort().join("+");
      this.next = undefined;
      this.dirty = emptyScope();
      this.triggers = new Set();
      try {
        await this.pass(scope, trigger);
      } catch (e) {
        this.deps.log.error({ err: e, trigger }, "reconcile pass failed");
        // What was dirty stays dirty: the resync (or the next change) tries again.
        this.cache = undefined;
      }
      done.resolve();
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
    const allNetns = [...new Set(desired.endpoints.flatMap((e) => (e.netns !== undefined ? [e.netns] : [])))];
    const scope = closeScope(requested, desired);
    const full = scope.full || !this.cache || scopeSize(scope) > SCOPED_READ_LIMIT;

    // One observation: everything, or just the scope.
    let view: ObservedState;
    if (full) {
      // Sysctls are 4 reads per device: all of them on the resync cadence, else only the scope's.
      const sysctlsOf = scope.full || !this.cache ? undefined : scope.devices;
      const observed = await timed("observeMs", () => this.deps.observe({ netns: allNetns, ...(sysctlsOf ? { sysctlsOf } : {}) }));
      if (sysctlsOf && this.cache)
        for (const [device, values] of this.cache.sysctls) if (!sysctlsOf.has(device) && observed.links.has(device)) observed.sysctls.set(device, values);
      view = observed;
    } else {
      view = await timed("observeMs", () => this.observeScope(scope));
    }
    const annotate = (o: ObservedState) => (this.deps.journal ? this.deps.journal.annotate(o) : o);
    view = annotate(view);
    const { desired: planned, gateways } = full ? { desired, gateways: undefined } : restrictDesired(desired, scope);
    const planOnce = () => plan(planned, view, settings, { completeLinks: full, ...(gateways ? { gateways } : {}) });

    let current = await timed("planMs", planOnce);
    this.logRepairs(current, trigger);
    const failures = new Map<string, string[]>();
    let operations = 0, failedOperations = 0;
    for (let round = 1; round <= MAX_ROUNDS && current.operations.length > 0; round++) {
      const ops = current.operations;
      log.debug({ trigger, round, operations: ops }, "applying planned operations");
      await this.deps.journal?.before(ops, view);
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
    await this.deps.journal?.settle(view);

    this.cache = full ? view : mergeObserved(this.cache!, view, scope);
    this.record(current, scope, full, failures);
    this.passes++;
    this.operationsApplied += operations;
    this.passesByTrigger.set(trigger, (this.passesByTrigger.get(trigger) ?? 0) + 1);
    const durationMs = Math.round((performance.now() - started) * 10) / 10;
    this.lastPass = { at: new Date().toISOString(), durationMs, operations };
    if (operations > 0)
      log.info({
        trigger, full, operations, durationMs, ...Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, Math.round(v)])),
      }, "reconciled");
    this.deps.onPass?.({ trigger, full, operations, failedOperations, durationMs });
    this.deps.onReport?.(this.report());
  }

  /** One `ip -batch` for the scope's devices and destinations, one per namespace in it. */
  private observeScope(scope: Scope): Promise<ObservedState> {
    return this.deps.observe({
      scope: { devices: [...scope.devices], dsts: [...scope.dsts] }, netns: [...scope.netns], sysctlsOf: scope.devices,
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
  private record(plan: Plan, scope: Scope, full: boolean, failures: Map<string, string[]>): void {
    const before = new Map([...this.endpoints].map(([id, c]) => [id, endpointStatus(c, this.failures.get(id))]));
    if (full) {
      this.endpoints.clear();
      this.gateways.clear();
      this.learned.clear();
      this.failures.clear();
    } else {
      for (const [id, c] of this.endpoints)
        if (scope.devices.has(c.endpoint.device) || scope.dsts.has(`${c.endpoint.ip}/32`)) this.endpoints.delete(id), this.failures.delete(id);
      for (const [name, g] of this.gateways) if (scope.devices.has(g.device)) this.gateways.delete(name), this.failures.delete(`gateway:${name}`);
      for (const prefix of this.learned.keys()) if (scope.dsts.has(prefix)) this.learned.delete(prefix), this.failures.delete(`learned:${prefix}`);
    }
    for (const c of plan.endpoints) this.endpoints.set(c.endpoint.id, c);
    for (const g of plan.gateways) this.gateways.set(g.network.name, g);
    for (const l of plan.learned) this.learned.set(l.route.prefix, l);
    for (const [subject, messages] of failures) this.failures.set(subject, messages);
    // One info event per endpoint whose state changed.
    for (const c of plan.endpoints) {
      const now = endpointStatus(c, this.failures.get(c.endpoint.id));
      const prev = before.get(c.endpoint.id);
      if (prev?.state !== now.state || prev.reason !== now.reason)
        this.deps.log.info({ endpoint: now.id, device: now.device, state: now.state, reason: now.reason || undefined }, `endpoint ${now.state}`);
    }
  }

  /** One endpoint's reported state, as of the pass that last looked at it. */
  endpoint(id: string): EndpointStatus | undefined {
    const c = this.endpoints.get(id);
    return c ? endpointStatus(c, this.failures.get(id)) : undefined;
  }

  /** The reported state: per endpoint, gateway and learned route, as of the pass that last looked at it. */
  report(): ReconcileReport {
    const desired = this.deps.desired();
    const wanted = new Set(desired.endpoints.map((e) => e.id));
    return {
      ...this.lastPass,
      networks: [...desired.networks].sort((a, b) => (a.name < b.name ? -1 : 1)).flatMap((n) => {
        const g = this.gateways.get(n.name);
        return g ? [networkStatus(g, this.deps.settings.gatewayKind, this.failures.get(`gateway:${n.name}`))] : [];
      }),
      endpoints: [...this.endpoints.values()].filter((c) => wanted.has(c.endpoint.id))
        .sort((a, b) => (a.endpoint.id < b.endpoint.id ? -1 : 1)).map((c) => endpointStatus(c, this.failures.get(c.endpoint.id))),
      learned: [...this.learned.values()].map((c) => learnedStatus(c, this.failures.get(`learned:${c.route.prefix}`))),
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
