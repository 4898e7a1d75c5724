import { hostname } from "node:os";
import { z } from "zod";
import { isLoopback, isUnusableHostAddress, parseIpv4, parsePrefix } from "../model/ipv4.js";
import { networkInputSchema } from "../model/spec.js";
import { canonicalIpv6, isUnusableIpv6Host, parsePrefix6 } from "../model/ipv6.js";

// The config file contract of DESIGN.md. Every key is strict: an unknown key is
// an error that names it, because a typo in a network agent's config should
// never silently fall back to a default.

const ipv4 = z.string().refine((s) => parseIpv4(s) !== undefined, "must be an IPv4 address");

const nodeAddress = ipv4
  .refine((s) => !isLoopback(s), "must not be a loopback address (receivers treat a loopback next hop as a withdraw)")
  .refine((s) => !isUnusableHostAddress(s), "must be a unicast host address");

const hostPort = z.string().refine((s) => {
  const m = /^([^:\s]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(s);
  return !!m && Number(m[2]) > 0 && Number(m[2]) < 65536;
}, "must be HOST:PORT, like 127.0.0.1:50051");

/**
 * HOST:PORT on this machine: 127.0.0.0/8, [::1] or localhost (the URL parser
 * gives every spelling of an address one form: [0::1], 127.1, LOCALHOST).
 */
function isLoopbackHostPort(s: string): boolean {
  let host: string;
  try {
    host = new URL(`http://${s}/`).hostname;
  } catch {
    return false;
  }
  return host === "localhost" || host === "[::1]" || isLoopback(host);
}

const u16 = (s: string) => /^\d{1,5}$/.test(s) && Number(s) <= 65535;
const community = z.string().refine((s) => {
  const parts = s.split(":");
  return parts.length === 2 && parts.every(u16);
}, "must be ASN:VALUE with both parts 0-65535");

export const configSchema = z
  .object({
    node: z
      .object({
        address: nodeAddress,
        /** The IPv6 next hop announced for this host's /128s (required when a network has a prefix6 and BGP is on). */
        address6: z.string().refine((t) => !isUnusableIpv6Host(t), "must be a global or unique-local IPv6 address (never link-local, loopback or IPv4-mapped)")
          .transform((t) => canonicalIpv6(t)!).optional(),
        name: z.string().min(1).max(253).default(() => hostname()),
      })
      .strict(),
    api: z
      .object({ socket: z.string().min(1).default("/run/vmrouted/vmrouted.sock") })
      .strict()
      .default({}),
    stateDir: z.string().min(1).default("/var/lib/vmrouted"),
    bgp: z
      .object({
        gobgp: hostPort.default("127.0.0.1:50051"),
        /** gobgpd's gRPC API has no TLS and no authentication: whoever reaches it can announce any route. Loopback only, unless this says otherwise. */
        allowRemoteGobgp: z.boolean().default(false),
        communities: z.array(community).default([]),
        localPref: z.number().int().min(0).max(4294967295).optional(),
        /** Install the best paths other hosts announce as kernel routes (protocol dataplane.learnedProtocol). */
        importRoutes: z.boolean().default(true),
        /** Added to a live-migrated VM's path while it settles; with a higher local-pref every host prefers it. */
        migrationCommunity: community.default("64512:666"),
        /**
         * Where learned workload /32s and /128s may lie; nothing outside is installed. Per family: without an
         * IPv4 (IPv6) prefix here, the networks' prefixes (prefix6s) are the ranges of that family.
         */
        importPrefixes: z.array(z.string().refine((t) => {
          if (t.includes(":")) return parsePrefix6(t) !== undefined;
          const p = parsePrefix(t);
          return !!p && p.base === parseIpv4(p.address);
        }, "must be an IPv4 or IPv6 prefix with its base address, like 172.31.0.0/16 or fd31::/48")
          .transform((t) => (t.includes(":") ? parsePrefix6(t)!.text : t))).default([]),
        /** At most this many learned routes are installed; past it new prefixes are refused (existing ones stay). */
        maxLearned: z.number().int().min(0).default(200_000),
      })
      .strict()
      .refine((b) => b.allowRemoteGobgp || isLoopbackHostPort(b.gobgp), {
        message: "must be a loopback address (127.0.0.0/8, [::1], localhost): gobgpd's gRPC API is plaintext and unauthenticated; set bgp.allowRemoteGobgp: true to use another host anyway",
        path: ["gobgp"],
      })
      .optional(),
    networks: z.record(networkInputSchema).default({}),
    dataplane: z
      .object({
        /** Route protocol number marking our routes (name it in /etc/iproute2/rt_protos.d/). */
        routeProtocol: z.number().int().min(5).max(254).default(94),
        /** Route protocol number marking routes learned from other hosts (BGP import). */
        learnedProtocol: z.number().int().min(5).max(254).default(96),
        /** Metric of endpoint and learned routes; a migrating VM's preferred route gets half of it. */
        routeMetric: z.number().int().min(2).max(4294967295).default(1024),
        /** netdev group of our taps and veths. */
        netdevGroup: z.number().int().min(1).max(2147483647).default(94),
        /** Group devices are moved to just before one bulk `ip link del group`. */
        teardownGroup: z.number().int().min(1).max(2147483647).default(95),
        /** Full resync interval: repairs drift that raises no kernel event (sysctls). Kernel events repair the rest at once. */
        resyncSeconds: z.number().min(0.5).max(86400).default(30),
      })
      .strict()
      .refine((d) => d.netdevGroup !== d.teardownGroup, { message: "teardownGroup must differ from netdevGroup", path: ["teardownGroup"] })
      .refine((d) => d.routeProtocol !== d.learnedProtocol, { message: "learnedProtocol must differ from routeProtocol", path: ["learnedProtocol"] })
      .default({}),
    libvirt: z
      .object({
        enabled: z.boolean().default(true),
        /** libvirt connection URI for virsh. */
        uri: z.string().min(1).default("qemu:///system"),
        /** How often domains are re-read from libvirt (hooks are the fast path). */
        resyncSeconds: z.number().min(1).max(3600).default(30),
      })
      .strict()
      .default({}),
    migration: z
      .object({
        /** How long a live-migrated VM's route and path stay preferred on its new host. */
        settleSeconds: z.number().min(1).max(3600).default(30),
      })
      .strict()
      .default({}),
    metrics: z
      .object({
        /** Also serve GET /metrics on this loopback HOST:PORT (it is always on the API socket). */
        listen: hostPort.refine(isLoopbackHostPort, "must be a loopback address (metrics are not for the network)").optional(),
      })
      .strict()
      .default({}),
    log: z
      .object({ level: z.enum(["fatal", "error", "warn", "info", "debug", "trace"]).default("info") })
      .strict()
      .default({}),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;
export type DataplaneConfig = Config["dataplane"];
