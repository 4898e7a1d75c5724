import { z } from "zod";
import { StateFile } from "../state/files.js";
import type { BgpPath } from "./paths.js";

// The announcer's record on disk (stateDir/announced.json): which paths may be
// in gobgpd from us, so a restarted vmrouted can withdraw what it no longer wants.

const recordSchema = z.array(z.object({
  prefix: z.string(), nextHop: z.string(), communities: z.array(z.number()), localPref: z.number().optional(),
}).strict());

export function announcedFile(stateDir: string): StateFile<BgpPath[]> {
  return new StateFile(stateDir, "announced.json", recordSchema, () => []);
}
