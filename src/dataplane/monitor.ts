import { execa, type ResultPromise } from "execa";

// Kernel change events as a trigger only: any line from `ip monitor` about
// links, addresses, routes or permanent neighbours schedules a reconcile. The
// reconcile itself re-reads everything, so no event needs parsing.

export interface Monitor {
  stop(): void;
}

export function startMonitor(onChange: () => void, onError: (message: string) => void): Monitor {
  let stopped = false;
  let child: ResultPromise | undefined;
  const run = () => {
    if (stopped) return;
    child = execa("ip", ["monitor", "link", "address", "route", "neigh"], { buffer: false, reject: false });
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => {
      // Neighbour churn from ordinary traffic (REACHABLE/STALE) is not drift.
      const relevant = chunk.split("\n").some((l) => l && (!/ lladdr /.test(l) || /PERMANENT|^Deleted/.test(l)));
      if (relevant) onChange();
    });
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
