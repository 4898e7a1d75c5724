import { describe, expect, it } from "vitest";
import { domainsTable, endpointsTable } from "../../src/cli/format.js";
import type { EndpointStatus } from "../../src/daemon/report.js";

const counters = { rxBytes: 0, rxPackets: 0, rxErrors: 0, rxDropped: 0, txBytes: 0, txPackets: 0, txErrors: 0, txDropped: 0 };
const vm = (ip: string, migration: string, state: EndpointStatus["state"] = "ready", reason = ""): EndpointStatus => ({
  id: `vm:${ip}`, kind: "vm", network: "service", ip, mac: "52:54:00:00:00:01", device: "tap-0123456789", domain: `web-${ip.split(".")[3]}`,
  migration, state, reason, counters,
  conditions: { device: true, up: true, carrier: true, route: state === "ready", neighbour: true, sysctls: true, announced: state === "ready" },
});

describe("human tables", () => {
  it("show the migration phase while a VM moves, and no such column otherwise", () => {
    const quiet = endpointsTable([vm("172.31.16.5", "normal")]);
    expect(quiet).not.toContain("MIGRATION");
    const moving = endpointsTable([vm("172.31.16.5", "normal"), vm("172.31.16.6", "target", "pending", "migration target: waiting for the guest")]);
    const [header, , second] = moving.split("\n");
    expect(header).toMatch(/STATE\s+MIGRATION\s+CONDITIONS/);
    expect(second).toMatch(/pending\s+target\s+!route,!bgp/);
    expect(moving).toContain("vm:172.31.16.6: migration target: waiting for the guest");
  });

  it("say a domain's migration phase beside its lifecycle", () => {
    const out = domainsTable([{ domain: "web-01", lifecycle: "running", migration: "settling",
      interfaces: [{ network: "service", ip: "172.31.16.5", mac: "52:54:00:00:00:01", tap: "tap-0123456789", state: "ready", reason: "" }] }]);
    expect(out).toContain("running (migration: settling)");
  });
});
