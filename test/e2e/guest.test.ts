import { spawn, type ChildProcess } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BgpLab, HOST_ADDRESS, RR_ADDRESS } from "../helpers/bgp-lab.js";
import { assertLabReady, Daemon, Netns, rootSnapshot, runId, stopChild, waitFor } from "../helpers/lab.js";
import { type LibvirtLab, startLibvirtWithDaemon } from "../helpers/libvirt-lab.js";

// The whole chain with a real guest:
//   guest (qemu, TCG) --tap--> host: vmrouted + gobgpd + libvirtd --veth--> rr: BIRD 2 + kernel
// and a task namespace on the same routed network. The guest reports on its
// serial console (scripts/lab/guest-init); the route reflector installs what
// it learns into its own kernel, so RR→guest traffic exists only while every
// link holds: the host's /32, the announcement, the BGP session. The network
// has natOutgoing: the guest also reaches an "outside" namespace that has no
// route back to it, which sees the host's address.

const GUEST_IP = "172.31.16.5";
const GATEWAY = "172.31.16.1";
const TASK_IP = "172.31.16.20";
const HOST_OUT = "198.51.100.1", OUTSIDE = "198.51.100.2";
const id = runId();
let outside: Netns;
let www = "";
let httpd: ChildProcess | undefined;
let lab: BgpLab;
let libvirt: LibvirtLab;
let daemon: Daemon;
let task: Netns;
let rootBefore = "";
const timings: Record<string, number> = {};

/** One ICMP echo, 1 s timeout: true when answered. */
const pings = async (from: Netns, to: string) => (await from.exec(["ping", "-c", "1", "-W", "1", to], false)).exitCode === 0;
const rrKernelRoute = async () =>
  (await lab.rr.json<Array<{ dst: string; gateway?: string; protocol?: string }>>(["-4", "route", "show", `${GUEST_IP}/32`]))[0];
const reports = () => libvirt.consoleReports("guest1");
const reported = async (line: string) => (await reports()).includes(line);
/** Waits for a console report made after the first `seen` ones. */
async function reportAfter(seen: number, line: string, timeoutMs: number): Promise<void> {
  await waitFor(async () => (await reports()).slice(seen).includes(line), timeoutMs, `guest console: "${line}"`);
}

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  lab = await BgpLab.start(id, { reflectorInstallsRoutes: true });
  task = await Netns.create(`vmrt-${id}-task`);
  outside = await Netns.create(`vmrt-${id}-out`);
  await lab.host.ip(["link", "add", "h-out", "type", "veth", "peer", "name", "eth0", "netns", outside.name]);
  await lab.host.ip(["addr", "add", `${HOST_OUT}/24`, "dev", "h-out"]);
  await lab.host.ip(["link", "set", "h-out", "up"]);
  await outside.ip(["addr", "add", `${OUTSIDE}/24`, "dev", "eth0"]);
  await outside.ip(["link", "set", "eth0", "up"]);
  // A web server that answers with the client address it saw.
  www = await mkdtemp(join(tmpdir(), "vmrouted-e2e-www-"));
  await mkdir(join(www, "cgi-bin"));
  await writeFile(join(www, "cgi-bin", "ip"), '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n%s\\n" "$REMOTE_ADDR"\n');
  await chmod(join(www, "cgi-bin", "ip"), 0o755);
  await chmod(www, 0o755);
  httpd = spawn("ip", ["netns", "exec", outside.name, "busybox", "httpd", "-f", "-p", `${OUTSIDE}:8080`, "-h", www], { stdio: "ignore" });
  ({ libvirt, daemon } = await startLibvirtWithDaemon(lab.host, {
    bgp: { gobgp: "127.0.0.1:50051" }, networks: { service: { gateway: "172.31.16.1/24", natOutgoing: true } },
  }));
  await lab.waitForSession();
  await libvirt.defineGuest("guest1", {
    // No static configuration: the guest's address, prefix and router come from vmrouted's dnsmasq.
    ip: "dhcp", ping: [GATEWAY, RR_ADDRESS, TASK_IP, OUTSIDE], watch: RR_ADDRESS, fetch: `http://${OUTSIDE}:8080/cgi-bin/ip`,
  });
}, 300_000);

afterAll(async () => {
  daemon?.child?.kill("SIGCONT"); // in case a test failed while it was paused
  await libvirt?.destroy();
  await daemon?.cleanup();
  await task?.destroy();
  await stopChild(httpd, "SIGKILL");
  await outside?.destroy();
  if (www) await rm(www, { recursive: true, force: true });
  await lab?.destroy();
  console.log(`e2e timings (ms): ${JSON.stringify(timings)}`);
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("a real guest on a routed interface", () => {
  it("a task namespace joins the same routed network", async () => {
    const r = await daemon.ctl(["netns", "add", task.name, "--network", "service", "--ip", TASK_IP]);
    expect(r.exitCode, r.stderr).toBe(0);
    await waitFor(async () => (await daemon.status()).endpoints.some((e) => e.ip === TASK_IP && e.state === "ready"), 10000, "task endpoint ready");
  });

  it("vmroutectl iface add, virsh start: the guest boots and reaches its gateway, the route reflector and the task", async () => {
    const r = await daemon.ctl(["iface", "add", "guest1", "--network", "service", "--ip", GUEST_IP]);
    expect(r.exitCode, r.stderr).toBe(0);
    const started = Date.now();
    await libvirt.virsh(["start", "guest1"]);
    await waitFor(() => reported("boot checks done"), 150_000, "the guest's boot checks");
    timings.startToBootChecksMs = Date.now() - started;
    const lines = await reports();
    expect(lines.find((l) => l.startsWith("dhcp bound"))).toMatch(new RegExp(`^dhcp bound ${GUEST_IP}/24 router ${GATEWAY} mtu 1500 `));
    expect(lines.find((l) => l.startsWith("up eth0"))).toMatch(new RegExp(`^up eth0 ${GUEST_IP}/24 mac 52:54:00:`));
    // Each target is retried for up to 60 s in the guest; "ok" means it answered.
    expect(lines).toContain(`ping ${GATEWAY} ok`);
    expect(lines).toContain(`ping ${RR_ADDRESS} ok`); // only through the host's /32 and BIRD's learned route
    expect(lines).toContain(`ping ${TASK_IP} ok`);
    // natOutgoing: the outside has no route back to the guest, yet answers it; it saw the host's address.
    expect(lines).toContain(`ping ${OUTSIDE} ok`);
    expect(lines).toContain(`fetch ${HOST_OUT}`);
  }, 200_000);

  it("the route reflector learned the /32 with the host as next hop, and reaches the guest with it", async () => {
    expect((await lab.birdRoutes()).get(`${GUEST_IP}/32`)).toBe(HOST_ADDRESS);
    expect(await rrKernelRoute()).toMatchObject({ gateway: HOST_ADDRESS, protocol: "12" }); // 12 = RTPROT_BIRD (-N: numeric)
    expect(await pings(lab.rr, GUEST_IP)).toBe(true);
  });

  it("the task namespace reaches the guest (both kinds of workload on one network)", async () => {
    expect(await pings(task, GUEST_IP)).toBe(true);
  });

  it("the host's /32 deleted by hand: RR→guest fails while it is missing, and vmrouted puts it back", async () => {
    // Pause vmrouted (our own child, by pid) so the break lasts long enough to observe.
    const seen = (await reports()).length;
    daemon.child!.kill("SIGSTOP");
    try {
      await lab.host.ip(["route", "del", `${GUEST_IP}/32`]);
      expect(await pings(lab.rr, GUEST_IP)).toBe(false);
      expect(await pings(lab.rr, GUEST_IP)).toBe(false);
      await reportAfter(seen, `watch ${RR_ADDRESS} fail`, 20000);
    } finally {
      daemon.child!.kill("SIGCONT");
    }
    timings.routeRepairMs = await waitFor(async () => (await lab.host.json<unknown[]>(["-4", "route", "show", `${GUEST_IP}/32`, "proto", "94"])).length === 1,
      20000, "vmrouted to restore the /32");
    await waitFor(() => pings(lab.rr, GUEST_IP), 20000, "RR→guest ping after the repair");
    await reportAfter(seen, `watch ${RR_ADDRESS} ok`, 20000);
  });

  it("gobgpd stopped: the route reflector loses the /32 and RR→guest fails, while the guest's own traffic out still flows (masqueraded); gobgpd back: it works again", async () => {
    const seen = (await reports()).length;
    await lab.gobgpd.stop();
    await waitFor(async () => (await rrKernelRoute()) === undefined, 60000, "the RR to drop the /32 from its kernel");
    expect(await pings(lab.rr, GUEST_IP)).toBe(false);
    expect(await pings(lab.rr, GUEST_IP)).toBe(false);
    // natOutgoing: the RR answers the host's address, so the guest's watch of it does not notice (and says nothing new).
    await new Promise((r) => setTimeout(r, 3000));
    expect((await reports()).slice(seen)).not.toContain(`watch ${RR_ADDRESS} fail`);
    const t0 = Date.now();
    await lab.startGobgpd();
    await waitFor(() => pings(lab.rr, GUEST_IP), 60000, "RR→guest ping after gobgpd restart");
    timings.gobgpdRestartToPingMs = Date.now() - t0;
    expect(await rrKernelRoute()).toMatchObject({ gateway: HOST_ADDRESS });
  });

  it("virsh destroy: the /32 is withdrawn from the route reflector, and the guest is unreachable", async () => {
    await libvirt.virsh(["destroy", "guest1"]);
    await waitFor(async () => (await rrKernelRoute()) === undefined, 30000, "withdrawal at the RR");
    expect(await pings(task, GUEST_IP)).toBe(false);
    expect((await lab.host.json<Array<{ dst: string }>>(["-4", "route", "show", "proto", "94"])).map((r) => r.dst)).toEqual([TASK_IP]);
  });
});
