import { mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { ipBatchJson } from "../../src/dataplane/iproute.js";
import { applyNft } from "../../src/dataplane/nft.js";
import { withUnlinkedFile } from "../../src/state/files.js";

// The files vmrouted hands to `ip -batch` and `nft -f` are written where
// another local user can create files (the CLI's hook fallback runs as root in
// the host's /tmp). They must never be opened at a name that user could
// have made first: a symlink planted there would have root truncate and write
// any file it points at. Here TMPDIR is a directory of this test, with a
// symlink at every name the earlier code used (tmpdir/vmrouted-batch-<pid>-<n>,
// tmpdir/vmrouted-nft-<pid>-<n>).

// mkdtemp, forced to a known directory by one test to show what an existing entry there does.
const forced = vi.hoisted(() => ({ dir: undefined as string | undefined }));
vi.mock("node:fs/promises", async (importOriginal) => {
  const real = await importOriginal<typeof import("node:fs/promises")>();
  return { ...real, mkdtemp: (prefix: string) => (forced.dir ? Promise.resolve(forced.dir) : real.mkdtemp(prefix)) };
});

const PRECIOUS = "root's file, not to be written\n";
let base = "";
let tmp = "";
let victim = "";
const savedTmpdir = process.env.TMPDIR;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), "vmrouted-temp-files-test-"));
  victim = join(base, "victim");
  tmp = join(base, "tmp");
  process.env.TMPDIR = tmp;
});

afterAll(async () => {
  if (savedTmpdir === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmpdir;
  await rm(base, { recursive: true, force: true });
});

/** Symlinks to the victim at the first 50 names of each kind the earlier code opened. */
const PLANTED = Array.from({ length: 50 }, (_, i) => [`vmrouted-batch-${process.pid}-${i + 1}`, `vmrouted-nft-${process.pid}-${i + 1}`]).flat();

beforeEach(async () => {
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { mode: 0o1777 });
  await writeFile(victim, PRECIOUS);
  for (const name of PLANTED) await symlink(victim, join(tmp, name));
});

async function expectPlantedUntouched(): Promise<void> {
  expect(await readFile(victim, "utf8")).toBe(PRECIOUS);
  // Every planted symlink is still there, and nothing else is: no file of ours is left behind.
  expect((await readdir(tmp)).sort()).toEqual([...PLANTED].sort());
  for (const name of PLANTED) expect(await readlink(join(tmp, name))).toBe(victim);
}

describe("temporary input files of ip and nft", () => {
  it("ip -batch: ip reads the batch, and no file at a planted name is followed or removed", async () => {
    for (let i = 0; i < 3; i++) {
      const [lo] = await ipBatchJson<{ ifname: string }>(["link show dev lo"]);
      expect(lo?.[0]?.ifname).toBe("lo");
    }
    await expectPlantedUntouched();
  });

  it("nft -f: nft reads the script, and no file at a planted name is followed or removed", async () => {
    // A script nft refuses as it parses (nothing is ever applied); its error quotes the line it read.
    for (let i = 0; i < 3; i++) await expect(applyNft("this is not nft\n")).rejects.toThrow(/this is not nft|nft is not installed/);
    await expectPlantedUntouched();
  });

  it("the file has no name while the child reads it, and its directory is gone", async () => {
    const seen = await withUnlinkedFile("line 1\nline 2\n", async (path) => {
      expect(path).toMatch(new RegExp(`^/proc/${process.pid}/fd/\\d+$`));
      expect((await readdir(tmp)).sort()).toEqual([...PLANTED].sort());
      return readFile(path, "utf8");
    });
    expect(seen).toBe("line 1\nline 2\n");
    await expectPlantedUntouched();
  });

  it("is created exclusively: an entry already at its name fails the creation instead of being followed", async () => {
    // Only a process of the same user can put anything in mkdtemp's directory (mode 0700, random name);
    // forced to a known directory, a symlink planted at the name shows what the open does.
    const dir = join(tmp, "known");
    await mkdir(dir);
    await symlink(victim, join(dir, "input"));
    forced.dir = dir;
    try {
      await expect(withUnlinkedFile("overwrite\n", async () => "ran")).rejects.toMatchObject({ code: "EEXIST" });
    } finally {
      forced.dir = undefined;
    }
    expect(await readFile(victim, "utf8")).toBe(PRECIOUS);
  });
});
