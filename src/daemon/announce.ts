import type { Announcement } from "../bgp/paths.js";
import { endpointIps, hostPrefix } from "../model/ipv6.js";
import type { DesiredState } from "../model/types.js";
import type { EndpointStatus } from "./report.js";

// Pure: which endpoints this host announces. Only ready ones: a workload is
// announced once its host side works (the last pass's report says so). Held
// ones (kept as found) keep whatever path they had and get none they did not
// have. A VM migrated away ("source") keeps its route for stragglers but is no
// longer announced. And between passes, an endpoint that left the desired
// state, lost its route there (device-only: a VM stopping) or changed its
// addresses is withdrawn at once, beside the pass that removes it from the
// kernel: traffic stops being attracted before the route goes, and a
// teardown's withdrawals overlap the kernel's work instead of following it.

type Reported = Pick<EndpointStatus, "id" | "ip" | "ip6" | "state" | "migration" | "elevated" | "held" | "conditions">;

/** The announcements for a report, against the desired state now; `keep`: held endpoints' prefixes whose paths stay as they are. */
export function announcements(endpoints: readonly Reported[], desired: DesiredState): { announce: Announcement[]; keep: Set<string> } {
  const wanted = wantedById(desired);
  return {
    announce: endpoints.filter((e) => isAnnounced(e, wanted))
      .map((e) => ({ ip: e.ip, ...(e.ip6 !== undefined ? { ip6: e.ip6 } : {}), ...(e.elevated ? { elevated: true } : {}) })),
    keep: new Set(endpoints.filter((e) => e.held && e.conditions.route).flatMap((e) => endpointIps(e).map(hostPrefix))),
  };
}

/** Some endpoint the report has announced is no longer announceable in this desired state (withdraw now, not after the pass). */
export function announcedLeft(endpoints: readonly Reported[], desired: DesiredState): boolean {
  const wanted = wantedById(desired);
  return endpoints.some((e) => isReady(e) && !isAnnounced(e, wanted));
}

const isReady = (e: Reported) => e.state === "ready" && e.migration !== "source";

function wantedById(desired: DesiredState): Map<string, DesiredState["endpoints"][number]> {
  return new Map(desired.endpoints.filter((e) => e.deviceOnly === undefined && e.migration !== "source").map((e) => [e.id, e]));
}

function isAnnounced(e: Reported, wanted: Map<string, DesiredState["endpoints"][number]>): boolean {
  const d = wanted.get(e.id);
  return isReady(e) && d !== undefined && d.ip === e.ip && d.ip6 === e.ip6;
}
