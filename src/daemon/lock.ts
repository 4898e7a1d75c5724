import { mkdir, open, readFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { InputError } from "../model/errors.js";

// One daemon per stateDir. Two vmrouted started at once both found the
// socket free, and the later one unlinked the earlier one's socket. So the
// first thing a daemon does is take an exclusive flock(2) on stateDir/lock.
//
// Node has no flock. flock locks belong to the open file description, not
// to the process that asked: util-linux's flock(1), handed our descriptor as
// its fd 3, takes the lock on *our* description and exits; the lock then
// lives exactly as long as our descriptor, i.e. until this process ends (even
// by SIGKILL), and no stale lock file can outlive a crash. Node opens files
// close-on-exec, so no later child (tcpdump, dnsmasq) inherits it.

export const LOCK_NAME = "lock";

export interface StateDirLock {
  /** Keeps the descriptor (and so the lock) for the life of the process. */
  readonly handle: FileHandle;
}

export async function lockStateDir(stateDir: string): Promise<StateDirLock> {
  const path = join(stateDir, LOCK_NAME);
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const handle = await open(path, "a+", 0o600);
  const r = await flockOn(handle.fd);
  if (r.exitCode !== 0) {
    const holder = await holderOf(path);
    await handle.close();
    if (r.exitCode === 1)
      throw new InputError(`another vmrouted${holder ? ` (pid ${holder})` : ""} is running with stateDir ${stateDir}; not starting a second one`);
    throw new InputError(`cannot lock ${path}: ${String(r.stderr).split("\n")[0] || `flock exited ${r.exitCode}`}`);
  }
  // The holder's pid, for the next one's message (the lock itself is the flock, not this content).
  await handle.truncate(0);
  await handle.write(`${process.pid}\n`, 0);
  return { handle };
}

/** flock(1) on our descriptor, passed as its fd 3 (execa cannot pass a raw descriptor). */
function flockOn(fd: number): Promise<{ exitCode: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn("flock", ["--exclusive", "--nonblock", "3"], { stdio: ["ignore", "ignore", "pipe", fd] });
    let stderr = "";
    child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
    child.once("error", (e) => resolve({ exitCode: null, stderr: e.message }));
    child.once("close", (exitCode) => resolve({ exitCode, stderr }));
  });
}

/** The pid the lock's holder wrote (it may not have written it yet: a moment's grace). */
async function holderOf(path: string): Promise<string | undefined> {
  for (let i = 0; i < 10; i++) {
    const text = (await readFile(path, "utf8").catch(() => "")).trim();
    if (/^\d+$/.test(text)) return text;
    await new Promise((r) => setTimeout(r, 20));
  }
  return undefined;
}
