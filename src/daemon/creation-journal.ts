import { readFile, rm } from "node:fs/promises";
import { z } from "zod";
import { adoptableDevices, createdDevices, highestIfindex, type CreationRecord } from "../dataplane/creations.js";
import type { ObservedState } from "../dataplane/observed.js";
import type { Operation } from "../dataplane/operations.js";
import { writeFileAtomic } from "./atomic-file.js";

// dataplane/creations.ts, on disk (stateDir/creating.json): written before a
// batch that creates devices, removed once every device it names is marked or gone.

const recordSchema = z.object({ devices: z.array(z.string()), ifindexAbove: z.number().int() }).strict();

export class CreationJournal {
  private record: CreationRecord | undefined;
  constructor(private readonly path: string) {}

  /** A record that cannot be read is dropped: without it nothing is adopted, which is the safe side. */
  async load(): Promise<string | undefined> {
    try {
      const parsed = recordSchema.safeParse(JSON.parse(await readFile(this.path, "utf8")));
      if (parsed.success) this.record = parsed.data;
      else return `${this.path} is not a creation record; ignored`;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") return `${this.path} unreadable (${(e as Error).message}); ignored`;
    }
    return undefined;
  }

  /** observed, with the devices this journal may adopt. */
  annotate(observed: ObservedState): ObservedState {
    const adoptable = adoptableDevices(this.record, observed);
    return adoptable.size ? { ...observed, adoptable } : observed;
  }

  /** Before a batch: writes down what it will create (merged with what is still unsettled). */
  async before(operations: Operation[], observed: ObservedState): Promise<void> {
    const devices = createdDevices(operations);
    if (devices.length === 0) return;
    const above = highestIfindex(observed);
    this.record = {
      devices: [...new Set([...(this.record?.devices ?? []), ...devices])],
      ifindexAbove: this.record ? Math.min(this.record.ifindexAbove, above) : above,
    };
    await writeFileAtomic(this.path, JSON.stringify(this.record) + "\n");
  }

  /** After a pass: forgotten once nothing it names is left unmarked. */
  async settle(observed: ObservedState): Promise<void> {
    if (!this.record || adoptableDevices(this.record, observed).size > 0) return;
    this.record = undefined;
    await rm(this.path, { force: true });
  }
}
