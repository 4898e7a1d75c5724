import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { InputError } from "../model/errors.js";
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
      throw new InputError(`state file ${this.path} is not valid JSON (${(e as Error).message}); move it aside to start from the kernel's state`);
    }
    const parsed = fileSchema.safeParse(raw);
    if (!parsed.success)
      throw new InputError(`state file ${this.path} is not a vmrouted state file (${describeZodError(parsed.error, "content")})`);
    return { networks: parsed.data.networks, endpoints: parsed.data.endpoints };
  }

  async save(state: RuntimeState): Promise<void> {
    await writeFileAtomic(this.path, JSON.stringify({ version: 1, ...state }, null, 2) + "\n");
  }
}
