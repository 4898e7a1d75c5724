import { describe, expect, it } from "vitest";
import { announcedLeft, announcements } from "../../src/daemon/announce.js";
import type { DesiredState, Endpoint } from "../../src/model/types.js";

// Which endpoints a host announces, from the last pass's report and the desired state now.

const endpoint = (ip: string, extra: Partial<Endpoint> = {}): Endpoint =>
  ({ id: `tap:${ip}`, kind: "tap", network: "service", ip, mac: "52:54:00:00:00:01", device: `t${ip}`, ...extra });
const reported = (ip: string, extra: Record<string, unknown> = {}) =>
  ({ id: `tap:${ip}`, ip, state: "ready", conditions: { route: true }, ...extra }) as Parameters<typeof announcements>[0][number];
const desired = (...endpoints: Endpoint[]): DesiredState => ({ networks: [], endpoints, learned: [] });

describe("announcements", () => {
  it("the report's ready endpoints, both families; not pending, held or migrated-away ones; held routes kept as they are", () => {
    const r = announcements([
      reported("172.31.16.5", { ip6: "fd31:16::5" }), reported("172.31.16.6", { elevated: true }),
      reported("172.31.16.7", { state: "pending" }), reported("172.31.16.8", { migration: "source" }),
      reported("172.31.16.9", { state: "degraded", held: true }),
    ], desired(endpoint("172.31.16.5", { ip6: "fd31:16::5" }), endpoint("172.31.16.6"), endpoint("172.31.16.7"), endpoint("172.31.16.8")));
    expect(r.announce).toEqual([{ ip: "172.31.16.5", ip6: "fd31:16::5" }, { ip: "172.31.16.6", elevated: true }]);
    expect([...r.keep]).toEqual(["172.31.16.9/32"]);
  });

  it("between passes: an endpoint removed, stopping (device-only) or given other addresses is withdrawn at once; the rest stay", () => {
    const report = [reported("172.31.16.5", { ip6: "fd31:16::5" }), reported("172.31.16.6"), reported("172.31.16.7")];
    const before = desired(endpoint("172.31.16.5", { ip6: "fd31:16::5" }), endpoint("172.31.16.6"), endpoint("172.31.16.7"));
    expect(announcedLeft(report, before)).toBe(false);
    const after = desired(endpoint("172.31.16.5"), endpoint("172.31.16.7", { deviceOnly: "domain vm7 is stopped" }));
    expect(announcedLeft(report, after)).toBe(true);
    expect(announcements(report, after).announce).toEqual([]);
    expect(announcements(report, desired(endpoint("172.31.16.5", { ip6: "fd31:16::5" }))).announce).toEqual([{ ip: "172.31.16.5", ip6: "fd31:16::5" }]);
  });
});
