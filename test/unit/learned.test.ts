import { afterPublication, publishWait } from "../../src/bgp/importer.js";
import { describe, expect, it } from "vitest";
import { applyBestPaths, learnedFrom, listingWithNewer, peersSynced, sameRoutes } from "../../src/bgp/importer.js";
import type { PeerInfo, RibPath } from "../../src/bgp/gobgp.js";
import { plan } from "../../src/dataplane/plan.js";
import { renderBatchLine } from "../../src/dataplane/operations.js";
import type { DesiredState, LearnedRoute } from "../../src/model/types.js";
import { emptyHostFacts, filterImports } from "../../src/bgp/import-filter.js";
import { applyToModel } from "../helpers/fake-kernel.js";
import { desired, observedWithNetns, settings, tap } from "../helpers/fixtures.js";

// Routes learned from other hosts: what the importer takes from gobgpd's best
// paths, what the resolver lets through, and how the planner installs them.

const MIGRATION = 64512 * 65536 + 666;
const rib = (prefix: string, over: Partial<RibPath> = {}): RibPath => ({
  prefix, nextHop: "10.97.0.2", isWithdraw: false, communities: [], neighborIp: "10.97.0.254", isFromLocal: false, stale: false, ...over,
});
const learned = (prefix: string, nextHop = "10.97.0.2", elevated = false): LearnedRoute => ({ prefix, nextHop, elevated });
const withLearned = (d: DesiredState, routes: LearnedRoute[], learnedKnown = true): DesiredState => ({ ...d, learned: routes, learnedKnown });

describe("importing best paths", () => {
  it("takes other speakers' paths (every prefix: the import filter refuses and counts), marks elevated ones, skips our own and withdrawals", () => {
    expect(learnedFrom(rib("172.31.16.40/32"), MIGRATION)).toEqual(learned("172.31.16.40/32"));
    expect(learnedFrom(rib("172.31.16.40/32", { communities: [1, MIGRATION] }), MIGRATION)).toEqual(learned("172.31.16.40/32", "10.97.0.2", true));
    expect(learnedFrom(rib("172.31.16.40/32", { isFromLocal: true, neighborIp: "" }), MIGRATION)).toBeUndefined();
    expect(learnedFrom(rib("172.31.16.40/32", { isWithdraw: true }), MIGRATION)).toBeUndefined();
    expect(learnedFrom(rib("0.0.0.0/0"), MIGRATION)).toEqual(learned("0.0.0.0/0"));
    expect(learnedFrom(rib("172.31.16.0/24"), MIGRATION)).toEqual(learned("172.31.16.0/24"));
  });

  it("applies watch batches: the newest entry per prefix wins, a withdrawal removes, the same route keeps its object", () => {
    const routes = applyBestPaths(new Map(), [rib("172.31.16.40/32"), rib("172.31.16.41/32")], MIGRATION);
    const kept = routes.get("172.31.16.40/32");
    applyBestPaths(routes, [
      rib("172.31.16.40/32"), // a reflector sending it again after a restart
      rib("172.31.16.41/32", { isWithdraw: true }),
      rib("172.31.16.42/32", { nextHop: "10.97.0.3" }), rib("172.31.16.42/32", { nextHop: "10.97.0.4" }),
      rib("172.31.16.43/32"), rib("172.31.16.43/32", { isFromLocal: true }), // its best path became ours
    ], MIGRATION);
    expect([...routes.values()]).toEqual([learned("172.31.16.40/32"), learned("172.31.16.42/32", "10.97.0.4")]);
    expect(routes.get("172.31.16.40/32")).toBe(kept);
    expect(sameRoutes(routes, new Map(routes))).toBe(true);
    expect(sameRoutes(routes, new Map([...routes, ["x", learned("x")]]))).toBe(false);
  });

  it("compares with a listing only where the stream said nothing while it was taken", () => {
    // Listed: .40 and .42, which the stream missed; .44, which the stream withdrew while the listing was taken;
    // .43, whose withdrawal waits. Watched: .41, which came while the listing was taken, and .43.
    const watched = new Map([learned("172.31.16.41/32"), learned("172.31.16.43/32")].map((r) => [r.prefix, r]));
    const listed = new Map([learned("172.31.16.40/32"), learned("172.31.16.42/32"), learned("172.31.16.44/32"), learned("172.31.16.43/32")].map((r) => [r.prefix, r]));
    const touched = ["172.31.16.41/32", "172.31.16.44/32", "172.31.16.43/32"];
    expect([...listingWithNewer(listed, watched, touched).keys()].sort()).toEqual(["172.31.16.40/32", "172.31.16.41/32", "172.31.16.42/32", "172.31.16.43/32"]);
  });
});

describe("which learned routes are installed", () => {
  const local = desired([tap("172.31.16.5"), tap("172.31.16.6")]).endpoints;
  const policy = { nodeAddress: "10.97.0.1", ranges: ["172.31.16.0/24"], maxLearned: 1000, facts: emptyHostFacts() };
  const installableRoutes = (routes: LearnedRoute[], endpoints: typeof local, nodeAddress: string) =>
    filterImports(routes, endpoints, { ...policy, nodeAddress }).install;
  it("never a path back to this host, never a prefix a local workload answers for, unless the remote path is elevated", () => {
    const routes = installableRoutes([
      learned("172.31.16.40/32"), learned("172.31.16.41/32", "10.97.0.1"), learned("172.31.16.5/32"),
      learned("172.31.16.6/32", "10.97.0.2", true),
    ], local, "10.97.0.1");
    expect(routes.map((r) => r.prefix)).toEqual(["172.31.16.40/32", "172.31.16.6/32"]);
  });

  it("a local endpoint that is itself elevated (settling here) wins over a remote elevated path", () => {
    const mine = local.map((e) => (e.ip === "172.31.16.6" ? { ...e, elevated: true } : e));
    expect(installableRoutes([learned("172.31.16.6/32", "10.97.0.2", true)], mine, "10.97.0.1")).toEqual([]);
  });
});

describe("planning learned routes", () => {
  const base = desired([tap("172.31.16.5")]);

  it("installs each as a route via the other host with the learned protocol, elevated ones at half the metric", () => {
    const d = withLearned(base, [learned("172.31.16.40/32"), learned("172.31.16.5/32", "10.97.0.3", true)]);
    const lines = plan(d, observedWithNetns(), settings).operations.map(renderBatchLine).filter(Boolean);
    expect(lines).toContain("route replace 172.31.16.40/32 via 10.97.0.2 proto 96 metric 1024");
    expect(lines).toContain("route replace 172.31.16.5/32 via 10.97.0.3 proto 96 metric 512");
  });

  it("converges, then plans nothing; a next hop that changes is replaced in place; a route no longer learned goes", () => {
    let d = withLearned(base, [learned("172.31.16.40/32"), learned("172.31.16.41/32")]);
    let k = applyToModel(observedWithNetns(), plan(d, observedWithNetns(), settings).operations);
    expect(plan(d, k, settings).operations).toEqual([]);
    d = withLearned(base, [learned("172.31.16.40/32", "10.97.0.9")]);
    const ops = plan(d, k, settings).operations;
    expect(ops.map(renderBatchLine)).toEqual([
      "route replace 172.31.16.40/32 via 10.97.0.9 proto 96 metric 1024",
      "route del 172.31.16.41/32 via 10.97.0.2 proto 96 metric 1024",
    ]);
    k = applyToModel(k, ops);
    expect(k.routes.filter((r) => r.protocol === 96).map((r) => `${r.dst} ${r.gateway}`)).toEqual(["172.31.16.40/32 10.97.0.9"]);
  });

  it("keeps the learned routes in the kernel as they are until the importer has a complete set (a restart flushes nothing)", () => {
    const k = applyToModel(observedWithNetns(), plan(withLearned(base, [learned("172.31.16.40/32")]), observedWithNetns(), settings).operations);
    expect(plan(withLearned(base, [], false), k, settings).operations.filter((o) => o.op === "route.delete")).toEqual([]);
    expect(plan(withLearned(base, [], true), k, settings).operations.map((o) => o.op)).toEqual(["route.delete"]);
  });

  it("leaves a foreign route to a learned prefix alone and reports the conflict", () => {
    const o = observedWithNetns();
    o.routes.push({ dst: "172.31.16.40/32", gateway: "10.0.0.9", protocol: 4, scope: 0, type: "unicast", metric: 0 });
    const p = plan(withLearned(desired([]), [learned("172.31.16.40/32")]), o, settings);
    expect(p.operations.filter((op) => "dst" in op && op.dst === "172.31.16.40/32")).toEqual([]);
    expect(p.learned[0]).toMatchObject({ ok: false, conflict: expect.stringMatching(/protocol 4 .*not owned by vmrouted/) });
  });

  it("an endpoint route and an elevated learned route to the same IP live side by side (a VM that just moved away)", () => {
    const d = withLearned(base, [learned("172.31.16.5/32", "10.97.0.3", true)]);
    const k = applyToModel(observedWithNetns(), plan(d, observedWithNetns(), settings).operations);
    expect(k.routes.filter((r) => r.dst === "172.31.16.5/32").map((r) => `${r.protocol} ${r.metric}`).sort()).toEqual(["94 1024", "96 512"]);
    const again = plan(d, k, settings);
    expect(again.operations).toEqual([]);
    expect(again.endpoints[0]).toMatchObject({ routeOk: true });
  });
});

describe("when gobgpd's RIB is complete", () => {
  it("every peer Established, with its End-of-RIB where graceful restart was negotiated, else up a few seconds", () => {
    const peer = (over: Partial<PeerInfo>): PeerInfo => ({ address: "10.97.0.254", state: "established", uptimeSeconds: 10, ...over });
    expect(peersSynced([])).toBe(false);
    expect(peersSynced([peer({ state: "active" })])).toBe(false);
    expect(peersSynced([peer({ endOfRib: { negotiated: true, received: false } })])).toBe(false);
    expect(peersSynced([peer({ endOfRib: { negotiated: true, received: true } })])).toBe(true);
    expect(peersSynced([peer({ uptimeSeconds: 1 })])).toBe(false);
    expect(peersSynced([peer({}), peer({ address: "10.97.0.253", state: "idle" })])).toBe(false);
  });
});

describe("importing IPv6 best paths (issue #25)", () => {
  it("another speaker's /128 is a learned route with its IPv6 next hop; ours and withdrawals are not", () => {
    const p6 = (over: Partial<RibPath> = {}) => rib("fd31:16::9/128", { nextHop: "fd99::2", ...over });
    expect(learnedFrom(p6(), MIGRATION)).toEqual(learned("fd31:16::9/128", "fd99::2"));
    expect(learnedFrom(p6({ communities: [MIGRATION] }), MIGRATION)).toEqual(learned("fd31:16::9/128", "fd99::2", true));
    expect(learnedFrom(p6({ isFromLocal: true, neighborIp: "" }), MIGRATION)).toBeUndefined();
    expect(learnedFrom(p6({ isWithdraw: true }), MIGRATION)).toBeUndefined();
    // Both families in one set, one batch.
    const routes = applyBestPaths(new Map(), [rib("172.31.16.9/32"), p6()], MIGRATION);
    expect([...routes.keys()].sort()).toEqual(["172.31.16.9/32", "fd31:16::9/128"]);
    applyBestPaths(routes, [p6({ isWithdraw: true })], MIGRATION);
    expect([...routes.keys()]).toEqual(["172.31.16.9/32"]);
  });
});

describe("when the importer publishes", () => {
  const quiet = { start: -Infinity, changes: 0 };
  it("a migrated VM's /32 and then its /128, a few ms apart, each at once; a reflector's stream once per 250 ms", () => {
    // The /32 after a quiet moment: at once.
    expect(publishWait(1000, -Infinity, quiet, 1)).toBe(0);
    const w = afterPublication(1000, quiet, 1);
    // Its /128 3 ms later: at once too (it used to wait 250 ms behind the /32).
    expect(publishWait(1003, 1000, w, 1)).toBe(0);
    // A stream: past the few quick changes, the next waits for the window.
    const busy = afterPublication(1003, w, 1);
    expect(publishWait(1010, 1003, busy, 500)).toBe(243);
    expect(publishWait(1010, 1003, afterPublication(1004, busy, 40), 1)).toBe(243);
    // Published at 1253 (a new window, 500 changes): busy until 250 ms have passed, then quick again.
    const after = afterPublication(1253, afterPublication(1004, busy, 40), 500);
    expect(publishWait(1300, 1253, after, 1)).toBe(203);
    expect(publishWait(1503, 1253, after, 1)).toBe(0);
  });
});
