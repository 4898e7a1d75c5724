// Work that follows a value which changes faster than the work runs (the
// desired state, published on every change): one run at a time, and only ever
// for the newest value; the values in between are skipped, never queued.

export class LatestOnly<T> {
  private pending: { value: T } | undefined;
  private working: Promise<void> | undefined;

  constructor(private readonly run: (value: T) => Promise<void>, private readonly onError: (e: Error) => void) {}

  /** Resolves once a run has covered `value` (or a newer one). */
  offer(value: T): Promise<void> {
    this.pending = { value };
    this.working ??= this.drain().finally(() => (this.working = undefined));
    return this.working;
  }

  private async drain(): Promise<void> {
    while (this.pending) {
      const { value } = this.pending;
      this.pending = undefined;
      try {
        await this.run(value);
      } catch (e) {
        this.onError(e as Error);
      }
    }
  }
}
