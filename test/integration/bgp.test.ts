import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BgpLab } from "../helpers/bgp-lab.js";
import { assertLabReady, Daemon, rootSnapshot, runId, sh, waitFor } from "../helpers/lab.js";

// Real gobgpd (host namespace, next to vmrouted) and a real BIRD 2 route
// reflector (its own namespace); assertions read BIRD's table.

const id = runId();
let lab: BgpLab;
let daemon: Daemon;
let rootBefore = "";
const timings: Record<string, number> = {};

const taps = (ips: string[], network = "service") => ips.map((ip) => `  - { kind: tap, network: ${network}, ip: ${ip} }`).join("\n");
const spec = (body: string, networks = "") => `networks:\n  service: { gateway: 172.31.16.1/24 }\n${networks}endpoints:\n${body || "  []"}\n`;
const ips = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => `172.31.16.${from + i}`);
const prefixes = (list: string[]) => list.map((ip) => `${ip}/32`).sort();

async function apply(text: string): Promise<void> {
  const r = await daemon.ctl(["apply", "-f", "-"], text);
  expect(r.exitCode, r.stderr).toBe(0);
}

const birdHasExactly = (expected: string[], timeoutMs?: number) => lab.waitForExactly(expected, timeoutMs);


beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  lab = await BgpLab.start(id);
  daemon = await Daemon.create(lab.host, { bgp: { gobgp: "127.0.0.1:50051", communities: ["64512:100"], localPref: 200 } });
  await daemon.start();
  timings.sessionMs = await lab.waitForSession();
});

afterAll(async () => {
  await daemon?.cleanup();
  await lab?.destroy();
  console.log(`bgp timings (ms): ${JSON.stringify(timings)}`);
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("announcing endpoints to a BIRD route reflector through gobgpd", () => {
  it("announces exactly the ready endpoints, next hop = node address, with communities and local-pref", async () => {
    await apply(spec(taps(ips(10, 14))));
    timings.announce5Ms = await birdHasExactly(prefixes(ips(10, 14)));
    const all = await sh("birdc", ["-s", lab.birdSocket, "show", "route", "all", "172.31.16.10/32"]);
    expect(all.stdout).toMatch(/BGP\.community: \(64512,100\)/);
    expect(all.stdout).toMatch(/BGP\.local_pref: 200/);
    expect(all.stdout).toMatch(/BGP\.origin: IGP/);
    const status = await daemon.status();
    expect(status.bgp).toMatchObject({ enabled: true, state: "up", announced: 5 });
    expect(status.bgp.peers).toEqual([expect.objectContaining({ address: "10.99.0.2", state: "established" })]);
    expect(status.endpoints.every((e) => e.conditions.announced === true)).toBe(true);
  });

  it("withdraws exactly the removed endpoints", async () => {
    await apply(spec(taps(["172.31.16.10", "172.31.16.12", "172.31.16.14"])));
    timings.withdraw2Ms = await birdHasExactly(prefixes(["172.31.16.10", "172.31.16.12", "172.31.16.14"]));
  });

  it("re-announces everything after gobgpd restarts, with no operator action", async () => {
    const expected = prefixes(["172.31.16.10", "172.31.16.12", "172.31.16.14"]);
    await lab.gobgpd.stop();
    await waitFor(async () => (await daemon.status()).bgp.state === "down", 10000, "vmrouted to notice gobgpd is gone");
    // The kernel side keeps working while BGP is down: a new endpoint still becomes ready.
    await apply(spec(taps(["172.31.16.10", "172.31.16.12", "172.31.16.14", "172.31.16.15"])));
    const s = await daemon.status();
    expect(s.endpoints.find((e) => e.ip === "172.31.16.15")).toMatchObject({ state: "ready", conditions: expect.objectContaining({ announced: false }) });
    expect(s.bgp.reason).toMatch(/gobgpd/);
    const started = Date.now();
    await lab.startGobgpd();
    await birdHasExactly([...expected, "172.31.16.15/32"].sort(), 60000);
    timings.gobgpdRestartToFullSetMs = Date.now() - started;
  });

  it("restarting vmrouted withdraws nothing and duplicates nothing", async () => {
    const expected = prefixes(["172.31.16.10", "172.31.16.12", "172.31.16.14", "172.31.16.15"]);
    await birdHasExactly(expected);
    const withdrawsBefore = await lab.importWithdraws();
    await daemon.stop();
    await daemon.start();
    await waitFor(async () => (await daemon.status()).bgp.state === "up", 10000, "vmrouted to reconnect to gobgpd");
    await new Promise((r) => setTimeout(r, 1500));
    expect(await lab.importWithdraws()).toBe(withdrawsBefore);
    await birdHasExactly(expected);
    const count = await sh("birdc", ["-s", lab.birdSocket, "show", "route", "count", "protocol", "host1"]);
    expect(count.stdout).toMatch(/\b4 of 4 routes/);
  });

  it("announces 1,000 endpoints and withdraws them all", async () => {
    const bulk: string[] = [];
    for (let i = 0; i < 1000; i++) bulk.push(`172.20.${Math.floor(i / 250)}.${(i % 250) + 2}`);
    const networks = "  bulk: { gateway: 172.20.15.254/20 }\n";
    let started = Date.now();
    await apply(spec(taps(bulk, "bulk"), networks));
    await birdHasExactly(prefixes(bulk), 60000);
    timings.announce1000Ms = Date.now() - started;
    expect((await daemon.status()).bgp.announced).toBe(1000);
    started = Date.now();
    await apply(spec(""));
    await birdHasExactly([], 60000);
    timings.withdraw1000Ms = Date.now() - started;
  });
});
