import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { rebuildRuntimeState } from "../../src/daemon/rebuild.js";
import { desiredNat, NAT_SET, parseNftTable, type NatTable } from "../../src/dataplane/nat.js";
import type { ObservedState } from "../../src/dataplane/observed.js";
import { plan } from "../../src/dataplane/plan.js";
import { resolveDesired } from "../../src/model/resolve.js";
import type { EndpointInput, NetworkInput } from "../../src/model/spec.js";
import type { DesiredState } from "../../src/model/types.js";
import { applyToModel } from "../helpers/fake-kernel.js";
import { observedWithNetns, settings } from "../helpers/fixtures.js";

// Rebuilding state.json from the kernel (a corrupt file): natOutgoing lives in
// no device, only in vmrouted's nftables table, which is read for it. The
// networks are those of test/fixtures/nft-vmrouted.json, a real `nft -j` listing
// (service and tenant masqueraded, extra not).

const CONFIG: Record<string, NetworkInput> = { service: { gateway: "172.31.16.1/24", natOutgoing: true } };
const RUNTIME: Record<string, NetworkInput> = { extra: { gateway: "172.31.17.1/24" }, tenant: { gateway: "10.20.0.1/16", natOutgoing: true } };
const ENDPOINTS: EndpointInput[] = [
  { kind: "tap", network: "extra", ip: "172.31.17.5" },
  { kind: "tap", network: "tenant", ip: "10.20.3.4" },
];
const nftListing = () => parseNftTable(JSON.parse(readFileSync(join(import.meta.dirname, "../fixtures/nft-vmrouted.json"), "utf8")));

function resolve(runtimeNetworks: Record<string, NetworkInput>, endpoints: EndpointInput[]): DesiredState {
  const r = resolveDesired({ configNetworks: CONFIG, runtimeNetworks, endpoints });
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

/** The kernel as vmrouted leaves it for a desired state (planned and applied on the kernel model until nothing is left). */
function kernelFor(d: DesiredState): ObservedState {
  let s = observedWithNetns();
  for (let i = 0; i < 4; i++) {
    const ops = plan(d, s, settings).operations;
    if (ops.length === 0) return s;
    s = applyToModel(s, ops);
  }
  throw new Error("did not converge");
}

describe("rebuilding runtime state from the kernel", () => {
  it("keeps natOutgoing of a network whose prefix is in the NAT table's masquerade set", () => {
    const rebuilt = rebuildRuntimeState(kernelFor(resolve(RUNTIME, ENDPOINTS)), new Map(), nftListing(), CONFIG, settings.routeProtocol);
    expect(rebuilt.problems).toEqual([]);
    // As an operator writes it: natOutgoing only where it is true.
    expect(rebuilt.state.networks).toEqual(RUNTIME);
    // So the first pass masquerades what the kernel's table does: nothing is taken out of it.
    const natSet = (t: NatTable | undefined) => t?.sets.find((s) => s.name === NAT_SET)?.elements;
    expect(natSet(desiredNat(resolve(rebuilt.state.networks, rebuilt.state.endpoints)))).toEqual(natSet(nftListing()));
  });

  it("gives a network no natOutgoing when there is no NAT table, or its prefix is not in the set", () => {
    const kernel = kernelFor(resolve(RUNTIME, ENDPOINTS));
    const noNat = { extra: { gateway: "172.31.17.1/24" }, tenant: { gateway: "10.20.0.1/16" } };
    expect(rebuildRuntimeState(kernel, new Map(), undefined, CONFIG, settings.routeProtocol).state.networks).toEqual(noNat);
    // Only the set of masqueraded prefixes counts, not the set of every workload prefix.
    const table = nftListing()!;
    const onlyAll = { ...table, sets: table.sets.map((s) => (s.name === NAT_SET ? { ...s, elements: ["172.31.16.0/24"] } : s)) };
    expect(rebuildRuntimeState(kernel, new Map(), onlyAll, CONFIG, settings.routeProtocol).state.networks).toEqual(noNat);
  });
});
