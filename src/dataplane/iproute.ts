import { open, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";

let batchCount = 0;

// The one place that runs iproute2. `ip -batch` with -force runs every line
// even after a failure and reports each failure as "Command failed <file>:N"; we map
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

/**
 * The batch goes to ip as a whole file (an unlinked temporary),
 * not through a pipe: if vmrouted is killed while writing a pipe, ip reads a
 * truncated last line and runs it (a device named "tap-3c1", an alias
 * "vmrou"). From a file ip runs every line whole, even after we are gone.
 */
export async function ipBatch(lines: string[], netns?: string): Promise<BatchFailure[]> {
  if (lines.length === 0) return [];
  const path = join(tmpdir(), `vmrouted-batch-${process.pid}-${++batchCount}`);
  const file = await open(path, "w+", 0o600);
  let result;
  try {
    await unlink(path);
    await file.writeFile(lines.join("\n") + "\n");
    // ip opens our descriptor's file through /proc (it stays readable, unlinked, until ip is done with it).
    result = await execa("ip", [...(netns ? ["-n", netns] : []), "-force", "-batch", `/proc/${process.pid}/fd/${file.fd}`], { reject: false });
  } finally {
    await file.close();
  }
  if (result.exitCode === 0) return [];
  return parseBatchErrors(result.stderr, lines.length);
}

/**
 * ip prints the kernel's error first, then "Command failed <file>:N" for that line.
 * Errors that come with no line number are attributed to line 0 (whole batch).
 */
export function parseBatchErrors(stderr: string, lineCount: number): BatchFailure[] {
  const failures: BatchFailure[] = [];
  let pending: string[] = [];
  for (const raw of stderr.split("\n")) {
    const text = raw.trim();
    if (!text) continue;
    const m = /^Command failed \S+:(\d+)$/.exec(text);
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
