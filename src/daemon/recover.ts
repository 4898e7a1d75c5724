import type { Logger } from "pino";
import { observe, observeVethNetns } from "../dataplane/observe.js";
import { InputError } from "../model/errors.js";
import type { NetworkInput } from "../model/spec.js";
import { rebuildRuntimeState } from "./rebuild.js";
import { CorruptStateError, type RuntimeState, type StateStore } from "./store.js";

// Loading the runtime state at start. A corrupt state file is never taken as
// "nothing desired" (the first pass would then delete every endpoint): it is
// kept aside, and the state is rebuilt from what vmrouted marked in the
// kernel. If the kernel cannot explain everything we own, we stop, changing nothing.

export async function loadRuntimeState(store: StateStore, configNetworks: Record<string, NetworkInput>, log: Logger): Promise<RuntimeState> {
  try {
    return await store.load();
  } catch (e) {
    if (!(e instanceof CorruptStateError)) throw e;
    const [observed, veths] = await Promise.all([observe({ netns: [] }), observeVethNetns()]);
    const rebuilt = rebuildRuntimeState(observed, veths, configNetworks);
    if (rebuilt.problems.length)
      throw new InputError(`${e.message}; cannot rebuild it from the kernel (${rebuilt.problems.length} problem(s), first: ${rebuilt.problems[0]}); nothing was changed`);
    const kept = await store.quarantine();
    await store.save(rebuilt.state);
    const counts = { networks: Object.keys(rebuilt.state.networks).length, endpoints: rebuilt.state.endpoints.length };
    log.error({ kept, ...counts },
      `${e.message}; kept it as ${kept} and rebuilt the state from the kernel: ${counts.networks} runtime network(s), ${counts.endpoints} tap/netns endpoint(s)`);
    return rebuilt.state;
  }
}
