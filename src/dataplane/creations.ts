import type { ObservedState } from "./observed.js";
import type { Operation } from "./operations.js";

// Creating a device and marking it ours (ifalias) are two kernel calls; no
// iproute2 command does both. A crash between them leaves a device without our
// mark, which every later pass must treat as foreign and never touch: the
// endpoint would stay broken and the device leak. So the devices about to be
// created are written down first, with the highest ifindex seen before; an
// unmarked device of that name with a higher ifindex was made by that batch
// (ifindexes only grow within a namespace) and is adopted.

export interface CreationRecord {
  devices: string[];
  /** The highest ifindex observed before the creating batch ran. */
  ifindexAbove: number;
}

export function createdDevices(operations: Operation[]): string[] {
  return operations.flatMap((op) => (op.op === "gateway.create" || op.op === "tap.create" || op.op === "veth.create" ? [op.device] : []));
}

export function highestIfindex(observed: ObservedState): number {
  return Math.max(0, ...[...observed.links.values()].map((l) => l.ifindex ?? 0));
}

/** Pure: the recorded devices that exist without any alias and were created after the record was written. */
export function adoptableDevices(record: CreationRecord | undefined, observed: ObservedState): Set<string> {
  const result = new Set<string>();
  for (const name of record?.devices ?? []) {
    const link = observed.links.get(name);
    if (link && link.alias === undefined && (link.ifindex ?? 0) > record!.ifindexAbove) result.add(name);
  }
  return result;
}
