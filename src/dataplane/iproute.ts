import { execa } from "execa";

// The one place that runs iproute2. `ip -batch` with -force runs every line
// even after a failure and reports each failure as "Command failed -:N"; we map
// those back to the operations that produced them.

export interface BatchFailure {
  /** 1-based line number in the batch. */
  line: number;
  message: string;
}

export async function ipJson<T>(args: string[], netns?: string): Promise<T> {
  const full = [...(netns ? ["-n", netns] : []), "-N", "-j", ...args];
  const { stdout } = await execa("ip", full, { stripFinalNewline: true });
  return (stdout.trim() === "" ? [] : JSON.parse(stdout)) as T;
}

export async function ipBatch(lines: string[], netns?: string): Promise<BatchFailure[]> {
  if (lines.length === 0) return [];
  const result = await execa("ip", [...(netns ? ["-n", netns] : []), "-force", "-batch", "-"], {
    input: lines.join("\n") + "\n",
    reject: false,
  });
  if (result.exitCode === 0) return [];
  return parseBatchErrors(result.stderr, lines.length);
}

/**
 * ip prints the kernel's error first, then "Command failed -:N" for that line.
 * Errors that come with no line number are attributed to line 0 (whole batch).
 */
export function parseBatchErrors(stderr: string, lineCount: number): BatchFailure[] {
  const failures: BatchFailure[] = [];
  let pending: string[] = [];
  for (const raw of stderr.split("\n")) {
    const text = raw.trim();
    if (!text) continue;
    const m = /^Command failed -:(\d+)$/.exec(text);
    if (m) {
      const line = Number(m[1]);
      failures.push({ line: line >= 1 && line <= lineCount ? line : 0, message: pending.join("; ") || "failed" });
      pending = [];
    } else {
      pending.push(text);
    }
  }
  if (pending.length) failures.push({ line: 0, message: pending.join("; ") });
  return failures;
}
