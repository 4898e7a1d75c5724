import { describe, expect, it } from "vitest";
import { LatestOnly } from "../../src/latest-only.js";

describe("LatestOnly", () => {
  it("runs one at a time, for the newest value only; an error is reported and the next value still runs", async () => {
    const ran: number[] = [];
    const errors: string[] = [];
    let running = 0;
    const work = new LatestOnly<number>(async (n) => {
      expect(++running).toBe(1);
      await new Promise((r) => setTimeout(r, 5));
      running--;
      if (n === 3) throw new Error("three");
      ran.push(n);
    }, (e) => errors.push(e.message));
    void work.offer(1);
    void work.offer(2);
    await work.offer(3);
    await work.offer(4);
    expect(ran).toEqual([1, 4]);
    expect(errors).toEqual(["three"]);
  });
});
