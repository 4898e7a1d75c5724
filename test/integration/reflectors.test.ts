import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { toApiPath, type RibPath } from "../../src/bgp/gobgp.js";
import { encodeCommunity, type BgpPath } from "../../src/bgp/paths.js";
import { rootSnapshot, runId, waitFor } from "../helpers/lab.js";
import { createReflector, Fabric, REFLECTOR_KINDS, type Reflector, type ReflectorKind } from "../helpers/reflectors.js";

// vmrouted's hosts (gobgpd from templates/gobgpd.toml, started with -r as the
// systemd drop-in does) behind each of the three route reflectors the project
// documents, each from its template: BIRD 2 (bird-rr.conf), FRR 8.4
// (frr-rr.conf), gobgpd (gobgp-rr.toml). For each: host 1's paths reach host
// 2 with host 1 as next hop; host 1's gobgpd is killed and restarted with its
// paths re-added at once, and host 2 must never lose them (graceful restart);
// and the same with SIGTERM (gobgpd sends a Cease first: only reflectors with
// RFC 8538 keep the paths; what each does is asserted below), and with SIGKILL
// but restarted without -r.
// The three reflectors run at the same time, each on its own fabric (each
// stage mostly waits for gobgpd's first dial, a random 5-10 s); within one,
// the stages run in order.
//
//   h1 10.97.0.1 --+
//   h2 10.97.0.2 --+-- br0 (its own namespace) --+-- rr 10.97.0.254

const id = runId();
const COMMUNITIES = [encodeCommunity("64512:100")];
const IPS = ["172.31.16.10", "172.31.16.11", "172.31.16.12", "172.31.16.13", "172.31.16.14"];
const PREFIXES = IPS.map((ip) => `${ip}/32`).sort();
const results: Record<string, Record<string, unknown>> = {};
let rootBefore = "";

/** Whether a reflector keeps a host's paths when the host's gobgpd is stopped with SIGTERM (a Cease NOTIFICATION), as found. */
const KEEPS_PATHS_ON_SIGTERM: Record<ReflectorKind, boolean> = {
  bird: false, // BIRD 2.0.12 has no RFC 8538: a Cease ends graceful restart, the paths are withdrawn at once
  frr: true, // FRR 8.4 negotiates RFC 8538 (N bit) by default; the template says so explicitly
  gobgp: true, // gobgpd with notification-enabled (RFC 8538) on both sides
};
/** Whether host 2 may see the paths withdrawn (and announced again) when host 1's gobgpd is SIGKILLed and restarted without -r, as found. */
const FLAPS_WITHOUT_R: Record<ReflectorKind, boolean> = {
  bird: true, // no restart state in the new OPEN: BIRD drops the stale paths as soon as the session is back
  frr: false, // FRR keeps them until host 1's End-of-RIB, and the re-added paths are there by then
  gobgp: false, // gobgpd too (it only logs that the restart flag is not set)
};

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("integration tests need root (they create network namespaces)");
  rootBefore = await rootSnapshot();
});

afterAll(async () => {
  console.log(`reflector results: ${JSON.stringify(results, null, 1)}`);
  expect(await rootSnapshot()).toBe(rootBefore);
});

/** Watches host 2 during a restart of host 1: listBestPaths every 100 ms, plus every event of its best-path watch. */
function monitorHost2(fabric: Fabric, rr: Reflector) {
  const h1 = fabric.hosts[0]!, h2 = fabric.hosts[1]!;
  const client = h2.gobgpd.client();
  const missing: Array<{ at: number; prefixes: string[] }> = [];
  const withdrawEvents: RibPath[] = [];
  const rrMissing: number[] = [];
  let samples = 0, rrSamples = 0, stopped = false;
  const started = performance.now();
  const watch = client.watchBestPaths((paths, initial) => {
    if (!initial) for (const p of paths) if (p.isWithdraw && PREFIXES.includes(p.prefix)) withdrawEvents.push(p);
  });
  const sampler = (async () => {
    while (!stopped) {
      const t = performance.now();
      const have = new Map((await client.listBestPaths({ timeoutMs: 2000 }).catch(() => [] as RibPath[])).map((p) => [p.prefix, p]));
      const lost = PREFIXES.filter((p) => have.get(p)?.nextHop !== h1.address);
      samples++;
      if (lost.length) missing.push({ at: Math.round(t - started), prefixes: lost });
      await new Promise((r) => setTimeout(r, Math.max(0, 100 - (performance.now() - t))));
    }
  })();
  const rrSampler = (async () => {
    while (!stopped) {
      const routes = await rr.routes().catch(() => new Map());
      rrSamples++;
      if (PREFIXES.some((p) => !(routes.get(p) ?? []).some((r: { nextHop: string }) => r.nextHop === h1.address))) rrMissing.push(Math.round(performance.now() - started));
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await Promise.all([sampler, rrSampler]);
      watch.cancel();
      const outageMs = missing.length ? missing.at(-1)!.at - missing[0]!.at + 100 : 0;
      return { samples, missingSamples: missing.length, outageMs, withdrawEvents: withdrawEvents.length, rrSamples, rrMissingSamples: rrMissing.length };
    },
  };
}

async function scenario(kind: ReflectorKind, r: Record<string, unknown>): Promise<void> {
  const fabric = await Fabric.create(`${id}${kind[0]}`, 2);
  let rr: Reflector | undefined;
  const [h1, h2] = [fabric.hosts[0]!, fabric.hosts[1]!];
  const path = (ip: string): BgpPath => ({ prefix: `${ip}/32`, nextHop: h1.address, communities: COMMUNITIES, localPref: 200 });
  const announce = () => h1.gobgpd.client().addPathStream(IPS.map((ip) => toApiPath(path(ip), false)));
  const host2Has = async () => {
    const have = new Map((await h2.gobgpd.client().listBestPaths()).map((p) => [p.prefix, p]));
    return PREFIXES.every((p) => have.get(p)?.nextHop === h1.address);
  };
  /** Host 1's gobgpd has sent its paths (its deferral is over) and the reflector holds them, not stale. */
  const settled = async () => {
    const peers = await h1.gobgpd.client().listPeers();
    if (!peers.some((p) => p.state === "established" && (p.prefixesSent ?? 0) >= IPS.length)) return false;
    const routes = await rr!.routes();
    return PREFIXES.every((p) => (routes.get(p) ?? []).some((x) => x.nextHop === h1.address && !x.stale));
  };

  /** Stops host 1's gobgpd with the signal, starts it again (with -r unless told), re-adds its paths, watches host 2 until everything settled. */
  async function restartHost1(signal: NodeJS.Signals, args = ["-r"]) {
    const withdrawsBefore = await rr!.withdrawCount(h1.address);
    const monitor = monitorHost2(fabric, rr!);
    await new Promise((res) => setTimeout(res, 300));
    const t0 = performance.now();
    await h1.gobgpd.stop(signal);
    await h1.gobgpd.start(args);
    await announce();
    const readdedMs = Math.round(performance.now() - t0);
    await waitFor(() => rr!.sessionEstablished(h1.address), 30000, `${kind} to take host 1 back`);
    const sessionMs = Math.round(performance.now() - t0);
    await waitFor(settled, 30000, `host 1's paths at ${kind}, refreshed`);
    const settledMs = Math.round(performance.now() - t0);
    await waitFor(host2Has, 30000, "host 2 to have the paths");
    await new Promise((res) => setTimeout(res, 2000)); // anything late (a stale sweep after End-of-RIB) shows up here
    const seen = await monitor.stop();
    const withdrawsAfter = await rr!.withdrawCount(h1.address);
    return { readdedMs, sessionMs, settledMs, withdrawsBefore, withdrawsAfter, ...seen };
  }

  try {
    rr = await createReflector(kind, fabric.reflectorOptions());
    await rr.start();
    let t = performance.now();
    // -r on every start, as the systemd drop-in does.
    await Promise.all(fabric.hosts.map((h) => h.gobgpd.start(["-r"])));
    await waitFor(async () => (await rr!.sessionEstablished(h1.address)) && (await rr!.sessionEstablished(h2.address)), 30000, `both hosts established at ${kind}`);
    r.sessionsMs = Math.round(performance.now() - t);

    // 1. Host 1's paths reach host 2 through the reflector, host 1 the next hop.
    t = performance.now();
    await announce();
    await waitFor(host2Has, 10000, "host 2 to have host 1's paths");
    r.announceToHost2Ms = Math.round(performance.now() - t);
    const at2 = new Map((await h2.gobgpd.client().listBestPaths()).map((p) => [p.prefix, p]));
    expect(at2.get(PREFIXES[0]!), "host 2's path").toMatchObject({ nextHop: h1.address, localPref: 200, communities: COMMUNITIES, isFromLocal: false, neighborIp: fabric.rrAddress });
    const routes = await rr.routes();
    for (const p of PREFIXES) expect(routes.get(p), `${kind}'s paths for ${p}`).toEqual([expect.objectContaining({ nextHop: h1.address, peer: h1.address })]);
    await waitFor(settled, 10000, "settled");

    // 2. The withdraw counter counts a withdrawal host 1 sends (so that it not moving later means something).
    expect(await rr.withdrawCount(h1.address), "withdrawals from host 1 at first").toBe(0);
    const extra = toApiPath(path("172.31.16.99"), false);
    await h1.gobgpd.client().addPathStream([extra]);
    await waitFor(async () => (await rr!.routes()).has("172.31.16.99/32"), 5000, "the extra path at the reflector");
    await h1.gobgpd.client().addPathStream([{ ...extra, isWithdraw: true }]);
    await waitFor(async () => (await rr!.withdrawCount(h1.address)) === 1, 5000, "the reflector to count one withdrawal from host 1");
    expect(await rr.withdrawCount(h2.address), "withdrawals from host 2").toBe(0);

    // 3. SIGKILL, restart with -r, re-add: host 2 never loses the paths; the reflector counts no withdrawal.
    const kill = (r.sigkill = await restartHost1("SIGKILL"));
    expect(kill.readdedMs, "SIGKILL: paths re-added within").toBeLessThan(5000);
    expect(kill.samples, "SIGKILL: host 2 samples").toBeGreaterThan(30);
    expect(kill.missingSamples, "SIGKILL: host 2 samples without the paths").toBe(0);
    expect(kill.withdrawEvents, "SIGKILL: withdrawals host 2's watch saw").toBe(0);
    expect(kill.rrMissingSamples, "SIGKILL: reflector samples without the paths").toBe(0);
    expect(kill.withdrawsAfter, "SIGKILL: the reflector's withdraw count").toBe(kill.withdrawsBefore);

    // 4. SIGTERM (a Cease first), restart with -r, re-add: kept only by reflectors with RFC 8538.
    const term = (r.sigterm = await restartHost1("SIGTERM"));
    const kept = (r.keepsPathsOnSigterm = term.missingSamples === 0 && term.withdrawEvents === 0 && term.rrMissingSamples === 0);
    expect(kept, "SIGTERM: paths kept").toBe(KEEPS_PATHS_ON_SIGTERM[kind]);
    // Paths a reflector drops with a session are flushed, not received withdrawals: no counter counts them. A session
    // that ends without graceful restart even starts its counters again from zero (BIRD restarts the protocol); one
    // kept through graceful restart keeps them.
    expect(term.withdrawsAfter, "SIGTERM: the reflector's withdraw count").toBe(kept ? term.withdrawsBefore : 0);
    if (!kept) expect(term.withdrawEvents, "SIGTERM: withdrawals host 2's watch saw").toBeGreaterThan(0);
    if (!kept) expect(term.missingSamples, "SIGTERM: host 2 samples without the paths").toBeGreaterThan(0);

    // 5. SIGKILL, restart WITHOUT -r, re-add: the new OPEN says neither "restarting" nor "forwarding kept".
    const noR = (r.sigkillWithoutR = await restartHost1("SIGKILL", []));
    r.flapsWithoutR = noR.withdrawEvents > 0;
    // A flap is withdrawn and announced again within ms: host 2's watch sees it, the 100 ms samples may not.
    // Where one may happen (BIRD), whether it does depends on who is faster (the re-added paths or the new
    // session), so it is recorded, not asserted; where none may, that is asserted.
    if (!FLAPS_WITHOUT_R[kind]) expect(noR.withdrawEvents, "without -r: host 2 saw the paths withdrawn").toBe(0);
  } catch (e) {
    r.error = (e as Error).message;
    r.reflectorLog = rr ? (await rr.log()).slice(-3000) : "";
    throw e;
  } finally {
    await rr?.destroy();
    await fabric.destroy();
  }
}

describe("route reflectors with vmrouted's gobgpd hosts", () => {
  for (const kind of REFLECTOR_KINDS) {
    it.concurrent(`${kind}: paths reach host 2 with host 1's next hop; host 1's gobgpd restarts (SIGKILL + -r: hitless; SIGTERM: ${KEEPS_PATHS_ON_SIGTERM[kind] ? "kept (RFC 8538)" : "withdrawn"}; SIGKILL without -r: ${FLAPS_WITHOUT_R[kind] ? "may flap" : "still hitless"})`, async () => {
      const started = performance.now();
      const r: Record<string, unknown> = (results[kind] = {});
      try {
        await scenario(kind, r);
      } finally {
        r.totalMs = Math.round(performance.now() - started);
      }
    }, 170_000);
  }
});
