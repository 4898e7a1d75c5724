import { describe, expect, it } from "vitest";
import { defaultGuestMac, hostSideMac } from "../../src/model/mac.js";
import { gatewayDevice, networkNameProblem, tapName, tapNameProblem, vethName } from "../../src/model/naming.js";

describe("naming", () => {
  it("tap and veth names are deterministic, distinct and fit IFNAMSIZ", () => {
    expect(tapName("service", "172.31.16.5")).toBe(tapName("service", "172.31.16.5"));
    expect(tapName("service", "172.31.16.5")).not.toBe(tapName("service", "172.31.16.6"));
    expect(tapName("service", "172.31.16.5")).not.toBe(tapName("other", "172.31.16.5"));
    const names = new Set<string>();
    for (let i = 1; i < 255; i++) {
      const t = tapName("service", `172.31.16.${i}`), v = vethName("service", `172.31.16.${i}`);
      expect(t).toMatch(/^tap-[0-9a-f]{10}$/);
      expect(v).toMatch(/^veth-[0-9a-f]{10}$/);
      expect(t.length).toBeLessThanOrEqual(15);
      expect(v.length).toBeLessThanOrEqual(15);
      names.add(t);
    }
    expect(names.size).toBe(254);
  });

  it("gateway device names fit IFNAMSIZ for every valid network name", () => {
    expect(gatewayDevice("service")).toBe("virgw-service");
    expect(networkNameProblem("abcdefghi")).toBeUndefined();
    expect(gatewayDevice("abcdefghi").length).toBe(15);
    expect(networkNameProblem("abcdefghij")).toMatch(/longer than 9/);
    expect(networkNameProblem("Service")).toMatch(/lowercase/);
    expect(networkNameProblem("a;rm -rf")).toMatch(/only a-z/);
  });

  it("rejects bad tap names: too long, reserved prefixes, odd characters", () => {
    expect(tapNameProblem("tap-0123456789ab")).toMatch(/longer than 15/);
    for (const reserved of ["vnet0", "virgw-x", "vif1.0", "macvtap0", "veth-abc", "lo"]) expect(tapNameProblem(reserved)).toMatch(/reserved prefix/);
    for (const odd of ["tap x", "tap/1", "tap;ls", "-tap", "tap\n1", "täp"]) expect(tapNameProblem(odd)).toMatch(/may contain only/);
    expect(tapNameProblem("tap-custom")).toBeUndefined();
  });

  it("derives host-side MACs from guest MACs, the same on every host", () => {
    expect(hostSideMac("52:54:00:12:34:56")).toBe("fe:54:00:12:34:56");
    expect(defaultGuestMac("service", "172.31.16.5")).toBe(defaultGuestMac("service", "172.31.16.5"));
    expect(defaultGuestMac("service", "172.31.16.5")).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
  });
});
