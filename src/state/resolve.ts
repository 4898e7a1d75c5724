import { vmEndpoints, type VmEndpoints } from "../libvirt/domains.js";
import { InputError } from "../model/errors.js";
import { resolveDesired } from "../model/resolve.js";
import type { NetworkInput } from "../model/spec.js";
import type { DesiredState, Endpoint, LearnedRoute } from "../model/types.js";
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
}

export interface ResolveContext {
  configNetworks: Record<string, NetworkInput>;
  /** This host's next hop: a path via it is our own. */
  nodeAddress: string;
}

export class DesiredResolver {
  private runtime: { input: RuntimeState; value: Pick<DesiredState, "networks" | "endpoints"> } | undefined;
  private last: { input: Desired; value: Resolved } | undefined;

  constructor(private readonly context: ResolveContext) {}

  /** Throws an InputError when the runtime part does not resolve (the writer's validation uses this). */
  runtimePart(runtime: RuntimeState): Pick<DesiredState, "networks" | "endpoints"> {
    if (this.runtime?.input === runtime) return this.runtime.value;
    const r = resolveDesired({ configNetworks: this.context.configNetworks, runtimeNetworks: runtime.networks, endpoints: runtime.endpoints });
    if (!r.ok) throw new InputError(r.error);
    this.runtime = { input: runtime, value: { networks: r.value.networks, endpoints: r.value.endpoints } };
    return this.runtime.value;
  }

  resolve(desired: Desired): Resolved {
    if (this.last?.input === desired) return this.last.value;
    const runtime = this.runtimePart(desired.runtime);
    const claims = new Set<string>();
    for (const e of runtime.endpoints) claims.add(e.ip).add(`dev:${e.device}`);
    const vm = vmEndpoints(desired.domains.values(), runtime.networks, claims);
    const endpoints = [...runtime.endpoints, ...vm.endpoints];
    const value: Resolved = {
      state: {
        networks: runtime.networks, endpoints, learned: installableRoutes(desired.learned.values(), endpoints, this.context.nodeAddress),
        learnedKnown: desired.learnedKnown,
      },
      rejected: vm.rejected,
    };
    this.last = { input: desired, value };
    return value;
  }
}

/**
 * The learned routes to install: never a path back to this host, and never a
 * prefix a local workload answers for, unless the remote path is the elevated
 * one of a VM that just moved there (it must win over our /32 until we let go).
 */
export function installableRoutes(learned: Iterable<LearnedRoute>, endpoints: Endpoint[], nodeAddress: string): LearnedRoute[] {
  const local = new Map(endpoints.filter((e) => e.deviceOnly === undefined).map((e) => [`${e.ip}/32`, e]));
  const result: LearnedRoute[] = [];
  for (const r of learned) {
    if (r.nextHop === nodeAddress) continue;
    const mine = local.get(r.prefix);
    if (mine && !(r.elevated && !mine.elevated)) continue;
    result.push(r);
  }
  return result.sort((a, b) => (a.prefix < b.prefix ? -1 : a.prefix > b.prefix ? 1 : 0));
}
