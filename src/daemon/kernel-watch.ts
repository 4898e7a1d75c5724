import { watch, mkdirSync, type FSWatcher } from "node:fs";
import type { Logger } from "pino";
import type { DataplaneSettings } from "../dataplane/check.js";
import { driftScope, indexDesired, type DesiredIndex, type KernelEvent } from "../dataplane/events.js";
import { startMonitor } from "../dataplane/monitor.js";
import type { Scope } from "../dataplane/scope.js";
import type { DesiredState } from "../model/types.js";

// Kernel events as triggers: collected until the kernel has been quiet for a
// moment (a batch's events arrive together, and their last state per object
// is what counts), judged against the desired state (events.ts), and only
// what moved away from it is marked dirty. While a pass applies, its own
// events are held until it is done, so its echo is judged whole and ignored.
// Named network namespaces coming and going (a netns endpoint waiting for its
// namespace) raise no netlink event: /run/netns is watched for them.

const QUIET_MS = 20;
/**
 * Events are judged after QUIET_MS of quiet, but never later than this after
 * the first of them: a steady stream of foreign events (another routing
 * daemon, neighbour churn) must not postpone a repair of ours for ever.
 */
const MAX_WAIT_MS = 100;
/** Nor may it grow the buffer without bound: this many events are judged at once. */
const MAX_BUFFERED = 20_000;
const NETNS_DIR = "/run/netns";

export interface KernelWatchDeps {
  desired: () => DesiredState;
  settings: DataplaneSettings;
  /** A pass is applying operations: its echo is still arriving. */
  busy: () => boolean;
  mark: (scope: Partial<Scope>, trigger: string) => void;
  /** Every event, with when it arrived, for the reconciler's picture of the kernel. */
  note: (events: KernelEvent[], arrivedAt: number) => void;
  log: Logger;
}

export class KernelWatch {
  private chunks: Array<{ at: number; events: KernelEvent[] }> = [];
  private timer: NodeJS.Timeout | undefined;
  private index: { desired: DesiredState; index: DesiredIndex } | undefined;
  private readonly monitor;
  private netns: FSWatcher | undefined;
  /** Events judged, and how many were found to matter (tests and metrics). */
  judged = 0;
  drifted = 0;

  constructor(private readonly deps: KernelWatchDeps) {
    this.monitor = startMonitor((events) => this.collect(events), (message) => {
      // Whatever the missed events said is read again, all of it.
      deps.log.warn(message);
      deps.mark({ full: true }, "events lost");
    });
    try {
      // ip netns creates it too; an empty directory changes nothing on the host.
      mkdirSync(NETNS_DIR, { recursive: true });
      this.netns = watch(NETNS_DIR, (_event, name) => {
        if (name) deps.mark({ netns: new Set([name.toString()]), fromKernel: true }, "netns");
      });
    } catch (e) {
      deps.log.warn({ err: (e as Error).message }, `cannot watch ${NETNS_DIR}; namespaces are noticed at the resync`);
    }
  }

  private lastArrival = 0;
  private firstArrival = 0;
  private buffered = 0;

  private collect(events: KernelEvent[]): void {
    this.lastArrival = performance.now();
    if (this.chunks.length === 0) this.firstArrival = this.lastArrival;
    this.chunks.push({ at: this.lastArrival, events });
    this.buffered += events.length;
    // Our own batch's echo is held whole while it applies (busy); anything else is bounded.
    if (this.buffered >= MAX_BUFFERED && !this.deps.busy()) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.judge();
      return;
    }
    // One timer for a burst (a batch of 10,000 taps is ~60,000 events), not one per chunk.
    this.timer ??= setTimeout(() => this.quiet(), QUIET_MS);
  }

  private quiet(): void {
    this.timer = undefined;
    const now = performance.now();
    const waited = now - this.lastArrival;
    const due = now - this.firstArrival >= MAX_WAIT_MS;
    if (this.deps.busy() || (waited < QUIET_MS && !due)) {
      const untilDue = MAX_WAIT_MS - (now - this.firstArrival);
      this.timer = setTimeout(() => this.quiet(), Math.max(1, Math.min(QUIET_MS - waited, untilDue)));
      return;
    }
    this.judge();
  }

  private judge(): void {
    const chunks = this.chunks;
    this.chunks = [];
    this.buffered = 0;
    for (const c of chunks) this.deps.note(c.events, c.at);
    const events = chunks.flatMap((c) => c.events);
    const desired = this.deps.desired();
    if (this.index?.desired !== desired) this.index = { desired, index: indexDesired(desired) };
    const scope = driftScope(events, this.index.index, this.deps.settings);
    this.judged += events.length;
    if (scope.devices.size + scope.dsts.size === 0) return;
    this.drifted += scope.devices.size + scope.dsts.size;
    // Route events carry the whole route, and the picture has just folded them in: a route that
    // moved (a /32 deleted by hand) is planned from it, without reading anything (a repair in
    // tens of ms at 1,000 endpoints). A device's state is more than its events say
    // (sysctls, neighbours flushed with it): those are read.
    this.deps.mark(scope.devices.size ? { ...scope, fromKernel: true } : scope, "kernel event");
  }

  /** The monitor is subscribed (startup waits for it before listing the kernel). */
  subscribed(): Promise<boolean> {
    return this.monitor.subscribed();
  }

  stop(): void {
    clearTimeout(this.timer);
    this.monitor.stop();
    this.netns?.close();
  }
}
