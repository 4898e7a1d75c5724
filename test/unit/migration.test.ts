import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { applyHook, markHandedOver, vmEndpoints, type DomainRecord } from "../../src/libvirt/domains.js";
import { afterHook, announcement, handedOver, incoming, settled, wentLive, type Migration } from "../../src/libvirt/migration.js";
import { resolveNetworks, EndpointClaims } from "../../src/model/resolve.js";

// The live-migration state machine (libvirt/migration.ts): its transitions,
// what a host announces in each phase, and, over every order of hook calls,
// guest announcements, timers and route imports on a source and a destination,
// that never do two hosts announce normal paths for one IP.

if (process.env.FC_SEED) fc.configureGlobal({ seed: Number(process.env.FC_SEED) });

const SETTLE = 30_000;
const networks = (() => {
  const r = resolveNetworks({ service: { gateway: "172.31.16.1/24" } }, {});
  if (!r.ok) throw new Error(r.error);
  return r.value;
})();
const IFACE = { network: "service", ip: "172.31.16.15", mac: "52:54:00:12:34:56", tap: "tap-0000000015" };

describe("migration phases", () => {
  it("destination: target at migrate begin, kept through prepare/start/started, settling when live, normal after settling", () => {
    let m: Migration | undefined = afterHook(undefined, "migrate", "begin", 1000);
    expect(m).toEqual(incoming(1000));
    for (const [op, sub] of [["prepare", "begin"], ["start", "begin"], ["started", "begin"]]) m = afterHook(m, op!, sub!, 2000);
    expect(m).toEqual({ phase: "target", since: 1000 });
    expect(announcement("running", m)).toBe("none");
    m = wentLive(m, "rarp", 5000);
    expect(m).toEqual({ phase: "settling", since: 5000, liveBy: "rarp" });
    expect(wentLive(m, "resume", 5100)).toBe(m); // only the first counts
    expect(announcement("running", m)).toBe("elevated");
    expect(settled(m, 5000 + SETTLE - 1, SETTLE, false)).toBe(false);
    expect(settled(m, 5000 + SETTLE, SETTLE, true)).toBe(false); // the source still announces
    expect(settled(m, 5000 + SETTLE, SETTLE, false)).toBe(true);
  });

  it("a cancelled or failed incoming migration (stopped before live) leaves nothing", () => {
    const m = afterHook(incoming(1), "stopped", "end", 2);
    expect(m).toBeUndefined();
    expect(wentLive(undefined, "garp", 3)).toBeUndefined();
  });

  it("source: handed over when another host announces its running VM elevated; withdrawn; sticky until it stops or starts", () => {
    const m = handedOver(undefined, "running", true, 10);
    expect(m).toEqual({ phase: "source", since: 10 });
    expect(announcement("running", m)).toBe("none");
    expect(handedOver(m, "running", false, 20)).toBe(m); // the destination went back to normal: still handed over
    expect(handedOver(undefined, "defined", true, 10)).toBeUndefined();
    expect(afterHook(m, "stopped", "end", 30)).toBeUndefined();
    expect(afterHook(m, "started", "begin", 30)).toBeUndefined(); // the domain starts here again, afresh
    expect(afterHook(m, "reconnect", "begin", 30)).toBe(m);
  });

  it("VM endpoints: a target has only its tap, a settling one is elevated, a handed-over one is marked", () => {
    const rec = (migration?: Migration): DomainRecord => ({ name: "g", lifecycle: "running", interfaces: [IFACE], seq: 1, ...(migration ? { migration } : {}) });
    const [target] = vmEndpoints([rec(incoming(1))], networks, new EndpointClaims(networks)).endpoints;
    expect(target).toMatchObject({ migration: "target", deviceOnly: expect.stringMatching(/incoming migration/) });
    const [settling] = vmEndpoints([rec({ phase: "settling", since: 2 })], networks, new EndpointClaims(networks)).endpoints;
    expect(settling).toMatchObject({ migration: "settling", elevated: true });
    expect(settling!.deviceOnly).toBeUndefined();
    const marked = markHandedOver(new Map([["g", rec()]]), new Set(["172.31.16.15/32"]), 5);
    expect(marked.get("g")!.migration).toEqual({ phase: "source", since: 5 });
    expect(markHandedOver(marked, new Set(), 6)).toBe(marked);
  });

  it("hooks drive the record: migrate begin makes a target, release forgets the migration", () => {
    let domains: ReadonlyMap<string, DomainRecord> = new Map();
    domains = applyHook(domains, { domain: "g", op: "migrate", subop: "begin", interfaces: [IFACE] }, 1, 100);
    expect(domains.get("g")).toMatchObject({ lifecycle: "prepared", migration: { phase: "target", since: 100 } });
    domains = applyHook(domains, { domain: "g", op: "started", subop: "begin", interfaces: [IFACE] }, 2, 200);
    expect(domains.get("g")).toMatchObject({ lifecycle: "running", migration: { phase: "target" } });
    domains = applyHook(domains, { domain: "g", op: "release", subop: "end", interfaces: [IFACE] }, 3, 300);
    expect(domains.get("g")!.migration).toBeUndefined();
  });
});

describe("two hosts, any order of events", () => {
  // A domain running on the source migrates to the destination. libvirt's own
  // order is kept within each host (the destination's hooks come as migrate,
  // prepare, start, started; a stop is stopped then release); everything else
  // interleaves freely: the guest's announcement, libvirt's resume event,
  // settle timers, route imports, cancellation, the source stopping.
  interface Host { lifecycle: string; migration?: Migration }
  type Event =
    | { kind: "dst next hook" }
    | { kind: "dst stops" }
    | { kind: "dst live"; by: "garp" | "rarp" | "resume" }
    | { kind: "settle check"; after: number }
    | { kind: "src stops" }
    | { kind: "src imports" };
  const DST_HOOKS = [["migrate", "begin", "prepared"], ["prepare", "begin", "prepared"], ["start", "begin", "prepared"], ["started", "begin", "running"]] as const;
  const event: fc.Arbitrary<Event> = fc.oneof(
    fc.constant({ kind: "dst next hook" as const }),
    fc.constant({ kind: "dst stops" as const }),
    fc.constantFrom("garp", "rarp", "resume").map((by) => ({ kind: "dst live" as const, by })),
    fc.integer({ min: 0, max: 2 * SETTLE }).map((after) => ({ kind: "settle check" as const, after })),
    fc.constant({ kind: "src stops" as const }),
    fc.constant({ kind: "src imports" as const }),
  );
  const stop = (h: Host, clock: number) => {
    h.migration = afterHook(afterHook(h.migration, "stopped", "end", clock), "release", "end", clock);
    h.lifecycle = "defined";
  };

  it("never do both announce a normal path for the VM's IP", () => {
    fc.assert(fc.property(fc.array(event, { maxLength: 40 }), (events) => {
      const src: Host = { lifecycle: "running" };
      const dst: Host = { lifecycle: "defined" };
      let clock = 0, step = 0;
      for (const e of events) {
        clock += 1;
        switch (e.kind) {
          case "dst next hook": {
            const hook = DST_HOOKS[step];
            if (!hook || dst.lifecycle === "stopped") break;
            step++;
            dst.migration = afterHook(dst.migration, hook[0], hook[1], clock);
            dst.lifecycle = hook[2];
            break;
          }
          case "dst stops":
            if (step > 0) stop(dst, clock);
            step = DST_HOOKS.length; // a stopped migration does not start again
            break;
          case "dst live":
            dst.migration = wentLive(dst.migration, e.by, clock);
            break;
          case "settle check": {
            clock += e.after;
            const srcAnnounces = announcement(src.lifecycle, src.migration) !== "none";
            if (settled(dst.migration, clock, SETTLE, srcAnnounces)) dst.migration = undefined;
            break;
          }
          case "src stops":
            stop(src, clock);
            break;
          case "src imports":
            // The source's importer sees the destination's path as best when it is elevated.
            src.migration = handedOver(src.migration, src.lifecycle, announcement(dst.lifecycle, dst.migration) === "elevated", clock);
            break;
        }
        const both = announcement(src.lifecycle, src.migration) === "normal" && announcement(dst.lifecycle, dst.migration) === "normal";
        expect(both, JSON.stringify({ events, src, dst })).toBe(false);
      }
    }), { numRuns: 3000 });
  });
});
