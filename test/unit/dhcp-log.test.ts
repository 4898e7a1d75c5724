import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { DhcpServer } from "../../src/dataplane/dhcp/dnsmasq.js";
import { SERVER_DUID } from "../../src/dataplane/dhcp/files.js";

// What vmrouted reads from dnsmasq's log (dataplane/dhcp/dnsmasq.ts): lines as
// dnsmasq 2.90 wrote them in a dual-stack lab (DHCPv4 by busybox udhcpc, DHCPv6
// by ISC dhclient -6). DHCPv6's REQUEST shares its name with DHCPv4's and is
// counted apart.

const LINES = `dnsmasq-dhcp[12320]: DHCPREQUEST(tap-0000000001) 172.31.16.10 52:54:00:00:00:10
dnsmasq-dhcp[12320]: DHCPACK(tap-0000000001) 172.31.16.10 52:54:00:00:00:10
dnsmasq-dhcp[12320]: DHCPSOLICIT(tap-0000000002) 00:03:00:01:52:54:00:00:00:20 
dnsmasq-dhcp[12320]: DHCPADVERTISE(tap-0000000002) fd31:17::20 00:03:00:01:52:54:00:00:00:20 
dnsmasq-dhcp[12320]: DHCPREQUEST(tap-0000000002) 00:03:00:01:52:54:00:00:00:20 
dnsmasq-dhcp[12320]: DHCPREPLY(tap-0000000002) fd31:17::20 00:03:00:01:52:54:00:00:00:20 
dnsmasq-dhcp[12320]: DHCPRENEW(tap-0000000002) 00:03:00:01:52:54:00:00:00:20 
dnsmasq-dhcp[12320]: DHCPREPLY(tap-0000000002) fd31:17::20 00:03:00:01:52:54:00:00:00:20 
dnsmasq-dhcp[22914]: DHCPRENEW(tap-0000000002) 00:03:00:01:52:54:00:00:00:20 
dnsmasq-dhcp[22914]: DHCPREPLY(tap-0000000002) fd31:17::20 00:03:00:01:52:54:00:00:00:20 lease not found
dnsmasq-dhcp[7511]: DHCPADVERTISE(tap-0000000001) 00:02:00:00:00:09:01:02:03:04:05 no addresses available`;

describe("dnsmasq's log", () => {
  it("DHCPv4 and DHCPv6 messages are counted apart; an ACK is kept by MAC, a DHCPv6 REPLY that grants its address logged with it and the DUID", () => {
    const logged: Array<Record<string, unknown>> = [];
    const log = pino({ level: "info" }, { write: (line: string) => void logged.push(JSON.parse(line)) });
    const server = new DhcpServer({ paths: { dir: "/nonexistent", leases: "/nonexistent/leases" }, log });
    for (const l of LINES.split("\n")) (server as unknown as { line(l: string): void }).line(l);
    const counted = Object.fromEntries(Object.entries(server.status().messages).filter(([, n]) => n > 0));
    expect(counted).toEqual({ REQUEST: 1, ACK: 1, SOLICIT6: 1, ADVERTISE6: 2, REQUEST6: 1, RENEW6: 2, REPLY6: 3 });
    expect([...server.acks.keys()]).toEqual(["52:54:00:00:00:10"]);
    expect(logged.filter((l) => l.msg === "dhcp6 reply").map((l) => [l.ip6, l.duid])).toEqual([
      ["fd31:17::20", "00:03:00:01:52:54:00:00:00:20"], ["fd31:17::20", "00:03:00:01:52:54:00:00:00:20"],
    ]);
  });

  it("a lease file naming another DHCPv6 server DUID loses that line (dnsmasq would keep it over dhcp-duid); its leases stay", async () => {
    const dir = await mkdtemp(join(tmpdir(), "vmrouted-dhcp-log-"));
    try {
      const leases = join(dir, "leases");
      await writeFile(leases, "1796411490 52:54:00:00:00:10 172.31.16.10 * 01:52:54:00:00:00:10\nduid 00:01:00:01:32:a5:bd:94:96:9a:3e:2e:c0:56\n1796411371 16 fd31:16::10 * 00:03:00:01:52:54:00:00:00:10\n");
      const server = new DhcpServer({ paths: { dir, leases }, log: pino({ level: "silent" }) });
      await (server as unknown as { keepServerDuid(): Promise<void> }).keepServerDuid();
      expect(await readFile(leases, "utf8")).toBe("1796411490 52:54:00:00:00:10 172.31.16.10 * 01:52:54:00:00:00:10\n1796411371 16 fd31:16::10 * 00:03:00:01:52:54:00:00:00:10\n");
      await writeFile(leases, `duid ${SERVER_DUID}\n`);
      await (server as unknown as { keepServerDuid(): Promise<void> }).keepServerDuid();
      expect(await readFile(leases, "utf8")).toBe(`duid ${SERVER_DUID}\n`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
