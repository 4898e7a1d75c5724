import { fileURLToPath } from "node:url";
import fc from "fast-check";
import protobuf from "protobufjs";
import { describe, expect, it } from "vitest";
import { decodeListPathResponse, decodePath, decodeWatchEventResponse, toApiPath } from "../../src/bgp/gobgp.js";
import { encodeCommunity } from "../../src/bgp/paths.js";

// The import side's decoding of gobgpd's answers (ListPath, WatchEvent), fed
// with messages encoded by protobufjs from the project's own .proto, shaped
// the way gobgpd 3.10 fills them in (pkg/server/grpc_server.go toPathAPI).
// The real gobgpd is in test/integration/gobgp-client.test.ts.

const types = protobuf.loadSync(fileURLToPath(new URL("../../proto/gobgp.proto", import.meta.url)));
const URL_PREFIX = "type.googleapis.com/apipb.";

function any(type: string, value: Record<string, unknown>) {
  const t = types.lookupType(`apipb.${type}`);
  return { type_url: URL_PREFIX + type, value: t.encode(t.fromObject(value)).finish() };
}

const IPV4_UNICAST = { afi: 1, safi: 1 };
/** A path as gobgpd sends it: Go's net.IP(nil).String() for a local path's source. */
function wirePath(o: {
  prefix?: string; nextHop?: string; mpNextHop?: string; localPref?: number; communities?: number[]; origin?: number;
  neighborIp?: string; best?: boolean; withdraw?: boolean; family?: { afi: number; safi: number } | null; age?: number; stale?: boolean;
  extra?: Array<{ type_url: string; value: Uint8Array }>;
}): Record<string, unknown> {
  const [prefix, len] = (o.prefix ?? "172.31.16.5/32").split("/");
  const pattrs = [any("OriginAttribute", { origin: o.origin ?? 0 })];
  if (o.nextHop !== undefined) pattrs.push(any("NextHopAttribute", { nextHop: o.nextHop }));
  if (o.mpNextHop !== undefined) pattrs.push(any("MpReachNLRIAttribute", { family: o.family ?? IPV4_UNICAST, nextHops: [o.mpNextHop] }));
  if (o.localPref !== undefined) pattrs.push(any("LocalPrefAttribute", { localPref: o.localPref }));
  if (o.communities) pattrs.push(any("CommunitiesAttribute", { communities: o.communities }));
  return {
    nlri: any("IPAddressPrefix", { prefix, prefixLen: Number(len) }),
    pattrs: [...pattrs, ...(o.extra ?? [])],
    age: { seconds: o.age ?? 1_700_000_000 },
    best: o.best ?? false,
    isWithdraw: o.withdraw ?? false,
    ...(o.family === null ? {} : { family: o.family ?? IPV4_UNICAST }),
    sourceAsn: o.neighborIp && o.neighborIp !== "<nil>" ? 64512 : 0,
    sourceId: o.neighborIp ?? "<nil>",
    neighborIp: o.neighborIp ?? "<nil>",
    stale: o.stale ?? false,
  };
}

function encode(type: string, value: Record<string, unknown>): Uint8Array {
  const t = types.lookupType(`apipb.${type}`);
  return t.encode(t.fromObject(value)).finish();
}
const listResponse = (prefix: string, paths: Array<Record<string, unknown>>) => encode("ListPathResponse", { destination: { prefix, paths } });
const tableEvent = (paths: Array<Record<string, unknown>>) => encode("WatchEventResponse", { table: { paths } });

describe("decoding gobgpd's paths", () => {
  it("decodes a received path: prefix, next hop, local-pref, communities, origin, source peer, age", () => {
    const bytes = encode("Path", wirePath({ nextHop: "10.1.1.4", localPref: 200, communities: [encodeCommunity("64512:100"), encodeCommunity("64512:666")], origin: 2, neighborIp: "10.1.1.254", best: true, age: 1_712_345_678 }));
    expect(decodePath(bytes)).toEqual({
      prefix: "172.31.16.5/32", nextHop: "10.1.1.4", isWithdraw: false, localPref: 200,
      communities: [64512 * 65536 + 100, 64512 * 65536 + 666], origin: 2,
      neighborIp: "10.1.1.254", isFromLocal: false, stale: false, age: 1_712_345_678,
    });
  });

  it("marks a path with no source address as local, whatever the spelling (\"<nil>\" from gobgpd, or empty)", () => {
    for (const neighborIp of ["<nil>", ""]) {
      const p = decodePath(encode("Path", { ...wirePath({ nextHop: "10.1.1.3" }), neighborIp }));
      expect(p).toMatchObject({ isFromLocal: true, neighborIp: "" });
    }
  });

  it("leaves out what the path does not have: no local-pref, no communities, no age", () => {
    const p = decodePath(encode("Path", { ...wirePath({ nextHop: "10.1.1.4", neighborIp: "10.1.1.254" }), age: undefined }));
    expect(p).toEqual({ prefix: "172.31.16.5/32", nextHop: "10.1.1.4", isWithdraw: false, communities: [], origin: 0, neighborIp: "10.1.1.254", isFromLocal: false, stale: false });
    expect(p).not.toHaveProperty("localPref");
    expect(p).not.toHaveProperty("age");
  });

  it("takes the next hop from MP_REACH_NLRI when there is no NEXT_HOP, and NEXT_HOP when there are both", () => {
    expect(decodePath(encode("Path", wirePath({ mpNextHop: "fe80::1", neighborIp: "10.1.1.254" })))?.nextHop).toBe("fe80::1");
    expect(decodePath(encode("Path", wirePath({ mpNextHop: "10.9.9.9", nextHop: "10.1.1.4", neighborIp: "10.1.1.254" })))?.nextHop).toBe("10.1.1.4");
  });

  it("skips attributes it does not know (AS_PATH, ORIGINATOR_ID, anything new) without losing the path", () => {
    const extra = [
      { type_url: `${URL_PREFIX}AsPathAttribute`, value: Uint8Array.from([0x0a, 0x04, 0x08, 0x02, 0x12, 0x00]) },
      { type_url: `${URL_PREFIX}OriginatorIdAttribute`, value: Uint8Array.from([0x0a, 0x08, ...Buffer.from("10.1.1.4")]) },
      { type_url: "type.googleapis.com/apipb.SomethingNew", value: Uint8Array.from([0xff, 0xff]) },
    ];
    expect(decodePath(encode("Path", wirePath({ nextHop: "10.1.1.4", neighborIp: "10.1.1.254", extra })))).toMatchObject({ prefix: "172.31.16.5/32", nextHop: "10.1.1.4" });
  });

  it("ignores every family but IPv4 and IPv6 unicast", () => {
    expect(decodePath(encode("Path", wirePath({ prefix: "2001:db8::1/128", nextHop: "2001:db8::ff", family: { afi: 2, safi: 4 } })))).toBeUndefined();
    expect(decodePath(encode("Path", wirePath({ nextHop: "10.1.1.4", family: { afi: 1, safi: 4 } })))).toBeUndefined();
    expect(decodePath(encode("Path", wirePath({ nextHop: "10.1.1.4", family: { afi: 25, safi: 70 } })))).toBeUndefined(); // EVPN: numbers our enum does not name
    // No family at all: the NLRI decides.
    expect(decodePath(encode("Path", wirePath({ prefix: "2001:db8::1/128", mpNextHop: "2001:db8::ff", family: null })))?.prefix).toBe("2001:db8::1/128");
    // A family that contradicts the NLRI is not a path of it.
    expect(decodePath(encode("Path", wirePath({ prefix: "2001:db8::1/128", nextHop: "10.1.1.4" })))).toBeUndefined();
    expect(decodePath(encode("Path", wirePath({ nextHop: "10.1.1.4", family: null })))?.prefix).toBe("172.31.16.5/32");
    // Another NLRI type under the IPv4 unicast family.
    const labeled = { ...wirePath({ nextHop: "10.1.1.4" }), nlri: { type_url: `${URL_PREFIX}LabeledIPAddressPrefix`, value: Uint8Array.from([]) } };
    expect(decodePath(encode("Path", labeled))).toBeUndefined();
  });

  it("reads back what toApiPath (the announcer's encoding) wrote", () => {
    const community = fc.integer({ min: 0, max: 0xffffffff });
    fc.assert(fc.property(
      fc.ipV4(), fc.integer({ min: 8, max: 32 }), fc.ipV4(), fc.array(community, { maxLength: 5 }), fc.option(fc.integer({ min: 0, max: 0xffffffff }), { nil: undefined }), fc.boolean(),
      (ip, len, nextHop, communities, localPref, withdraw) => {
        const api = toApiPath({ prefix: `${ip}/${len}`, nextHop, communities, ...(localPref !== undefined ? { localPref } : {}) }, withdraw);
        const p = decodePath(encode("Path", { ...api, neighborIp: "<nil>" }));
        expect(p).toEqual({
          prefix: `${ip}/${len}`, nextHop, isWithdraw: withdraw, communities, origin: 0,
          ...(localPref !== undefined ? { localPref } : {}), neighborIp: "", isFromLocal: true, stale: false,
        });
      }));
  });

  it("a path that cannot be decoded is undefined, not an exception", () => {
    expect(decodePath(Uint8Array.from([0x0a, 0x05, 0x01]))).toBeUndefined();
    const broken = { ...wirePath({ nextHop: "10.1.1.4" }), pattrs: [{ type_url: `${URL_PREFIX}LocalPrefAttribute`, value: Uint8Array.from([0x08]) }] };
    expect(decodePath(encode("Path", broken))).toBeUndefined();
  });
});

describe("decoding ListPath answers (one destination each)", () => {
  it("keeps only the best path of each destination (gobgpd lists every known path, best first)", () => {
    const bytes = listResponse("172.31.16.5/32", [
      wirePath({ nextHop: "10.1.1.4", localPref: 200, neighborIp: "10.1.1.254", best: true }),
      wirePath({ nextHop: "10.1.1.5", localPref: 100, neighborIp: "10.1.1.253" }),
    ]);
    expect(decodeListPathResponse(bytes)).toEqual([expect.objectContaining({ nextHop: "10.1.1.4", localPref: 200, neighborIp: "10.1.1.254" })]);
  });

  it("an empty answer, or a destination without a best path, gives nothing", () => {
    expect(decodeListPathResponse(encode("ListPathResponse", {}))).toEqual([]);
    expect(decodeListPathResponse(listResponse("172.31.16.5/32", [wirePath({ nextHop: "10.1.1.4" })]))).toEqual([]);
  });

  it("a malformed path is skipped, the rest of the destination kept", () => {
    const broken = { ...wirePath({ nextHop: "10.1.1.4", best: true }), nlri: { type_url: `${URL_PREFIX}IPAddressPrefix`, value: Uint8Array.from([0x12, 0x09]) } };
    expect(decodeListPathResponse(listResponse("172.31.16.5/32", [broken]))).toEqual([]);
  });

  it("decodes 50,000 destinations quickly", () => {
    const messages = Array.from({ length: 50_000 }, (_, i) => listResponse(`10.${i >> 16}.${(i >> 8) & 255}.${i & 255}/32`, [
      wirePath({ prefix: `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}/32`, nextHop: "10.1.1.4", localPref: 100, communities: [1, 2], neighborIp: "10.1.1.254", best: true }),
    ]));
    const started = performance.now();
    let n = 0;
    for (const m of messages) n += decodeListPathResponse(m).length;
    const ms = performance.now() - started;
    console.log(`decoded 50,000 ListPath answers in ${ms.toFixed(0)} ms`);
    expect(n).toBe(50_000);
    expect(ms).toBeLessThan(3000); // generous for a shared 2-core machine; ~200-400 ms measured
  });
});

describe("decoding WatchEvent answers", () => {
  it("a table event: every path in order, withdrawals marked, both unicast families kept, other families dropped", () => {
    const bytes = tableEvent([
      wirePath({ prefix: "172.31.16.5/32", nextHop: "10.1.1.4", neighborIp: "10.1.1.254", best: false }),
      wirePath({ prefix: "172.31.16.6/32", nextHop: "10.1.1.4", neighborIp: "10.1.1.254", withdraw: true }),
      wirePath({ prefix: "2001:db8::/64", mpNextHop: "2001:db8::1", family: { afi: 2, safi: 1 } }),
      wirePath({ prefix: "2001:db8::/64", mpNextHop: "2001:db8::1", family: { afi: 2, safi: 128 } }),
      wirePath({ prefix: "172.31.16.7/32", nextHop: "10.1.1.3" }),
    ]);
    const ev = decodeWatchEventResponse(bytes);
    expect(ev.kind).toBe("table");
    if (ev.kind !== "table") return;
    expect(ev.paths.map((p) => [p.prefix, p.isWithdraw, p.isFromLocal])).toEqual([
      ["172.31.16.5/32", false, false],
      ["172.31.16.6/32", true, false],
      ["2001:db8::/64", false, true],
      ["172.31.16.7/32", false, true],
    ]);
  });

  it("an empty table event (gobgpd's snapshot of an empty RIB) is a table event with no paths", () => {
    expect(decodeWatchEventResponse(encode("WatchEventResponse", { table: {} }))).toEqual({ kind: "table", paths: [] });
  });

  it("peer events and unknown events are told apart from table events", () => {
    expect(decodeWatchEventResponse(encode("WatchEventResponse", { peer: { type: 3, peer: { state: { neighborAddress: "10.1.1.254" } } } }))).toEqual({ kind: "peer" });
    expect(decodeWatchEventResponse(Uint8Array.from([]))).toEqual({ kind: "none" });
  });
});

describe("IPv6 unicast paths (issue #25)", () => {
  const IPV6_UNICAST = { afi: 2, safi: 1 };
  const attributeTypes = (api: { pattrs: Array<{ type_url: string }> }) => api.pattrs.map((a) => a.type_url.slice(URL_PREFIX.length));
  const decodeAny = (type: string, a: { value: Uint8Array }) => types.lookupType(`apipb.${type}`).toObject(types.lookupType(`apipb.${type}`).decode(a.value), { defaults: true });

  it("a /128 is AFI 2 SAFI 1 with MP_REACH_NLRI (the IPv6 next hop and the prefix), never NEXT_HOP", () => {
    const api = toApiPath({ prefix: "fd31:16::5/128", nextHop: "fd99::3", communities: [encodeCommunity("64512:100")], localPref: 200 }, false);
    expect(api.family).toEqual(IPV6_UNICAST);
    expect(attributeTypes(api)).toEqual(["OriginAttribute", "CommunitiesAttribute", "LocalPrefAttribute", "MpReachNLRIAttribute"]);
    const mp = decodeAny("MpReachNLRIAttribute", api.pattrs.at(-1)!) as { family: object; nextHops: string[]; nlris: Array<{ value: Uint8Array }> };
    expect(mp.family).toEqual(IPV6_UNICAST);
    expect(mp.nextHops).toEqual(["fd99::3"]);
    expect(decodeAny("IPAddressPrefix", mp.nlris[0]!)).toEqual({ prefixLen: 128, prefix: "fd31:16::5" });
    // A /32 is unchanged: IPv4 unicast with NEXT_HOP.
    const v4 = toApiPath({ prefix: "172.31.16.5/32", nextHop: "10.1.1.3", communities: [] }, false);
    expect(v4.family).toEqual(IPV4_UNICAST);
    expect(attributeTypes(v4)).toEqual(["OriginAttribute", "NextHopAttribute"]);
  });

  it("refuses a /128 whose next hop is not a routable IPv6 address (IPv4, IPv4-mapped, link-local, loopback)", () => {
    for (const nextHop of ["10.1.1.3", "::ffff:10.1.1.3", "fe80::1", "::1", "::", ""])
      expect(() => toApiPath({ prefix: "fd31:16::5/128", nextHop, communities: [] }, false), nextHop).toThrow(/refusing IPv6 path/);
  });

  it("decodes an IPv6 path: canonical prefix, the global next hop (not the link-local second one)", () => {
    const bytes = encode("Path", {
      ...wirePath({ prefix: "FD31:0016:0:0::0009/128", localPref: 100, neighborIp: "10.1.1.254", family: IPV6_UNICAST }),
      pattrs: [any("OriginAttribute", { origin: 0 }), any("MpReachNLRIAttribute", { family: IPV6_UNICAST, nextHops: ["FD99:0::4", "fe80::4"] }),
        any("LocalPrefAttribute", { localPref: 100 })],
    });
    expect(decodePath(bytes)).toMatchObject({ prefix: "fd31:16::9/128", nextHop: "fd99::4", localPref: 100, isFromLocal: false, neighborIp: "10.1.1.254" });
    expect(decodeListPathResponse(listResponse("fd31:16::9/128", [{ ...T6(bytes), best: true }]))).toHaveLength(1);
  });

  it("reads back what toApiPath wrote for any /128 (property)", () => {
    fc.assert(fc.property(fc.ipV6(), fc.constantFrom("fd99::3", "2001:db8:1::3", "fd00:1:2:3:4:5:6:7"), fc.boolean(), (ip, nextHop, withdraw) => {
      fc.pre(!ip.includes("."));
      const api = toApiPath({ prefix: `${ip}/128`, nextHop, communities: [7] }, withdraw);
      const p = decodePath(encode("Path", { ...api, neighborIp: "<nil>" }));
      expect(p?.prefix.split("/")[1]).toBe("128");
      expect(p).toMatchObject({ nextHop, isWithdraw: withdraw, communities: [7], isFromLocal: true });
    }));
  });
});

/** A Path's wire bytes back as an object to put in another message. */
function T6(bytes: Uint8Array): Record<string, unknown> {
  const t = types.lookupType("apipb.Path");
  return t.toObject(t.decode(bytes)) as Record<string, unknown>;
}
