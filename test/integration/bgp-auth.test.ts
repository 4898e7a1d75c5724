import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { toApiPath } from "../../src/bgp/gobgp.js";
import { encodeCommunity } from "../../src/bgp/paths.js";
import { rootSnapshot, runId, waitFor, type Netns } from "../helpers/lab.js";
import { createReflector, Fabric, LAB_BGP_PASSWORD, REFLECTOR_KINDS, type FabricHost, type Reflector, type ReflectorKind } from "../helpers/reflectors.js";

// Authenticated sessions (TCP MD5, RFC 2385) between the hosts' gobgpd
// (templates/gobgpd.toml) and each of the three reflector templates (BIRD 2,
// FRR 8.4 with a listen range, gobgpd with one neighbor per host), all
// rendered with LAB_BGP_PASSWORD. For each reflector: host 1 with a WRONG
// password and host 2 with NONE never get past Active/Connect (watched for
// longer than three connect-retry periods, from the hosts' own gobgpd and from
// the reflector), and the reflector's kernel counts the segments it dropped
// (TcpExtTCPMD5Failure: signed with another key; TCPMD5NotFound: not signed);
// then both with the right password come up and host 1's paths reach the
// reflector and, reflected, host 2. One fabric for the whole file; the three
// reflectors take turns in its reflector namespace.
//
//   h1 10.93.0.1 --+
//   h2 10.93.0.2 --+-- br0 (its own namespace) --+-- rr 10.93.0.254

const WRONG_MS = 15_000; // the hosts' connect-retry is 5 s: three rounds of attempts at least
const WRONG_PASSWORD = "not-the-lab-password";
const IPS = ["172.31.16.20", "172.31.16.21", "172.31.16.22"];
const PREFIXES = IPS.map((ip) => `${ip}/32`);
const COMMUNITIES = [encodeCommunity("64512:100")];
const NOT_CONNECTED = new Set(["idle", "connect", "active"]);

let fabric: Fabric;
let rootBefore = "";
const results: Record<string, Record<string, unknown>> = {};

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error("integration tests need root (they create network namespaces)");
  rootBefore = await rootSnapshot();
  fabric = await Fabric.create(runId(), 2, 93);
});

afterAll(async () => {
  console.log(`bgp auth results: ${JSON.stringify(results, null, 1)}`);
  await fabric?.destroy();
  expect(await rootSnapshot()).toBe(rootBefore);
}, 60_000);

/** The kernel's TCP MD5 drop counters in a namespace (/proc/net/netstat, TcpExt). */
async function md5Counters(ns: Netns): Promise<Record<string, number>> {
  const lines = (await ns.exec(["cat", "/proc/net/netstat"])).stdout.split("\n").filter((l) => l.startsWith("TcpExt:"));
  const [names, values] = lines.map((l) => l.split(/\s+/).slice(1));
  const all = Object.fromEntries(names!.map((n, i) => [n, Number(values![i])]));
  return { failure: all.TCPMD5Failure ?? 0, notFound: all.TCPMD5NotFound ?? 0, unexpected: all.TCPMD5Unexpected ?? 0 };
}

/** The host's own view of its session to the reflector: its gobgpd's neighbor state. */
async function hostState(h: FabricHost): Promise<string> {
  const peers = await h.gobgpd.client().listPeers();
  return peers.find((p) => p.address === fabric.rrAddress)?.state ?? "none";
}

/** Distinct messages of a gobgpd's log lines about the reflector (JSON lines, -l info). */
function gobgpdMessages(output: string): string[] {
  const seen = new Set<string>();
  for (const line of output.split("\n")) {
    try {
      const j = JSON.parse(line) as { msg?: string; Key?: string; Error?: string; Err?: string };
      if (j.Key === fabric.rrAddress && j.msg) seen.add([j.msg, j.Error ?? j.Err].filter(Boolean).join(": ").replace(/:\d+->/, ":*->"));
    } catch { /* not JSON */ }
  }
  return [...seen];
}

async function scenario(kind: ReflectorKind, r: Record<string, unknown>): Promise<void> {
  const [h1, h2] = [fabric.hosts[0]!, fabric.hosts[1]!];
  let rr: Reflector | undefined;
  try {
    rr = await createReflector(kind, fabric.reflectorOptions());
    await rr.start();

    // 1. Host 1 with a wrong password, host 2 with none: never past Active/Connect, on either side.
    await fabric.setPassword(h1, WRONG_PASSWORD);
    await fabric.setPassword(h2, "");
    const before = await md5Counters(fabric.rr);
    const logFrom = h1.gobgpd.proc.output.length;
    await Promise.all([h1.gobgpd.start(["-r"]), h2.gobgpd.start(["-r"])]);
    const seen: Record<string, Set<string>> = { h1: new Set(), h2: new Set() };
    let rrEstablished = false, samples = 0;
    const t0 = performance.now();
    while (performance.now() - t0 < WRONG_MS) {
      const [s1, s2, e1, e2] = await Promise.all([hostState(h1), hostState(h2), rr.sessionEstablished(h1.address), rr.sessionEstablished(h2.address)]);
      seen.h1!.add(s1);
      seen.h2!.add(s2);
      rrEstablished ||= e1 || e2;
      samples++;
      await new Promise((res) => setTimeout(res, 250));
    }
    const after = await md5Counters(fabric.rr);
    const dropped = Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - before[k]!]));
    r.wrong = { watchedMs: Math.round(performance.now() - t0), samples, host1States: [...seen.h1!], host2States: [...seen.h2!], reflectorDropped: dropped,
      host1Log: gobgpdMessages(h1.gobgpd.proc.output.slice(logFrom)), reflectorLog: (await rr.log()).slice(-1500) };
    expect(samples, "samples while watching").toBeGreaterThan(20);
    for (const [h, states] of Object.entries(seen)) {
      expect([...states].filter((s) => !NOT_CONNECTED.has(s)), `${kind}: ${h}'s states beyond Active/Connect`).toEqual([]);
      expect(states.size, `${kind}: ${h} has the reflector as neighbor`).toBeGreaterThan(0);
    }
    expect(rrEstablished, `${kind}: the reflector established a session`).toBe(false);
    expect((await rr.routes()).size, `${kind}: routes at the reflector`).toBe(0);
    // The reflector's kernel dropped them: signed with another key (host 1), not signed at all (host 2).
    expect(dropped.failure, `${kind}: TcpExtTCPMD5Failure at the reflector`).toBeGreaterThan(0);
    expect(dropped.notFound, `${kind}: TcpExtTCPMD5NotFound at the reflector`).toBeGreaterThan(0);

    // 2. The right password on both: Established, and host 1's paths reach the reflector and host 2.
    await Promise.all([h1.gobgpd.stop(), h2.gobgpd.stop()]);
    await fabric.setPassword(h1, LAB_BGP_PASSWORD);
    await fabric.setPassword(h2, LAB_BGP_PASSWORD);
    const t1 = performance.now();
    await Promise.all([h1.gobgpd.start(["-r"]), h2.gobgpd.start(["-r"])]);
    await h1.gobgpd.client().addPathStream(IPS.map((ip) => toApiPath({ prefix: `${ip}/32`, nextHop: h1.address, communities: COMMUNITIES, localPref: 200 }, false)));
    const establishedMs: Record<string, number> = {};
    await Promise.all([h1, h2].map(async (h, i) => {
      await waitFor(async () => (await hostState(h)) === "established" && (await rr!.sessionEstablished(h.address)), 30_000, `${kind}: host ${i + 1} established`, 100);
      establishedMs[`h${i + 1}`] = Math.round(performance.now() - t1);
    }));
    await waitFor(async () => {
      const routes = await rr!.routes();
      return PREFIXES.every((p) => (routes.get(p) ?? []).some((x) => x.nextHop === h1.address && x.peer === h1.address));
    }, 30_000, `${kind}: host 1's paths at the reflector`, 100);
    const atReflectorMs = Math.round(performance.now() - t1);
    await waitFor(async () => {
      const have = new Map((await h2.gobgpd.client().listBestPaths()).map((p) => [p.prefix, p]));
      return PREFIXES.every((p) => have.get(p)?.nextHop === h1.address);
    }, 30_000, `${kind}: host 1's paths at host 2`, 100);
    r.right = { establishedMs, atReflectorMs, atHost2Ms: Math.round(performance.now() - t1) };
  } catch (e) {
    r.error = (e as Error).message;
    r.reflectorLog = rr ? (await rr.log()).slice(-3000) : "";
    r.host1Log = h1.gobgpd.proc.output.slice(-2000);
    throw e;
  } finally {
    await Promise.all([h1.gobgpd.stop(), h2.gobgpd.stop()]);
    await rr?.destroy();
  }
}

describe("TCP MD5 between the hosts' gobgpd and the reflectors", () => {
  // In sequence: they share the fabric's reflector namespace.
  for (const kind of REFLECTOR_KINDS) {
    it(`${kind}: a wrong password or none never gets past Active/Connect in ${WRONG_MS / 1000} s; the right one converges`, async () => {
      const started = performance.now();
      const r: Record<string, unknown> = (results[kind] = {});
      try {
        await scenario(kind, r);
      } finally {
        r.totalMs = Math.round(performance.now() - started);
      }
    }, 90_000);
  }
});
