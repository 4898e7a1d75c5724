import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { removeStaleTemporaries } from "../../src/daemon/atomic-file.js";
import { CorruptStateError, StateStore } from "../../src/daemon/store.js";

let dir = "";
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("state store", () => {
  it("round-trips state and leaves no temporary files", async () => {
    dir = await mkdtemp(join(tmpdir(), "vmr-store-"));
    const store = new StateStore(join(dir, "state"));
    expect(await store.load()).toEqual({ networks: {}, endpoints: [] });
    const state = { networks: { extra: { gateway: "172.31.17.1/24" } }, endpoints: [{ kind: "tap" as const, network: "extra", ip: "172.31.17.5" }] };
    await store.save(state);
    expect(await store.load()).toEqual(state);
    expect(await readdir(join(dir, "state"))).toEqual(["state.json"]);
    expect(JSON.parse(await readFile(store.path, "utf8")).version).toBe(1);
  });

  it("reports a corrupt state file instead of starting empty, and keeps it when moved aside", async () => {
    dir = await mkdtemp(join(tmpdir(), "vmr-store-"));
    const store = new StateStore(dir);
    await writeFile(store.path, '{"version":1,"networks":');
    await expect(store.load()).rejects.toThrow(CorruptStateError);
    await expect(store.load()).rejects.toThrow(/not valid JSON/);
    await writeFile(store.path, '{"version":2}');
    await expect(store.load()).rejects.toThrow(/not a vmrouted state file/);
    const kept = await store.quarantine(new Date("2026-11-23T01:02:03.004Z"));
    expect(kept).toBe(`${store.path}.corrupt-2026-11-23T01-02-03-004Z`);
    expect(await readFile(kept, "utf8")).toBe('{"version":2}');
    expect(await store.load()).toEqual({ networks: {}, endpoints: [] });
  });

  it("removes temporaries of a killed earlier run, never its own", async () => {
    dir = await mkdtemp(join(tmpdir(), "vmr-store-"));
    await writeFile(join(dir, "state.json.tmp-1"), "half");
    await writeFile(join(dir, `state.json.tmp-${process.pid}`), "mine");
    await writeFile(join(dir, "state.json"), "{}");
    await removeStaleTemporaries(dir);
    expect((await readdir(dir)).sort()).toEqual(["state.json", `state.json.tmp-${process.pid}`]);
  });
});
