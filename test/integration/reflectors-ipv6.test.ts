import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { toApiPath, type RibPath } from "../../src/bgp/gobgp.js";
import { filterImports, importRanges } from "../../src/bgp/import-filter.js";
import { learnedFrom, peersSynced } from "../../src/bgp/importer.js";
import { encodeCommunity, pathsFor, type AnnouncePolicy } from "../../src/bgp/paths.js";
import { rootSnapshot, runId, waitFor } from "../helpers/lab.js";
import { createReflector, Fabric, REFLECTOR_KINDS, type Reflector, type ReflectorKind } from "../helpers/reflectors.js";

// Dual stack (issue #25) through each of the three reflector templates: host
// 1's gobgpd (templates/gobgpd.toml, started with -r) gets each endpoint's /32
// and /128 as the announcer builds them (pathsFor + toApiPath: the /128 as
// IPv6 unicast with MP_REACH_NLRI, next hop node.address6); the reflector
// holds the /128 with host 1's IPv6 next hop; host 2 learns it (ListPath and
// WatchEvent) and the import filter installs it. Host 1's gobgpd is then
// SIGKILLed and restarted with -r and its paths re-added: host 2 must lose
// neither family (graceful restart for both). And a BIRD reflector WITHOUT
// IPv6 (its template's ipv6 channel left out) must not hold the /32s back
// (GoBGP #2524: bounded by deferral-time in templates/gobgpd.toml).
//
//   h1 10.95.0.1 fd95::1 --+
//   h2 10.95.0.2 fd95::2 --+-- br0 --+-- rr 10.95.0.254 fd95::fe

const id = runId();
const ASN = "64512";
const MIGRATION = encodeCommunity("64512:666");
const ENDPOINTS = [
  { ip: "172.31.16.10", ip6: "fd31:16::a" },
  { ip: "172.31.16.11", ip6: "fd31:16::b" },
  { ip: "172.31.16.12", ip6: "fd31:16::c", elevated: true },
];
const V4 = ENDPOINTS.map((e) => `${e.ip}/32`);
const V6 = ENDPOINTS.map((e) => `${e.ip6}/128`);
const results: Record<string, Record<string, unknown>> = {};
let rootBefore = "";

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("integration tests need root (they create network namespaces)");
  rootBefore = await rootSnapshot();
});

afterAll(async () => {
  console.log(`ipv6 reflector results: ${JSON.stringify(results, null, 1)}`);
  expect(await rootSnapshot()).toBe(rootBefore);
});

function policyOf(fabric: Fabric, host: 0 | 1): AnnouncePolicy {
  const h = fabric.hosts[host]!;
  return { nextHop: h.address, nextHop6: h.address6, communities: ["64512:100"], localPref: 200, migrationCommunity: "64512:666" };
}

async function scenario(kind: ReflectorKind, r: Record<string, unknown>): Promise<void> {
  const fabric = await Fabric.create(`${id}${kind[0]}6`, 2, 95);
  let rr: Reflector | undefined;
  const [h1, h2] = [fabric.hosts[0]!, fabric.hosts[1]!];
  const paths = ENDPOINTS.flatMap((e) => pathsFor(e, policyOf(fabric, 0)));
  const announce = () => h1.gobgpd.client().addPathStream(paths.map((p) => toApiPath(p, false)));
  const host2Paths = async () => new Map((await h2.gobgpd.client().listBestPaths({ timeoutMs: 2000 })).map((p) => [p.prefix, p]));
  const host2HasBoth = async () => {
    const have = await host2Paths();
    return V4.every((p) => have.get(p)?.nextHop === h1.address) && V6.every((p) => have.get(p)?.nextHop === h1.address6);
  };
  try {
    rr = await createReflector(kind, fabric.reflectorOptions());
    await rr.start();
    let t = performance.now();
    await Promise.all(fabric.hosts.map((h) => h.gobgpd.start(["-r"])));
    await waitFor(async () => (await rr!.sessionEstablished(h1.address)) && (await rr!.sessionEstablished(h2.address)), 30000, `both hosts established at ${kind}`);
    r.sessionsMs = Math.round(performance.now() - t);

    // 1. The /128s reach the reflector with host 1's IPv6 next hop, and host 2 (both families).
    const watched = new Map<string, RibPath>();
    const watch = h2.gobgpd.client().watchBestPaths((batch) => {
      for (const p of batch) watched.set(p.prefix, p);
    });
    t = performance.now();
    await announce();
    await waitFor(host2HasBoth, 15000, "host 2 to have host 1's /32s and /128s");
    r.announceToHost2Ms = Math.round(performance.now() - t);
    const rr6 = await rr.routes("ipv6");
    for (const p of V6) expect(rr6.get(p), `${kind}'s paths for ${p}`).toEqual([expect.objectContaining({ nextHop: h1.address6, peer: h1.address })]);
    const rr4 = await rr.routes("ipv4");
    for (const p of V4) expect(rr4.get(p), `${kind}'s paths for ${p}`).toEqual([expect.objectContaining({ nextHop: h1.address, peer: h1.address })]);
    expect([...rr4.keys()].some((k) => k.includes(":")), "no IPv6 prefix in the IPv4 table").toBe(false);

    const at2 = await host2Paths();
    expect(at2.get(V6[0]!), "host 2's /128").toMatchObject({ nextHop: h1.address6, localPref: 200, communities: [encodeCommunity("64512:100")], isFromLocal: false, neighborIp: fabric.rrAddress });
    expect(at2.get(V6[2]!), "host 2's elevated /128").toMatchObject({ localPref: 300, communities: [encodeCommunity("64512:100"), MIGRATION] });
    await waitFor(() => V6.every((p) => watched.get(p)?.nextHop === h1.address6), 5000, "host 2's best-path watch to show the /128s");
    watch.cancel();

    // 2. As the importer and the import filter see it: learned with the IPv6 next hop, installed.
    const learned = [...at2.values()].flatMap((p) => learnedFrom(p, MIGRATION) ?? []);
    const facts = { addresses: new Set([h2.address, h2.address6]), connected: [fabric.prefix, fabric.prefix6], peers: new Set([fabric.rrAddress]) };
    const verdict = filterImports(learned, [], {
      nodeAddress: h2.address, nodeAddress6: h2.address6, maxLearned: 1000, facts, ranges: importRanges([], ["172.31.16.0/24", "fd31:16::/64"]),
    });
    expect(verdict.rejected).toEqual([]);
    expect(verdict.install.filter((x) => x.prefix.endsWith("/128")).map((x) => [x.prefix, x.nextHop, x.elevated]).sort())
      .toEqual(ENDPOINTS.map((e) => [`${e.ip6}/128`, h1.address6, e.elevated === true]).sort());
    // Both families' End-of-RIB seen: the importer's sync does not wait for anything more.
    const peers = await h2.gobgpd.client().listPeers();
    r.host2Peers = peers;
    expect(peersSynced(peers), "host 2's peers synced").toBe(true);
    expect(peers[0]?.endOfRib).toEqual({ negotiated: true, received: true });

    // 3. Host 1's gobgpd SIGKILLed and restarted with -r, its paths re-added at once: host 2 keeps both families throughout.
    let stop = false, samples = 0;
    const missing: string[][] = [];
    const sampler = (async () => {
      while (!stop) {
        const have = await host2Paths().catch(() => new Map<string, RibPath>());
        samples++;
        const lost = [...V4.filter((p) => have.get(p)?.nextHop !== h1.address), ...V6.filter((p) => have.get(p)?.nextHop !== h1.address6)];
        if (lost.length) missing.push(lost);
        await new Promise((res) => setTimeout(res, 100));
      }
    })();
    t = performance.now();
    await h1.gobgpd.stop("SIGKILL");
    await h1.gobgpd.start(["-r"]);
    await announce();
    await waitFor(() => rr!.sessionEstablished(h1.address), 30000, `${kind} to take host 1 back`);
    // Host 1 has sent both families again (its deferral is over) and the reflector holds them, fresh.
    await waitFor(async () => {
      const p = (await h1.gobgpd.client().listPeers())[0];
      if (!p || p.state !== "established" || (p.prefixesSent ?? 0) < V4.length || (p.prefixesSent6 ?? 0) < V6.length) return false;
      const [a, b] = [await rr!.routes("ipv4"), await rr!.routes("ipv6")];
      return V4.every((x) => a.get(x)?.some((y) => y.nextHop === h1.address && !y.stale)) && V6.every((x) => b.get(x)?.some((y) => y.nextHop === h1.address6 && !y.stale));
    }, 40000, `host 1's /32s and /128s at ${kind}, refreshed`);
    r.restartSettledMs = Math.round(performance.now() - t);
    await new Promise((res) => setTimeout(res, 2000)); // a stale sweep after the End-of-RIB would show here
    stop = true;
    await sampler;
    r.restartSamples = samples;
    r.restartMissing = missing.length;
    expect(samples, "host 2 samples during the restart").toBeGreaterThan(30);
    expect(missing, "host 2 samples without some path during host 1's restart").toEqual([]);
  } catch (e) {
    r.error = (e as Error).message;
    r.reflectorLog = rr ? (await rr.log()).slice(-3000) : "";
    throw e;
  } finally {
    await rr?.destroy();
    await fabric.destroy();
  }
}

/** A BIRD reflector without the ipv6 channel: host 1 (gobgpd -r, both families configured) must still get its /32s out promptly. */
async function withoutIpv6(r: Record<string, unknown>): Promise<void> {
  const fabric = await Fabric.create(`${id}n6`, 2, 94);
  let rr: Reflector | undefined;
  const [h1, h2] = [fabric.hosts[0]!, fabric.hosts[1]!];
  try {
    rr = await createReflector("bird", { ...fabric.reflectorOptions(), withoutIpv6: true });
    await rr.start();
    await Promise.all(fabric.hosts.map((h) => h.gobgpd.start(["-r"])));
    // Added before the sessions come up (as vmrouted does): gobgpd holds them back until its deferral ends.
    await h1.gobgpd.client().addPathStream(ENDPOINTS.flatMap((e) => pathsFor(e, policyOf(fabric, 0))).map((p) => toApiPath(p, false)));
    const t0 = performance.now();
    await waitFor(async () => (await rr!.sessionEstablished(h1.address)) && (await rr!.sessionEstablished(h2.address)), 30000, "both hosts established at BIRD");
    const established = performance.now();
    r.sessionsMs = Math.round(established - t0);
    await waitFor(async () => {
      const have = new Map((await h2.gobgpd.client().listBestPaths({ timeoutMs: 2000 })).map((p) => [p.prefix, p]));
      return V4.every((p) => have.get(p)?.nextHop === h1.address);
    }, 60000, "host 2 to have host 1's /32s through a reflector without IPv6");
    r.v4AfterEstablishedMs = Math.round(performance.now() - established);
    // gobgpd's deferral-time (3 s in the template), not its default 360 s.
    expect(r.v4AfterEstablishedMs as number, "/32s held back after the session came up (ms)").toBeLessThan(10000);
    expect((await rr.routes("ipv6")).size, "no /128 at a reflector without IPv6").toBe(0);
    const peers = await h2.gobgpd.client().listPeers();
    r.host2Peers = peers;
    expect(peersSynced(peers), "host 2's importer does not wait for an IPv6 End-of-RIB that never comes").toBe(true);
    expect(peers[0]?.prefixesSent6 ?? 0).toBe(0);
  } catch (e) {
    r.error = (e as Error).message;
    r.reflectorLog = rr ? (await rr.log()).slice(-3000) : "";
    throw e;
  } finally {
    await rr?.destroy();
    await fabric.destroy();
  }
}

describe("dual stack through the route reflectors", () => {
  for (const kind of REFLECTOR_KINDS) {
    it.concurrent(`${kind}: /128s with host 1's IPv6 next hop reach the reflector and host 2, and survive host 1's gobgpd SIGKILL + -r restart`, async () => {
      const r: Record<string, unknown> = (results[kind] = {});
      await scenario(kind, r);
    }, 150_000);
  }
  it.concurrent("bird without IPv6: the /32s are not held back (deferral-time), host 2's importer does not wait for IPv6", async () => {
    await withoutIpv6((results.birdWithoutIpv6 = {}));
  }, 120_000);
});
