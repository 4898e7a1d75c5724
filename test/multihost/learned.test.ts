import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MultiHostLab, lossDuring, pings } from "../helpers/multihost.js";
import { REFLECTOR_KINDS, type ReflectorKind } from "../helpers/reflectors.js";
import { rootSnapshot, runId, waitFor } from "../helpers/lab.js";

// Three hosts, each with its own vmrouted and gobgpd, and a route reflector of
// each make (BIRD 2, FRR, gobgpd): every host learns the others' workload
// routes into its kernel, so workloads on different hosts reach each other;
// a gobgpd restart on one host costs no packet where the reflector keeps the
// host's paths (graceful restart).

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
  const lab = await MultiHostLab.start(runId(), kind, { net });
  try {
    const [a, b, c] = [lab.host(1), lab.host(2), lab.host(3)];
    // Learned exactly, everywhere.
    await waitFor(() => lab.learnedExactly(), 30000, `${kind}: every host's learned routes to equal the other hosts' endpoints`);
    for (const h of lab.hosts) {
      const routes = JSON.parse((await h.daemon.ctl(["-o", "json", "routes"])).stdout) as Array<{ prefix: string; state: string }>;
      expect(routes.map((r) => r.state), `${kind}: host ${h.n} routes`).toEqual(Array(4).fill("installed"));
      expect((await h.daemon.status()).bgp.learned).toBe(4);
    }
    // Every workload pings every workload on the other hosts.
    const pairs = lab.hosts.flatMap((h) => h.tasks.flatMap((t) => lab.hosts.filter((o) => o !== h).flatMap((o) => o.tasks.map((u) => [t, u] as const))));
    const answered = await Promise.all(pairs.map(([t, u]) => pings(t.ns, u.ip)));
    expect(pairs.filter((_, i) => !answered[i]).map(([t, u]) => `${t.ip}→${u.ip}`), `${kind}: unanswered pings`).toEqual([]);

    // An endpoint removed on B leaves A and C.
    const gone = b.tasks[1]!;
    expect((await b.daemon.ctl(["netns", "remove", gone.ns.name])).exitCode).toBe(0);
    await waitFor(async () => !(await lab.learned(a)).has(`${gone.ip}/32`) && !(await lab.learned(c)).has(`${gone.ip}/32`), 15000, `${kind}: ${gone.ip} to leave A and C`);
    expect(await lab.learnedExactly()).toBe(true);

    // gobgpd on B killed and restarted (what a crash and systemd's Restart= do): not a packet lost from A to B.
    const target = b.tasks[0]!;
    const withdrawsBefore = await lab.rr.withdrawCount(b.address);
    const kill = await lossDuring(a.tasks[0]!.ns, target.ip, async () => {
      await b.gobgpd.stop("SIGKILL");
      await b.gobgpd.start(["-r"]);
      await waitFor(() => lab.rr.sessionEstablished(b.address), 30000, `${kind}: B's session back`);
    });
    expect(kill.sent).toBeGreaterThan(100);
    expect(kill.lost, `${kind}: replies lost across B's gobgpd SIGKILL + restart`).toBe(0);
    expect(await lab.rr.withdrawCount(b.address), `${kind}: the reflector's withdraw count for B`).toBe(withdrawsBefore);
    await waitFor(() => lab.learnedExactly(), 20000, `${kind}: learned routes exact after B's gobgpd restart`);

    // Stopped with SIGTERM (systemctl restart gobgpd): gobgpd sends a Cease; only RFC 8538 reflectors keep the paths.
    const term = await lossDuring(a.tasks[0]!.ns, target.ip, async () => {
      await b.gobgpd.stop("SIGTERM");
      await b.gobgpd.start(["-r"]);
      await waitFor(() => lab.rr.sessionEstablished(b.address), 30000, `${kind}: B's session back`);
      await waitFor(() => lab.learnedExactly(), 30000, `${kind}: learned routes exact after B's gobgpd stop and start`);
    });
    if (KEEPS_PATHS_ON_SIGTERM[kind]) expect(term.lost, `${kind}: replies lost across B's gobgpd SIGTERM + start`).toBe(0);
    else expect(term.lost, `${kind} withdraws on a Cease: A loses B until B announces again`).toBeGreaterThan(0);
    console.log(`${kind}: gobgpd SIGKILL+restart lost ${kill.lost}/${kill.sent}; SIGTERM+start lost ${term.lost}/${term.sent}`);
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
