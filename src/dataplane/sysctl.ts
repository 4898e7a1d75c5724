import { closeSync, openSync, readSync, writeFileSync } from "node:fs";

// Sysctls through /proc/sys of the daemon's own network namespace: a write is
// a syscall, not a process, so thousands per resync are cheap. Synchronous on
// purpose: /proc/sys never waits on a disk, a read or write takes microseconds,
// and the async fs API costs three thread-pool round trips per file (open,
// read/write, close). Measured with 1,000 new taps (4,000 writes, then 4,000
// reads to verify): the pass's apply went 1.19 s → 0.54 s, observe 0.71 s → 0.21 s.

const ROOT = "/proc/sys/";

// One buffer for every read (a value is a number or a short word): readFileSync
// would stat the file and allocate twice per key, a third of the time at 4,000 keys.
const buffer = Buffer.alloc(256);

export function readSysctl(key: string): string | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(ROOT + key, "r");
    const n = readSync(fd, buffer, 0, buffer.length, 0);
    return buffer.toString("latin1", 0, n).trim();
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

export async function writeSysctl(key: string, value: string): Promise<void> {
  writeFileSync(ROOT + key, value);
}
