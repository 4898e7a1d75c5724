import type { Logger } from "pino";
import { listNatTable, NftUnavailableError } from "../dataplane/nft.js";
import { emptyHostFacts } from "../bgp/import-filter.js";
import { observe, observeVethNetns } from "../dataplane/observe.js";
import { InputError } from "../model/errors.js";
import type { NetworkInput } from "../model/spec.js";
import type { Desired } from "../state/desired.js";
import { domainsFile, runtimeFile } from "../state/stored.js";
import { rebuildRuntimeState } from "./rebuild.js";

// Loading the desired state at start, with the state files' one policy
// (state/files.ts): a file that cannot be used is never taken as "nothing
// desired" (the first pass would then delete every endpoint). state.json is
// rebuilt from what vmrouted marked in the kernel (its devices, and its
// nftables table for natOutgoing); if the kernel cannot explain everything
// we own, we stop, changing nothing. domains.json is
// rebuilt from libvirt, which is read before the first pass anyway.

export async function loadDesired(
  stateDir: string, configNetworks: Record<string, NetworkInput>, importsRoutes: boolean, libvirtEnabled: boolean, log: Logger,
  routeProtocol: number,
): Promise<Desired> {
  const stateFile = runtimeFile(stateDir);
  const domainsCache = domainsFile(stateDir);
  const [state, domains] = await Promise.all([stateFile.load(), domainsCache.load()]);
  let runtime = state.value;
  if (state.state === "corrupt") {
    const [observed, veths, nat] = await Promise.all([observe({ netns: [] }), observeVethNetns(), readNatTable(state.problem)]);
    const rebuilt = rebuildRuntimeState(observed, veths, nat, configNetworks, routeProtocol);
    if (rebuilt.problems.length)
      throw new InputError(`${state.problem}; cannot rebuild it from the kernel (${rebuilt.problems.length} problem(s), first: ${rebuilt.problems[0]}); nothing was changed`);
    const kept = await stateFile.keepAside();
    await stateFile.save(rebuilt.state);
    runtime = rebuilt.state;
    const counts = { networks: Object.keys(runtime.networks).length, endpoints: runtime.endpoints.length };
    log.error({ kept, ...counts },
      `${state.problem}; kept it as ${kept} and rebuilt the state from the kernel: ${counts.networks} runtime network(s), ${counts.endpoints} tap/netns endpoint(s)`);
  }
  if (domains.state === "corrupt") {
    const kept = await domainsCache.keepAside();
    log.error({ kept }, `${domains.problem}; kept it as ${kept}; VM taps, routes and paths are kept as found until libvirt answers`);
  }
  // Without an importer there is nothing to wait for: learned routes left from an earlier config are removed.
  // Without a usable cache the domains are unknown until libvirt answers (a missing file on a host that never
  // ran a VM costs nothing: there is nothing vm-class to keep).
  return {
    runtime, domains: domains.value.domains, learned: new Map(), learnedKnown: !importsRoutes,
    domainsKnown: !libvirtEnabled || (domains.state === "ok" && domains.value.complete),
    // Filled in from the kernel and gobgpd before anything is imported (main.ts).
    hostFacts: emptyHostFacts(),
    remoteClaims: new Map(),
  };
}

/**
 * The NAT table, for which networks had natOutgoing. Without nft there can be
 * no table of ours; a table that cannot be read stops us (rebuilt without
 * natOutgoing, the first pass would remove the masquerade).
 */
async function readNatTable(problem: string) {
  try {
    return await listNatTable();
  } catch (e) {
    if (e instanceof NftUnavailableError) return undefined;
    throw new InputError(`${problem}; cannot rebuild it from the kernel (${(e as Error).message}); nothing was changed`);
  }
}
