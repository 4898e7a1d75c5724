import { execa, type ResultPromise } from "execa";
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
  let stopped = false;
  let child: ResultPromise | undefined;
  const run = () => {
    if (stopped) return;
    let partial = "";
    child = execa("ip", ["-N", "-d", "monitor", "label", "link", "address", "route", "neigh"], { buffer: false, reject: false });
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => {
      const text = partial + chunk;
      const end = text.lastIndexOf("\n");
      partial = end < 0 ? text : text.slice(end + 1);
      if (end < 0) return;
      const events = splitRecords(text.slice(0, end)).flatMap((r) => parseMonitorRecord(r) ?? []);
      if (events.length) onEvents(events);
    });
    // ip says so on stderr when the kernel dropped events (ENOBUFS under load): what they were is unknown.
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (text: string) => onError(`ip monitor: ${text.trim().split("\n")[0]}`));
    child.then((r) => {
      if (stopped) return;
      onError(`ip monitor exited (${r.exitCode ?? r.signal}); restarting`);
      setTimeout(run, 1000).unref();
    }, () => undefined);
  };
  run();
  return {
    stop() {
      stopped = true;
      child?.kill();
    },
  };
}

export function splitRecords(text: string): string[] {
  const records: string[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("[")) records.push(line);
    else if (records.length && /^\s/.test(line)) records[records.length - 1] += "\n" + line;
  }
  return records;
}
