import type { Config } from "../config/schema.js";
import { VERSION } from "../version.js";
import type { NatStatus, ReconcileReport } from "./reconciler.js";
import type { EndpointStatus, LearnedStatus, NetworkStatus } from "./report.js";

// The reported state as the API returns it (`vmroutectl status -o json`).

export interface BgpStatus {
  enabled: boolean;
  /** gobgpd API connection: disabled | connecting | up | down */
  state: string;
  reason?: string;
  peers: Array<{ address: string; state: string; uptimeSeconds?: number; prefixesSent?: number }>;
  announced: number;
  /** Routes learned from other hosts, installed in the kernel (the whole list: GET /v1/routes). */
  learned?: number;
  /** The import of other hosts' best paths (bgp.importRoutes): its stream's state, and full comparisons that corrected it. */
  importer?: { state: string; reason?: string; corrections: number };
}

export interface Status {
  version: string;
  node: { name: string; address: string };
  networks: NetworkStatus[];
  endpoints: EndpointStatus[];
  bgp: BgpStatus;
  libvirt: {
    enabled: boolean; state: string; reason?: string;
    rejected: Array<{ domain: string; ip: string; reason: string }>;
    /** Domains whose XML could not be read at the last resync (their last known state is kept). */
    unreadable: Array<{ uuid: string; error: string }>;
  };
  dataplane: {
    gatewayKind: string; gatewayKindReason?: string; routeProtocol: number; learnedProtocol: number; netdevGroup: number;
    /** vmrouted's nftables table `ip vmrouted` (egress NAT). */
    nat: NatStatus;
  };
  reconcile: { at?: string; durationMs?: number; passes: number; operationsApplied: number; passesByTrigger: Record<string, number> };
}

export function buildStatus(
  config: Config,
  report: ReconcileReport,
  extra: {
    bgp: BgpStatus; libvirt: Status["libvirt"]; gatewayKind: { kind: string; reason?: string };
    passes: number; operationsApplied: number; passesByTrigger: Record<string, number>;
  },
): Status {
  const learned: LearnedStatus[] = report.learned;
  return {
    version: VERSION,
    node: { name: config.node.name, address: config.node.address },
    networks: report.networks,
    endpoints: report.endpoints,
    bgp: extra.bgp.enabled ? { ...extra.bgp, learned: learned.filter((l) => l.state === "installed").length } : extra.bgp,
    libvirt: extra.libvirt,
    dataplane: {
      gatewayKind: extra.gatewayKind.kind,
      ...(extra.gatewayKind.reason ? { gatewayKindReason: extra.gatewayKind.reason } : {}),
      routeProtocol: config.dataplane.routeProtocol,
      learnedProtocol: config.dataplane.learnedProtocol,
      netdevGroup: config.dataplane.netdevGroup,
      nat: report.nat,
    },
    reconcile: {
      ...(report.at ? { at: report.at, durationMs: report.durationMs } : {}),
      passes: extra.passes,
      operationsApplied: extra.operationsApplied,
      passesByTrigger: extra.passesByTrigger,
    },
  };
}
