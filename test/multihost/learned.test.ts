import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MultiHostLab, lossesDuring, pings } from "../helpers/multihost.js";
import { REFLECTOR_KINDS, type ReflectorKind } from "../helpers/reflectors.js";
import { Netns, rootSnapshot, runId, waitFor } from "../helpers/lab.js";

// Three dual-stack hosts, each with its own vmrouted and gobgpd, and a route
// reflector of each make (BIRD 2, FRR, gobgpd): every host learns the others'
// workload /32s and /128s into its kernel, so workloads on different hosts
// reach each other over both families; a gobgpd restart on one host costs no
// packet of either family where the reflector keeps the host's paths
// (graceful restart). A reflector without IPv6 still gets a restarted host's
// IPv4 updates at once (gobgpd's deferral-time, templates/gobgpd.toml).

/** Whether the reflector keeps a host's paths when its gobgpd is stopped with SIGTERM (a Cease), as found (reflectors.test.ts). */
const KEEPS_PATHS_ON_SIGTERM: Record<ReflectorKind, boolean> = { bird: false, frr: true, gobgp: true };

let rootBefore = "";
beforeAll(async () => {
  rootBefore = await rootSnapshot();
});
afterAll(async () => {
  expect(await rootSnapshot()).toBe(rootBefore);
});

async function scenario(kind: ReflectorKind, net: number): Promise<void> {
  const lab = await MultiHostLab.start(runId(), kind, { net, dualStack: true });
  try {
    const [a, b, c] = [lab.host(1), lab.host(2), lab.host(3)];
    // Learned exactly, everywhere, per family (each via the other host's address of that family).
    await waitFor(() => lab.learnedExactly(), 30000, `${kind}: every host's learned routes to equal the other hosts' endpoints, per family`);
    for (const h of lab.hosts) {
      const routes = JSON.parse((await h.daemon.ctl(["-o", "json", "routes"])).stdout) as Array<{ prefix: string; nextHop: string; state: string }>;
      expect(routes.map((r) => r.state), `${kind}: host ${h.n} routes`).toEqual(Array(8).fill("installed"));
      // Never an IPv4-mapped next hop: a /128 goes via the other host's IPv6 address.
      expect(routes.filter((r) => r.prefix.endsWith("/128")).every((r) => r.nextHop.startsWith("fd") && !r.nextHop.includes(".")), `${kind}: /128 next hops`).toBe(true);
      expect((await h.daemon.status()).bgp.learned).toBe(8);
    }
    // The reflector holds each /128 with its host's IPv6 next hop.
    const reflected = await lab.rr.routes("ipv6");
    const want6 = lab.hosts.flatMap((h) => h.tasks.map((t) => [`${t.ip6}/128`, h.address6] as const)).sort();
    expect([...reflected].map(([prefix, paths]) => [prefix, paths.map((p) => p.nextHop).join(",")]).sort(), `${kind}: the reflector's /128s`).toEqual(want6);
    // Every workload pings every workload on the other hosts, over both families.
    const pairs = lab.hosts.flatMap((h) => h.tasks.flatMap((t) => lab.hosts.filter((o) => o !== h).flatMap((o) => o.tasks.map((u) => [t, u] as const))));
    const tries = pairs.flatMap(([t, u]) => [[t, u.ip], [t, u.ip6!]] as const);
    const answered = await Promise.all(tries.map(([t, ip]) => pings(t.ns, ip)));
    expect(tries.filter((_, i) => !answered[i]).map(([t, ip]) => `${t.ip}→${ip}`), `${kind}: unanswered pings`).toEqual([]);

    // An endpoint removed on B leaves A and C, in both families.
    const gone = b.tasks[1]!;
    expect((await b.daemon.ctl(["netns", "remove", gone.ns.name])).exitCode).toBe(0);
    await waitFor(async () => {
      const [a4, c4, a6, c6] = await Promise.all([lab.learned(a), lab.learned(c), lab.learned(a, "ipv6"), lab.learned(c, "ipv6")]);
      return !a4.has(`${gone.ip}/32`) && !c4.has(`${gone.ip}/32`) && !a6.has(`${gone.ip6}/128`) && !c6.has(`${gone.ip6}/128`);
    }, 15000, `${kind}: ${gone.ip} and ${gone.ip6} to leave A and C`);
    expect(await lab.learnedExactly()).toBe(true);

    // gobgpd on B killed and restarted (what a crash and systemd's Restart= do): not a packet of either family lost from A to B.
    const target = b.tasks[0]!;
    const withdrawsBefore = await lab.rr.withdrawCount(b.address);
    const [kill, kill6] = await lossesDuring(a.tasks[0]!.ns, [target.ip, target.ip6!], async () => {
      await b.gobgpd.stop("SIGKILL");
      await b.gobgpd.start(["-r"]);
      await waitFor(() => lab.rr.sessionEstablished(b.address), 30000, `${kind}: B's session back`);
    });
    expect(kill!.sent).toBeGreaterThan(100);
    expect(kill6!.sent).toBeGreaterThan(100);
    expect(kill!.lost, `${kind}: IPv4 replies lost across B's gobgpd SIGKILL + restart`).toBe(0);
    expect(kill6!.lost, `${kind}: IPv6 replies lost across B's gobgpd SIGKILL + restart`).toBe(0);
    expect(await lab.rr.withdrawCount(b.address), `${kind}: the reflector's withdraw count for B`).toBe(withdrawsBefore);
    await waitFor(() => lab.learnedExactly(), 20000, `${kind}: learned routes exact after B's gobgpd restart`);

    // Stopped with SIGTERM (systemctl restart gobgpd): gobgpd sends a Cease; only RFC 8538 reflectors keep the paths.
    const [term, term6] = await lossesDuring(a.tasks[0]!.ns, [target.ip, target.ip6!], async () => {
      await b.gobgpd.stop("SIGTERM");
      await b.gobgpd.start(["-r"]);
      await waitFor(() => lab.rr.sessionEstablished(b.address), 30000, `${kind}: B's session back`);
      await waitFor(() => lab.learnedExactly(), 30000, `${kind}: learned routes exact after B's gobgpd stop and start`);
    });
    for (const [family, t] of [["IPv4", term!], ["IPv6", term6!]] as const)
      if (KEEPS_PATHS_ON_SIGTERM[kind]) expect(t.lost, `${kind}: ${family} replies lost across B's gobgpd SIGTERM + start`).toBe(0);
      else expect(t.lost, `${kind} withdraws on a Cease: A loses B (${family}) until B announces again`).toBeGreaterThan(0);
    console.log(`${kind}: gobgpd SIGKILL+restart lost ${kill!.lost}/${kill!.sent} (IPv4), ${kill6!.lost}/${kill6!.sent} (IPv6); ` +
      `SIGTERM+start lost ${term!.lost}/${term!.sent}, ${term6!.lost}/${term6!.sent}`);
  } finally {
    await lab.destroy();
  }
}

describe("learned routes between hosts, through each reflector", () => {
  REFLECTOR_KINDS.forEach((kind, i) => {
    it.concurrent(`${kind}: learned exactly, every workload reaches every other host's, removal propagates, gobgpd restarts cost nothing${KEEPS_PATHS_ON_SIGTERM[kind] ? "" : " (but a SIGTERM)"}`,
      () => scenario(kind, 91 + i), 240_000);
  });
});

describe("a reflector configured without IPv6 (BIRD, before dual stack)", () => {
  it("holds no IPv4 update back: a restarted host's new /32 reaches it within 5 s of the session, while the /128s simply do not flow", async () => {
    const lab = await MultiHostLab.start(runId(), "bird", { net: 90, dualStack: true, reflectorWithoutIpv6: true, tasksPerHost: 1 });
    try {
      const [a, b] = [lab.host(1), lab.host(2)];
      await waitFor(async () => (await lab.learned(a)).size === 2, 30000, "A learns the /32s");
      expect((await lab.learned(a, "ipv6")).size).toBe(0);
      // gobgpd on B crashes and comes back with -r; meanwhile B gets a new workload.
      await b.gobgpd.stop("SIGKILL");
      await b.gobgpd.start(["-r"]);
      const ns = await Netns.create(`${b.ns.name}t9`);
      try {
        const r = await b.daemon.ctl(["netns", "add", ns.name, "--network", "service", "--ip", "172.31.16.29", "--ip6", "fd31:16::29"]);
        expect(r.exitCode, r.stderr).toBe(0);
        await waitFor(() => lab.rr.sessionEstablished(b.address), 30000, "B's session back");
        const up = performance.now();
        await waitFor(async () => (await lab.rr.routes()).has("172.31.16.29/32"), 30000, "the reflector has B's new /32", 50);
        const ms = performance.now() - up;
        console.log(`reflector without IPv6: B's new /32 arrived ${Math.round(ms)} ms after B's session came back`);
        expect(ms).toBeLessThan(5000);
        await waitFor(async () => (await lab.learned(a)).has("172.31.16.29/32"), 10000, "A learns it");
        expect(await pings(a.tasks[0]!.ns, "172.31.16.29")).toBe(true);
      } finally {
        await ns.destroy();
      }
    } finally {
      await lab.destroy();
    }
  }, 240_000);
});
