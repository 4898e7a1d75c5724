import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

// After a burst (10,000 endpoints applied, 50,000 learned routes installed or
// withdrawn) V8 keeps the pages its garbage used until its memory reducer
// decides the process is idle, which a daemon with timers may not look like
// for a long while: after the same 50,000-route install, RSS settled anywhere
// between 122 and 278 MiB 20 s later, with ~60 MB live. One full collection
// once the burst has been over for a few seconds gives those pages back.

/** Operations since the last collection that make a burst (learned routes arrive in passes of a few thousand). */
const BURST_OPERATIONS = 5000;
const QUIET_MS = 5000;

export class BurstCollector {
  private timer: NodeJS.Timeout | undefined;
  private operations = 0;

  constructor(private readonly gc: (() => void) | undefined = exposeGc()) {}

  /** After every pass: once a burst's operations add up, one collection when passes have paused. */
  afterPass(operations: number): void {
    if (!this.gc || operations === 0) return;
    this.operations += operations;
    if (this.operations < BURST_OPERATIONS) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.operations = 0;
      this.gc!();
    }, QUIET_MS).unref();
  }

  stop(): void {
    clearTimeout(this.timer);
  }
}

/**
 * V8's gc() without `node --expose-gc` on every launcher's command line: a
 * context made after the flag is set gets it (Node's documented use of
 * v8.setFlagsFromString). Without it, V8 collects on its own schedule.
 */
export function exposeGc(): (() => void) | undefined {
  try {
    setFlagsFromString("--expose-gc");
    const gc: unknown = runInNewContext("gc");
    return typeof gc === "function" ? (gc as () => void) : undefined;
  } catch {
    return undefined;
  }
}
