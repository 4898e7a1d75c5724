import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.js";

const base = "node: { address: 10.1.1.3 }\n";

describe("config", () => {
  it("fills defaults", () => {
    const c = parseConfig(base);
    expect(c.api.socket).toBe("/run/vmrouted/vmrouted.sock");
    expect(c.stateDir).toBe("/var/lib/vmrouted");
    expect(c.dataplane).toMatchObject({ routeProtocol: 94, netdevGroup: 94, teardownGroup: 95 });
    expect(c.bgp).toBeUndefined();
    expect(c.node.name.length).toBeGreaterThan(0);
  });

  it("accepts the DESIGN.md example, every key of it", () => {
    const c = parseConfig(`node:
  address: 10.1.1.3
  name: controller-03
api:
  socket: /run/vmrouted/vmrouted.sock
stateDir: /var/lib/vmrouted
bgp:
  gobgp: 127.0.0.1:50051
  communities: ["64512:100"]
  localPref: 100
  importRoutes: true
  migrationCommunity: "64512:666"
networks:
  service: { gateway: 172.31.16.1/24, natOutgoing: false, dhcp: true, mtu: 1450, dns: [10.1.0.53], domain: example.internal, leaseSeconds: 3600 }
libvirt: { enabled: true, uri: qemu:///system, resyncSeconds: 30 }
migration: { settleSeconds: 30 }
dataplane:
  routeProtocol: 94
  learnedProtocol: 96
  routeMetric: 1024
  netdevGroup: 94
  teardownGroup: 95
  resyncSeconds: 30
metrics: { listen: 127.0.0.1:9794 }
log: { level: info }
`);
    expect(c.bgp).toEqual({
      gobgp: "127.0.0.1:50051", allowRemoteGobgp: false, communities: ["64512:100"], localPref: 100, importRoutes: true, migrationCommunity: "64512:666",
      importPrefixes: [], maxLearned: 200_000,
    });
    expect(c.dataplane).toEqual({ routeProtocol: 94, learnedProtocol: 96, routeMetric: 1024, netdevGroup: 94, teardownGroup: 95, resyncSeconds: 30 });
    expect(c.migration).toEqual({ settleSeconds: 30 });
    expect(c.networks.service).toEqual({
      gateway: "172.31.16.1/24", natOutgoing: false, dhcp: true, mtu: 1450, dns: ["10.1.0.53"], domain: "example.internal", leaseSeconds: 3600,
    });
  });

  it("refuses bad guest settings with one line naming the key", () => {
    const bad = (network: string) => () => parseConfig(`node: { address: 10.1.1.3 }\nnetworks:\n  service: { gateway: 172.31.16.1/24, ${network} }\n`);
    expect(bad("mtu: 67")).toThrow(/^config: networks\.service\.mtu: must be between 68 and 65535[^\n]*$/);
    expect(bad("mtu: 65536")).toThrow(/networks\.service\.mtu: must be between 68 and 65535/);
    expect(bad("mtu: 1400.5")).toThrow(/networks\.service\.mtu: must be a whole number/);
    expect(bad("dns: [10.1.0.53, dns.example]")).toThrow(/^config: networks\.service\.dns\.1: must be an IPv4 address$/);
    expect(bad("leaseSeconds: 0")).toThrow(/^config: networks\.service\.leaseSeconds: must be at least 120 \(dnsmasq's shortest lease\)$/);
    expect(bad("domain: 'bad domain'")).toThrow(/networks\.service\.domain: must be a DNS domain name/);
    expect(bad("dhcp: maybe")).toThrow(/networks\.service\.dhcp/);
  });

  it("defaults what DESIGN.md says", () => {
    const c = parseConfig(`node: { address: 10.1.1.3 }\nbgp: {}\n`);
    expect(c.bgp).toMatchObject({ importRoutes: true, migrationCommunity: "64512:666" });
    expect(c.dataplane).toMatchObject({ learnedProtocol: 96, routeMetric: 1024, resyncSeconds: 30 });
  });

  it.each([
    ["missing node.address", "node: {}\n", /node\.address: Required/],
    ["an unknown top-level key", base + "netwrks: {}\n", /unknown key\(s\) 'netwrks'/],
    ["an unknown nested key", base + "api: { sockt: /x }\n", /api: unknown key\(s\) 'sockt'/],
    ["a loopback next hop", "node: { address: 127.0.0.1 }\n", /node\.address: must not be a loopback/],
    ["a next hop that is not IPv4", "node: { address: fe80::1 }\n", /node\.address: must be an IPv4 address/],
    ["an unparseable gobgp address", base + "bgp: { gobgp: 'localhost' }\n", /bgp\.gobgp: must be HOST:PORT/],
    ["a gobgp port out of range", base + "bgp: { gobgp: '127.0.0.1:70000' }\n", /bgp\.gobgp/],
    ["a gobgp API on another host", base + "bgp: { gobgp: '10.1.1.9:50051' }\n", /^config: bgp\.gobgp: must be a loopback address .*plaintext.*bgp\.allowRemoteGobgp: true/],
    ["a gobgp API at an IPv6 address not ::1", base + "bgp: { gobgp: '[2001:db8::1]:50051' }\n", /bgp\.gobgp: must be a loopback address/],
    ["a gobgp API at a host name", base + "bgp: { gobgp: 'gobgp.example:50051' }\n", /bgp\.gobgp: must be a loopback address/],
    ["a remote gobgp allowed other than by true", base + "bgp: { gobgp: '10.1.1.9:50051', allowRemoteGobgp: 'yes' }\n", /bgp\.allowRemoteGobgp/],
    ["a metrics listener on the network", base + "metrics: { listen: '0.0.0.0:9794' }\n", /metrics\.listen: must be a loopback address/],
    ["a community out of range", base + "bgp: { communities: ['64512:70000'] }\n", /bgp\.communities\.0: must be ASN:VALUE/],
    ["a malformed community", base + "bgp: { communities: ['no'] }\n", /bgp\.communities\.0/],
    ["a negative local-pref", base + "bgp: { localPref: -1 }\n", /bgp\.localPref/],
    ["a bad gateway", base + "networks: { service: { gateway: 'x' } }\n", /network 'service': gateway 'x'/],
    ["overlapping networks", base + "networks: { a: { gateway: 10.0.0.1/8 }, b: { gateway: 10.1.0.1/16 } }\n", /overlaps/],
    ["invalid YAML", "node: [\n", /invalid YAML at line/],
    ["duplicate keys", "node: { address: 10.1.1.3 }\nnode: { address: 10.1.1.4 }\n", /invalid YAML/],
    ["equal netdev and teardown groups", base + "dataplane: { netdevGroup: 5, teardownGroup: 5 }\n", /teardownGroup must differ/],
  ])("rejects %s with one line naming the key", (_what, text, message) => {
    let error = "";
    try {
      parseConfig(text);
    } catch (e) {
      error = (e as Error).message;
    }
    expect(error).toMatch(message);
    expect(error).not.toContain("\n");
  });

  // gobgpd's gRPC API is plaintext and unauthenticated: only this machine may be the other end, unless the config says so.
  it.each(["127.0.0.1:50051", "127.0.0.53:50051", "[::1]:50051", "[0:0:0:0:0:0:0:1]:50051", "localhost:50051"])("accepts the loopback gobgp address %s", (gobgp) => {
    expect(parseConfig(base + `bgp: { gobgp: '${gobgp}' }\n`).bgp).toMatchObject({ gobgp, allowRemoteGobgp: false });
  });

  it("accepts a gobgp API on another host only with bgp.allowRemoteGobgp: true", () => {
    expect(parseConfig(base + "bgp: { gobgp: '10.1.1.9:50051', allowRemoteGobgp: true }\n").bgp).toMatchObject({ gobgp: "10.1.1.9:50051", allowRemoteGobgp: true });
    expect(() => parseConfig(base + "bgp: { gobgp: '10.1.1.9:50051', allowRemoteGobgp: false }\n")).toThrow(/bgp\.gobgp: must be a loopback address/);
  });
});
