import { mkdir, open, rename } from "node:fs/promises";
import { dirname } from "node:path";

/**
 * write-to-temp + fsync + rename + fsync(dir): a crash at any moment leaves
 * either the old file or the new one, never a mix or an empty file.
 */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp-${process.pid}`;
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
