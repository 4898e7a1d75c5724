import { afterEach, describe, expect, it, vi } from "vitest";
import { BurstCollector, exposeGc } from "../../src/daemon/memory.js";

describe("the collection after a burst", () => {
  afterEach(() => vi.useRealTimers());

  it("runs once, 5 s after the last pass of a burst of 5,000 operations or more; small passes never", () => {
    vi.useFakeTimers();
    const gc = vi.fn();
    const c = new BurstCollector(gc);
    for (let i = 0; i < 40; i++) c.afterPass(100); // 4,000 operations: no burst
    vi.advanceTimersByTime(60_000);
    expect(gc).not.toHaveBeenCalled();
    for (let i = 0; i < 5; i++) {
      c.afterPass(2000); // a burst arriving in passes: postponed while it goes on
      vi.advanceTimersByTime(1000);
    }
    expect(gc).not.toHaveBeenCalled();
    vi.advanceTimersByTime(4000);
    expect(gc).toHaveBeenCalledTimes(1);
    c.afterPass(10); // counting starts again
    vi.advanceTimersByTime(60_000);
    expect(gc).toHaveBeenCalledTimes(1);
    c.stop();
  });

  it("gets V8's gc without a command-line flag", () => {
    const gc = exposeGc();
    expect(typeof gc).toBe("function");
    expect(() => gc!()).not.toThrow();
  });
});
