import { readFile, rename } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "./atomic-file.js";
import { describeZodError, endpointInputSchema, networkInputSchema, type EndpointInput, type NetworkInput } from "../model/spec.js";

// The runtime part of desired state (networks added through the API, tap and
// netns endpoints), persisted atomically (atomic-file.ts).

export interface RuntimeState {
  networks: Record<string, NetworkInput>;
  endpoints: EndpointInput[];
}

const fileSchema = z.object({
  version: z.literal(1),
  networks: z.record(networkInputSchema),
  endpoints: z.array(endpointInputSchema),
}).strict();

/** The state file exists but cannot be used: kept (never discarded) and rebuilt from the kernel by the daemon. */
export class CorruptStateError extends Error {
  override name = "CorruptStateError";
}

export function emptyRuntimeState(): RuntimeState {
  return { networks: {}, endpoints: [] };
}

export class StateStore {
  readonly path: string;
  constructor(stateDir: string) {
    this.path = join(stateDir, "state.json");
  }

  async load(): Promise<RuntimeState> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return emptyRuntimeState();
      throw e;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new CorruptStateError(`state file ${this.path} is not valid JSON (${(e as Error).message})`);
    }
    const parsed = fileSchema.safeParse(raw);
    if (!parsed.success)
      throw new CorruptStateError(`state file ${this.path} is not a vmrouted state file (${describeZodError(parsed.error, "content")})`);
    return { networks: parsed.data.networks, endpoints: parsed.data.endpoints };
  }

  /** Moves a corrupt state file aside, where an operator can still read it; returns its new path. */
  async quarantine(now = new Date()): Promise<string> {
    const kept = `${this.path}.corrupt-${now.toISOString().replace(/[:.]/g, "-")}`;
    await rename(this.path, kept);
    return kept;
  }

  async save(state: RuntimeState): Promise<void> {
    await writeFileAtomic(this.path, JSON.stringify({ version: 1, ...state }, null, 2) + "\n");
  }
}
