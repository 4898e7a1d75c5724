import { ipBatch } from "./iproute.js";
import { renderBatchLine, renderNetnsLines, type Operation } from "./operations.js";
import { writeSysctl } from "./sysctl.js";

// Runs a plan: one `ip -batch` for everything iproute2 does on the host, then
// the sysctls (the devices exist by then), then one batch per namespace that
// holds a netns endpoint's inner side. Failures come back per subject.

export interface ApplyResult {
  applied: number;
  /** subject → error messages */
  failures: Map<string, string[]>;
}

export async function applyPlan(operations: Operation[]): Promise<ApplyResult> {
  const failures = new Map<string, string[]>();
  const fail = (subject: string, message: string) => failures.set(subject, [...(failures.get(subject) ?? []), message]);

  const batchOps: Operation[] = [];
  const lines: string[] = [];
  for (const op of operations) {
    const line = renderBatchLine(op);
    if (line !== undefined) {
      batchOps.push(op);
      lines.push(line);
    }
  }
  for (const f of await ipBatch(lines)) {
    const op = f.line > 0 ? batchOps[f.line - 1] : undefined;
    fail(op?.subject ?? "host", op ? `${lines[f.line - 1]}: ${f.message}` : f.message);
  }

  for (const op of operations) {
    if (op.op !== "sysctl.set") continue;
    try {
      await writeSysctl(op.key, op.value);
    } catch (e) {
      fail(op.subject, `sysctl ${op.key}=${op.value}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }

  await Promise.all(operations.map(async (op) => {
    if (op.op !== "netns.configure") return;
    for (const f of await ipBatch(renderNetnsLines(op), op.netns)) fail(op.subject, `in netns ${op.netns}: ${f.message}`);
  }));

  return { applied: operations.length, failures };
}
