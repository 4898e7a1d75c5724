import { superviseLines } from "../child-lines.js";
import { parseMonitorRecord, type KernelEvent } from "./events.js";

// The kernel's change events, from `ip monitor` (numeric, detailed, labelled),
// parsed into KernelEvents (events.ts judges them). ip flushes its output after
// every message, so a chunk ends on a record boundary; a record's continuation
// lines (a link's alias) are indented.

export interface Monitor {
  stop(): void;
}

/** onError: events may have been missed (ip monitor restarted, or the kernel dropped some). */
export function startMonitor(onEvents: (events: KernelEvent[]) => void, onError: (message: string) => void): Monitor {
  return superviseLines("ip", ["-N", "-d", "monitor", "label", "link", "address", "route", "neigh"], {
    onLines: (text) => {
      const events = splitRecords(text).flatMap((r) => parseMonitorRecord(r) ?? []);
      if (events.length) onEvents(events);
    },
    // ip says so on stderr when the kernel dropped events (ENOBUFS under load): what they were is unknown.
    onStderr: (text) => onError(`ip monitor: ${text.trim().split("\n")[0]}`),
    onExit: (how) => onError(`ip monitor exited (${how}); restarting`),
    restartMs: 1000,
  });
}

export function splitRecords(text: string): string[] {
  const records: string[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("[")) records.push(line);
    else if (records.length && /^\s/.test(line)) records[records.length - 1] += "\n" + line;
  }
  return records;
}
