import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SERVER_DUID } from "../../src/dataplane/dhcp/files.js";
import { linkLocalFromMac } from "../../src/model/ipv6.js";
import { assertLabReady, type Daemon, Netns, rootSnapshot, runId, waitFor } from "../helpers/lab.js";
import { type LibvirtLab, startLibvirtWithDaemon } from "../helpers/libvirt-lab.js";

// IPv6 for a real guest (issue #25): a libvirt/qemu guest with no static IPv6
// configuration (the lab guest's ISC `dhclient -6`, and the kernel's own RA
// handling) gets its address from vmrouted's dnsmasq by DHCPv6 and its default
// route from vmrouted's router advertisement on the tap: the tap's EUI-64
// link-local address. Its interface is added with `vmroutectl iface add --ip6`
// (the VM metadata path). A guest whose MAC vmrouted does not know gets no
// IPv6 address.

const GATEWAY = "172.31.16.1";
const PREFIX6 = "fd31:16::/64";
const GUEST = { ip: "172.31.16.50", ip6: "fd31:16::50", mac: "52:54:00:00:16:50" };
const TASK = { ip: "172.31.16.20", ip6: "fd31:16::20" };
const UNKNOWN_MAC = "52:54:00:ab:cd:ef";
const OTHER_TAP = { name: "guestx0", ip: "172.31.16.60", ip6: "fd31:16::60", mac: "52:54:00:12:34:56" };
// dnsmasq's DHCPv6 T1 is half the lease: the guest renews after 60 s.
const NETWORK = { gateway: `${GATEWAY}/24`, prefix6: PREFIX6, leaseSeconds: 120 };
const id = runId();
let host: Netns, task: Netns;
let libvirt: LibvirtLab;
let daemon: Daemon;
let rootBefore = "";
const timings: Record<string, number> = {};

interface Status6 {
  endpoints: Array<{ kind: string; ip: string; ip6?: string; mac: string; device: string; state: string; reason: string; conditions: Record<string, boolean> }>;
  dhcp: { state: string; hosts: number; messages: Record<string, number> };
}
const status6 = async () => (await daemon.status()) as unknown as Status6;
const reports = (name: string) => libvirt.consoleReports(name);
/** The guest's gateway: the EUI-64 link-local of its tap's MAC (the guest's MAC with fe: first). */
const tapLinkLocal = (guestMac: string) => linkLocalFromMac(`fe${guestMac.slice(2)}`);
const gateway6 = tapLinkLocal(GUEST.mac);
/** vmrouted's fixed server DUID as dhclient prints it (hex bytes without leading zeros). */
const serverId = SERVER_DUID.split(":").map((h) => parseInt(h, 16).toString(16)).join(":");

beforeAll(async () => {
  assertLabReady();
  rootBefore = await rootSnapshot();
  host = await Netns.create(`vmr6-${id}-dh`);
  task = await Netns.create(`vmr6-${id}-task`);
  ({ libvirt, daemon } = await startLibvirtWithDaemon(host, { networks: { service: NETWORK } }));
}, 120_000);

afterAll(async () => {
  await libvirt?.destroy();
  await daemon?.cleanup();
  for (const ns of [task, host]) await ns?.destroy();
  console.log(`dhcp6 timings (ms): ${JSON.stringify(timings)}`);
  expect(await rootSnapshot()).toBe(rootBefore);
});

describe("DHCPv6 and router advertisements on vmrouted's taps, with a real guest", () => {
  it("a guest with no static IPv6 configuration gets exactly its ip6 (/128) by DHCPv6 and its default route via the tap's link-local address, then pings a task and that gateway; a MAC vmrouted does not know gets no IPv6 address", async () => {
    await libvirt.defineGuest("guest1", { ip: "dhcp", ip6: "dhcp", ping: [TASK.ip6, `${gateway6}%eth0`], watch: TASK.ip6 });
    for (const args of [["netns", "add", task.name, "--network", "service", "--ip", TASK.ip, "--ip6", TASK.ip6],
      ["iface", "add", "guest1", "--network", "service", "--ip", GUEST.ip, "--ip6", GUEST.ip6, "--mac", GUEST.mac]]) {
      const r = await daemon.ctl(args);
      expect(r.exitCode, r.stderr).toBe(0);
    }
    // The VM metadata path: the ip6 is on the domain's interface, as vmrouted patched it.
    const xml = (await libvirt.virsh(["dumpxml", "guest1"])).stdout;
    expect(xml).toContain(GUEST.mac);
    expect(xml).toMatch(new RegExp(`ip6=["']${GUEST.ip6}["']`));
    // The second guest's NIC is a tap endpoint (with an ip6) vmrouted made for another MAC.
    const tap = await daemon.ctl(["tap", "add", "--network", "service", "--ip", OTHER_TAP.ip, "--ip6", OTHER_TAP.ip6, "--name", OTHER_TAP.name, "--mac", OTHER_TAP.mac]);
    expect(tap.exitCode, tap.stderr).toBe(0);
    await libvirt.defineGuest("guest2", { ip: `${OTHER_TAP.ip}/24`, gateway: GATEWAY, ip6: "dhcp", ping: [], watch: "", nic: { mac: UNKNOWN_MAC, tap: OTHER_TAP.name } });

    const started = Date.now();
    await libvirt.virsh(["start", "guest1"]);
    await waitFor(async () => (await reports("guest1")).includes("boot checks done"), 150_000, "guest1's boot checks");
    timings.startToBootChecksMs = Date.now() - started;
    // The watch's first report follows the boot checks.
    await waitFor(async () => (await reports("guest1")).some((l) => l.startsWith(`watch ${TASK.ip6}`)), 10_000, "the guest's first watch report");
    const lines = await reports("guest1");
    console.log(`guest1: ${JSON.stringify(lines)}`);
    // Exactly its address, a /128, and no other global one (the RA's prefix is neither on-link nor autonomous).
    expect(lines).toContain(`up6 eth0 ${GUEST.ip6}/128`);
    const bound = lines.find((l) => l.startsWith("dhcp6 bound"));
    expect(bound).toMatch(new RegExp(`^dhcp6 bound ${GUEST.ip6}/128 router ${gateway6} server ${serverId} lease 120$`));
    expect(lines).toContain(`ping ${TASK.ip6} ok`);
    expect(lines).toContain(`ping ${gateway6}%eth0 ok`);
    expect(lines).toContain(`watch ${TASK.ip6} ok`);
    expect(lines.find((l) => l.startsWith("dhcp bound"))).toMatch(new RegExp(`^dhcp bound ${GUEST.ip}/24 router ${GATEWAY} `));

    const s = await status6();
    const vm = s.endpoints.find((e) => e.ip === GUEST.ip)!;
    expect(vm).toMatchObject({ kind: "vm", ip6: GUEST.ip6, mac: GUEST.mac, state: "ready", conditions: { gateway6: true } });
    expect(s.endpoints.find((e) => e.ip === TASK.ip)).toMatchObject({ ip6: TASK.ip6, state: "ready", conditions: { gateway6: true } });
    expect(s.dhcp).toMatchObject({ state: "running", hosts: 2 });
    for (const m of ["SOLICIT6", "ADVERTISE6", "REQUEST6", "REPLY6"]) expect(s.dhcp.messages[m], m).toBeGreaterThanOrEqual(1);
    expect(daemon.log).toMatch(new RegExp(`"ip6":"${GUEST.ip6}"[^\\n]*"msg":"dhcp6 reply"`));
    const metrics = (await daemon.request("GET", "/metrics")).body;
    expect(Number(/^vmrouted_dhcp_messages_total\{type="REPLY6"\} (\d+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1);

    // The unknown MAC: its tap has an ip6, a link-local gateway and RAs, but dnsmasq gives it no address. Started
    // after guest1 has its lease (guest1 renews only after 60 s), so the SOLICITs counted from here are guest2's.
    const before = (await status6()).dhcp.messages;
    await libvirt.virsh(["start", "guest2"]);
    await waitFor(async () => (await reports("guest2")).includes("boot checks done"), 150_000, "guest2's boot (its wait for an IPv6 address: 30 s)");
    const lines2 = await reports("guest2");
    console.log(`guest2: ${JSON.stringify(lines2)}`);
    expect(lines2).toContain("up6 eth0 -");
    expect(lines2.filter((l) => l.startsWith("dhcp6 "))).toEqual([]);
    expect(lines2).toContain(`up eth0 ${OTHER_TAP.ip}/24 mac ${UNKNOWN_MAC}`);
    const after = (await status6()).dhcp.messages;
    expect(after.SOLICIT6, "guest2's SOLICITs reached dnsmasq").toBeGreaterThan(before.SOLICIT6!);
    // (guest1 may renew meanwhile: REPLY6 counts are not guest2's alone.) Its DUID-LL names its MAC: no lease, no granting reply.
    const leases = await readFile(join(daemon.dir, "state", "dnsmasq.leases"), "utf8");
    expect(leases).toMatch(new RegExp(` ${GUEST.ip6} .* 00:03:00:01:${GUEST.mac}$`, "m"));
    expect(leases).not.toContain(UNKNOWN_MAC);
    expect(daemon.log).not.toMatch(/"msg":"dhcp6 reply"[^\n]*ab:cd:ef|ab:cd:ef[^\n]*"msg":"dhcp6 reply"/);
  }, 300_000);

  it("the guest renews its lease over DHCPv6 (T1: half the 120 s lease) and keeps its address; the task stays reachable", async () => {
    const waitFrom = Date.now();
    await waitFor(async () => (await reports("guest1")).some((l) => l.startsWith("dhcp6 renew")), 120_000, "the guest's DHCPv6 renewal", 500);
    timings.renewWaitMs = Date.now() - waitFrom;
    const lines = await reports("guest1");
    console.log(`guest1: ${JSON.stringify(lines)}`);
    expect(lines.find((l) => l.startsWith("dhcp6 renew"))).toMatch(new RegExp(`^dhcp6 renew ${GUEST.ip6}/128 router ${gateway6} server ${serverId} lease 120$`));
    expect(lines.filter((l) => /^dhcp6 (expire|release|stop|fail)/.test(l))).toEqual([]);
    // The watch pings the task every second: one "ok", never a "fail".
    expect(lines.filter((l) => l.startsWith(`watch ${TASK.ip6}`))).toEqual([`watch ${TASK.ip6} ok`]);
    // Nor has the unknown MAC's client, still soliciting, been given anything since.
    expect((await reports("guest2")).filter((l) => l.startsWith("dhcp6 "))).toEqual([]);
    const s = await status6();
    expect(s.dhcp.messages.RENEW6).toBeGreaterThanOrEqual(1);
    expect(s.dhcp.messages.REPLY6).toBeGreaterThanOrEqual(2);
    console.log(`dnsmasq's DHCPv6 messages: ${JSON.stringify(Object.fromEntries(Object.entries(s.dhcp.messages).filter(([k, n]) => k.endsWith("6") && n > 0)))}`);
  }, 150_000);
});
