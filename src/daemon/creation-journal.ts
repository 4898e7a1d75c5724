import { z } from "zod";
import { adoptableDevices, createdDevices, highestIfindex, type CreationRecord } from "../dataplane/creations.js";
import type { ObservedState } from "../dataplane/observed.js";
import type { Operation } from "../dataplane/operations.js";
import { StateFile } from "../state/files.js";

// dataplane/creations.ts, on disk (stateDir/creating.json): written before a
// batch that creates devices, removed once every device it names is marked or gone.

const recordSchema = z.object({ devices: z.array(z.string()), ifindexAbove: z.number().int() }).strict();

export class CreationJournal {
  private record: CreationRecord | undefined;
  private readonly file: StateFile<CreationRecord | undefined>;
  constructor(stateDir: string) {
    this.file = new StateFile(stateDir, "creating.json", recordSchema, () => undefined);
  }

  /** A record that cannot be read is kept aside and nothing is adopted, which is the safe side. Returns the problem. */
  async load(): Promise<string | undefined> {
    const loaded = await this.file.load();
    if (loaded.state !== "corrupt") {
      this.record = loaded.value;
      return undefined;
    }
    const kept = await this.file.keepAside();
    return `${loaded.problem}; kept as ${kept}, nothing adopted`;
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
    await this.file.save(this.record);
  }

  /** After a pass: forgotten once nothing it names is left unmarked. */
  async settle(observed: ObservedState): Promise<void> {
    if (!this.record || adoptableDevices(this.record, observed).size > 0) return;
    this.record = undefined;
    await this.file.remove();
  }
}
