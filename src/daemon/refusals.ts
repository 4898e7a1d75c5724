import type { Logger } from "pino";
import { REJECT_REASONS, type ImportVerdict, type RejectedPath } from "../bgp/import-filter.js";
import type { Metrics } from "./metrics.js";

// What the import filter refuses, made visible: each refusal logged once and
// counted once by reason (until the path is withdrawn or accepted, when it may
// count again), the current refusals by reason as a gauge, duplicates and the
// maxLearned limit as conditions. The verdict itself is pure (import-filter.ts)
// and made again with every change of the learned set; this only follows it.

export class ImportRefusals {
  private seen = new Map<string, RejectedPath>();
  private duplicates = new Map<string, string>();
  private limited = false;
  current: Omit<ImportVerdict, "install"> = { rejected: [], duplicates: new Map(), limited: false };

  constructor(private readonly log: Logger, private readonly metrics: Metrics) {}

  note(verdict: Omit<ImportVerdict, "install">): void {
    this.current = verdict;
    const now = new Map(verdict.rejected.map((r) => [`${r.prefix} ${r.reason}`, r]));
    let fresh = 0;
    const sample: RejectedPath[] = [];
    for (const [key, r] of now) {
      if (this.seen.has(key)) continue;
      this.metrics.pathsRejected.inc({ reason: r.reason });
      fresh++;
      if (sample.length < 20) sample.push(r);
    }
    // One line per prefix, and one summary when a flood arrives at once (10,000 prefixes are not 10,000 lines).
    for (const r of sample) if (r.reason !== "duplicate") this.log.warn({ prefix: r.prefix, nextHop: r.nextHop, reason: r.reason }, "learned path refused");
    if (fresh > sample.length) this.log.warn({ refused: fresh, logged: sample.length }, "learned paths refused (the rest: vmroutectl routes --rejected)");
    this.seen = now;
    const counts = new Map<string, number>(REJECT_REASONS.map((reason) => [reason, 0]));
    for (const r of verdict.rejected) counts.set(r.reason, counts.get(r.reason)! + 1);
    for (const [reason, n] of counts) this.metrics.pathsRefusedNow.set({ reason }, n);

    for (const [id, nextHop] of verdict.duplicates)
      if (this.duplicates.get(id) !== nextHop)
        this.log.error({ endpoint: id, otherNextHop: nextHop }, `duplicate address: ${id} is also announced by ${nextHop} (not a live migration)`);
    for (const id of this.duplicates.keys()) if (!verdict.duplicates.has(id)) this.log.info({ endpoint: id }, "duplicate address cleared");
    this.duplicates = new Map(verdict.duplicates);
    this.metrics.duplicates.set(verdict.duplicates.size);

    if (verdict.limited !== this.limited)
      this.log[verdict.limited ? "warn" : "info"]({ limited: verdict.limited }, verdict.limited
        ? "bgp.maxLearned reached: new learned prefixes are refused, installed ones stay"
        : "learned routes below bgp.maxLearned again: nothing is refused for the limit");
    this.limited = verdict.limited;
    this.metrics.learnedLimited.set(verdict.limited ? 1 : 0);
  }
}
