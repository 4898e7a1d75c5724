import { execa } from "execa";
import { withUnlinkedFile } from "../state/files.js";

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
  const { stdout } = await execa("ip", full, { stripFinalNewline: true, maxBuffer: 512 * 1024 * 1024 });
  return (stdout.trim() === "" ? [] : JSON.parse(stdout)) as T;
}

/**
 * The batch goes to ip as a whole file (withUnlinkedFile: nameless, never at
 * a name another user could have planted), not through a pipe: if vmrouted
 * is killed while writing a pipe, ip reads a truncated last line and runs it
 * (a device named "tap-3c1", an alias "vmrou"). From a file ip runs every
 * line whole, even after we are gone.
 */
export async function ipBatch(lines: string[], netns?: string): Promise<BatchFailure[]> {
  if (lines.length === 0) return [];
  const result = await runBatch(lines, netns, []);
  if (result.exitCode === 0) return [];
  const failures = parseBatchErrors(result.stderr, lines.length);
  // ip killed (a signal, the OOM killer) or failing before any line (EAGAIN): nobody knows how far
  // it got. Line 0 is "the batch as a whole": everything it touched is read back, never trusted.
  if (failures.length === 0)
    return [{ line: 0, message: `ip ended (${result.signal ?? `exit ${result.exitCode}`}) without naming a failed line: the batch's effect is unknown` }];
  return failures;
}

/**
 * Several `show`/`list` commands in one ip process (`-j`), each answer
 * matched to its command: ip prints one JSON line per command that worked and
 * nothing for one that failed (a device that does not exist), and names the
 * failed lines on stderr. Scoped observations read a few devices this way.
 */
export async function ipBatchJson<T = Record<string, unknown>>(commands: string[], netns?: string, ipv6 = false): Promise<Array<T[] | undefined>> {
  if (commands.length === 0) return [];
  // A listing's family is the process's (`-6`), not a batch line's: an IPv6 destination in an IPv4 listing finds nothing.
  const result = await runBatch(commands, netns, [...(ipv6 ? ["-6"] : []), "-N", "-d", "-s", "-j"]);
  const failed = new Set(parseBatchErrors(result.stderr, commands.length).map((f) => f.line));
  const outputs = result.stdout.split("\n").filter((l) => l.trim() !== "");
  let next = 0;
  return commands.map((_c, i) => (failed.has(i + 1) ? undefined : JSON.parse(outputs[next++] ?? "[]") as T[]));
}

function runBatch(lines: string[], netns: string | undefined, flags: string[]) {
  return withUnlinkedFile(lines.join("\n") + "\n", (path) =>
    execa("ip", [...(netns ? ["-n", netns] : []), ...flags, "-force", "-batch", path], { reject: false, maxBuffer: 512 * 1024 * 1024 }));
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
