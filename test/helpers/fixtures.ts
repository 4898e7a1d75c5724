import { emptyObserved, type ObservedState } from "../../src/dataplane/observed.js";
import type { PlanSettings } from "../../src/dataplane/plan.js";
import { resolveDesired } from "../../src/model/resolve.js";
import type { EndpointInput, NetworkInput } from "../../src/model/spec.js";
import type { DesiredState } from "../../src/model/types.js";

export const settings: PlanSettings = { routeProtocol: 94, learnedProtocol: 96, routeMetric: 1024, netdevGroup: 94, teardownGroup: 95, gatewayKind: "bridge" };

export const SERVICE: NetworkInput = { gateway: "172.31.16.1/24" };

/** `service` is the config network (its settings: `service`); `networks` are runtime ones. */
export function desired(endpoints: EndpointInput[], networks: Record<string, NetworkInput> = {}, service: NetworkInput = SERVICE): DesiredState {
  const r = resolveDesired({ configNetworks: { service }, runtimeNetworks: networks, endpoints });
  if (!r.ok) throw new Error(r.error);
  return r.value;
}

export function observedWithNetns(...names: string[]): ObservedState {
  const o = emptyObserved();
  o.ipForward = "0";
  for (const n of names) o.netns.set(n, { exists: true });
  return o;
}

export const tap = (ip: string, extra: Partial<EndpointInput> = {}): EndpointInput => ({ kind: "tap", network: "service", ip, ...extra } as EndpointInput);
export const netns = (ip: string, ns: string): EndpointInput => ({ kind: "netns", network: "service", ip, netns: ns });
