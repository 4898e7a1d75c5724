import { execa, type ResultPromise } from "execa";

// A long-running child that reports on its stdout (`ip monitor`, `virsh
// event --loop`): read in whole lines, and started again when it ends (a
// libvirtd restart ends virsh's event stream; ip can die).

export interface LineChildOptions {
  /** Whole lines of output as they arrive, as one text without its last newline (a partial line waits for its end). */
  onLines: (text: string) => void;
  /** What it writes on stderr; left unread without this. */
  onStderr?: (text: string) => void;
  /** It ended by itself (exit code or signal); it is started again after restartMs. */
  onExit?: (how: string) => void;
  restartMs: number;
  /** Which stream carries the lines (dnsmasq logs on stderr); default stdout. */
  stream?: "stdout" | "stderr";
}

export function superviseLines(command: string, args: string[], o: LineChildOptions): { stop(): void; pid(): number | undefined; signal(sig: NodeJS.Signals): void } {
  let stopped = false;
  let child: ResultPromise | undefined;
  const run = () => {
    if (stopped) return;
    let partial = "";
    child = execa(command, args, { buffer: false, reject: false });
    const lines = o.stream === "stderr" ? child.stderr : child.stdout;
    lines?.setEncoding("utf8");
    lines?.on("data", (chunk: string) => {
      const text = partial + chunk;
      const end = text.lastIndexOf("\n");
      partial = end < 0 ? text : text.slice(end + 1);
      if (end >= 0) o.onLines(text.slice(0, end));
    });
    if (o.onStderr && o.stream !== "stderr") {
      child.stderr?.setEncoding("utf8");
      child.stderr?.on("data", o.onStderr);
    }
    child.then((r) => {
      if (stopped) return;
      o.onExit?.(String(r.exitCode ?? r.signal));
      setTimeout(run, o.restartMs).unref();
    }, () => undefined);
  };
  run();
  return {
    stop() {
      stopped = true;
      child?.kill();
    },
    /** A signal to the running child (SIGHUP: dnsmasq re-reads its hosts; SIGTERM: it ends and is started again). */
    signal(sig: NodeJS.Signals) {
      if (child && child.exitCode === null) child.kill(sig);
    },
    /** The running child's pid (undefined between a child's end and its restart). */
    pid: () => (child && child.exitCode === null ? child.pid : undefined),
  };
}
