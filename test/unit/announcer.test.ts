import fc from "fast-check";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { Announcer } from "../../src/bgp/announcer.js";
import { assertDeletePathHasPath, type ApiPath, type GobgpTransport } from "../../src/bgp/gobgp.js";
import { diffAnnouncements, encodeCommunity, path6For, pathFor, pathsFor, type BgpPath } from "../../src/bgp/paths.js";

// The announcer against a scripted stand-in for gobgpd's API (pure logic only:
// the real gobgpd is in test/integration/bgp.test.ts).

const policy = { nextHop: "10.1.1.3", communities: ["64512:100"], localPref: 100, migrationCommunity: "64512:666" };
const log = pino({ level: "silent" });

interface Call { rpc: "AddPathStream" | "DeletePath"; paths: ApiPath[] }

class FakeGobgp {
  calls: Call[] = [];
  rib = new Set<string>();
  endWatch: ((why: string) => void) | undefined;
  failNext = false;
  /** Every AddPathStream fails while set. */
  failing = false;
  /** AddPathStream waits for this (a hung gobgpd). */
  gate: Promise<void> | undefined;
  transport(): GobgpTransport {
    return {
      getBgp: async () => ({ asn: 64512, routerId: "10.1.1.3" }),
      listPeers: async () => [],
      addPathStream: async (paths) => {
        this.calls.push({ rpc: "AddPathStream", paths });
        if (this.gate) {
          const gate = this.gate;
          this.gate = undefined;
          await gate;
        }
        if (this.failing) throw new Error("UNAVAILABLE");
        if (this.failNext) {
          this.failNext = false;
          throw new Error("UNAVAILABLE");
        }
        for (const p of paths) {
          const prefix = decodePrefix(p);
          if (p.isWithdraw) this.rib.delete(prefix);
          else this.rib.add(prefix);
        }
      },
      deletePath: async (path) => {
        this.calls.push({ rpc: "DeletePath", paths: path ? [path] : [] });
      },
      watch: () => ({ ended: new Promise<string>((r) => (this.endWatch = r)), cancel: () => this.endWatch?.("cancelled") }),
      close: () => undefined,
    };
  }
  /** gobgpd restarts: every API path is gone and the event stream ends. */
  restart(): void {
    this.rib.clear();
    this.endWatch?.("UNAVAILABLE");
  }
}

function decodePrefix(p: ApiPath): string {
  // IPAddressPrefix: field 1 varint prefix_len, field 2 string prefix.
  const buf = p.nlri.value;
  const len = buf[1]!;
  const strLen = buf[3]!;
  return `${buf.subarray(4, 4 + strLen).toString()}/${len}`;
}

const settle = () => new Promise((r) => setTimeout(r, 5));
const ips = (list: string[]) => list.map((ip) => ({ ip }));
async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 400 && !check(); i++) await settle();
  expect(check()).toBe(true);
}

function makeAnnouncer(fake: FakeGobgp, record: BgpPath[] = []) {
  let persisted: BgpPath[] = record;
  const a = new Announcer({
    address: "127.0.0.1:50051", connect: () => fake.transport(), policy, record, log, retryMs: 1,
    persist: async (paths) => void (persisted = paths),
  });
  return { a, persisted: () => persisted };
}

describe("announcement diff", () => {
  it("announces new and changed paths and withdraws the rest", () => {
    const rec = new Map([["10.0.0.1/32", pathFor({ ip: "10.0.0.1" }, policy)], ["10.0.0.2/32", pathFor({ ip: "10.0.0.2" }, policy)]]);
    const want = new Map([["10.0.0.2/32", pathFor({ ip: "10.0.0.2" }, { ...policy, localPref: 200 })], ["10.0.0.3/32", pathFor({ ip: "10.0.0.3" }, policy)]]);
    const d = diffAnnouncements(want, rec);
    expect(d.announce.map((p) => p.prefix).sort()).toEqual(["10.0.0.2/32", "10.0.0.3/32"]);
    expect(d.withdraw.map((p) => p.prefix)).toEqual(["10.0.0.1/32"]);
    expect(diffAnnouncements(want, want)).toEqual({ announce: [], withdraw: [] });
  });

  it("encodes communities as ASN<<16 | value", () => {
    expect(encodeCommunity("64512:100")).toBe(64512 * 65536 + 100);
    expect(pathFor({ ip: "10.0.0.1" }, policy)).toEqual({ prefix: "10.0.0.1/32", nextHop: "10.1.1.3", communities: [4227858532], localPref: 100 });
  });
});

describe("announcer", () => {
  it("refuses to send a DeletePath without a path", () => {
    expect(() => assertDeletePathHasPath(undefined)).toThrow(/refusing DeletePath without a path/);
    expect(() => assertDeletePathHasPath({ nlri: { type_url: "", value: Buffer.alloc(0) } } as ApiPath)).toThrow(/refusing/);
  });

  it("never sends a DeletePath without a path, through any sequence of changes and gobgpd restarts", async () => {
    await fc.assert(fc.asyncProperty(
      fc.array(fc.oneof(
        fc.record({ kind: fc.constant("set" as const), ips: fc.uniqueArray(fc.integer({ min: 1, max: 20 }), { maxLength: 10 }) }),
        fc.record({ kind: fc.constant("restart" as const) }),
        fc.record({ kind: fc.constant("fail" as const) }),
      ), { maxLength: 12 }),
      async (steps) => {
        const fake = new FakeGobgp();
        const { a } = makeAnnouncer(fake);
        a.start();
        let last: number[] = [];
        for (const step of steps) {
          if (step.kind === "set") a.setDesired(ips((last = step.ips).map((i) => `10.0.0.${i}`)));
          else if (step.kind === "restart") fake.restart();
          else fake.failNext = true;
          await settle();
        }
        a.setDesired(ips(last.map((i) => `10.0.0.${i}`)));
        await until(() => a.converged);
        a.stop();
        for (const call of fake.calls) {
          expect(call.rpc).not.toBe("DeletePath");
          for (const p of call.paths) expect(p.nlri.value.length).toBeGreaterThan(0);
        }
        // And gobgpd ends with exactly the desired set.
        expect([...fake.rib].sort()).toEqual(last.map((i) => `10.0.0.${i}/32`).sort());
      },
    ), { numRuns: 60 });
  });

  it("re-announces everything when gobgpd restarts", async () => {
    const fake = new FakeGobgp();
    const { a } = makeAnnouncer(fake);
    a.setDesired(ips(["10.0.0.1", "10.0.0.2"]));
    a.start();
    await until(() => fake.rib.size === 2);
    fake.restart();
    expect(fake.rib.size).toBe(0);
    await until(() => fake.rib.size === 2);
    expect(a.reconnects).toBe(1);
    a.stop();
  });

  it("does not withdraw its record before it knows what is desired (a vmrouted restart)", async () => {
    const fake = new FakeGobgp();
    const record = [pathFor({ ip: "10.0.0.1" }, policy), pathFor({ ip: "10.0.0.2" }, policy)];
    const { a } = makeAnnouncer(fake, record);
    a.start();
    await until(() => a.state === "up");
    await settle();
    expect(fake.calls).toEqual([]); // connected, but nothing desired known yet: nothing sent
    a.setDesired(ips(["10.0.0.1"]));
    await until(() => a.converged);
    const sent = fake.calls.flatMap((c) => c.paths.map((p) => `${p.isWithdraw ? "-" : "+"}${decodePrefix(p)}`));
    expect(sent.sort()).toEqual(["+10.0.0.1/32", "-10.0.0.2/32"]);
    a.stop();
  });

  it("keeps a path in its record until its withdrawal succeeded", async () => {
    const fake = new FakeGobgp();
    const { a, persisted } = makeAnnouncer(fake);
    a.start();
    a.setDesired(ips(["10.0.0.1"]));
    await until(() => fake.rib.size === 1);
    fake.failing = true;
    a.setDesired([]);
    await until(() => fake.calls.length >= 3); // withdrawals tried, and failed, more than once
    expect(persisted().map((p) => p.prefix)).toEqual(["10.0.0.1/32"]);
    fake.failing = false;
    await until(() => a.converged && fake.rib.size === 0);
    await until(() => persisted().length === 0);
    a.stop();
  });

  it("never makes its caller wait for a hung gobgpd, and sends only the newest set once it answers", async () => {
    const fake = new FakeGobgp();
    const { a } = makeAnnouncer(fake);
    a.start();
    a.setDesired(ips(["10.0.0.1"]));
    await until(() => a.converged);
    let release!: () => void;
    fake.gate = new Promise<void>((r) => (release = r));
    a.setDesired(ips(["10.0.0.2"]));
    await until(() => fake.calls.length === 2); // the call that hangs
    const t = performance.now();
    for (let i = 3; i <= 50; i++) a.setDesired(ips([`10.0.0.${i}`])); // returns at once, every time
    expect(performance.now() - t).toBeLessThan(50);
    release();
    await until(() => a.converged);
    expect([...fake.rib]).toEqual(["10.0.0.50/32"]);
    expect(fake.calls.length).toBe(3); // the hung one, then one with the newest set
    a.stop();
  });
});

describe("IPv6: an endpoint's /128 beside its /32 (issue #25)", () => {
  const policy6 = { ...policy, nextHop6: "fd99:0:0:0::3" };

  it("a /128 with next hop node.address6 (canonical) and the /32's communities and local-pref; elevated the same way", () => {
    expect(pathsFor({ ip: "10.0.0.1", ip6: "FD31:16::0:5" }, policy6)).toEqual([
      { prefix: "10.0.0.1/32", nextHop: "10.1.1.3", communities: [4227858532], localPref: 100 },
      { prefix: "fd31:16::5/128", nextHop: "fd99::3", communities: [4227858532], localPref: 100 },
    ]);
    const [v4, v6] = pathsFor({ ip: "10.0.0.1", ip6: "fd31:16::5", elevated: true }, policy6);
    expect(v6).toEqual({ ...v4, prefix: "fd31:16::5/128", nextHop: "fd99::3" });
    expect(v6!.localPref).toBe(200);
    expect(v6!.communities).toEqual([encodeCommunity("64512:100"), encodeCommunity("64512:666")]);
    // No local-pref configured: none on either path (elevated: 100 + 100 on both).
    const { localPref: _, ...bare } = policy6;
    expect(pathsFor({ ip: "10.0.0.1", ip6: "fd31:16::5" }, bare).map((p) => p.localPref)).toEqual([undefined, undefined]);
  });

  it("no /128 without an ip6, without node.address6, or with an address6 no host can route to (never an IPv4-mapped next hop)", () => {
    expect(pathsFor({ ip: "10.0.0.1" }, policy6)).toHaveLength(1);
    expect(pathsFor({ ip: "10.0.0.1", ip6: "fd31:16::5" }, policy)).toHaveLength(1);
    for (const nextHop6 of ["::ffff:10.1.1.3", "fe80::1", "::1", "::", "10.1.1.3", "ff02::1"])
      expect(path6For({ ip: "10.0.0.1", ip6: "fd31:16::5" }, { ...policy, nextHop6 }), nextHop6).toBeUndefined();
  });

  it("announces both families in one AddPathStream; without node.address6 only the /32s, said in status and logged once", async () => {
    const fake = new FakeGobgp();
    const warnings: string[] = [];
    const logged = pino({ level: "warn" }, { write: (line: string) => void warnings.push(JSON.parse(line).msg) });
    const a6 = new Announcer({ address: "x", connect: () => fake.transport(), policy: policy6, record: [], log, retryMs: 1, persist: async () => undefined });
    a6.setDesired([{ ip: "10.0.0.1", ip6: "fd31:16::5" }, { ip: "10.0.0.2" }]);
    a6.start();
    await until(() => a6.converged);
    const families = fake.calls.flatMap((c) => c.paths.map((p) => `${p.family.afi}/${p.family.safi}`)).sort();
    expect(families).toEqual(["1/1", "1/1", "2/1"]);
    expect(a6.isAnnounced("fd31:16::5") && a6.isAnnounced("10.0.0.1")).toBe(true);
    expect(a6.withheld6).toBe(0);
    expect((await a6.status()).reason).toBeUndefined();
    a6.stop();

    const fake4 = new FakeGobgp();
    const a4 = new Announcer({ address: "x", connect: () => fake4.transport(), policy, record: [], log: logged, retryMs: 1, persist: async () => undefined });
    a4.setDesired([{ ip: "10.0.0.1", ip6: "fd31:16::5" }, { ip: "10.0.0.2", ip6: "fd31:16::6" }]);
    a4.setDesired([{ ip: "10.0.0.1", ip6: "fd31:16::5" }, { ip: "10.0.0.2", ip6: "fd31:16::6" }]);
    a4.start();
    await until(() => a4.converged);
    expect([...fake4.rib].sort()).toEqual(["10.0.0.1/32", "10.0.0.2/32"]);
    expect(a4.isAnnounced("fd31:16::5")).toBe(false);
    expect(a4.withheld6).toBe(2);
    expect((await a4.status()).reason).toMatch(/2 endpoint IPv6 address\(es\) not announced: node.address6 .* is not set/);
    expect(warnings.filter((w) => /IPv6 \/128s not announced/.test(w))).toHaveLength(1);
    a4.stop();
  });
});
