import { vmEndpoints, type VmEndpoints } from "../libvirt/domains.js";
import { InputError } from "../model/errors.js";
import { EndpointClaims, networkPrefix, resolveDesired, type ResolvedDesired } from "../model/resolve.js";
import { formatIpv4 } from "../model/ipv4.js";
import { filterImports, importRanges, type ImportVerdict } from "../bgp/import-filter.js";
import type { NetworkInput } from "../model/spec.js";
import { endpointId, type DesiredState, type HeldEndpoint } from "../model/types.js";
import type { DomainRecord } from "../libvirt/domains.js";
import type { Desired } from "./desired.js";
import type { RuntimeState } from "./stored.js";

// Pure: the desired state as the planner needs it, resolved from what was
// stored: runtime networks and endpoints, VM endpoints from the libvirt
// domains, and the learned routes worth installing. Each part is resolved
// again only when its input changed (hooks change domains, not the 10,000
// endpoints of a spec), and unchanged parts keep their objects, so the
// reconciler's change detection is mostly identity checks.

export interface Resolved {
  state: DesiredState;
  /** VM interfaces that cannot be served, with why (status, logs). */
  rejected: VmEndpoints["rejected"];
  /** Every stored entry that does not resolve, one line each (held: kept as found and reported degraded). */
  problems: string[];
  /** The import filter's verdict on the learned paths it did not install (bgp/import-filter.ts). */
  imports: Omit<ImportVerdict, "install">;
}

type RuntimePart = Pick<ResolvedDesired, "networks" | "endpoints" | "held" | "problems">;

export interface ResolveContext {
  configNetworks: Record<string, NetworkInput>;
  /** This host's next hops: a path via either is our own. */
  nodeAddress: string;
  nodeAddress6?: string;
  /** bgp.importPrefixes (empty: the networks' prefixes). */
  importPrefixes?: readonly string[];
  /** bgp.maxLearned. */
  maxLearned?: number;
}

export class DesiredResolver {
  /** By stored object: the writer's validation compares the previous state with the next, each resolved once. */
  private readonly runtimes = new WeakMap<RuntimeState, RuntimePart>();
  private last: { input: Desired; value: Resolved } | undefined;
  /** What the last resolution installed: past bgp.maxLearned it stays, and only new prefixes wait. */
  private installed: ReadonlySet<string> = new Set();

  constructor(private readonly context: ResolveContext) {}

  /**
   * The runtime part resolved: entries that do not resolve are held, not fatal
   * (a network taken out of the config must not stop the daemon). Throws only
   * when the config networks themselves do not resolve.
   */
  runtimePart(runtime: RuntimeState): RuntimePart {
    const known = this.runtimes.get(runtime);
    if (known) return known;
    const r = resolveDesired({ configNetworks: this.context.configNetworks, runtimeNetworks: runtime.networks, endpoints: runtime.endpoints });
    if (!r.ok) throw new InputError(r.error);
    const { networks, endpoints, held, problems } = r.value;
    const value = { networks, endpoints, held, problems };
    this.runtimes.set(runtime, value);
    return value;
  }

  /**
   * The writer's validation: a change may not add a problem. Entries that were
   * already held stay held (their owner fixes or removes them); anything new
   * that does not resolve is refused, with its line, and nothing changes.
   */
  refuseNewProblems(next: RuntimeState, previous: RuntimeState): void {
    const before = new Set(this.runtimePart(previous).problems);
    const added = this.runtimePart(next).problems.find((p) => !before.has(p));
    if (added) throw new InputError(added);
  }

  resolve(desired: Desired): Resolved {
    if (this.last?.input === desired) return this.last.value;
    const runtime = this.runtimePart(desired.runtime);
    // Runtime endpoints first (they resolved together), then the domains' interfaces against them.
    const claims = new EndpointClaims(runtime.networks);
    for (const e of runtime.endpoints) claims.claim(e);
    const vm = vmEndpoints(desired.domains.values(), runtime.networks, claims);
    const endpoints = [...runtime.endpoints, ...vm.endpoints];
    // A domain interface that cannot be served keeps its tap as found (qemu may hold it).
    const held = [...runtime.held, ...vm.rejected.map((r) => heldInterface(r, desired.domains.get(r.domain)))];
    const verdict = filterImports(desired.learned.values(), endpoints, {
      nodeAddress: this.context.nodeAddress, ...(this.context.nodeAddress6 ? { nodeAddress6: this.context.nodeAddress6 } : {}), maxLearned: this.context.maxLearned ?? Infinity, facts: desired.hostFacts,
      claims: desired.remoteClaims,
      ranges: importRanges(this.context.importPrefixes ?? [], runtime.networks.flatMap((n) => {
        const p = networkPrefix(n);
        return [`${formatIpv4(p.base)}/${p.length}`, ...(n.prefix6 !== undefined ? [n.prefix6] : [])];
      })),
    }, this.installed);
    this.installed = new Set(verdict.install.map((r) => r.prefix));
    const { install, ...imports } = verdict;
    const value: Resolved = {
      state: {
        networks: runtime.networks, endpoints, learned: install,
        learnedKnown: desired.learnedKnown, held, domainsKnown: desired.domainsKnown,
      },
      imports,
      rejected: vm.rejected,
      problems: [...runtime.problems, ...vm.rejected.map((r) => `domain '${r.domain}' ${r.ip}: ${r.reason}`)],
    };
    this.last = { input: desired, value };
    return value;
  }
}

function heldInterface(r: VmEndpoints["rejected"][number], domain: DomainRecord | undefined): HeldEndpoint {
  const i = domain?.interfaces.find((x) => x.ip === r.ip);
  return {
    id: endpointId("vm", r.ip), kind: "vm", network: i?.network ?? "", ip: r.ip, domain: r.domain, reason: r.reason,
    ...(i ? { device: i.tap } : {}),
  };
}
