import { superviseLines } from "../child-lines.js";

// libvirt's domain lifecycle events (`virsh event --loop --all --event
// lifecycle`), for the one thing hooks cannot tell: when a migrated domain
// resumes on this host (the switch-over). Restarted when it ends (libvirtd
// restarting). Lines look like:
//   event 'lifecycle' for domain 'guest': Resumed Migrated

export interface LifecycleEvent {
  domain: string;
  event: string;
  detail: string;
}

export function parseLifecycleLine(line: string): LifecycleEvent | undefined {
  const m = /^event 'lifecycle' for domain '(.+)': (\S+) (\S+)\s*$/.exec(line.trim());
  return m ? { domain: m[1]!, event: m[2]!, detail: m[3]! } : undefined;
}

export function watchLifecycle(uri: string, onEvent: (e: LifecycleEvent) => void, retryMs = 2000): { stop(): void } {
  // stdbuf: virsh writes its events through stdio, which a pipe would otherwise hold back a buffer at a time.
  return superviseLines("stdbuf", ["-oL", "virsh", "-q", "-c", uri, "event", "--all", "--loop", "--event", "lifecycle"], {
    onLines: (text) => {
      for (const l of text.split("\n")) {
        const e = parseLifecycleLine(l);
        if (e) onEvent(e);
      }
    },
    restartMs: retryMs,
  });
}
