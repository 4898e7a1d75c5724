import type { Logger } from "pino";
import type { ApplyResult } from "../dataplane/apply.js";
import type { ObservedState } from "../dataplane/observed.js";
import type { Operation } from "../dataplane/operations.js";
import { plan, type PlanSettings } from "../dataplane/plan.js";
import type { ObserveRequest } from "../dataplane/observe.js";
import type { DesiredState } from "../model/types.js";
import type { CreationJournal } from "./creation-journal.js";
import { endpointStatus, networkStatus, type EndpointStatus, type NetworkStatus } from "./report.js";

// The one path that changes the host: desired → observe → plan → apply →
// observe again (verify), repeated while a plan still has work (a device name
// freed by a delete can be reused in the next round). Requests while a pass
// runs are coalesced into one more pass.

export interface ReconcileDeps {
  desired: () => DesiredState;
  observe: (request: ObserveRequest) => Promise<ObservedState>;
  apply: (operations: Operation[]) => Promise<ApplyResult>;
  settings: PlanSettings;
  log: Logger;
  /** Devices about to be created, written down first (creation-journal.ts); without it nothing is adopted. */
  journal?: Pick<CreationJournal, "annotate" | "before" | "settle">;
  /** Called after every pass with the endpoints' state (the BGP announcer listens here). */
  onReport?: (report: ReconcileReport) => Promise<void> | void;
  /** Called after every pass with what triggered it and how many operations failed (metrics). */
  onPass?: (report: ReconcileReport, trigger: string, failedOperations: number) => void;
}

export interface ReconcileReport {
  at: string;
  durationMs: number;
  operations: number;
  networks: NetworkStatus[];
  endpoints: EndpointStatus[];
}

const MAX_ROUNDS = 3;

export class Reconciler {
  private running: Promise<ReconcileReport> | undefined;
  private queued: Promise<ReconcileReport> | undefined;
  last: ReconcileReport | undefined;
  passes = 0;
  operationsApplied = 0;

  constructor(private readonly deps: ReconcileDeps) {}

  /** Runs a pass that starts after this call; resolves with its report. */
  request(reason: string): Promise<ReconcileReport> {
    if (!this.running) {
      this.running = this.pass(reason).finally(() => (this.running = undefined));
      return this.running;
    }
    if (!this.queued) {
      this.queued = this.running.catch(() => undefined).then(() => {
        this.queued = undefined;
        return this.request(reason);
      });
    }
    return this.queued;
  }

  private async pass(reason: string): Promise<ReconcileReport> {
    const started = performance.now();
    const { log, settings } = this.deps;
    const desired = this.deps.desired();
    const netns = [...new Set(desired.endpoints.flatMap((e) => (e.netns !== undefined ? [e.netns] : [])))];
    const failures = new Map<string, string[]>();
    let operations = 0;
    // Where a pass spends its time, for the "reconciled" log event (debugging slow passes).
    const phases = { observeMs: 0, planMs: 0, applyMs: 0 };
    const timed = async <T>(phase: keyof typeof phases, fn: () => Promise<T> | T): Promise<T> => {
      const t = performance.now();
      try {
        return await fn();
      } finally {
        phases[phase] += performance.now() - t;
      }
    };
    const look = async () => {
      const o = await this.deps.observe({ netns });
      return this.deps.journal ? this.deps.journal.annotate(o) : o;
    };
    let observed = await timed("observeMs", look);
    let current = await timed("planMs", () => plan(desired, observed, settings));
    this.logRepairs(current, reason);
    for (let round = 1; round <= MAX_ROUNDS && current.operations.length > 0; round++) {
      log.debug({ reason, round, operations: current.operations }, "applying planned operations");
      const ops = current.operations;
      await this.deps.journal?.before(ops, observed);
      const result = await timed("applyMs", () => this.deps.apply(ops));
      operations += result.applied;
      for (const [subject, messages] of result.failures) {
        failures.set(subject, [...(failures.get(subject) ?? []), ...messages]);
        log.warn({ subject, errors: messages }, "operation failed");
      }
      observed = await timed("observeMs", look);
      current = await timed("planMs", () => plan(desired, observed, settings));
    }
    await this.deps.journal?.settle(observed);
    this.passes++;
    this.operationsApplied += operations;
    const report: ReconcileReport = {
      at: new Date().toISOString(),
      durationMs: Math.round((performance.now() - started) * 10) / 10,
      operations,
      networks: current.gateways.map((g) => networkStatus(g, settings.gatewayKind, failures.get(`gateway:${g.network.name}`))),
      endpoints: current.endpoints.map((c) => endpointStatus(c, failures.get(c.endpoint.id))),
    };
    this.logChanges(report, reason, phases);
    this.last = report;
    this.deps.onPass?.(report, reason, [...failures.values()].reduce((n, m) => n + m.length, 0));
    await this.deps.onReport?.(report);
    return report;
  }

  /** One info event per endpoint or gateway about to be changed: what, and why (its problem before the change). */
  private logRepairs(current: ReturnType<typeof plan>, trigger: string): void {
    if (current.operations.length === 0) return;
    const bySubject = new Map<string, string[]>();
    for (const op of current.operations) bySubject.set(op.subject, [...(bySubject.get(op.subject) ?? []), op.op]);
    const why = new Map<string, string>([
      ...current.endpoints.map((c) => [c.endpoint.id, endpointStatus(c, undefined).reason] as const),
      ...current.gateways.map((g) => [`gateway:${g.network.name}`, networkStatus(g, this.deps.settings.gatewayKind, undefined).reason] as const),
    ]);
    const known = new Set([...(this.last?.endpoints ?? []).map((e) => e.id), ...(this.last?.networks ?? []).map((n) => `gateway:${n.name}`)]);
    for (const [subject, ops] of bySubject) {
      const reason = !why.has(subject) ? "no longer wanted" : !known.has(subject) ? "new" : why.get(subject) || "device settings differ";
      this.deps.log.info({ subject, why: reason, operations: [...new Set(ops)], trigger }, `changing ${subject}`);
    }
  }

  private logChanges(report: ReconcileReport, reason: string, phases: Record<string, number>): void {
    const before = new Map((this.last?.endpoints ?? []).map((e) => [e.id, e]));
    for (const e of report.endpoints) {
      const prev = before.get(e.id);
      if (prev?.state !== e.state || prev.reason !== e.reason)
        this.deps.log.info({ endpoint: e.id, device: e.device, state: e.state, reason: e.reason || undefined, trigger: reason }, `endpoint ${e.state}`);
      before.delete(e.id);
    }
    for (const gone of before.values()) this.deps.log.info({ endpoint: gone.id, device: gone.device, trigger: reason }, "endpoint removed");
    if (report.operations > 0)
      this.deps.log.info({
        trigger: reason, operations: report.operations, durationMs: report.durationMs,
        ...Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, Math.round(v)])),
      }, "reconciled");
  }
}
