import { describe, expect, it } from "vitest";
import { resolveDesired } from "../../src/model/resolve.js";
import type { EndpointInput } from "../../src/model/spec.js";

const config = { service: { gateway: "172.31.16.1/24" } };
const resolve = (endpoints: EndpointInput[], runtime: Record<string, { gateway: string }> = {}) =>
  resolveDesired({ configNetworks: config, runtimeNetworks: runtime, endpoints });
const tap = (ip: string, extra: object = {}) => ({ kind: "tap", network: "service", ip, ...extra }) as EndpointInput;
// Runtime entries that do not resolve are problems (held), never a failure of the whole state.
const error = (r: ReturnType<typeof resolve>) => (r.ok ? r.value.problems[0] ?? "" : r.error);

describe("resolving desired state", () => {
  it("holds what does not resolve and resolves everything else (one bad entry never fails the state)", () => {
    const r = resolve([tap("172.31.16.10"), { ...tap("172.31.17.10"), network: "dark" }, tap("172.31.16.11"), tap("172.31.16.10", { name: "tap-dup" })]);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value.endpoints.map((e) => e.ip)).toEqual(["172.31.16.10", "172.31.16.11"]);
    expect(r.value.held).toEqual([
      { id: "tap:172.31.17.10", kind: "tap", network: "dark", ip: "172.31.17.10", device: expect.stringMatching(/^tap-[0-9a-f]{10}$/), reason: "endpoint tap 172.31.17.10: unknown network 'dark'" },
      { id: "tap:172.31.16.10", kind: "tap", network: "service", ip: "172.31.16.10", device: "tap-dup", reason: expect.stringMatching(/already used/) },
    ]);
    expect(r.value.problems).toHaveLength(2);
  });

  it("fails only when a config network does not resolve", () => {
    const r = resolveDesired({ configNetworks: { a: { gateway: "172.31.16.1/24" }, b: { gateway: "172.31.16.2/25" } }, runtimeNetworks: {}, endpoints: [] });
    expect(r.ok ? "" : r.error).toMatch(/overlaps network 'a'/);
  });

  it("accepts a valid set and fills in names and MACs", () => {
    const r = resolve([tap("172.31.16.10"), { kind: "netns", network: "service", ip: "172.31.16.31", netns: "task-42", mac: "52:54:00:AA:BB:CC" }]);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value.endpoints[1]).toMatchObject({ id: "netns:172.31.16.31", device: expect.stringMatching(/^veth-/), mac: "52:54:00:aa:bb:cc" });
  });

  it.each([
    ["an IP outside the network", [tap("172.31.17.5")], /outside network 'service'/],
    ["the gateway IP", [tap("172.31.16.1")], /is the gateway address/],
    ["the broadcast address", [tap("172.31.16.255")], /network or broadcast/],
    ["a duplicate IP", [tap("172.31.16.10"), tap("172.31.16.10", { name: "tap-x" })], /already used/],
    ["an unknown network", [{ ...tap("172.31.16.10"), network: "nope" }], /unknown network 'nope'/],
    ["a malformed IP", [tap("172.31.16.1000")], /not an IPv4 address/],
    ["an octal-looking IP", [tap("172.31.016.10")], /not an IPv4 address/],
    ["a multicast MAC", [tap("172.31.16.10", { mac: "01:00:5e:00:00:01" })], /not a unicast MAC/],
    ["a too-long tap name", [tap("172.31.16.10", { name: "tap-0123456789ab" })], /longer than 15/],
    ["a reserved tap name", [tap("172.31.16.10", { name: "vnet7" })], /reserved prefix/],
    ["odd characters in a tap name", [tap("172.31.16.10", { name: "t;reboot" })], /may contain only/],
    ["a duplicate tap name", [tap("172.31.16.10", { name: "tap-x" }), tap("172.31.16.11", { name: "tap-x" })], /device name tap-x/],
    ["a bad namespace name", [{ kind: "netns", network: "service", ip: "172.31.16.31", netns: "../etc" }], /netns '..\/etc'/],
    ["two endpoints in one namespace", [
      { kind: "netns", network: "service", ip: "172.31.16.31", netns: "t" }, { kind: "netns", network: "service", ip: "172.31.16.32", netns: "t" },
    ], /one routed interface per namespace/],
  ] as Array<[string, EndpointInput[], RegExp]>)("rejects %s", (_what, endpoints, message) => {
    expect(error(resolve(endpoints))).toMatch(message);
  });

  it.each([
    ["overlapping networks", { other: { gateway: "172.31.16.129/25" } }, /overlaps network 'service'/],
    ["a changed config network", { service: { gateway: "172.31.99.1/24" } }, /comes from the config file/],
    ["a gateway without prefix", { other: { gateway: "172.31.17.1" } }, /with a prefix length/],
    ["a gateway that is the subnet address", { other: { gateway: "172.31.17.0/24" } }, /not a usable host address/],
    ["a /31", { other: { gateway: "172.31.17.1/31" } }, /between \/8 and \/30/],
    ["a bad network name", { "Bad_Name": { gateway: "172.31.17.1/24" } }, /lowercase/],
  ])("rejects %s", (_what, runtime, message) => {
    expect(error(resolve([], runtime))).toMatch(message);
  });

  it("accepts a config network repeated unchanged in a spec", () => {
    expect(resolve([], { service: { gateway: "172.31.16.1/24" } }).ok).toBe(true);
  });
});
