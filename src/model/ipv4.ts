// IPv4 addresses and prefixes as plain numbers: enough for /32 host routes and
// gateway subnets, with no dependency and no surprises from lenient parsers
// (inet_aton accepts "1.2.3" and "0x7f.1"; we accept only dotted quads).

const QUAD = /^(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$/;

export function parseIpv4(text: string): number | undefined {
  const m = QUAD.exec(text);
  if (!m) return undefined;
  let value = 0;
  for (let i = 1; i <= 4; i++) {
    const octet = Number(m[i]);
    if (octet > 255) return undefined;
    value = value * 256 + octet;
  }
  return value;
}

export function isIpv4(text: string): boolean {
  return parseIpv4(text) !== undefined;
}

export function formatIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join(".");
}

export interface Prefix {
  /** The address as written (for a gateway, the gateway's own address). */
  address: string;
  length: number;
  /** First address of the prefix. */
  base: number;
  size: number;
}

export function parsePrefix(text: string): Prefix | undefined {
  const slash = text.indexOf("/");
  if (slash < 0) return undefined;
  const address = text.slice(0, slash);
  const lengthText = text.slice(slash + 1);
  if (!/^(0|[1-9]\d?)$/.test(lengthText)) return undefined;
  const length = Number(lengthText);
  const value = parseIpv4(address);
  if (value === undefined || length > 32) return undefined;
  const size = 2 ** (32 - length);
  return { address, length, base: value - (value % size), size };
}

export function prefixContains(prefix: Prefix, ip: string): boolean {
  const value = parseIpv4(ip);
  return value !== undefined && value >= prefix.base && value < prefix.base + prefix.size;
}

export function prefixesOverlap(a: Prefix, b: Prefix): boolean {
  return a.base < b.base + b.size && b.base < a.base + a.size;
}

export function isLoopback(ip: string): boolean {
  const value = parseIpv4(ip);
  return value !== undefined && Math.floor(value / 2 ** 24) === 127;
}

/** Addresses that can never be a workload or a next hop. */
export function isUnusableHostAddress(ip: string): boolean {
  const value = parseIpv4(ip);
  if (value === undefined) return true;
  const first = Math.floor(value / 2 ** 24);
  return value === 0 || first === 0 || first >= 224 || value === 0xffffffff;
}
