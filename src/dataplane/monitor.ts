import { readdir, readFile, readlink } from "node:fs/promises";
import { superviseLines } from "../child-lines.js";
import { parseMonitorRecord, type KernelEvent } from "./events.js";

// The kernel's change events, from `ip monitor` (numeric, detailed, labelled),
// parsed into KernelEvents (events.ts judges them). ip flushes its output after
// every message, so a chunk ends on a record boundary; a record's continuation
// lines (a link's alias) are indented.

export interface Monitor {
  stop(): void;
  /**
   * Resolves once `ip monitor` is subscribed to the kernel's groups (false when
   * that was not seen within timeoutMs): only events after that reach us, so
   * a listing made before it could miss a change (DESIGN.md, startup).
   */
  subscribed(timeoutMs?: number): Promise<boolean>;
}

/** onError: events may have been missed (ip monitor restarted, or the kernel dropped some). */
export function startMonitor(onEvents: (events: KernelEvent[]) => void, onError: (message: string) => void): Monitor {
  const child = superviseLines("ip", ["-N", "-d", "monitor", "label", "link", "address", "route", "neigh"], {
    onLines: (text) => {
      const events = splitRecords(text).flatMap((r) => parseMonitorRecord(r) ?? []);
      if (events.length) onEvents(events);
    },
    // ip says so on stderr when the kernel dropped events (ENOBUFS under load): what they were is unknown.
    onStderr: (text) => onError(`ip monitor: ${text.trim().split("\n")[0]}`),
    onExit: (how) => onError(`ip monitor exited (${how}); restarting`),
    restartMs: 1000,
  });
  return { stop: () => child.stop(), subscribed: (timeoutMs = 2000) => subscribed(child.pid, timeoutMs) };
}

/**
 * ip subscribes right after it starts, and says nothing when it has: the
 * kernel shows it. A netlink socket of the child's with multicast groups in
 * /proc/net/netlink (this namespace's) is the subscription.
 */
async function subscribed(pid: () => number | undefined, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    const p = pid();
    if (p !== undefined && (await hasSubscribedSocket(p))) return true;
    await new Promise((r) => setTimeout(r, 5));
  }
  return false;
}

async function hasSubscribedSocket(pid: number): Promise<boolean> {
  try {
    const fds = await readdir(`/proc/${pid}/fd`);
    const inodes = new Set<string>();
    for (const fd of fds) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m) inodes.add(m[1]!);
    }
    if (inodes.size === 0) return false;
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    for (const line of (await readFile("/proc/net/netlink", "utf8")).split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length >= 10 && f[1] === "0" && inodes.has(f[9]!) && /[1-9a-f]/i.test(f[3]!)) return true;
    }
  } catch {
    // The child just ended (it is restarted): not subscribed.
  }
  return false;
}

export function splitRecords(text: string): string[] {
  const records: string[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("[")) records.push(line);
    else if (records.length && /^\s/.test(line)) records[records.length - 1] += "\n" + line;
  }
  return records;
}
