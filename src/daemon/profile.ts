import { writeFileSync } from "node:fs";
import { Session } from "node:inspector";

/**
 * VMROUTED_CPU_PROFILE=FILE: records a V8 CPU profile from start to stop
 * (open it in Chrome's DevTools). For finding where a pass spends its time on
 * a real host; `node --cpu-prof` cannot be given through NODE_OPTIONS.
 */
export function startCpuProfile(path: string | undefined): () => void {
  if (!path) return () => undefined;
  const session = new Session();
  session.connect();
  session.post("Profiler.enable");
  session.post("Profiler.start");
  return () => session.post("Profiler.stop", (err, result) => {
    if (!err) writeFileSync(path, JSON.stringify(result.profile));
  });
}
