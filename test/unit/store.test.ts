import fc from "fast-check";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { InputError } from "../../src/model/errors.js";
import { DesiredStore, type Desired, type DesiredPersistence } from "../../src/state/desired.js";
import { removeStaleTemporaries } from "../../src/state/files.js";
import { DesiredResolver } from "../../src/state/resolve.js";
import { Serial } from "../../src/state/serial.js";
import { emptyHostFacts } from "../../src/bgp/import-filter.js";
import { domainsFile, emptyRuntimeState, persistence, runtimeFile, type RuntimeState } from "../../src/state/stored.js";

let dir = "";
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = "";
});
const tempDir = async () => (dir = await mkdtemp(join(tmpdir(), "vmr-store-")));

const CONFIG_NETWORKS = { service: { gateway: "172.31.16.1/24" } };
const empty = (): Desired => ({ runtime: emptyRuntimeState(), domains: new Map(), learned: new Map(), learnedKnown: true, domainsKnown: true, hostFacts: emptyHostFacts(), remoteClaims: new Map() });
const tap = (n: number) => ({ kind: "tap" as const, network: "service", ip: `172.31.16.${n}` });
const resolver = () => new DesiredResolver({ configNetworks: CONFIG_NETWORKS, nodeAddress: "10.0.0.1" });

describe("state files", () => {
  it("round-trip, and leave no temporary files", async () => {
    await tempDir();
    const file = runtimeFile(join(dir, "state"));
    expect(await file.load()).toEqual({ state: "missing", value: { networks: {}, endpoints: [] } });
    const state: RuntimeState = { networks: { extra: { gateway: "172.31.17.1/24" } }, endpoints: [{ kind: "tap", network: "extra", ip: "172.31.17.5" }] };
    await file.save(state);
    expect(await file.load()).toEqual({ state: "ok", value: state });
    expect(await readdir(join(dir, "state"))).toEqual(["state.json"]);
    expect(JSON.parse(await readFile(file.path, "utf8")).version).toBe(1);
  });

  it("report a corrupt file instead of reading it as empty, and keep it aside only when told", async () => {
    await tempDir();
    const file = runtimeFile(dir);
    await writeFile(file.path, '{"version":1,"networks":');
    expect(await file.load()).toMatchObject({ state: "corrupt", problem: expect.stringMatching(/not valid JSON/) });
    await writeFile(file.path, '{"version":2}');
    expect(await file.load()).toMatchObject({ state: "corrupt", problem: expect.stringMatching(/not a vmrouted state\.json/) });
    expect(await readFile(file.path, "utf8")).toBe('{"version":2}'); // loading moves nothing
    const kept = await file.keepAside(new Date("2026-11-23T01:02:03.004Z"));
    expect(kept).toBe(`${file.path}.corrupt-2026-11-23T01-02-03-004Z`);
    expect(await readFile(kept, "utf8")).toBe('{"version":2}');
    expect((await file.load()).state).toBe("missing");
  });

  it("write concurrently without ever sharing a temporary, and the last write wins", async () => {
    await tempDir();
    const file = domainsFile(dir);
    const writes = Array.from({ length: 200 }, (_, i) =>
      file.save({ domains: new Map([[`vm${i}`, { name: `vm${i}`, lifecycle: "running" as const, interfaces: [], seq: i }]]), complete: true }));
    await Promise.all(writes);
    const loaded = await file.load();
    expect(loaded.state).toBe("ok");
    expect([...loaded.value.domains.keys()]).toEqual(["vm199"]);
    expect(await readdir(dir)).toEqual(["domains.json"]);
  });

  it("removes temporaries of a killed earlier run, never its own", async () => {
    await tempDir();
    await writeFile(join(dir, "state.json.tmp-1"), "half");
    await writeFile(join(dir, "state.json.tmp-1-7"), "half");
    await writeFile(join(dir, `state.json.tmp-${process.pid}-3`), "mine");
    await writeFile(join(dir, "state.json"), "{}");
    await removeStaleTemporaries(dir);
    expect((await readdir(dir)).sort()).toEqual(["state.json", `state.json.tmp-${process.pid}-3`]);
  });
});

describe("the one writer of desired state", () => {
  const recording = () => {
    const saved: RuntimeState[] = [];
    const p: DesiredPersistence = {
      saveRuntime: async (s) => {
        await new Promise((r) => setTimeout(r, Math.random() * 3)); // saves take time; changes must still not interleave
        saved.push(s);
      },
      saveDomains: async () => undefined,
    };
    return { saved, p };
  };

  it("serializes concurrent changes: each sees the one before, none is lost, memory equals the last save", async () => {
    const { saved, p } = recording();
    const r = resolver();
    const store = new DesiredStore(empty(), p, (next, previous) => r.refuseNewProblems(next.runtime, previous.runtime));
    const published: number[] = [];
    store.subscribe((next) => published.push(next.runtime.endpoints.length));
    await Promise.all(Array.from({ length: 50 }, (_, i) => store.change(`api: add ${i}`, (d) => ({
      next: { runtime: { ...d.runtime, endpoints: [...d.runtime.endpoints, tap(10 + i)] } }, result: undefined,
    }))));
    expect(store.current.runtime.endpoints.map((e) => e.ip).sort()).toEqual(Array.from({ length: 50 }, (_, i) => `172.31.16.${10 + i}`).sort());
    expect(saved.at(-1)).toBe(store.current.runtime);
    expect(published).toEqual(Array.from({ length: 50 }, (_, i) => i + 1)); // published in order, after each save
    expect(store.version).toBe(50);
  });

  it("a change that does not validate, or whose save fails, changes nothing and publishes nothing", async () => {
    const { saved, p } = recording();
    const r = resolver();
    let failSave = false;
    const store = new DesiredStore(empty(), { ...p, saveRuntime: async (s) => { if (failSave) throw new Error("ENOSPC"); await p.saveRuntime(s); } },
      (next, previous) => r.refuseNewProblems(next.runtime, previous.runtime));
    let published = 0;
    store.subscribe(() => published++);
    await store.change("api", (d) => ({ next: { runtime: { ...d.runtime, endpoints: [tap(5)] } }, result: undefined }));
    const before = store.current;
    await expect(store.change("api", (d) => ({ next: { runtime: { ...d.runtime, endpoints: [tap(5), tap(5)] } }, result: undefined })))
      .rejects.toThrow(InputError);
    await expect(store.change("api", () => { throw new InputError("refused"); })).rejects.toThrow("refused");
    failSave = true;
    await expect(store.change("api", (d) => ({ next: { runtime: { ...d.runtime, endpoints: [tap(6)] } }, result: undefined }))).rejects.toThrow("ENOSPC");
    expect(store.current).toBe(before);
    expect(published).toBe(1);
    expect(saved.length).toBe(1);
    // And the queue goes on after failures.
    failSave = false;
    await store.change("api", (d) => ({ next: { runtime: { ...d.runtime, endpoints: [tap(7)] } }, result: undefined }));
    expect(store.current.runtime.endpoints).toEqual([tap(7)]);
  });

  it("property: any mix of concurrent valid and invalid changes ends equal to applying the accepted ones in queue order", async () => {
    await fc.assert(fc.asyncProperty(
      fc.array(fc.oneof(
        fc.record({ kind: fc.constant("add" as const), n: fc.integer({ min: 2, max: 12 }) }),
        fc.record({ kind: fc.constant("remove" as const), n: fc.integer({ min: 2, max: 12 }) }),
      ), { minLength: 1, maxLength: 30 }),
      async (ops) => {
        await tempDir();
        const r = resolver();
        const store = new DesiredStore(empty(), persistence(dir), (next, previous) => r.refuseNewProblems(next.runtime, previous.runtime));
        // Serial model: the same changes one by one; a duplicate IP is refused, a missing one too.
        let model: string[] = [];
        const accepted: boolean[] = [];
        for (const op of ops) {
          const ip = tap(op.n).ip;
          const ok = op.kind === "add" ? !model.includes(ip) : model.includes(ip);
          accepted.push(ok);
          if (ok) model = op.kind === "add" ? [...model, ip] : model.filter((x) => x !== ip);
        }
        const results = await Promise.allSettled(ops.map((op) => store.change("api", (d) => {
          const ip = tap(op.n).ip;
          const has = d.runtime.endpoints.some((e) => e.ip === ip);
          if (op.kind === "remove" && !has) throw new InputError(`no tap endpoint ${ip}`);
          const endpoints = op.kind === "add" ? [...d.runtime.endpoints, tap(op.n)] : d.runtime.endpoints.filter((e) => e.ip !== ip);
          return { next: { runtime: { ...d.runtime, endpoints } }, result: undefined };
        })));
        expect(results.map((x) => x.status === "fulfilled")).toEqual(accepted);
        expect(store.current.runtime.endpoints.map((e) => e.ip)).toEqual(model);
        const file = await runtimeFile(dir).load();
        expect(file.state === "missing" ? [] : file.value.endpoints.map((e) => e.ip)).toEqual(model);
        await rm(dir, { recursive: true, force: true });
      },
    ), { numRuns: 40 });
  });
});

describe("the one mutex", () => {
  it("runs tasks one at a time in order, and a failure does not stop the next", async () => {
    const serial = new Serial();
    const log: string[] = [];
    let inside = 0;
    const task = (name: string, fail = false) => serial.run(async () => {
      expect(++inside).toBe(1);
      await new Promise((r) => setTimeout(r, 1));
      log.push(name);
      inside--;
      if (fail) throw new Error(name);
    });
    const results = await Promise.allSettled([task("a"), task("b", true), task("c")]);
    expect(log).toEqual(["a", "b", "c"]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
  });
});
