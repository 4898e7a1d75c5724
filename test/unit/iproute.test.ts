import { describe, expect, it } from "vitest";
import { parseBatchErrors } from "../../src/dataplane/iproute.js";
import { toLink, toRoute } from "../../src/dataplane/observe.js";

describe("iproute2 adapters (pure parts)", () => {
  it("maps 'Command failed -:N' back to batch lines with the kernel's message", () => {
    const stderr = "Error: Unknown device type.\nCommand failed -:1\nCannot find device \"nope\"\nCommand failed -:3\n";
    expect(parseBatchErrors(stderr, 4)).toEqual([
      { line: 1, message: "Error: Unknown device type." },
      { line: 3, message: 'Cannot find device "nope"' },
    ]);
    expect(parseBatchErrors("something odd\n", 2)).toEqual([{ line: 0, message: "something odd" }]);
  });

  it("reads tun details, groups and veth peers from ip -d -N -j link", () => {
    const tap = toLink({
      ifname: "tap-a", flags: ["NO-CARRIER", "BROADCAST", "MULTICAST", "UP"], group: "94", ifalias: "vmrouted:tap:1.2.3.4",
      address: "fe:54:00:01:02:03", mtu: 9000, linkinfo: { info_kind: "tun", info_data: { type: "tap", vnet_hdr: true } },
    });
    expect(tap).toMatchObject({ kind: "tun", tunType: "tap", vnetHdr: true, group: 94, up: true, carrier: false, mtu: 9000 });
    expect(toLink({ ifname: "v", group: "default", link_netnsid: 0, linkinfo: { info_kind: "veth" } })).toMatchObject({ group: 0, peerInOtherNetns: true });
  });

  it("normalises host routes to /32 and keeps numeric protocol and scope", () => {
    expect(toRoute({ dst: "172.31.16.5", dev: "tap-a", protocol: "94", scope: "253" })).toEqual({
      dst: "172.31.16.5/32", device: "tap-a", protocol: 94, scope: 253, type: "unicast", metric: 0,
    });
    expect(toRoute({ dst: "172.31.16.5", dev: "tap-a", protocol: "94", scope: "253", metric: 1024 }).metric).toBe(1024);
    expect(toRoute({ dst: "default", gateway: "10.0.0.1", protocol: "4" }).dst).toBe("0.0.0.0/0");
  });
});
