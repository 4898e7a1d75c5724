import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import type { BgpPath } from "./paths.js";

// A typed client for the parts of gobgpd's API we use (proto/gobgp.proto).
// Path attributes travel as google.protobuf.Any, so they are encoded here with
// protobufjs from the same .proto file.

const PROTO = fileURLToPath(new URL("../../proto/gobgp.proto", import.meta.url));
const TYPE_PREFIX = "type.googleapis.com/apipb.";
const AFI_IP = 1, SAFI_UNICAST = 1, ORIGIN_IGP = 0;
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

/** Our path as gobgpd's apipb.Path. */
export function toApiPath(path: BgpPath, withdraw: boolean): ApiPath {
  const [prefix, len] = path.prefix.split("/");
  const pattrs = [any("OriginAttribute", { origin: ORIGIN_IGP }), any("NextHopAttribute", { nextHop: path.nextHop })];
  if (path.communities.length) pattrs.push(any("CommunitiesAttribute", { communities: path.communities }));
  if (path.localPref !== undefined) pattrs.push(any("LocalPrefAttribute", { localPref: path.localPref }));
  return {
    nlri: any("IPAddressPrefix", { prefixLen: Number(len), prefix }),
    pattrs,
    family: { afi: AFI_IP, safi: SAFI_UNICAST },
    isWithdraw: withdraw,
  };
}

export interface PeerInfo {
  address: string;
  state: string;
  uptimeSeconds?: number;
  prefixesSent?: number;
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
  afiSafis?: Array<{ state?: { family?: { afi?: string }; advertised?: number } }>;
}

const deadline = (ms: number) => ({ deadline: Date.now() + ms });

export function connectGobgp(address: string): GobgpTransport {
  const client = new loaded.apipb.GobgpApi(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  }) as unknown as RawClient;
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
        const sent = peer.afiSafis?.filter((a) => a.state?.family?.afi === "AFI_IP").reduce((n, a) => n + (a.state?.advertised ?? 0), 0);
        peers.push({
          address: peer.state?.neighborAddress || peer.conf?.neighborAddress || "",
          state,
          ...(state === "established" && uptime ? { uptimeSeconds: Math.max(0, Math.round(Date.now() / 1000 - uptime)) } : {}),
          ...(sent !== undefined ? { prefixesSent: sent } : {}),
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
