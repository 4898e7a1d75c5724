import { createHash } from "node:crypto";

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export function normalizeMac(text: string): string | undefined {
  const lower = text.toLowerCase();
  return MAC.test(lower) ? lower : undefined;
}

/** A guest MAC must be unicast (multicast bit clear) and not all zeros. */
export function isUsableGuestMac(mac: string): boolean {
  const first = parseInt(mac.slice(0, 2), 16);
  return (first & 1) === 0 && mac !== "00:00:00:00:00:00";
}

/**
 * The host-side MAC of a tap or veth, derived from the guest MAC only, so that
 * it is the same on every host: a live-migrated guest keeps its cached ARP
 * entry for the gateway. 0xfe as first octet is locally administered unicast
 * (libvirt does the same for the taps it creates).
 */
export function hostSideMac(guestMac: string): string {
  return "fe" + guestMac.slice(2);
}

/** A guest MAC chosen for an endpoint that was given none: stable for its network and IP. */
export function defaultGuestMac(network: string, ip: string): string {
  const digest = createHash("sha256").update(`${network}/${ip}`).digest();
  const tail = [digest[0], digest[1], digest[2]].map((b) => (b ?? 0).toString(16).padStart(2, "0"));
  return ["52", "54", "00", ...tail].join(":");
}
