import type { Config } from "../config/schema.js";
import type { ReconcileReport } from "./reconciler.js";
import type { EndpointStatus, NetworkStatus } from "./report.js";

// The reported state as the API returns it (`vmroutectl status -o json`).

export interface BgpStatus {
  enabled: boolean;
  /** gobgpd API connection: disabled | connecting | up | down */
  state: string;
  reason?: string;
  peers: Array<{ address: string; state: string; uptimeSeconds?: number; prefixesSent?: number }>;
  announced: number;
}

export interface Status {
  node: { name: string; address: string };
  networks: NetworkStatus[];
  endpoints: EndpointStatus[];
  bgp: BgpStatus;
  libvirt: { enabled: boolean; state: string; reason?: string; rejected: Array<{ domain: string; ip: string; reason: string }> };
  dataplane: { gatewayKind: string; gatewayKindReason?: string; routeProtocol: number; netdevGroup: number };
  reconcile: { at?: string; durationMs?: number; passes: number; operationsApplied: number };
}

export function buildStatus(
  config: Config,
  report: ReconcileReport | undefined,
  extra: { bgp: BgpStatus; libvirt: Status["libvirt"]; gatewayKind: { kind: string; reason?: string }; passes: number; operationsApplied: number },
): Status {
  return {
    node: { name: config.node.name, address: config.node.address },
    networks: report?.networks ?? [],
    endpoints: report?.endpoints ?? [],
    bgp: extra.bgp,
    libvirt: extra.libvirt,
    dataplane: {
      gatewayKind: extra.gatewayKind.kind,
      ...(extra.gatewayKind.reason ? { gatewayKindReason: extra.gatewayKind.reason } : {}),
      routeProtocol: config.dataplane.routeProtocol,
      netdevGroup: config.dataplane.netdevGroup,
    },
    reconcile: {
      ...(report ? { at: report.at, durationMs: report.durationMs } : {}),
      passes: extra.passes,
      operationsApplied: extra.operationsApplied,
    },
  };
}
