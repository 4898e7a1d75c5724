import { execa, type ResultPromise } from "execa";

// The guest's announcement after a live migration, seen on its tap: QEMU
// sends RARPs from the guest's MAC right after the switch-over (or the guest,
// with virtio's GUEST_ANNOUNCE, gratuitous ARPs). tcpdump (libpcap) is the
// capture: Node has no raw sockets, and an nftables log rule would need a
// daemon to read the log. Started when a tap becomes a migration target;
// ends at the first matching frame (-c 1) or when stopped.

export type Announced = "garp" | "rarp";

export interface AnnounceWatch {
  stop(): void;
}

export function watchGuestAnnouncement(tap: string, mac: string, onSeen: (by: Announced, at: number) => void, onError: (message: string) => void): AnnounceWatch {
  let stopped = false;
  let child: ResultPromise | undefined;
  try {
    // --immediate-mode: each frame as it comes, not a buffer's worth later; -l: line-buffered output.
    // -Z root: tcpdump otherwise switches to the user tcpdump once capturing, which needs CAP_SETUID,
    // not in the systemd unit's bounding set: it would exit instead of capturing. Staying root, it
    // still calls initgroups() (CAP_SETGID, which the unit grants for it).
    child = execa("tcpdump", ["-Z", "root", "-i", tap, "-l", "-n", "-e", "-c", "1", "--immediate-mode",
      `ether src ${mac} and (arp or rarp)`], { buffer: false, reject: false, stderr: "pipe" });
  } catch (e) {
    onError(`tcpdump: ${(e as Error).message}`);
    return { stop: () => undefined };
  }
  child.stdout?.setEncoding("utf8");
  child.stdout?.on("data", (line: string) => {
    if (stopped || !line.trim()) return;
    stopped = true;
    onSeen(/Reverse ARP|0x8035/.test(line) ? "rarp" : "garp", Date.now());
  });
  let errors = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (t: string) => (errors += t));
  child.then((r) => {
    // tcpdump prints "listening on ..." on stderr when all is well; only a failure to capture is an error.
    if (!stopped && r.exitCode !== 0 && !r.isTerminated) onError(`tcpdump on ${tap}: ${errors.split("\n").find((l) => l && !l.startsWith("listening")) ?? `exit ${r.exitCode}`}`);
  }, (e: Error) => onError(`tcpdump on ${tap}: ${e.message}`));
  return {
    stop() {
      stopped = true;
      child?.kill();
    },
  };
}
