import { readFile, writeFile } from "node:fs/promises";

// Sysctls through /proc/sys of the daemon's own network namespace: a write is
// a syscall, not a process, so thousands per resync are cheap.

const ROOT = "/proc/sys/";

export async function readSysctl(key: string): Promise<string | undefined> {
  try {
    return (await readFile(ROOT + key, "utf8")).trim();
  } catch {
    return undefined;
  }
}

export async function writeSysctl(key: string, value: string): Promise<void> {
  await writeFile(ROOT + key, value);
}
