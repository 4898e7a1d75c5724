import { execa, type ResultPromise } from "execa";

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
  let stopped = false;
  let child: ResultPromise | undefined;
  const run = () => {
    if (stopped) return;
    let partial = "";
    // stdbuf: virsh writes its events through stdio, which a pipe would otherwise hold back a buffer at a time.
    child = execa("stdbuf", ["-oL", "virsh", "-q", "-c", uri, "event", "--all", "--loop", "--event", "lifecycle"], { buffer: false, reject: false });
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      for (const l of lines) {
        const e = parseLifecycleLine(l);
        if (e) onEvent(e);
      }
    });
    child.then(() => {
      if (!stopped) setTimeout(run, retryMs).unref();
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
