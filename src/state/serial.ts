/**
 * Runs tasks one at a time, in the order they were given; a failed task does
 * not stop the ones after it. The one mutex of vmrouted: the desired-state
 * writer, each state file's saves, and libvirt's interface changes use it.
 */
export class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  private pending = 0;

  run<T>(task: () => Promise<T> | T): Promise<T> {
    this.pending++;
    const run = this.tail.then(task, task).finally(() => this.pending--);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Tasks queued or running. */
  get size(): number {
    return this.pending;
  }
}
