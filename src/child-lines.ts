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
}

export function superviseLines(command: string, args: string[], o: LineChildOptions): { stop(): void; pid(): number | undefined } {
  let stopped = false;
  let child: ResultPromise | undefined;
  const run = () => {
    if (stopped) return;
    let partial = "";
    child = execa(command, args, { buffer: false, reject: false });
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => {
      const text = partial + chunk;
      const end = text.lastIndexOf("\n");
      partial = end < 0 ? text : text.slice(end + 1);
      if (end >= 0) o.onLines(text.slice(0, end));
    });
    if (o.onStderr) {
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
    /** The running child's pid (undefined between a child's end and its restart). */
    pid: () => (child && child.exitCode === null ? child.pid : undefined),
  };
}
