import type { LinkStats } from "../dataplane/observed.js";

/**
 * Endpoint traffic counters for status, read in the background: at 10,000
 * endpoints one read takes a quarter of a second, more than a status call may.
 * A status call gets the last counters (at most maxAgeMs old when status is
 * asked repeatedly) and starts a new read if they are older than that.
 */
export class Counters {
  private last: { stats: Map<string, LinkStats>; at: number } = { stats: new Map(), at: 0 };
  private reading: Promise<void> | undefined;

  constructor(private readonly read: () => Promise<Map<string, LinkStats>>, private readonly maxAgeMs = 2000) {}

  /** The newest counters there are; waits for a read only when there has never been one. */
  async get(): Promise<{ stats: Map<string, LinkStats>; at: number }> {
    if (Date.now() - this.last.at > this.maxAgeMs) {
      this.reading ??= this.read().then(
        (stats) => void (this.last = { stats, at: Date.now() }),
        () => undefined,
      ).finally(() => (this.reading = undefined));
      if (this.last.at === 0) await this.reading;
    }
    return this.last;
  }
}
