import { z } from "zod";
import { isIpv4 } from "./ipv4.js";

// The declarative spec (`vmroutectl apply -f`, PUT /v1/spec) and the single
// endpoint requests of the CLI share these shapes. Shapes only: whether an
// address fits a network is checked in resolve.ts, against the whole state.

/** RFC 1035 labels, dot-separated, no trailing dot. */
const DNS_DOMAIN = /^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/;

export const networkInputSchema = z
  .object({
    gateway: z.string({ required_error: "is required" }),
    /** The network's IPv6 prefix (like fd31:16::/64): endpoints may then have an ip6 in it. */
    prefix6: z.string().optional(),
    /** Masquerade traffic from this network to destinations outside every vmrouted network. */
    natOutgoing: z.boolean().optional(),
    /** dnsmasq answers DHCP for this network's taps (static leases from the endpoint table). Default on. */
    dhcp: z.boolean().optional(),
    /** The taps' and veths' MTU, and DHCP option 26 (the guest's). Default: the kernel's (1500). */
    mtu: z.number({ invalid_type_error: "must be a number" }).int("must be a whole number")
      .min(68, "must be between 68 and 65535 (IPv4's minimum and the largest IP packet)").max(65535, "must be between 68 and 65535 (IPv4's minimum and the largest IP packet)")
      .optional(),
    /** DNS servers handed out by DHCP (option 6); vmrouted serves no DNS itself. */
    dns: z.array(z.string().refine(isIpv4, "must be an IPv4 address")).max(8, "at most 8 servers").optional(),
    /** Search domain handed out by DHCP (option 15). */
    domain: z.string().regex(DNS_DOMAIN, "must be a DNS domain name (like example.internal)").optional(),
    /** DHCP lease time; dnsmasq's minimum is 120 s. Default 3600. */
    leaseSeconds: z.number({ invalid_type_error: "must be a number" }).int("must be a whole number")
      .min(120, "must be at least 120 (dnsmasq's shortest lease)").max(31_536_000, "must be at most 31536000 (a year)").optional(),
  })
  .strict();

const tapInput = z
  .object({
    kind: z.literal("tap"),
    network: z.string(),
    ip: z.string(),
    ip6: z.string().optional(),
    mac: z.string().optional(),
    name: z.string().optional(),
  })
  .strict();

const netnsInput = z
  .object({
    kind: z.literal("netns"),
    network: z.string(),
    ip: z.string(),
    ip6: z.string().optional(),
    mac: z.string().optional(),
    netns: z.string(),
    /** Write the network's DNS servers and domain into /etc/netns/<netns>/resolv.conf (what `ip netns exec` shows as /etc/resolv.conf). */
    resolvConf: z.boolean().optional(),
  })
  .strict();

export const endpointInputSchema = z.discriminatedUnion("kind", [tapInput, netnsInput]);

export const specSchema = z
  .object({
    networks: z.record(networkInputSchema).default({}),
    endpoints: z.array(endpointInputSchema).default([]),
  })
  .strict();

export type NetworkInput = z.infer<typeof networkInputSchema>;
export type EndpointInput = z.infer<typeof endpointInputSchema>;
export type Spec = z.infer<typeof specSchema>;

/** One line naming the key and the problem, e.g. `endpoints.2.ip: Required`. */
export function describeZodError(error: z.ZodError, what: string): string {
  const issue = error.issues[0];
  if (!issue) return `${what}: invalid`;
  const path = issue.path.length ? issue.path.join(".") : "(top level)";
  let message = issue.message;
  if (issue.code === "unrecognized_keys") message = `unknown key(s) ${issue.keys.map((k) => `'${k}'`).join(", ")}`;
  if (issue.code === "invalid_union_discriminator") message = `must be one of ${issue.options.map(String).join(", ")}`;
  return `${what}: ${path}: ${message}`;
}
