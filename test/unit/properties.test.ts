import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { ObservedState } from "../../src/dataplane/observed.js";
import type { Operation } from "../../src/dataplane/operations.js";
import { adoptableDevices, createdDevices, highestIfindex, type CreationRecord } from "../../src/dataplane/creations.js";
import { desiredNat } from "../../src/dataplane/nat.js";
import { plan } from "../../src/dataplane/plan.js";
import { rebuildRuntimeState } from "../../src/daemon/rebuild.js";
import {
  addRoutedInterface, parseDomainXml, removeRoutedInterface, routedInterfaces, serializeDomainXml, type RoutedInterface,
} from "../../src/libvirt/domain-xml.js";
import { resolveDesired } from "../../src/model/resolve.js";
import type { EndpointInput, NetworkInput } from "../../src/model/spec.js";
import type { DesiredState } from "../../src/model/types.js";
import { applyToModel } from "../helpers/fake-kernel.js";
import { observedWithNetns, settings } from "../helpers/fixtures.js";
import { endpointIps, hostPrefix } from "../../src/model/ipv6.js";

// Properties over generated states (fast-check; a failure prints the seed and
// the shrunk counterexample). The planner is checked against the kernel model
// in helpers/fake-kernel.ts.

// FC_SEED=<seed from a failure> replays it.
if (process.env.FC_SEED) fc.configureGlobal({ seed: Number(process.env.FC_SEED) });

const CONFIG = { service: { gateway: "172.31.16.1/24" } };
const mtuArb = fc.option(fc.constantFrom(1400, 1500, 9000), { nil: undefined });
const NAMESPACES = ["task-1", "task-2", "task-3"];
const MAX_ROUNDS = 3; // as the reconciler

// ---- generators ----------------------------------------------------------

const macArb = fc.integer({ min: 1, max: 250 }).map((n) => `52:54:00:12:34:${n.toString(16).padStart(2, "0")}`);

/**
 * Desired runtime state: maybe a runtime network, taps (some named, some with a MAC), netns endpoints (one per namespace);
 * either network may have an MTU (the config network's is the config's: `serviceMtu`).
 */
const runtimeArb = fc.record({
  extra: fc.boolean(),
  nat: fc.boolean(),
  serviceMtu: mtuArb,
  extraMtu: mtuArb,
  // Dual stack: either network may have a prefix6, and then some of its endpoints an ip6.
  serviceV6: fc.boolean(),
  extraV6: fc.boolean(),
  taps: fc.uniqueArray(fc.record({
    host: fc.integer({ min: 10, max: 40 }), onExtra: fc.boolean(), named: fc.boolean(), mac: fc.option(macArb, { nil: undefined }), v6: fc.boolean(),
  }), { selector: (t) => `${t.onExtra}-${t.host}`, maxLength: 8 }),
  netns: fc.uniqueArray(fc.record({
    ns: fc.constantFrom(...NAMESPACES), host: fc.integer({ min: 41, max: 60 }), mac: fc.option(macArb, { nil: undefined }), v6: fc.boolean(),
  }), { selector: (n) => n.ns, maxLength: 3 }),
}).map(({ extra, nat, serviceMtu, extraMtu, serviceV6, extraV6, taps, netns }) => {
  const networks: Record<string, NetworkInput> = extra
    ? { extra: {
      gateway: "172.31.17.1/24", ...(nat ? { natOutgoing: true } : {}), ...(extraMtu !== undefined ? { mtu: extraMtu } : {}),
      ...(extraV6 ? { prefix6: "fd31:17::/64" } : {}),
    } } : {};
  const hasV6 = (network: string) => (network === "extra" ? extraV6 : serviceV6);
  const ip6 = (network: string, host: number, wanted: boolean) => (wanted && hasV6(network) ? { ip6: `fd31:${network === "extra" ? 17 : 16}::${host}` } : {});
  const endpoints: EndpointInput[] = [
    ...taps.map((t) => {
      const network = t.onExtra && extra ? "extra" : "service";
      const ip = `172.31.${network === "extra" ? 17 : 16}.${t.host}`;
      return {
        kind: "tap" as const, network, ip, ...ip6(network, t.host, t.v6), ...(t.mac ? { mac: t.mac } : {}),
        ...(t.named ? { name: `t${network[0]}${t.host}` } : {}),
      };
    }),
    ...netns.map((n) => ({
      kind: "netns" as const, network: "service", ip: `172.31.16.${n.host}`, ...ip6("service", n.host, n.v6), netns: n.ns, ...(n.mac ? { mac: n.mac } : {}),
    })),
  ];
  // One endpoint per IP (a named tap on "extra" falls back to "service" when there is no extra network).
  const seen = new Set<string>();
  return { networks, endpoints: endpoints.filter((e) => !seen.has(e.ip) && seen.add(e.ip)), serviceMtu, serviceV6 };
});

type Runtime = { networks: Record<string, NetworkInput>; endpoints: EndpointInput[]; serviceMtu?: number | undefined; serviceV6?: boolean };

/** The config's networks for a generated state. */
const configOf = (state: Runtime) => ({
  service: { ...CONFIG.service, ...(state.serviceMtu !== undefined ? { mtu: state.serviceMtu } : {}), ...(state.serviceV6 ? { prefix6: "fd31:16::/64" } : {}) },
});

function resolve(state: Runtime): DesiredState {
  const r = resolveDesired({ configNetworks: configOf(state), runtimeNetworks: state.networks, endpoints: state.endpoints });
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

/** Plans and applies until nothing is left to do, as the reconciler does (with its creation record, if one is given). */
function converge(d: DesiredState, o: ObservedState, record?: CreationRecord): ObservedState {
  const annotate = (x: ObservedState) => {
    const adoptable = adoptableDevices(record, x);
    const { adoptable: _, ...rest } = x;
    return adoptable.size ? { ...rest, adoptable } : rest;
  };
  let s = annotate(o);
  for (let i = 0; i <= MAX_ROUNDS; i++) {
    const ops = plan(d, s, settings).operations;
    if (ops.length === 0) return s;
    s = annotate(applyToModel(s, ops));
  }
  throw new Error("did not converge");
}

/** Changes by hand to a converged host, and objects vmrouted does not own. */
type Drift = (s: ObservedState, pick: number) => void;
const nth = <T>(list: T[], pick: number): T | undefined => (list.length ? list[pick % list.length] : undefined);
const owned = (s: ObservedState) => [...s.links.values()].filter((l) => l.alias?.startsWith("vmrouted:") && l.kind !== "bridge");
const DRIFTS: Record<string, Drift> = {
  "route deleted": (s, p) => { const r = nth(s.routes, p); if (r) s.routes.splice(s.routes.indexOf(r), 1); },
  "neighbour changed": (s, p) => { const n = nth(s.neighbours, p); if (n) n.mac = "02:99:99:99:99:99"; },
  "neighbour deleted": (s, p) => { const n = nth(s.neighbours, p); if (n) s.neighbours.splice(s.neighbours.indexOf(n), 1); },
  "link down": (s, p) => { const l = nth(owned(s), p); if (l) l.up = false; },
  "link deleted": (s, p) => { const l = nth(owned(s), p); if (l) applyToModelInPlace(s, [{ subject: "x", op: "link.delete", device: l.name }]); },
  "link in the teardown group": (s, p) => { const l = nth(owned(s), p); if (l) l.group = 95; },
  "mac changed": (s, p) => { const l = nth(owned(s), p); if (l) l.mac = "02:42:42:42:42:42"; },
  "mtu changed": (s, p) => { const l = nth(owned(s), p); if (l) l.mtu = 1280; },
  "inner mtu changed": (s) => { for (const ns of s.netns.values()) if (ns.inner) ns.inner.mtu = 1280; },
  "rp_filter reset": (s, p) => { const l = nth(owned(s), p); const e = l && s.sysctls.get(l.name); if (e) e.rpFilter = "0"; },
  "proxy_arp reset": (s, p) => { const l = nth(owned(s), p); const e = l && s.sysctls.get(l.name); if (e) e.proxyArp = "0"; },
  "stale route of ours": (s, p) => { const l = nth(owned(s), p); if (l) s.routes.push({ dst: `172.31.16.${200 + (p % 50)}/32`, device: l.name, protocol: 94, scope: 253, type: "unicast", metric: 0 }); },
  "stale neighbour of ours": (s, p) => { const l = nth(owned(s), p); if (l) s.neighbours.push({ device: l.name, ip: `172.31.16.${200 + (p % 50)}`, mac: "02:00:00:00:00:07", permanent: true }); },
  "ip_forward off": (s) => { s.ipForward = "0"; },
  "gateway address deleted": (s) => { s.addresses = s.addresses.filter((a) => !a.device.startsWith("virgw-")); },
  "address added to a gateway": (s) => { if (s.links.has("virgw-service")) s.addresses.push({ device: "virgw-service", ip: "10.1.2.3", prefixLength: 8, noprefixroute: false }); },
  "connected route back": (s) => { if (s.links.has("virgw-service")) s.routes.push({ dst: "172.31.16.0/24", device: "virgw-service", protocol: 2, scope: 253, type: "unicast", metric: 0 }); },
  "inner eth0 reset": (s) => { for (const ns of s.netns.values()) if (ns.inner) ns.inner.addresses = []; },
};
function applyToModelInPlace(s: ObservedState, ops: Operation[]): void {
  const next = applyToModel(s, ops);
  Object.assign(s, next);
}

/** Look-alikes: a tap named like ours without our alias, a foreign route to a workload IP, a foreign device in our group. */
function addForeign(s: ObservedState, which: number): string[] {
  const names: string[] = [];
  if (which & 1) { s.links.set("tap-0000000000", { name: "tap-0000000000", kind: "tun", tunType: "tap", vnetHdr: true, group: 0, up: true, carrier: false }); names.push("tap-0000000000"); }
  if (which & 2) s.routes.push({ dst: "172.31.16.33/32", device: "eth9", protocol: 4, scope: 253, type: "unicast", metric: 0 });
  if (which & 4) { s.links.set("vmlike0", { name: "vmlike0", kind: "tun", tunType: "tap", group: 94, up: true, carrier: false, alias: "someone:else" }); names.push("vmlike0"); }
  if (which & 8) s.neighbours.push({ device: "eth9", ip: "172.31.16.34", mac: "02:00:00:00:00:09", permanent: true });
  if (which & 16) { s.links.set("eth9", { name: "eth9", kind: "veth", group: 95, up: true, carrier: true }); names.push("eth9"); }
  return names;
}

const hostArb = fc.record({
  before: runtimeArb,
  drifts: fc.array(fc.tuple(fc.constantFrom(...Object.keys(DRIFTS)), fc.nat()), { maxLength: 5 }),
  foreign: fc.integer({ min: 0, max: 31 }),
  ipForward: fc.constantFrom("0", "1"),
}).map(({ before, drifts, foreign, ipForward }) => {
  const o = observedWithNetns(...NAMESPACES);
  o.ipForward = ipForward;
  const s = converge(resolve(before), o);
  for (const [name, pick] of drifts) DRIFTS[name]!(s, pick);
  const foreignDevices = addForeign(s, foreign);
  return { before, observed: s, foreignDevices, drifts: drifts.map(([n]) => n) };
});

/** What is wanted now, and the host: half the time the host drifted from this very state, half from another. */
const scenarioArb = fc.tuple(runtimeArb, hostArb, fc.boolean()).map(([other, host, same]) => ({ want: same ? host.before : other, host }));

/** A copy with every collection in another order (Map insertion order included). */
function permuted(o: ObservedState, seed: number): ObservedState {
  const shuffle = <T>(list: T[]): T[] => {
    const out = [...list];
    let x = seed || 1;
    for (let i = out.length - 1; i > 0; i--) {
      x = (x * 1103515245 + 12345) & 0x7fffffff;
      const j = x % (i + 1);
      [out[i], out[j]] = [out[j]!, out[i]!];
    }
    return out;
  };
  const c = structuredClone(o);
  return {
    ...c, links: new Map(shuffle([...c.links])), addresses: shuffle(c.addresses), routes: shuffle(c.routes),
    neighbours: shuffle(c.neighbours), sysctls: new Map(shuffle([...c.sysctls])), netns: new Map(shuffle([...c.netns])),
  };
}

const touches = (op: Operation, device: string) => ("device" in op && op.device === device);

// ---- planning --------------------------------------------------------------

describe("planning (properties)", () => {
  it("converges from any host state, then plans nothing: idempotent", () => {
    fc.assert(fc.property(scenarioArb, ({ want, host }) => {
      const d = resolve(want);
      const after = converge(d, host.observed);
      expect(plan(d, after, settings).operations).toEqual([]);
    }), { numRuns: 300 });
  });

  it("a crash after any operation of a plan, then planning again, ends where no crash would have", () => {
    // Device identity (ifindex) may differ; everything the planner compares may not.
    const comparable = (o: ObservedState) => JSON.stringify(o, (k, v: unknown) =>
      k === "ifindex" || k === "peerIndex" ? undefined : v instanceof Map ? [...v].sort(([a], [b]) => String(a).localeCompare(String(b)))
        // The kernel lists in no promised order (a neighbour entry replaced after a crash comes last).
        : Array.isArray(v) && ["routes", "neighbours", "addresses"].includes(k) ? [...v].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))) : v);
    fc.assert(fc.property(scenarioArb, fc.nat(), ({ want, host }, at) => {
      const d = resolve(want);
      const ops = plan(d, host.observed, settings).operations;
      const record = { devices: createdDevices(ops), ifindexAbove: highestIfindex(host.observed) };
      const crashed = applyToModel(host.observed, ops.slice(0, ops.length ? at % (ops.length + 1) : 0));
      expect(comparable(converge(d, crashed, record))).toBe(comparable(converge(d, host.observed)));
    }), { numRuns: 500 });
  });

  it("reaches exactly the desired endpoints: every one without a conflict is complete", () => {
    fc.assert(fc.property(scenarioArb, ({ want, host }) => {
      const d = resolve(want);
      const p = plan(d, converge(d, host.observed), settings);
      for (const c of p.endpoints) {
        if (c.conflict || c.pending) continue;
        expect(c.link && c.routeOk && c.neighbourOk && c.linkLocalOk && c.up && c.groupOk && c.macOk && c.mtuOk && c.badSysctls.length === 0).toBeTruthy();
        expect(c.link?.mtu).toBe(d.networks.find((n) => n.name === c.endpoint.network)?.guest.mtu ?? 1500);
        if (c.endpoint.kind === "netns") expect(c.innerOk).toBe(true);
      }
      // Nothing of ours beyond the desired: no owned endpoint device or proto-94 route that no endpoint explains.
      const s = converge(d, host.observed);
      const devices = new Set(d.endpoints.map((e) => e.device));
      for (const l of s.links.values())
        if (l.alias?.startsWith("vmrouted:") && !l.alias.startsWith("vmrouted:gateway:")) expect(devices.has(l.name)).toBe(true);
      const routes = new Set(d.endpoints.flatMap((e) => endpointIps(e).map((ip) => `${hostPrefix(ip)} ${e.device}`)));
      for (const r of s.routes) if (r.protocol === settings.routeProtocol) expect(routes.has(`${r.dst} ${r.device}`)).toBe(true);
    }), { numRuns: 300 });
  });

  it("is order-independent: any order of desired and observed collections gives the same operations", () => {
    fc.assert(fc.property(scenarioArb, fc.integer({ min: 1, max: 1 << 30 }), ({ want, host }, seed) => {
      const d = resolve(want);
      const reversed: DesiredState = { networks: [...d.networks].reverse(), endpoints: [...d.endpoints].reverse(), learned: [...d.learned].reverse() };
      const a = plan(d, host.observed, settings).operations;
      const b = plan(reversed, permuted(host.observed, seed), settings).operations;
      expect(b).toEqual(a);
    }), { numRuns: 300 });
  });

  it("never touches an object it does not own", () => {
    fc.assert(fc.property(scenarioArb, ({ want, host }) => {
      const d = resolve(want);
      let s = host.observed;
      for (let round = 0; round <= MAX_ROUNDS; round++) {
        const ops = plan(d, s, settings).operations;
        for (const dev of host.foreignDevices) expect(ops.filter((op) => touches(op, dev))).toEqual([]);
        expect(ops.filter((op) => op.op === "route.delete" && op.protocol !== settings.routeProtocol && !op.device?.startsWith("virgw-"))).toEqual([]);
        expect(ops.filter((op) => op.op === "neighbour.delete" && op.device === "eth9")).toEqual([]);
        s = applyToModel(s, ops);
      }
      for (const dev of host.foreignDevices) expect(s.links.get(dev)).toEqual(host.observed.links.get(dev));
      expect(s.routes.filter((r) => r.device === "eth9")).toEqual(host.observed.routes.filter((r) => r.device === "eth9"));
    }), { numRuns: 300 });
  });
});

// ---- rebuilding state from the kernel ---------------------------------------

describe("rebuilding runtime state from the kernel (properties)", () => {
  it("gives back the runtime state that produced the host, for any runtime state", () => {
    // A runtime network's MTU is read back from its endpoints' devices; without endpoints it is in no object of the kernel.
    const withoutRuntimeMtu = (s: Runtime): Runtime => ({
      ...s,
      networks: Object.fromEntries(Object.entries(s.networks).map(([name, { mtu, ...n }]) =>
        [name, s.endpoints.some((e) => e.network === name) && mtu !== undefined && mtu !== 1500 ? { ...n, mtu } : n])),
    });
    fc.assert(fc.property(runtimeArb.map(withoutRuntimeMtu), (want) => {
      const d = resolve(want);
      const kernel = converge(d, observedWithNetns(...NAMESPACES));
      const veths = new Map(d.endpoints.filter((e) => e.netns).map((e) => [e.device, e.netns!]));
      // The NAT table as the reconciler writes it: natOutgoing is read back from it.
      const rebuilt = rebuildRuntimeState(kernel, veths, desiredNat(d), configOf(want), settings.routeProtocol);
      expect(rebuilt.problems).toEqual([]);
      // Same resolved endpoints (names, MACs, namespaces), whatever the input spelled out.
      const key = (x: DesiredState) => JSON.stringify([x.networks, [...x.endpoints].sort((a, b) => a.id.localeCompare(b.id))]);
      expect(key(resolve({ ...rebuilt.state, serviceMtu: want.serviceMtu, serviceV6: want.serviceV6 }))).toBe(key(d));
    }), { numRuns: 300 });
  });

  it("reports an owned device it cannot explain instead of leaving it to be deleted", () => {
    const d = resolve({ networks: {}, endpoints: [{ kind: "netns", network: "service", ip: "172.31.16.41", netns: "task-1" }] });
    const kernel = converge(d, observedWithNetns(...NAMESPACES));
    kernel.links.set("tap-stray", { name: "tap-stray", kind: "tun", group: 94, up: true, carrier: false, alias: "vmrouted:tap:10.250.0.9" });
    const r = rebuildRuntimeState(kernel, new Map(), undefined, CONFIG, settings.routeProtocol);
    expect(r.problems).toEqual(expect.arrayContaining([
      expect.stringMatching(/tap-stray .* fits no known network/), expect.stringMatching(/peer in no named namespace/),
    ]));
  });
});

// ---- domain XML --------------------------------------------------------------

const textArb = fc.string({ unit: fc.constantFrom("a", "Z", "0", " ", "\n", "&amp;", "&lt;", "&gt;", "&quot;", "'", '"', "é", "-", "/"), minLength: 1, maxLength: 12 });
const attrValueArb = fc.string({ unit: fc.constantFrom("a", "1", " ", "&amp;", "&lt;", "'", ":", "/", "."), maxLength: 10 });
const tagArb = fc.constantFrom("disk", "driver", "source", "target", "serial", "console", "graphics", "video", "model", "address", "boot", "controller", "interface", "mac", "rng");
const attrsArb = fc.uniqueArray(fc.tuple(fc.constantFrom("type", "dev", "bus", "file", "port", "name", "index", "slot"), attrValueArb), { selector: (a) => a[0], maxLength: 3 });

const nodeArb: fc.Memo<string> = fc.memo((depth) => fc.oneof(
  { depthSize: "small", withCrossShrink: true },
  textArb,
  fc.constant("<!-- a comment -->"),
  fc.constant("<![CDATA[<raw> & stuff]]>"),
  fc.tuple(tagArb, attrsArb, depth > 1 ? fc.array(nodeArb(depth - 1), { maxLength: 3 }) : fc.constant([] as string[])).map(([tag, attrs, kids]) => {
    const a = attrs.map(([k, v]) => ` ${k}="${v.replace(/"/g, "&quot;")}"`).join("");
    return kids.length ? `<${tag}${a}>${kids.join("")}</${tag}>` : `<${tag}${a}/>`;
  }),
));

const domainArb = fc.record({
  name: fc.stringMatching(/^[a-z][a-z0-9-]{0,12}$/),
  metadata: fc.option(fc.constantFrom(
    `<metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:name>x</nova:name></nova:instance></metadata>`,
    `<metadata>\n    <other:x xmlns:other="urn:other"/>\n  </metadata>`,
    `<metadata/>`, // libvirt keeps an empty one as it is
  ), { nil: undefined }),
  // libvirt never writes an empty <devices> (there is always an emulator at least); a domain may come without one, or with <devices/>, from elsewhere.
  devices: fc.option(fc.array(nodeArb(3), { maxLength: 6 }), { nil: undefined }),
  tail: fc.array(nodeArb(2), { maxLength: 3 }),
  declaration: fc.boolean(),
}).map(({ name, metadata, devices, tail, declaration }) =>
  `${declaration ? '<?xml version="1.0" encoding="UTF-8"?>\n' : ""}<domain type="kvm">\n  <name>${name}</name>\n  <uuid>0e4b2c1a-0000-4000-8000-000000000001</uuid>\n  ${metadata ?? ""}<memory unit="KiB">65536</memory>${devices ? (devices.length ? `<devices>${devices.join("")}</devices>` : "<devices/>") : ""}${tail.join("")}</domain>`);

const ifaceArb = fc.uniqueArray(fc.record({
  host: fc.integer({ min: 2, max: 250 }), mac: macArb,
}), { selector: (i) => i.host, minLength: 1, maxLength: 3 }).map((list) => list.map((i): RoutedInterface => ({
  network: "service", ip: `172.31.16.${i.host}`, mac: i.mac, tap: `tap-${i.host.toString().padStart(10, "0")}`,
})));

describe("domain XML (properties)", () => {
  it("patch then unpatch is the identity, over generated domain documents", () => {
    fc.assert(fc.property(domainArb, ifaceArb, fc.boolean(), (xml, ifaces, reverse) => {
      const doc = parseDomainXml(xml);
      for (const i of ifaces) addRoutedInterface(doc, i);
      // Through text, as it goes through libvirt.
      const patched = parseDomainXml(serializeDomainXml(doc));
      expect(routedInterfaces(patched)).toEqual(ifaces);
      for (const i of reverse ? [...ifaces].reverse() : ifaces) removeRoutedInterface(patched, i.ip);
      // Byte for byte: the text outside what vmrouted adds is never rewritten.
      expect(serializeDomainXml(patched)).toBe(xml);
    }), { numRuns: 500 });
  });

  it("serialising a parsed document gives back its text byte for byte", () => {
    fc.assert(fc.property(domainArb, (xml) => {
      expect(serializeDomainXml(parseDomainXml(xml))).toBe(xml);
    }), { numRuns: 500 });
  });
});
