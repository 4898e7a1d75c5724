import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { toApiPath } from "../src/bgp/gobgp.js";
import { pathFor } from "../src/bgp/paths.js";
import { Daemon, Netns, REPO, runId, sh, waitFor } from "../test/helpers/lab.js";
import { createReflector, Fabric, type GobgpReflector } from "../test/helpers/reflectors.js";
import { ipOf } from "./floor.js";
import { LEARNED_SETTLE_SECONDS, rssMiB as rssOf, summarize, type Results } from "./report.js";

// Routes learned from other hosts: 50,000 paths injected at a GoBGP route
// reflector reach a host whose vmrouted (with 1,000 endpoints of its own)
// installs them, and are withdrawn again. Compared with what no importer can
// beat: BGP's own time to bring the paths into the host's gobgpd, plus one
// hand-written `ip -batch` of the same 50,000 routes.

const PATHS = 50_000;
const LOCAL = 1000;
const prefixOf = (i: number) => `10.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`;

export async function learnedRoutes(rounds: number): Promise<NonNullable<Results["learned"]>> {
  const fabric = await Fabric.create(`l${runId()}`, 2, 80);
  const dir = await mkdtemp(join(tmpdir(), "vmrouted-bench-learned-"));
  const floorNs = await Netns.create(`vmrt-${runId()}-lfloor`);
  let daemon: Daemon | undefined;
  let rr: GobgpReflector | undefined;
  try {
    rr = (await createReflector("gobgp", fabric.reflectorOptions())) as GobgpReflector;
    await rr.start();
    const [host, other] = fabric.hosts as [typeof fabric.hosts[0], typeof fabric.hosts[0]];
    await host.gobgpd.start(["-r"]);
    daemon = await Daemon.create(host.ns, {
      // The injected prefixes lie outside the network: imported because the ranges say so (the import filter).
      bgp: { gobgp: "127.0.0.1:50051", importPrefixes: ["10.100.0.0/16"] }, networks: { service: { gateway: "172.31.16.1/16" } }, resyncSeconds: 30,
      extra: { node: { address: host.address, name: "learner" } },
    });
    await daemon.start();
    await waitFor(() => rr!.sessionEstablished(host.address), 60_000, "the host's session");
    const spec = join(dir, "spec.json");
    await writeFile(spec, JSON.stringify({ endpoints: Array.from({ length: LOCAL }, (_, i) => ({ kind: "tap", network: "service", ip: ipOf(i) })) }));
    if ((await daemon.ctl(["apply", "-f", spec])).exitCode !== 0) throw new Error("bench: apply of the local endpoints");
    const rrApi = rr.gobgpd.client();
    const paths = (withdraw: boolean) => Array.from({ length: PATHS }, (_, i) =>
      toApiPath({ ...pathFor({ ip: prefixOf(i).slice(0, -3) }, { nextHop: other.address, communities: [], migrationCommunity: "64512:666" }) }, withdraw));
    const hostRib = async () => Number(/Destination:\s*(\d+)/.exec((await host.gobgpd.cli(["global", "rib", "summary", "-a", "ipv4"], false)).stdout)?.[1] ?? -1);
    const kernelCount = async () => Number((await sh("sh", ["-c", `ip -n ${host.ns.name} -4 route show proto 96 | wc -l`])).stdout.trim());
    const measure = async (withdraw: boolean, want: number) => {
      const t0 = performance.now();
      await rrApi.addPathStream(paths(withdraw));
      const wantRib = withdraw ? LOCAL : LOCAL + want; // the host's own endpoints are in its RIB too
      await waitFor(async () => (await hostRib()) === wantRib, 600_000, "the host's gobgpd to have the paths", 100);
      const bgp = performance.now() - t0;
      await waitFor(async () => (await kernelCount()) === want, 600_000, "the host's kernel to have the routes", 100);
      return { bgp, total: performance.now() - t0 };
    };
    // The floor's batch: the same routes, by hand, in a namespace where the next hop is on a link.
    // (Names `ip` cannot take for a keyword: "a" would be `address`.)
    await floorNs.ip(["link", "add", "name", "floor0", "type", "veth", "peer", "name", "floor1"]);
    for (const d of ["floor0", "floor1"]) await floorNs.ip(["link", "set", "dev", d, "up"]);
    await floorNs.ip(["addr", "add", `${other.address}/24`, "dev", "floor1"]);
    const add = join(dir, "floor-add"), del = join(dir, "floor-del");
    await writeFile(add, Array.from({ length: PATHS }, (_, i) => `route replace ${prefixOf(i)} via ${other.address} proto 96 metric 1024`).join("\n") + "\n");
    await writeFile(del, Array.from({ length: PATHS }, (_, i) => `route del ${prefixOf(i)} via ${other.address} proto 96 metric 1024`).join("\n") + "\n");
    const s = { up: [] as number[], upBgp: [] as number[], down: [] as number[], downBgp: [] as number[], fAdd: [] as number[], fDel: [] as number[] };
    let rssMiB = 0, rssPeakMiB = 0;
    for (let r = 0; r < rounds; r++) {
      let t = performance.now();
      await floorNs.ip(["-batch", add]);
      s.fAdd.push(performance.now() - t);
      t = performance.now();
      await floorNs.ip(["-batch", del]);
      s.fDel.push(performance.now() - t);
      const up = await measure(false, PATHS);
      s.up.push(up.total);
      s.upBgp.push(up.bgp);
      // Right after the burst the heap still holds its garbage; what a host carries is the settled figure.
      rssPeakMiB = await rssOf(daemon.child!.pid!);
      await new Promise((r) => setTimeout(r, LEARNED_SETTLE_SECONDS * 1000));
      rssMiB = await rssOf(daemon.child!.pid!);
      const down = await measure(true, 0);
      s.down.push(down.total);
      s.downBgp.push(down.bgp);
      process.stderr.write(`learned ${PATHS}: installed ${Math.round(up.total)} ms (BGP ${Math.round(up.bgp)}), withdrawn ${Math.round(down.total)} ms (BGP ${Math.round(down.bgp)}); ` +
        `one ip -batch: ${Math.round(s.fAdd.at(-1)!)} / ${Math.round(s.fDel.at(-1)!)} ms; RSS ${rssPeakMiB.toFixed(0)} → ${rssMiB.toFixed(0)} MiB\n`);
    }
    return {
      paths: PATHS, localEndpoints: LOCAL, rssMiB: Math.round(rssMiB * 10) / 10, rssPeakMiB: Math.round(rssPeakMiB * 10) / 10,
      install: { vmrouted: summarize(s.up), bgpOnly: summarize(s.upBgp), floorBatch: summarize(s.fAdd) },
      withdraw: { vmrouted: summarize(s.down), bgpOnly: summarize(s.downBgp), floorBatch: summarize(s.fDel) },
    };
  } finally {
    if (daemon) await writeFile(join(REPO, "bench/out/learned-daemon.log"), daemon.log).catch(() => undefined);
    await daemon?.cleanup();
    await rr?.destroy();
    await fabric.destroy();
    await floorNs.destroy();
    await rm(dir, { recursive: true, force: true });
  }
}
