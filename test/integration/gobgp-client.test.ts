import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectGobgp, toApiPath, type GobgpClient, type RibPath } from "../../src/bgp/gobgp.js";
import { encodeCommunity, type BgpPath } from "../../src/bgp/paths.js";
import { Netns, rootSnapshot, runId, waitFor } from "../helpers/lab.js";
import { GobgpdProcess, Proc } from "../helpers/reflectors.js";

// vmrouted's gRPC client against two real gobgpd, iBGP peers in two namespaces
// this test makes (joined by one veth made straight into both):
//   a 10.98.0.1/24 (originates paths with addPathStream)  <--->  b 10.98.0.2/24 (imports them)
// Each gobgpd has its API on 127.0.0.1:50051 in its namespace and on a unix
// socket in the temp dir, which the test (in the root namespace) uses.

const id = runId();
const ASN = 64512;
const A = "10.98.0.1", B = "10.98.0.2";
const COMMUNITIES = [encodeCommunity("64512:100"), encodeCommunity("64512:666")];
const timings: Record<string, number> = {};

let nsA: Netns, nsB: Netns;
let dir = "";
let a: GobgpdProcess, b: GobgpdProcess;
let rootBefore = "";

const config = (self: string, peer: string) => `
[global.config]
  as = ${ASN}
  router-id = "${self}"
  local-address-list = ["${self}"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "${peer}"
    peer-as = ${ASN}
  [neighbors.timers.config]
    connect-retry = 5
    hold-time = 30
    keepalive-interval = 10
  [neighbors.transport.config]
    local-address = "${self}"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
`;

const path = (ip: string, extra: Partial<BgpPath> = {}): BgpPath => ({ prefix: `${ip}/32`, nextHop: A, communities: COMMUNITIES, localPref: 200, ...extra });
const ips = (n: number, base = "172.31.16.") => Array.from({ length: n }, (_, i) => `${base}${i + 10}`);
/** 50,000 distinct /32s in 172.24.0.0/16 - 172.24.195.0/24. */
const bulkIps = (n: number) => Array.from({ length: n }, (_, i) => `172.24.${Math.floor(i / 256)}.${i % 256}`);
const byPrefix = (paths: RibPath[]) => new Map(paths.map((p) => [p.prefix, p]));

/** Collects a watchBestPaths stream: every batch, the per-prefix current state, and when each prefix was last seen. */
function collect(client: GobgpClient) {
  const events: Array<{ at: number; paths: RibPath[]; initial: boolean }> = [];
  const current = new Map<string, RibPath>();
  const watch = client.watchBestPaths((paths, initial) => {
    events.push({ at: performance.now(), paths, initial });
    if (initial) current.clear();
    for (const p of paths) {
      if (p.isWithdraw) current.delete(p.prefix);
      else current.set(p.prefix, p);
    }
  });
  return { events, current, watch };
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("integration tests need root (they create network namespaces)");
  rootBefore = await rootSnapshot();
  nsA = await Netns.create(`vmrt-${id}-ga`);
  nsB = await Netns.create(`vmrt-${id}-gb`);
  dir = await mkdtemp(join(tmpdir(), "vmrouted-gobgp-client-"));
  // Made straight into both namespaces: the root namespace never sees it.
  await nsA.exec(["ip", "link", "add", "peer0", "type", "veth", "peer", "name", "peer0", "netns", nsB.name]);
  await nsA.ip(["addr", "add", `${A}/24`, "dev", "peer0"]);
  await nsB.ip(["addr", "add", `${B}/24`, "dev", "peer0"]);
  await nsA.ip(["link", "set", "peer0", "up"]);
  await nsB.ip(["link", "set", "peer0", "up"]);
  await writeFile(join(dir, "a.toml"), config(A, B));
  await writeFile(join(dir, "b.toml"), config(B, A));
  a = new GobgpdProcess(nsA, join(dir, "a"), "a", join(dir, "a.toml"));
  b = new GobgpdProcess(nsB, join(dir, "b"), "b", join(dir, "b.toml"));
  await Promise.all([a.start(), b.start()]);
  const started = Date.now();
  await waitFor(async () => {
    const peers = await b.client().listPeers();
    return peers.some((p) => p.address === A && p.state === "established");
  }, 30000, "gobgpd a <-> b session");
  timings.sessionMs = Date.now() - started;
});

afterAll(async () => {
  await a?.destroy();
  await b?.destroy();
  await nsA?.destroy();
  await nsB?.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
  console.log(`gobgp client timings (ms): ${JSON.stringify(timings)}`);
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("vmrouted's gobgpd client against two real gobgpd", () => {
  it("the announcer's API still works: getBgp, listPeers, watch", async () => {
    expect(await a.client().getBgp()).toEqual({ asn: ASN, routerId: A });
    expect(await a.client().listPeers()).toEqual([expect.objectContaining({ address: B, state: "established" })]);
    const w = a.client().watch();
    w.cancel();
    expect(await w.ended).toMatch(/CANCELLED|ended/);
  });

  it("watchBestPaths and listBestPaths: paths from the peer are not local, with its next hop, local-pref and communities; on the originating side they are local", async () => {
    const watchB = collect(b.client());
    const watchA = collect(a.client());
    await waitFor(() => watchB.events.length > 0 && watchA.events.length > 0, 5000, "the initial snapshots");
    expect(watchB.events[0]).toMatchObject({ initial: true, paths: [] });

    const paths = [...ips(4).map((ip) => path(ip)), path("172.31.16.20", { localPref: undefined, communities: [] })];
    const sent = performance.now();
    await a.client().addPathStream(paths.map((p) => toApiPath(p, false)));
    await waitFor(() => watchB.current.size === 5, 10000, "b to see 5 best paths");
    timings.watchLatency5PathsMs = Math.round(watchB.events.at(-1)!.at - sent);
    await waitFor(() => watchA.current.size === 5, 5000, "a to see its own 5 paths");
    timings.watchLatencyLocalMs = Math.round(watchA.events.at(-1)!.at - sent);

    const fromList = byPrefix(await b.client().listBestPaths());
    for (const seen of [watchB.current, fromList]) {
      expect([...seen.keys()].sort()).toEqual(paths.map((p) => p.prefix).sort());
      for (const ip of ips(4))
        expect(seen.get(`${ip}/32`)).toMatchObject({ nextHop: A, localPref: 200, communities: COMMUNITIES, origin: 0, isWithdraw: false, isFromLocal: false, neighborIp: A, stale: false });
      // No local-pref given: gobgpd sends iBGP paths with its default, 100.
      expect(seen.get("172.31.16.20/32")).toMatchObject({ nextHop: A, localPref: 100, communities: [], isFromLocal: false, neighborIp: A });
      expect(Math.abs(seen.get("172.31.16.10/32")!.age! - Date.now() / 1000)).toBeLessThan(60);
    }

    const ownList = byPrefix(await a.client().listBestPaths());
    for (const seen of [watchA.current, ownList]) {
      expect(seen.size).toBe(5);
      expect(seen.get("172.31.16.10/32")).toMatchObject({ nextHop: A, localPref: 200, communities: COMMUNITIES, isFromLocal: true, neighborIp: "" });
      expect(seen.get("172.31.16.20/32")).toMatchObject({ isFromLocal: true, neighborIp: "" });
      expect(seen.get("172.31.16.20/32")).not.toHaveProperty("localPref");
    }

    // A watch started now gets the current paths as its snapshot.
    const late = collect(b.client());
    await waitFor(() => late.events.length > 0, 5000, "a late watch's snapshot");
    expect(late.events[0]!.initial).toBe(true);
    expect([...late.current.keys()].sort()).toEqual(paths.map((p) => p.prefix).sort());
    late.watch.cancel();
    expect(await late.watch.ended).toBe("cancelled");

    // Withdrawals arrive as withdraw events, on both sides.
    const before = watchB.events.length;
    await a.client().addPathStream([toApiPath(path("172.31.16.10"), true)]);
    await waitFor(() => !watchB.current.has("172.31.16.10/32"), 5000, "b to see the withdrawal");
    const withdrawEvents = watchB.events.slice(before).flatMap((e) => e.paths);
    expect(withdrawEvents).toEqual([expect.objectContaining({ prefix: "172.31.16.10/32", isWithdraw: true, isFromLocal: false, neighborIp: A })]);
    await waitFor(() => !watchA.current.has("172.31.16.10/32"), 5000, "a to see its own withdrawal");
    expect(watchA.events.at(-1)!.paths).toEqual([expect.objectContaining({ prefix: "172.31.16.10/32", isWithdraw: true, isFromLocal: true })]);
    expect((await b.client().listBestPaths()).map((p) => p.prefix).sort()).toEqual(["172.31.16.11/32", "172.31.16.12/32", "172.31.16.13/32", "172.31.16.20/32"]);

    // deletePath: refuses an empty path (gobgpd would delete every local path); deletes a real one.
    await expect(a.client().deletePath({ ...toApiPath(path("172.31.16.11"), false), nlri: { type_url: "", value: Buffer.alloc(0) } })).rejects.toThrow(/refusing DeletePath/);
    await a.client().deletePath(toApiPath(path("172.31.16.11"), false));
    await waitFor(() => !watchB.current.has("172.31.16.11/32"), 5000, "b to see the DeletePath");
    expect(watchB.current.size).toBe(3);

    await a.client().addPathStream(["172.31.16.12", "172.31.16.13"].map((ip) => toApiPath(path(ip), true)).concat(toApiPath(path("172.31.16.20"), true)));
    await waitFor(() => watchB.current.size === 0 && watchA.current.size === 0, 5000, "everything withdrawn");
    watchA.watch.cancel();
    watchB.watch.cancel();
  });

  it("the event stream ends when gobgpd goes away", async () => {
    const w = collect(b.client());
    await waitFor(() => w.events.length > 0, 5000, "snapshot");
    await b.stop("SIGKILL");
    expect(await w.watch.ended).toMatch(/UNAVAILABLE|ended|CANCELLED|INTERNAL/);
    await b.start();
    await waitFor(async () => (await b.client().listPeers()).some((p) => p.address === A && p.state === "established"), 30000, "session back");
  });

  it("a gobgpd without its global config yet: the watch ends at once (it would get no snapshot), the listing is refused", async () => {
    const socket = join(dir, "bare.sock");
    const bare = new Proc("gobgpd (no config)", () => ["ip", "netns", "exec", nsA.name, "gobgpd", "--api-hosts", `unix://${socket}`, "--pprof-disable"]);
    bare.start();
    const client = connectGobgp(`unix://${socket}`);
    try {
      await waitFor(async () => (await client.getBgp().then(() => true, () => false)), 10000, "the bare gobgpd's API");
      expect((await client.getBgp()).asn).toBe(0);
      const w = client.watchBestPaths(() => undefined);
      expect(await w.ended).toMatch(/no global config/);
      await expect(client.listBestPaths()).rejects.toThrow(/hasn't started/);
    } finally {
      client.close();
      await bare.stop();
    }
  });

  it("50,000 paths: injected on one side, listed on the other", async () => {
    const N = 50_000;
    const watchB = collect(b.client());
    await waitFor(() => watchB.events.length > 0, 5000, "snapshot");
    const bulk = bulkIps(N).map((ip) => toApiPath(path(ip), false));
    const t0 = performance.now();
    await a.client().addPathStream(bulk);
    timings.addPathStream50kMs = Math.round(performance.now() - t0);

    // Poll b's table with listBestPaths until it has them all.
    let listing = 0, last: RibPath[] = [];
    await waitFor(async () => {
      const s = performance.now();
      last = await b.client().listBestPaths();
      listing = performance.now() - s;
      return last.length === N;
    }, 120_000, `b to list ${N} paths`, 500);
    timings.injectToFullListing50kMs = Math.round(performance.now() - t0);
    timings.fullListingDuring50kMs = Math.round(listing);
    await waitFor(() => watchB.current.size === N, 30_000, `b's watch to hold ${N} paths`);
    timings.injectToWatchHas50kMs = Math.round(watchB.events.at(-1)!.at - t0);
    expect(last.every((p) => p.nextHop === A && p.localPref === 200 && !p.isFromLocal && p.neighborIp === A && p.communities.length === 2)).toBe(true);
    expect(new Set(last.map((p) => p.prefix)).size).toBe(N);

    // The listing itself, at rest: three runs, the median.
    const runs: number[] = [];
    for (let i = 0; i < 3; i++) {
      const s = performance.now();
      expect((await b.client().listBestPaths()).length).toBe(N);
      runs.push(performance.now() - s);
    }
    timings.listBestPaths50kAtRestMs = Math.round(runs.sort((x, y) => x - y)[1]!);
    // And on the originating side (every path local).
    const s = performance.now();
    const own = await a.client().listBestPaths();
    timings.listBestPaths50kLocalMs = Math.round(performance.now() - s);
    expect(own.length).toBe(N);
    expect(own.every((p) => p.isFromLocal)).toBe(true);

    // A new watch's snapshot of 50,000 paths (one message).
    const late = collect(b.client());
    const ls = performance.now();
    await waitFor(() => late.events.length > 0, 30_000, "the 50k snapshot");
    timings.watchSnapshot50kMs = Math.round(late.events[0]!.at - ls);
    expect(late.current.size).toBe(N);
    late.watch.cancel();
    watchB.watch.cancel();
    expect(timings.listBestPaths50kAtRestMs).toBeLessThan(10_000);
  });
});
