import { readFile } from "node:fs/promises";
import { z } from "zod";
import type { BgpPath } from "./paths.js";

// The announcer's record on disk (stateDir/announced.json): which paths may be
// in gobgpd from us, so a restarted vmrouted can withdraw what it no longer wants.

const recordSchema = z.array(z.object({
  prefix: z.string(), nextHop: z.string(), communities: z.array(z.number()), localPref: z.number().optional(),
}).strict());

export async function loadRecord(path: string): Promise<{ paths: BgpPath[]; problem?: string }> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return { paths: [] };
    return { paths: [], problem: `cannot read ${path}: ${(e as Error).message}` };
  }
  try {
    const parsed = recordSchema.safeParse(JSON.parse(text));
    if (parsed.success) return { paths: parsed.data.map((p) => ({ ...p })) as BgpPath[] };
    return { paths: [], problem: `${path} is not an announcement record` };
  } catch {
    return { paths: [], problem: `${path} is not valid JSON` };
  }
}

export function serializeRecord(paths: BgpPath[]): string {
  return JSON.stringify(paths) + "\n";
}
