import ipaddr from "ipaddr.js";

// IPv6 addresses and prefixes. Parsing IPv6 by hand is where agents get it
// wrong (zone ids, embedded IPv4, the many spellings of one address), so this
// uses ipaddr.js (the parser under express's proxy-addr; no dependencies) and
// gives every address one spelling: RFC 5952's, which is also what iproute2
// and GoBGP print. Comparing strings is then comparing addresses.

/**
 * Parsed texts, remembered: the same few thousand addresses are parsed again and
 * again (each path built, encoded and decoded back from gobgpd's stream), and
 * ipaddr.js takes microseconds each: 2,000 /128s cost 50-250 ms a pass without
 * this. Bounded: emptied when full.
 */
const MEMO_MAX = 200_000;
const canonicalMemo = new Map<string, string | null>();

/** The RFC 5952 form of an IPv6 address, or undefined (zone ids and IPv4 text are refused). */
export function canonicalIpv6(text: string): string | undefined {
  const known = canonicalMemo.get(text);
  if (known !== undefined) return known ?? undefined;
  const value = text.includes("%") || !text.includes(":") || !ipaddr.IPv6.isValid(text) ? null : ipaddr.IPv6.parse(text).toRFC5952String();
  if (canonicalMemo.size >= MEMO_MAX) canonicalMemo.clear();
  canonicalMemo.set(text, value);
  return value ?? undefined;
}

export function isIpv6(text: string): boolean {
  return canonicalIpv6(text) !== undefined;
}

export interface Prefix6 {
  /** The prefix's first address, RFC 5952. */
  base: string;
  length: number;
  /** "base/length" */
  text: string;
}

/** "fd31:16::/64": an IPv6 prefix written with its base address (host bits zero). */
export function parsePrefix6(text: string): Prefix6 | undefined {
  const slash = text.indexOf("/");
  if (slash < 0) return undefined;
  const lengthText = text.slice(slash + 1);
  if (!/^(0|[1-9]\d{0,2})$/.test(lengthText) || Number(lengthText) > 128) return undefined;
  const base = canonicalIpv6(text.slice(0, slash));
  if (!base) return undefined;
  const length = Number(lengthText);
  const network = ipaddr.IPv6.networkAddressFromCIDR(`${base}/${length}`).toRFC5952String();
  if (network !== base) return undefined;
  return { base, length, text: `${base}/${length}` };
}

/** The prefix of that length an address lies in, as "base/length" (an address on a link and its connected prefix). */
export function prefix6Of(ip: string, length: number): string | undefined {
  const canonical = canonicalIpv6(ip);
  if (!canonical || length < 0 || length > 128) return undefined;
  return `${ipaddr.IPv6.networkAddressFromCIDR(`${canonical}/${length}`).toRFC5952String()}/${length}`;
}

export function isLinkLocal6(ip: string): boolean {
  const canonical = canonicalIpv6(ip);
  return canonical !== undefined && ipaddr.IPv6.parse(canonical).range() === "linkLocal";
}

/** A canonical IPv6 address as a 128-bit number (for prefix arithmetic on many addresses). */
export function ipv6Value(canonical: string): bigint {
  let v = 0n;
  for (const b of ipaddr.IPv6.parse(canonical).toByteArray()) v = (v << 8n) | BigInt(b);
  return v;
}

export function prefix6Contains(prefix: Prefix6, ip: string): boolean {
  const canonical = canonicalIpv6(ip);
  return canonical !== undefined && ipaddr.IPv6.parse(canonical).match(ipaddr.IPv6.parse(prefix.base), prefix.length);
}

export function prefixes6Overlap(a: Prefix6, b: Prefix6): boolean {
  const shorter = a.length <= b.length ? a : b;
  const longer = shorter === a ? b : a;
  return prefix6Contains(shorter, longer.base);
}

/**
 * Addresses that can be neither a workload nor a next hop: unspecified,
 * loopback, multicast, link-local (not routable), IPv4-mapped/compatible
 * (an IPv6 next hop like ::ffff:10.1.1.3 is the bug DESIGN.md rules out).
 */
export function isUnusableIpv6Host(ip: string): boolean {
  const canonical = canonicalIpv6(ip);
  if (!canonical) return true;
  let unusable = unusableMemo.get(canonical);
  if (unusable === undefined) {
    unusable = UNUSABLE_RANGES.has(ipaddr.IPv6.parse(canonical).range());
    if (unusableMemo.size >= MEMO_MAX) unusableMemo.clear();
    unusableMemo.set(canonical, unusable);
  }
  return unusable;
}

const UNUSABLE_RANGES = new Set(["unspecified", "loopback", "multicast", "linkLocal", "ipv4Mapped", "rfc6145", "rfc6052"]);
const unusableMemo = new Map<string, boolean>();

/**
 * The EUI-64 link-local address the kernel gives a device with this MAC
 * (addr_gen_mode eui64, the default): fe80:: + the MAC with the U/L bit
 * flipped and ff:fe in the middle. A tap's MAC is the same on every host, so
 * this address, the guest's IPv6 gateway, is too.
 */
export function linkLocalFromMac(mac: string): string {
  const b = mac.split(":").map((h) => parseInt(h, 16));
  const eui = [b[0]! ^ 0x02, b[1]!, b[2]!, 0xff, 0xfe, b[3]!, b[4]!, b[5]!];
  const groups = [0, 2, 4, 6].map((i) => ((eui[i]! << 8) | eui[i + 1]!).toString(16));
  return canonicalIpv6(`fe80::${groups.join(":")}`)!;
}

/** The host prefix of a workload or next-hop address: `/32`, or `/128` for IPv6. */
export function hostPrefix(ip: string): string {
  return ip.includes(":") ? `${ip}/128` : `${ip}/32`;
}

/** A workload's addresses, IPv4 first: each gets a host route, a neighbour entry and a path. */
export function endpointIps(e: { ip: string; ip6?: string | undefined }): string[] {
  return e.ip6 !== undefined ? [e.ip, e.ip6] : [e.ip];
}

/** A route destination as iproute2 prints it (a host route without its length, `default`) in our form. */
export function routeDst(word: string, ipv6: boolean): string {
  if (word === "default") return ipv6 ? "::/0" : "0.0.0.0/0";
  return word.includes("/") ? word : hostPrefix(word);
}
