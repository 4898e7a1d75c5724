import type { DhcpStatus } from "../dataplane/dhcp/dnsmasq.js";
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
  importer?: {
    state: string; reason?: string; corrections: number;
    /** Learned paths the import filter refuses now, by reason (the list: GET /v1/routes?rejected). */
    rejected: Record<string, number>;
    /** bgp.maxLearned, and whether it keeps new prefixes out now. */
    maxLearned: number; limited: boolean;
    /** Local endpoints another host announces too. */
    duplicates: number;
  };
}

/** stateDir writes: failing since the first failed write, until one succeeds (files.ts). */
export interface StorageStatus {
  state: "ok" | "failing";
  reason?: string;
  since?: string;
}

export interface Status {
  version: string;
  /** running: the first pass has run (before it, status answers a StartingStatus and other calls wait). */
  state: "running";
  node: { name: string; address: string; address6?: string };
  /** Stored entries that do not resolve (held as found, reported degraded), one line each. */
  problems: string[];
  storage: StorageStatus;
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
  /** The DHCP manager: one dnsmasq answering the DHCP networks' taps (dataplane/dhcp). */
  dhcp?: DhcpStatus;
  reconcile: {
    at?: string; durationMs?: number; passes: number; operationsApplied: number; passesByTrigger: Record<string, number>;
    /** Consecutive failed passes (each retried with a backoff), and the last one's error. */
    failing: number; lastError?: { at: string; message: string };
  };
}

/** What `GET /v1/status` answers before the first pass. */
export interface StartingStatus {
  version: string;
  state: "starting";
  node: { name: string; address: string; address6?: string };
  reason: string;
}

export function startingStatus(config: Config, reason: string): StartingStatus {
  return { version: VERSION, state: "starting", node: nodeOf(config), reason };
}

export function buildStatus(
  config: Config,
  report: ReconcileReport,
  extra: {
    bgp: BgpStatus; libvirt: Status["libvirt"]; gatewayKind: { kind: string; reason?: string };
    passes: number; operationsApplied: number; passesByTrigger: Record<string, number>;
    problems: string[]; storage: StorageStatus; failing: number; lastError?: { at: string; message: string };
  },
): Status {
  const learned: LearnedStatus[] = report.learned;
  return {
    version: VERSION,
    state: "running",
    node: nodeOf(config),
    problems: extra.problems,
    storage: extra.storage,
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
      failing: extra.failing,
      ...(extra.lastError ? { lastError: extra.lastError } : {}),
    },
  };
}

function nodeOf(config: Config): Status["node"] {
  return { name: config.node.name, address: config.node.address, ...(config.node.address6 ? { address6: config.node.address6 } : {}) };
}
