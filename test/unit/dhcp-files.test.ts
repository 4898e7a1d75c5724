import { describe, expect, it } from "vitest";
import { dhcpFiles, SERVER_DUID } from "../../src/dataplane/dhcp/files.js";
import { desired, netns, tap } from "../helpers/fixtures.js";

// What dnsmasq is told (dataplane/dhcp/files.ts): which MAC gets which
// address, on which interfaces, with which options.

const paths = { dir: "/run/vmrouted/dhcp", leases: "/var/lib/vmrouted/dnsmasq.leases" };
const lines = (text: string) => text.split("\n").filter(Boolean);

describe("dnsmasq's files", () => {
  const state = desired(
    [tap("172.31.16.10", { mac: "52:54:00:00:00:10" }), tap("172.31.16.11", { name: "custom0", mac: "52:54:00:00:00:11" }),
      netns("172.31.16.20", "task"), { kind: "tap", network: "dark", ip: "172.31.17.10", mac: "52:54:00:00:00:17" },
      { kind: "tap", network: "manual", ip: "172.31.18.10" }],
    {
      dark: { gateway: "172.31.17.1/24", mtu: 9000, dns: ["10.1.0.53", "10.1.0.54"], domain: "dark.internal", leaseSeconds: 600 },
      manual: { gateway: "172.31.18.1/24", dhcp: false },
    },
    { gateway: "172.31.16.1/24", mtu: 1450 },
  );
  const files = dhcpFiles(state, paths)!;

  it("one static lease per tap on a DHCP network, with its network's lease time; netns endpoints and dhcp: false networks get none", () => {
    expect(lines(files.hosts)).toEqual(["52:54:00:00:00:10,172.31.16.10,3600", "52:54:00:00:00:11,172.31.16.11,3600", "52:54:00:00:00:17,172.31.17.10,600"]);
    expect(files.served.map((s) => s.ip)).toEqual(["172.31.16.10", "172.31.16.11", "172.31.17.10"]);
  });

  it("router, MTU, DNS and domain per network, by the tag its range sets", () => {
    expect(lines(files.opts)).toEqual([
      "tag:net_dark,option:router,172.31.17.1", "tag:net_dark,option:mtu,9000", "tag:net_dark,option:dns-server,10.1.0.53,10.1.0.54",
      "tag:net_dark,option:domain-name,dark.internal",
      "tag:net_service,option:router,172.31.16.1", "tag:net_service,option:mtu,1450",
    ]);
  });

  it("answers only on vmrouted's taps (the tap-* wildcard and taps named by the operator), as the first network's gateway device; never a pool, never an unknown MAC", () => {
    const conf = lines(files.conf);
    expect(conf).toEqual(expect.arrayContaining([
      "port=0", "bind-dynamic", "interface=virgw-dark", "interface=tap-*", "interface=custom0", "bridge-interface=virgw-dark,tap-*,custom0",
      "shared-network=172.31.17.1,172.31.16.0",
      "dhcp-range=set:net_dark,172.31.17.0,static,255.255.255.0,600", "dhcp-range=set:net_service,172.31.16.0,static,255.255.255.0,3600",
      "dhcp-ignore=tag:!known", "dhcp-broadcast", "user=nobody",
      `dhcp-hostsfile=${paths.dir}/hosts`, `dhcp-leasefile=${paths.leases}`,
    ]));
    expect(conf.filter((l) => l.startsWith("interface="))).toEqual(["interface=virgw-dark", "interface=tap-*", "interface=custom0"]);
    expect(conf.some((l) => l.includes("172.31.18."))).toBe(false);
  });

  it("the main file changes only with the networks or the operator-named taps (a VM coming or going is a SIGHUP, not a restart)", () => {
    const more = dhcpFiles(desired([...[tap("172.31.16.10"), tap("172.31.16.12")]], {}, { gateway: "172.31.16.1/24" }), paths)!;
    const fewer = dhcpFiles(desired([tap("172.31.16.10")], {}, { gateway: "172.31.16.1/24" }), paths)!;
    expect(more.conf).toBe(fewer.conf);
    expect(more.hosts).not.toBe(fewer.hosts);
  });

  it("IPv4-only networks: no router advertisements, no DHCPv6", () => {
    expect(files.conf).not.toMatch(/enable-ra|ra-param|quiet-ra|dhcp-duid|off-link|::/);
    expect(files.hosts).not.toContain("[");
  });

  it("no DHCP network: no dnsmasq", () => {
    expect(dhcpFiles(desired([tap("172.31.16.10")], {}, { gateway: "172.31.16.1/24", dhcp: false }), paths)).toBeUndefined();
  });
});

describe("dnsmasq's files, dual stack (RA + DHCPv6)", () => {
  const state = desired(
    [tap("172.31.16.10", { mac: "52:54:00:00:00:10", ip6: "fd31:16::10" }), tap("172.31.16.11", { mac: "52:54:00:00:00:11" }),
      { kind: "tap", network: "dark", ip: "172.31.17.10", ip6: "fd31:17::a", mac: "52:54:00:00:00:17" },
      { kind: "tap", network: "alpha", ip: "172.31.15.10", mac: "52:54:00:00:00:15" },
      { kind: "tap", network: "manual", ip: "172.31.18.10", ip6: "fd31:18::10" }],
    {
      alpha: { gateway: "172.31.15.1/24" },
      dark: { gateway: "172.31.17.1/24", prefix6: "fd31:17::/64", mtu: 1450, leaseSeconds: 600 },
      manual: { gateway: "172.31.18.1/24", prefix6: "fd31:18::/64", dhcp: false },
    },
    { gateway: "172.31.16.1/24", prefix6: "fd31:16::/64", mtu: 1450 },
  );
  const files = dhcpFiles(state, paths)!;
  const conf = lines(files.conf);

  it("a host line carries the endpoint's IPv6 address beside its IPv4 one (one dhcp-host, both families, matched by MAC)", () => {
    expect(lines(files.hosts)).toEqual([
      "52:54:00:00:00:15,172.31.15.10,3600", "52:54:00:00:00:10,172.31.16.10,[fd31:16::10],3600", "52:54:00:00:00:11,172.31.16.11,3600",
      "52:54:00:00:00:17,172.31.17.10,[fd31:17::a],600",
    ]);
    expect(files.served.find((s) => s.ip === "172.31.16.10")?.ip6).toBe("fd31:16::10");
    expect(files.served.find((s) => s.ip === "172.31.16.11")).not.toHaveProperty("ip6");
  });

  it("the taps are aliased to the first DHCP network with a prefix6 (its device carries the address dnsmasq needs); the others share onto it", () => {
    expect(conf).toEqual(expect.arrayContaining([
      "interface=virgw-dark", "interface=tap-*", "bridge-interface=virgw-dark,tap-*",
      "shared-network=172.31.17.1,172.31.15.0", "shared-network=172.31.17.1,172.31.16.0",
      "shared-network=fd31:17::,fd31:16::",
    ]));
    expect(conf.filter((l) => l.startsWith("interface="))).toEqual(["interface=virgw-dark", "interface=tap-*"]);
  });

  it("static-only DHCPv6 ranges, off-link, with the network's lease time; only for DHCP networks with a prefix6", () => {
    expect(conf.filter((l) => l.startsWith("dhcp-range=") && l.includes("::"))).toEqual([
      "dhcp-range=set:net_dark,fd31:17::,static,off-link,64,600", "dhcp-range=set:net_service,fd31:16::,static,off-link,64,3600",
    ]);
    expect(files.conf).not.toContain("fd31:18:");
    expect(files.conf).not.toMatch(/slaac|ra-only|ra-stateless|ra-names|constructor/);
  });

  it("router advertisements (managed, router lifetime 1800 s) with the MTU every IPv6 network shares; a fixed server DUID; no IPv6 DNS", () => {
    expect(conf).toEqual(expect.arrayContaining(["enable-ra", "ra-param=virgw-dark,mtu:1450,0,1800", "quiet-ra", "dhcp-duid=32473,76:6d:72:6f:75:74:65:64"]));
    expect(SERVER_DUID).toBe("00:02:00:00:7e:d9:76:6d:72:6f:75:74:65:64");
    expect(files.opts).not.toMatch(/option6|dns-server/);
  });

  it("MTU: none announced when the IPv6 networks differ or set none (the link MTU comes from DHCPv4 option 26)", () => {
    const mixed = dhcpFiles(desired([], { dark: { gateway: "172.31.17.1/24", prefix6: "fd31:17::/64", mtu: 9000 } },
      { gateway: "172.31.16.1/24", prefix6: "fd31:16::/64", mtu: 1450 }), paths)!;
    expect(lines(mixed.conf)).toContain("ra-param=virgw-dark,mtu:off,0,1800");
    const none = dhcpFiles(desired([], {}, { gateway: "172.31.16.1/24", prefix6: "fd31:16::/64" }), paths)!;
    expect(lines(none.conf)).toContain("ra-param=virgw-service,mtu:off,0,1800");
  });

  it("dnsmasq's IPv6 ranges are /64 or longer: a longer prefix6 keeps its length, a shorter one is served in its first /64", () => {
    const long = dhcpFiles(desired([], {}, { gateway: "172.31.16.1/24", prefix6: "fd31:16::1:0/112" }), paths)!;
    expect(lines(long.conf)).toContain("dhcp-range=set:net_service,fd31:16::1:0,static,off-link,112,3600");
    const short = dhcpFiles(desired([], {}, { gateway: "172.31.16.1/24", prefix6: "fd31::/48" }), paths)!;
    expect(lines(short.conf)).toContain("dhcp-range=set:net_service,fd31::,static,off-link,64,3600");
  });

  it("an IPv6 address added to a VM is a SIGHUP (hosts), not a restart (conf)", () => {
    const net = { gateway: "172.31.16.1/24", prefix6: "fd31:16::/64" };
    const with6 = dhcpFiles(desired([tap("172.31.16.10", { ip6: "fd31:16::10" })], {}, net), paths)!;
    const without = dhcpFiles(desired([tap("172.31.16.10")], {}, net), paths)!;
    expect(with6.conf).toBe(without.conf);
    expect(with6.hosts).not.toBe(without.hosts);
  });
});
