import { describe, expect, it } from "vitest";
import { dhcpFiles } from "../../src/dataplane/dhcp/files.js";
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

  it("no DHCP network: no dnsmasq", () => {
    expect(dhcpFiles(desired([tap("172.31.16.10")], {}, { gateway: "172.31.16.1/24", dhcp: false }), paths)).toBeUndefined();
  });
});
