import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { StateStore } from "../../src/daemon/store.js";

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

  it("refuses a corrupt state file with a clear message instead of starting empty", async () => {
    dir = await mkdtemp(join(tmpdir(), "vmr-store-"));
    const store = new StateStore(dir);
    await writeFile(store.path, '{"version":1,"networks":');
    await expect(store.load()).rejects.toThrow(/not valid JSON/);
    await writeFile(store.path, '{"version":2}');
    await expect(store.load()).rejects.toThrow(/not a vmrouted state file/);
  });
});
