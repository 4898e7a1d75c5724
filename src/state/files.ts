import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, type FileHandle } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import type { z } from "zod";
import { Serial } from "./serial.js";

// Every file in stateDir (state.json, domains.json, announced.json,
// creating.json) goes through StateFile, with one policy:
// - written atomically: a temporary with a name no other write uses, then a
//   rename; a crash of vmrouted leaves the old file or the new one. A durable
//   file (state.json: the operator's intent) is also fsynced, file and
//   directory, so that it survives the host losing power. The others describe
//   things that do not survive that either (gobgpd's API paths, running VMs,
//   devices being created), so they skip the fsync, which on a busy disk took
//   tens of milliseconds off the path of every hook call and announcement;
// - writes of one file run in order (two renames racing could leave the older
//   content in place);
// - a missing file is the empty value;
// - a file that cannot be read or does not fit its schema is "corrupt": never
//   taken as "nothing desired". Its owner rebuilds the content from where the
//   truth lives (the kernel, libvirt, gobgpd), then calls keepAside(), which
//   moves the file to <name>.corrupt-<time> where an operator can still read it.

const TEMP_INFIX = ".tmp-";
let writes = 0;

export type Loaded<T> =
  | { state: "ok"; value: T }
  | { state: "missing"; value: T }
  | { state: "corrupt"; value: T; problem: string };

export class StateFile<T> {
  readonly path: string;
  private readonly writes = new Serial();

  constructor(
    dir: string,
    readonly name: string,
    private readonly schema: z.ZodType<T, z.ZodTypeDef, unknown>,
    private readonly empty: () => T,
    private readonly serialize: (value: T) => string = (v) => JSON.stringify(v) + "\n",
    private readonly durable = false,
  ) {
    this.path = join(dir, name);
  }

  async load(): Promise<Loaded<T>> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return { state: "missing", value: this.empty() };
      return { state: "corrupt", value: this.empty(), problem: `${this.path} cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})` };
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (e) {
      return { state: "corrupt", value: this.empty(), problem: `${this.path} is not valid JSON (${(e as Error).message})` };
    }
    const parsed = this.schema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
      return { state: "corrupt", value: this.empty(), problem: `${this.path} is not a vmrouted ${this.name} (${where}${issue?.message ?? "invalid"})` };
    }
    return { state: "ok", value: parsed.data };
  }

  save(value: T): Promise<void> {
    const text = this.serialize(value);
    return this.writes.run(() => writeFileAtomic(this.path, text, this.durable));
  }

  remove(): Promise<void> {
    return this.writes.run(() => rm(this.path, { force: true }));
  }

  /** Moves a corrupt file aside (after its content was rebuilt); returns where it went. */
  keepAside(now = new Date()): Promise<string> {
    return this.writes.run(async () => {
      const kept = `${this.path}.corrupt-${now.toISOString().replace(/[:.]/g, "-")}`;
      await rename(this.path, kept);
      return kept;
    });
  }
}

/**
 * Whether stateDir can be written: the first failure of a run of failed writes
 * (a full disk, a read-only mount), cleared by the next write that succeeds.
 * Status shows it; the writers retry (each its own way), nothing ends the daemon.
 */
let failingWrites: { since: string; reason: string } | undefined;

export function storageStatus(): { state: "ok" | "failing"; reason?: string; since?: string } {
  return failingWrites ? { state: "failing", ...failingWrites } : { state: "ok" };
}

/** Called for every write failure (metrics count them: vmrouted_errors_total{source="state"}). */
let onWriteFailure: ((path: string, error: Error) => void) | undefined;
export function onStateWriteFailure(listener: (path: string, error: Error) => void): void {
  onWriteFailure = listener;
}

/** `mode` is set explicitly (the unit's UMask=0077 would narrow it): files another user must read (dnsmasq's, as nobody) say 0o644. */
export async function writeFileAtomic(path: string, text: string, durable = true, mode = 0o600): Promise<void> {
  try {
    await writeFileAtomicOnce(path, text, durable, mode);
    failingWrites = undefined;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    failingWrites ??= { since: new Date().toISOString(), reason: `cannot write ${path}: ${err.code ?? err.message}` };
    onWriteFailure?.(path, err);
    throw new Error(`cannot write ${path}: ${err.code ? `${err.code} (${err.message.replace(/^\w+: /, "")})` : err.message}`);
  }
}

/**
 * write-to-temp + rename (+ fsync of both when durable). The temporary's name
 * is unique to this write (pid and a counter): two writes of one file never share it.
 */
async function writeFileAtomicOnce(path: string, text: string, durable: boolean, mode: number): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = `${path}${TEMP_INFIX}${process.pid}-${++writes}`;
  const file = await open(tmp, "wx", 0o600);
  try {
    if (mode !== 0o600) await file.chmod(mode);
    await file.writeFile(text);
    if (durable) await file.sync();
    await file.close();
    await rename(tmp, path);
  } catch (e) {
    // A full disk leaves a partial temporary: not left to fill what little room there is.
    await file.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw e;
  }
  if (!durable) return;
  const d = await open(dir, "r");
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/**
 * Runs fn with `text` in a file that has no name, which a child reads as
 * /proc/<our pid>/fd/<fd> (ip -batch, nft -f). A whole file, not a pipe: a
 * vmrouted killed while writing never hands the child a truncated last line.
 * The file is made where no other user can have put anything (the CLI's hook
 * fallback runs in the host's shared /tmp, as root): in a new directory of
 * mkdtemp (random name, mode 0700), created exclusively ("wx+": an existing
 * file or symlink there fails the open instead of being followed), and
 * removed with its directory before a byte is written.
 */
export async function withUnlinkedFile<T>(text: string, fn: (path: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "vmrouted-"));
  let file: FileHandle;
  try {
    file = await open(join(dir, "input"), "wx+", 0o600);
  } finally {
    await rm(dir, { recursive: true, force: true }); // the open file stays, without a name
  }
  try {
    await file.writeFile(text);
    return await fn(`/proc/${process.pid}/fd/${file.fd}`);
  } finally {
    await file.close();
  }
}

/** Temporaries a killed earlier run left behind (never renamed, so the file they were for is intact). */
export async function removeStaleTemporaries(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const mine = `${TEMP_INFIX}${process.pid}-`;
  const stale = names.filter((n) => /\.tmp-\d+(-\d+)?$/.test(n) && !basename(n).includes(mine));
  await Promise.all(stale.map((n) => rm(join(dir, n), { force: true })));
}
