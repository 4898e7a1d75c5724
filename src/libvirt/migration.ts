// Live migration, per domain, on each host (pure; Calico's model for KubeVirt
// and OpenStack). The interface spec travels in the domain XML and tap names
// and MACs are the same everywhere; what needs a rule is which host the
// fabric sends the VM's traffic to, and when.
//
// Destination:
//   `migrate begin`           → target: tap made, no route, no announcement
//                               (the VM still runs on the source)
//   first GARP/RARP from the guest's MAC on the tap (QEMU announces the
//   guest right after the switch-over), or libvirt's resume event
//                             → settling: route at the elevated metric, path
//                               announced with higher local-pref and the
//                               migration community: every host prefers it
//   settle time over, and no other host announces the IP any more
//                             → normal
//   `stopped end` while a target (cancelled, failed) → nothing left
// Source:
//   an elevated path from another host for one of its running VM's IPs
//                             → handed over: its own path is withdrawn (the
//                               route stays; the elevated learned route wins
//                               in the kernel by its metric), until the
//                               domain stops or starts again. Sticky: when the
//                               destination drops its elevation, the source
//                               must not come back with a normal path.
// So no two hosts ever announce normal paths for one IP (the property test).

export type MigrationPhase = "target" | "settling" | "source";

export interface Migration {
  phase: MigrationPhase;
  /** When this phase began (ms since the epoch). */
  since: number;
  /** What made a target live: the guest's own announcement, or libvirt's resume event. */
  liveBy?: "garp" | "rarp" | "resume";
}

/** `migrate begin` on this host: an incoming migration. */
export function incoming(now: number): Migration {
  return { phase: "target", since: now };
}

/** The guest runs here now (its announcement seen, or libvirt resumed it). Only a target goes live. */
export function wentLive(m: Migration | undefined, by: NonNullable<Migration["liveBy"]>, now: number): Migration | undefined {
  return m?.phase === "target" ? { phase: "settling", since: now, liveBy: by } : m;
}

/**
 * Settling ends when the settle time is over and no other host announces the
 * IP (the source has withdrawn): before that, dropping the elevation could
 * leave two hosts with normal paths.
 */
export function settled(m: Migration | undefined, now: number, settleMs: number, othersAnnounce: boolean): boolean {
  return m?.phase === "settling" && now - m.since >= settleMs && !othersAnnounce;
}

/** A running VM whose IP another host now announces elevated: it was migrated away. */
export function handedOver(m: Migration | undefined, lifecycle: string, remoteElevated: boolean, now: number): Migration | undefined {
  if (m !== undefined || lifecycle !== "running" || !remoteElevated) return m;
  return { phase: "source", since: now };
}

/** The migration state after a hook call for the domain. */
export function afterHook(m: Migration | undefined, op: string, subop: string, now: number): Migration | undefined {
  switch (`${op}/${subop}`) {
    case "migrate/begin":
      return incoming(now);
    // An incoming migration's own prepare, start and started keep its phase (whatever order the
    // guest's announcement comes in); a plain start of a domain handed over earlier begins afresh.
    case "prepare/begin":
    case "start/begin":
    case "started/begin":
      return m?.phase === "source" ? undefined : m;
    // libvirtd restarted and found the domain running: nothing about it changed.
    case "reconnect/begin":
      return m;
    case "stopped/end":
    case "release/end":
      return undefined;
    default:
      return m;
  }
}

/** What a host announces for a VM's IP. */
export function announcement(lifecycle: string, m: Migration | undefined): "none" | "normal" | "elevated" {
  if (lifecycle !== "running" && lifecycle !== "prepared") return "none";
  if (m?.phase === "target" || m?.phase === "source") return "none";
  if (m?.phase === "settling") return "elevated";
  return lifecycle === "running" ? "normal" : "none";
}
