import { mkdir, open, readdir, rename, rm } from "node:fs/promises";
import { dirname, join } from "node:path";

const TEMP_INFIX = ".tmp-";

/**
 * write-to-temp + fsync + rename + fsync(dir): a crash at any moment leaves
 * either the old file or the new one, never a mix or an empty file.
 */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = `${path}${TEMP_INFIX}${process.pid}`;
  const file = await open(tmp, "w", 0o600);
  try {
    await file.writeFile(text);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(tmp, path);
  const d = await open(dir, "r");
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/** Temporaries a killed earlier run left behind (the file they were for is intact: they were never renamed). */
export async function removeStaleTemporaries(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const stale = names.filter((n) => /\.tmp-\d+$/.test(n) && !n.endsWith(`${TEMP_INFIX}${process.pid}`));
  await Promise.all(stale.map((n) => rm(join(dir, n), { force: true })));
}
