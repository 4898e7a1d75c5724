import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import type { BgpPath } from "./paths.js";
import { packaged } from "../layout.js";
import { canonicalIpv6, isUnusableIpv6Host } from "../model/ipv6.js";

// A typed client for the parts of gobgpd's API we use (proto/gobgp.proto).
// Path attributes travel as google.protobuf.Any, so they are encoded (and, on
// the import side, decoded) here with protobufjs from the same .proto file.

const PROTO = packaged?.proto ?? fileURLToPath(new URL("../../proto/gobgp.proto", import.meta.url));
const TYPE_PREFIX = "type.googleapis.com/apipb.";
const AFI_IP = 1, AFI_IP6 = 2, SAFI_UNICAST = 1, ORIGIN_IGP = 0;
const IPV4_UNICAST = { afi: AFI_IP, safi: SAFI_UNICAST }, IPV6_UNICAST = { afi: AFI_IP6, safi: SAFI_UNICAST };
/** Paths per AddPathStream message: ~150 bytes each, far below gRPC's 4 MiB limit. */
const PATHS_PER_MESSAGE = 1000;

const definition = protoLoader.loadSync(PROTO, { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true });
const loaded = grpc.loadPackageDefinition(definition) as unknown as { apipb: { GobgpApi: grpc.ServiceClientConstructor } };
const types = protobuf.loadSync(PROTO);

/** google.protobuf.Any. proto-loader keeps `type_url` in snake case even with keepCase: false. */
interface AnyMessage { type_url: string; value: Buffer }

function any(type: string, value: Record<string, unknown>): AnyMessage {
  const t = types.lookupType(`apipb.${type}`);
  return { type_url: TYPE_PREFIX + type, value: Buffer.from(t.encode(t.fromObject(value)).finish()) };
}

export interface ApiPath {
  nlri: AnyMessage;
  pattrs: AnyMessage[];
  family: { afi: number; safi: number };
  isWithdraw: boolean;
}

/**
 * A path's attributes, encoded once per distinct set: every path of a host
 * carries the same ones (or the elevated set), and encoding them anew for each
 * of 10,000 paths was most of an announcement's CPU time.
 */
const encodedAttributes = new Map<string, AnyMessage[]>();
function attributesOf(path: BgpPath): AnyMessage[] {
  const key = `${path.nextHop} ${path.localPref ?? ""} ${path.communities.join(",")}`;
  let pattrs = encodedAttributes.get(key);
  if (!pattrs) {
    pattrs = [any("OriginAttribute", { origin: ORIGIN_IGP }), any("NextHopAttribute", { nextHop: path.nextHop })];
    if (path.communities.length) pattrs.push(any("CommunitiesAttribute", { communities: path.communities }));
    if (path.localPref !== undefined) pattrs.push(any("LocalPrefAttribute", { localPref: path.localPref }));
    if (encodedAttributes.size > 64) encodedAttributes.clear();
    encodedAttributes.set(key, pattrs);
  }
  return pattrs;
}

/** The attributes an IPv6 path shares with its family's others (everything but MP_REACH_NLRI, which names the prefix). */
const encodedAttributes6 = new Map<string, AnyMessage[]>();
function commonAttributes6(path: BgpPath): AnyMessage[] {
  const key = `${path.localPref ?? ""} ${path.communities.join(",")}`;
  let pattrs = encodedAttributes6.get(key);
  if (!pattrs) {
    pattrs = [any("OriginAttribute", { origin: ORIGIN_IGP })];
    if (path.communities.length) pattrs.push(any("CommunitiesAttribute", { communities: path.communities }));
    if (path.localPref !== undefined) pattrs.push(any("LocalPrefAttribute", { localPref: path.localPref }));
    if (encodedAttributes6.size > 64) encodedAttributes6.clear();
    encodedAttributes6.set(key, pattrs);
  }
  return pattrs;
}

/**
 * Our path as gobgpd's apipb.Path. A /32: IPv4 unicast, NEXT_HOP. A /128: IPv6
 * unicast (AFI 2, SAFI 1) with an MP_REACH_NLRI attribute carrying the IPv6 next
 * hop and the prefix (gobgpd's api2Path takes both from it; with NEXT_HOP alone
 * an IPv6 path would go out with the IPv4-mapped ::ffff:a.b.c.d). An IPv6 path
 * whose next hop is not a routable IPv6 address is refused here.
 */
export function toApiPath(path: BgpPath, withdraw: boolean): ApiPath {
  const [prefix, len] = path.prefix.split("/");
  const nlri = any("IPAddressPrefix", { prefixLen: Number(len), prefix });
  if (!prefix!.includes(":"))
    return { nlri, pattrs: attributesOf(path), family: IPV4_UNICAST, isWithdraw: withdraw };
  if (isUnusableIpv6Host(path.nextHop))
    throw new Error(`refusing IPv6 path ${path.prefix} with next hop '${path.nextHop}': not a global or unique-local IPv6 address`);
  const mpReach = any("MpReachNLRIAttribute", { family: IPV6_UNICAST, nextHops: [canonicalIpv6(path.nextHop)], nlris: [nlri] });
  return { nlri, pattrs: [...commonAttributes6(path), mpReach], family: IPV6_UNICAST, isWithdraw: withdraw };
}

/**
 * A path of gobgpd's global RIB, decoded (IPv4 and IPv6 unicast).
 *
 * Where a path came from: gobgpd gives every path a source (its PeerInfo).
 * A path received from a peer has the peer's address as `neighbor_ip`; a path
 * added through the API (the gobgp CLI included) has no source, and the API
 * then says `neighbor_ip: "<nil>"` (Go's net.IP(nil).String()), `source_id:
 * "<nil>"`, `source_asn: 0`. gobgpd's own test for "local" is exactly that
 * (table.Path.IsLocal: source address nil), so `isFromLocal` is decided by
 * `neighbor_ip` alone. Not usable for it: `is_from_external` (only echoes a
 * flag an API client may set on a path it adds; gobgpd never sets it) and
 * `source_asn` (0 for local paths unless the API client set one; for iBGP
 * paths it is our own AS, so it tells nothing apart either).
 */
export interface RibPath {
  /** "a.b.c.d/len", or "<ipv6>/len" (RFC 5952) */
  prefix: string;
  /**
   * NEXT_HOP, or else MP_REACH_NLRI's first next hop (an IPv6 path's global next hop, RFC 5952;
   * a link-local second one is left out); "" when the path has neither (only withdrawals should).
   */
  nextHop: string;
  isWithdraw: boolean;
  localPref?: number;
  /** RFC 1997 communities as numbers (ASN * 65536 + value), in the path's order. */
  communities: number[];
  /** ORIGIN: 0 IGP, 1 EGP, 2 INCOMPLETE. */
  origin?: number;
  /** The peer gobgpd received the path from (for a reflected path: the reflector, not the originating host); "" for a local path. */
  neighborIp: string;
  /** Originated in this gobgpd (added through its API), not received from a peer. */
  isFromLocal: boolean;
  /** Kept from a peer that is in graceful restart and not yet refreshed. */
  stale: boolean;
  /** When gobgpd received or made the path, Unix time in seconds (gobgpd keeps whole seconds). */
  age?: number;
}

export interface PeerInfo {
  address: string;
  state: string;
  uptimeSeconds?: number;
  prefixesSent?: number;
  /**
   * Graceful restart negotiated, and the peer's End-of-RIB received (all it has was sent): for
   * IPv4 unicast, and for IPv6 unicast when the peer's capability names it (a reflector without
   * IPv6 sends no IPv6 End-of-RIB, and must not be waited for).
   */
  endOfRib?: { negotiated: boolean; received: boolean };
  /** IPv6 unicast paths sent to the peer (without End-of-RIB markers); absent when the family is not configured. */
  prefixesSent6?: number;
}

export interface GobgpTransport {
  getBgp(): Promise<{ asn: number; routerId: string }>;
  listPeers(): Promise<PeerInfo[]>;
  /** Announces and withdraws in one client stream. */
  addPathStream(paths: ApiPath[]): Promise<void>;
  /** Resolves when the event stream ends (gobgpd gone or restarted). */
  watch(): { ended: Promise<string>; cancel(): void };
  deletePath(path: ApiPath): Promise<void>;
  close(): void;
}

export interface BestPathWatch {
  /** Resolves once, with why the stream ended (gobgpd gone or restarted, cancel(), or onPaths threw). */
  ended: Promise<string>;
  cancel(): void;
}

/** The whole client: the announcer's transport plus the import side. */
export interface GobgpClient extends GobgpTransport {
  /**
   * Watches the best path of every IPv4 and IPv6 unicast prefix in gobgpd's global RIB (one
   * stream: gobgpd's best-path events carry every family).
   * The first call of onPaths (initial = true) is every current best path, a
   * snapshot, made even when there is none (a gobgpd without its global
   * config yet would send none: the watch then ends at once, try again). After it, each call is a batch of
   * changes, in order: per prefix, the newest entry is the current best path,
   * or a withdrawal (isWithdraw) when the prefix has no path left. A best path
   * replaced by another comes as the new best path, not as a withdrawal.
   * Batches with no IPv4 or IPv6 unicast path are not passed on.
   */
  watchBestPaths(onPaths: (paths: RibPath[], initial: boolean) => void, onEnd?: (reason: string) => void): BestPathWatch;
  /** The best path of every IPv4 and IPv6 unicast prefix of the global RIB (one ListPath per family; streamed and decoded as it arrives). */
  listBestPaths(options?: { timeoutMs?: number }): Promise<RibPath[]>;
  /** Every path (best or not) gobgpd's global RIB holds for these prefixes (/32s and /128s): who else announces them. */
  listPathsOf(prefixes: string[]): Promise<RibPath[]>;
}

type Callback<T> = (err: grpc.ServiceError | null, value?: T) => void;
interface RawClient extends grpc.Client {
  GetBgp(req: object, opts: grpc.CallOptions, cb: Callback<{ global?: { asn: number; routerId: string } }>): void;
  ListPeer(req: object, opts: grpc.CallOptions): grpc.ClientReadableStream<{ peer?: RawPeer }>;
  AddPathStream(opts: grpc.CallOptions, cb: Callback<unknown>): grpc.ClientWritableStream<object>;
  DeletePath(req: object, opts: grpc.CallOptions, cb: Callback<unknown>): void;
  WatchEvent(req: object): grpc.ClientReadableStream<unknown>;
}
interface RawPeer {
  conf?: { neighborAddress?: string };
  state?: { neighborAddress?: string; sessionState?: string };
  timers?: { state?: { uptime?: { seconds?: number } } };
  gracefulRestart?: { enabled?: boolean };
  afiSafis?: Array<{
    state?: { family?: { afi?: string; safi?: string }; advertised?: number };
    mpGracefulRestart?: { state?: { enabled?: boolean; received?: boolean; endOfRibReceived?: boolean } };
  }>;
}

const deadline = (ms: number) => ({ deadline: Date.now() + ms });

// --- decoding the import side -------------------------------------------
//
// ListPath and WatchEvent answers are decoded straight from the wire with
// protobufjs (a custom deserializer), not through proto-loader's object
// conversion: a 50,000-prefix table is 50,000 ListPath messages and one
// 50,000-path WatchEvent snapshot.

const T = {
  ListPathRequest: types.lookupType("apipb.ListPathRequest"),
  ListPathResponse: types.lookupType("apipb.ListPathResponse"),
  WatchEventRequest: types.lookupType("apipb.WatchEventRequest"),
  WatchEventResponse: types.lookupType("apipb.WatchEventResponse"),
  Path: types.lookupType("apipb.Path"),
  IPAddressPrefix: types.lookupType("apipb.IPAddressPrefix"),
  OriginAttribute: types.lookupType("apipb.OriginAttribute"),
  NextHopAttribute: types.lookupType("apipb.NextHopAttribute"),
  MpReachNLRIAttribute: types.lookupType("apipb.MpReachNLRIAttribute"),
  LocalPrefAttribute: types.lookupType("apipb.LocalPrefAttribute"),
  CommunitiesAttribute: types.lookupType("apipb.CommunitiesAttribute"),
};

/** What protobufjs hands back for the fields we read (scalars default on the prototype). */
interface WireAny { type_url: string; value: Uint8Array }
interface WirePath {
  nlri?: WireAny | null;
  pattrs: WireAny[];
  age?: { seconds?: number | { toNumber(): number } } | null;
  best: boolean;
  isWithdraw: boolean;
  family?: { afi: number; safi: number } | null;
  neighborIp: string;
  stale: boolean;
}

const typeName = (url: string) => url.slice(url.lastIndexOf("/") + 1);
const longToNumber = (v: number | { toNumber(): number } | undefined) => (v === undefined ? undefined : typeof v === "number" ? v : v.toNumber());
/** gobgpd's rendering of "no source address" (Go: net.IP(nil).String()). */
const NO_ADDRESS = new Set(["", "<nil>"]);

function decodeWirePath(p: WirePath): RibPath | undefined {
  if (p.family && ((p.family.afi !== AFI_IP && p.family.afi !== AFI_IP6) || p.family.safi !== SAFI_UNICAST)) return undefined;
  if (!p.nlri || typeName(p.nlri.type_url) !== "apipb.IPAddressPrefix") return undefined;
  const nlri = T.IPAddressPrefix.decode(p.nlri.value) as unknown as { prefix: string; prefixLen: number };
  // The family, or without one the NLRI, says which; an NLRI of the other family is not this path.
  const v6 = p.family ? p.family.afi === AFI_IP6 : nlri.prefix.includes(":");
  let prefixText: string;
  if (v6) {
    const canonical = canonicalIpv6(nlri.prefix);
    if (!canonical || nlri.prefixLen > 128) return undefined;
    prefixText = canonical;
  } else {
    if (!nlri.prefix.includes(".") || nlri.prefix.includes(":")) return undefined;
    prefixText = nlri.prefix;
  }
  let nextHop = "", mpNextHop = "";
  let localPref: number | undefined, origin: number | undefined;
  let communities: number[] = [];
  for (const a of p.pattrs) {
    switch (typeName(a.type_url)) {
      case "apipb.NextHopAttribute": nextHop = (T.NextHopAttribute.decode(a.value) as unknown as { nextHop: string }).nextHop; break;
      case "apipb.MpReachNLRIAttribute": mpNextHop = (T.MpReachNLRIAttribute.decode(a.value) as unknown as { nextHops: string[] }).nextHops[0] ?? ""; break;
      case "apipb.LocalPrefAttribute": localPref = (T.LocalPrefAttribute.decode(a.value) as unknown as { localPref: number }).localPref; break;
      case "apipb.OriginAttribute": origin = (T.OriginAttribute.decode(a.value) as unknown as { origin: number }).origin; break;
      case "apipb.CommunitiesAttribute": communities = [...(T.CommunitiesAttribute.decode(a.value) as unknown as { communities: number[] }).communities]; break;
      default: break; // AS_PATH, MED, ORIGINATOR_ID, CLUSTER_LIST, ...: not needed here
    }
  }
  const isFromLocal = NO_ADDRESS.has(p.neighborIp);
  const age = longToNumber(p.age?.seconds);
  let hop = nextHop || mpNextHop;
  if (hop.includes(":")) hop = canonicalIpv6(hop) ?? hop;
  return {
    prefix: `${prefixText}/${nlri.prefixLen}`,
    nextHop: hop,
    isWithdraw: p.isWithdraw,
    ...(localPref !== undefined ? { localPref } : {}),
    communities,
    ...(origin !== undefined ? { origin } : {}),
    neighborIp: isFromLocal ? "" : p.neighborIp,
    isFromLocal,
    stale: p.stale,
    ...(age ? { age } : {}),
  };
}

/** An apipb.Path (wire bytes) as a RibPath; undefined for anything but IPv4 and IPv6 unicast, or a path that cannot be decoded. */
export function decodePath(bytes: Uint8Array): RibPath | undefined {
  try {
    return decodeWirePath(T.Path.decode(bytes) as unknown as WirePath);
  } catch {
    return undefined;
  }
}

function decodePaths(paths: WirePath[], bestOnly: boolean): RibPath[] {
  const out: RibPath[] = [];
  for (const p of paths) {
    if (bestOnly && !p.best) continue;
    let decoded: RibPath | undefined;
    try {
      decoded = decodeWirePath(p);
    } catch {
      decoded = undefined; // one malformed attribute must not end the stream
    }
    if (decoded) out.push(decoded);
  }
  return out;
}

/** One ListPathResponse (a destination): its best IPv4/IPv6 unicast path(s), decoded. */
export function decodeListPathResponse(bytes: Uint8Array): RibPath[] {
  return decodeDestination(bytes, true);
}

function decodeDestination(bytes: Uint8Array, bestOnly: boolean): RibPath[] {
  const m = T.ListPathResponse.decode(bytes) as unknown as { destination?: { paths: WirePath[] } | null };
  return m.destination ? decodePaths(m.destination.paths, bestOnly) : [];
}

export type WatchEventDecoded = { kind: "table"; paths: RibPath[] } | { kind: "peer" } | { kind: "none" };

/** One WatchEventResponse: a table event's IPv4 and IPv6 unicast paths, decoded. */
export function decodeWatchEventResponse(bytes: Uint8Array): WatchEventDecoded {
  const m = T.WatchEventResponse.decode(bytes) as unknown as { table?: { paths: WirePath[] } | null; peer?: object | null };
  if (m.table) return { kind: "table", paths: decodePaths(m.table.paths, false) };
  return m.peer ? { kind: "peer" } : { kind: "none" };
}

const encoder = (type: protobuf.Type) => (value: object) => Buffer.from(type.encode(type.fromObject(value)).finish());
const TABLE_GLOBAL = 0, WATCH_FILTER_BEST = 0;

export function connectGobgp(address: string): GobgpClient {
  const client = new loaded.apipb.GobgpApi(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  }) as unknown as RawClient;
  /** One family of the global RIB: best paths only, or every path of the given exact prefixes. */
  const listFamily = (family: { afi: number; safi: number }, prefixes: string[], bestOnly: boolean, options: grpc.CallOptions) =>
    new Promise<RibPath[]>((resolve, reject) => {
      const paths: RibPath[] = [];
      const stream = client.makeServerStreamRequest<object, RibPath[]>(
        "/apipb.GobgpApi/ListPath", encoder(T.ListPathRequest), (b: Uint8Array) => decodeDestination(b, bestOnly),
        { tableType: TABLE_GLOBAL, name: "", family, ...(prefixes.length ? { prefixes: prefixes.map((prefix) => ({ prefix, type: "EXACT" })) } : {}) },
        options);
      stream.on("data", (batch: RibPath[]) => {
        for (const p of batch) paths.push(p);
      });
      stream.on("error", reject);
      stream.on("end", () => resolve(paths));
    });
  return {
    getBgp: () => new Promise((resolve, reject) => client.GetBgp({}, deadline(3000), (err, res) =>
      err ? reject(err) : resolve({ asn: res?.global?.asn ?? 0, routerId: res?.global?.routerId ?? "" }))),

    listPeers: () => new Promise((resolve, reject) => {
      const peers: PeerInfo[] = [];
      const stream = client.ListPeer({ address: "", enableAdvertised: true }, deadline(3000));
      stream.on("data", ({ peer }: { peer?: RawPeer }) => {
        if (!peer) return;
        const state = (peer.state?.sessionState ?? "UNKNOWN").toLowerCase();
        const uptime = peer.timers?.state?.uptime?.seconds;
        // gobgpd's "advertised" is what it would send the peer now, which with
        // graceful restart configured includes one End-of-RIB marker per family
        // (server.go getBestFromLocal): not a prefix.
        const eor = peer.gracefulRestart?.enabled ? 1 : 0;
        const sentOf = (afi: string) => peer.afiSafis?.filter((a) => a.state?.family?.afi === afi).reduce((n, a) => n + Math.max(0, (a.state?.advertised ?? 0) - eor), 0);
        const sent = sentOf("AFI_IP");
        const v6 = peer.afiSafis?.some((a) => a.state?.family?.afi === "AFI_IP6");
        const gr = peer.afiSafis?.find((a) => a.state?.family?.afi === "AFI_IP")?.mpGracefulRestart?.state;
        // IPv6: gobgpd sets mp-graceful-restart's state "enabled" from its own config, so only the
        // peer's capability naming the family ("received") says an IPv6 End-of-RIB will come.
        const gr6 = peer.afiSafis?.find((a) => a.state?.family?.afi === "AFI_IP6")?.mpGracefulRestart?.state;
        const waits6 = gr6?.enabled === true && gr6.received === true;
        const endOfRib = gr || waits6
          ? { negotiated: gr?.enabled === true || waits6, received: (!gr?.enabled || gr.endOfRibReceived === true) && (!waits6 || gr6.endOfRibReceived === true) }
          : undefined;
        peers.push({
          address: peer.state?.neighborAddress || peer.conf?.neighborAddress || "",
          state,
          ...(endOfRib ? { endOfRib } : {}),
          ...(state === "established" && uptime ? { uptimeSeconds: Math.max(0, Math.round(Date.now() / 1000 - uptime)) } : {}),
          ...(sent !== undefined ? { prefixesSent: sent } : {}),
          ...(v6 ? { prefixesSent6: sentOf("AFI_IP6")! } : {}),
        });
      });
      stream.on("error", reject);
      stream.on("end", () => resolve(peers));
    }),

    addPathStream: (paths) => new Promise((resolve, reject) => {
      const stream = client.AddPathStream({ deadline: Date.now() + 60_000 }, (err) => (err ? reject(err) : resolve()));
      for (let i = 0; i < paths.length; i += PATHS_PER_MESSAGE)
        stream.write({ tableType: "GLOBAL", vrfId: "", paths: paths.slice(i, i + PATHS_PER_MESSAGE) });
      stream.end();
    }),

    deletePath: (path) => new Promise((resolve, reject) => {
      assertDeletePathHasPath(path);
      client.DeletePath({ tableType: "GLOBAL", family: path.family, path }, deadline(5000), (err) => (err ? reject(err) : resolve()));
    }),

    watch: () => {
      const stream = client.WatchEvent({ peer: {} });
      const ended = new Promise<string>((resolve) => {
        stream.on("error", (e: grpc.ServiceError) => resolve(`${grpc.status[e.code] ?? e.code}: ${e.details || e.message}`));
        stream.on("end", () => resolve("event stream ended"));
      });
      stream.on("data", () => undefined);
      return { ended, cancel: () => stream.cancel() };
    },

    watchBestPaths: (onPaths, onEnd) => {
      let finish: (reason: string) => void = () => undefined;
      const ended = new Promise<string>((resolve) => {
        let done = false;
        finish = (reason) => {
          if (done) return;
          done = true;
          resolve(reason);
          onEnd?.(reason);
        };
      });
      let stream: grpc.ClientReadableStream<WatchEventDecoded> | undefined;
      let cancelled = false;
      const open = () => {
        const s = client.makeServerStreamRequest<object, WatchEventDecoded>(
          "/apipb.GobgpApi/WatchEvent", encoder(T.WatchEventRequest), decodeWatchEventResponse,
          { table: { filters: [{ type: WATCH_FILTER_BEST, init: true }] } }, {});
        let initial = true;
        s.on("data", (ev: WatchEventDecoded) => {
          if (ev.kind !== "table") return;
          const first = initial;
          initial = false;
          if (!first && ev.paths.length === 0) return;
          try {
            onPaths(ev.paths, first);
          } catch (e) {
            finish(`onPaths threw: ${(e as Error).message}`);
            s.cancel();
          }
        });
        s.on("error", (e: grpc.ServiceError) =>
          finish(e.code === grpc.status.CANCELLED ? "cancelled" : `${grpc.status[e.code] ?? e.code}: ${e.details || e.message}`));
        s.on("end", () => finish("event stream ended"));
        return s;
      };
      // gobgpd sends the snapshot only once it has its global config (BgpServer.active()); a gobgpd
      // just started serves its API a moment before that, and a watch opened then would get no
      // snapshot and take the first change for one. So: its AS first, then the watch.
      client.GetBgp({}, deadline(3000), (err, res) => {
        if (cancelled) return;
        if (err) return finish(`${grpc.status[err.code] ?? err.code}: ${err.details || err.message}`);
        if (!res?.global?.asn) return finish("gobgpd has no global config yet: no snapshot would come");
        stream = open();
      });
      return {
        ended,
        cancel: () => {
          cancelled = true;
          if (stream) stream.cancel();
          else finish("cancelled");
        },
      };
    },

    // One ListPath per family (gobgpd lists one family per call), both at once; IPv4 first in the answer.
    listBestPaths: async (options = {}) => {
      const at = deadline(options.timeoutMs ?? 60_000);
      const [v4, v6] = await Promise.all([listFamily(IPV4_UNICAST, [], true, at), listFamily(IPV6_UNICAST, [], true, at)]);
      return v4.concat(v6);
    },

    listPathsOf: async (prefixes) => {
      const v4 = prefixes.filter((p) => !p.includes(":")), v6 = prefixes.filter((p) => p.includes(":"));
      const at = deadline(5000);
      const [a, b] = await Promise.all([
        v4.length ? listFamily(IPV4_UNICAST, v4, false, at) : ([] as RibPath[]),
        v6.length ? listFamily(IPV6_UNICAST, v6, false, at) : ([] as RibPath[]),
      ]);
      return a.concat(b);
    },

    close: () => client.close(),
  };
}

/**
 * An empty DeletePath (no path, no uuid) makes gobgpd delete every locally
 * originated path, everyone's. Refuse to send one, whatever the caller.
 */
export function assertDeletePathHasPath(path: ApiPath | undefined): void {
  if (!path || !path.nlri || !path.nlri.value || path.nlri.value.length === 0)
    throw new Error("refusing DeletePath without a path: gobgpd would delete every local path");
}
