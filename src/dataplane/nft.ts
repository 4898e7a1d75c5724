import { execa } from "execa";
import { withUnlinkedFile } from "../state/files.js";
import { NAT_FAMILY, NAT_TABLE, parseNftTable, type NatTable } from "./nat.js";

// The one place that runs nft. vmrouted only ever lists and writes its own
// table (`ip vmrouted`): never `list ruleset` to rewrite it, never `flush ruleset`.

/** nft, in a named network namespace when given (tests; vmrouted itself runs in the host's). */
function nftCommand(args: string[], netns?: string): [string, string[]] {
  return netns ? ["ip", ["netns", "exec", netns, "nft", ...args]] : ["nft", args];
}

// nft's messages are not translated, but keep them so whatever the locale.
const ENV = { LC_ALL: "C" };

/** nft could not be run at all (not installed): a host where no network wants NAT can do without it. */
export class NftUnavailableError extends Error {
  override name = "NftUnavailableError";
}

type Run = { stderr: string; exitCode?: number | undefined; code?: string; shortMessage?: string; originalMessage?: string };

function checkRan(r: Run): void {
  if (r.exitCode === undefined && r.code === "ENOENT") throw new NftUnavailableError("nft is not installed (package nftables)");
}

/**
 * The table `ip vmrouted` as the kernel has it (`nft -j list table ip
 * vmrouted`); undefined when there is no such table. nft not installed
 * throws NftUnavailableError; any other failure (no nf_tables in the kernel,
 * not root) an Error of one line.
 */
export async function listNatTable(netns?: string): Promise<NatTable | undefined> {
  const [cmd, args] = nftCommand(["-j", "list", "table", NAT_FAMILY, NAT_TABLE], netns);
  const r = await execa(cmd, args, { reject: false, env: ENV, maxBuffer: 256 * 1024 * 1024 });
  checkRan(r);
  if (r.exitCode === 0) return parseNftTable(r.stdout.trim() === "" ? {} : JSON.parse(r.stdout));
  // A table that does not exist: "Error: No such file or directory" (ENOENT from the kernel).
  if (r.exitCode === 1 && /^Error: No such file or directory\b/m.test(r.stderr)) return undefined;
  throw new Error(`nft list table ${NAT_FAMILY} ${NAT_TABLE}: ${failureLine(r)}`);
}

/**
 * Runs an `nft -f` script: one transaction, all of it or nothing. The
 * script goes to nft as a whole file (withUnlinkedFile), never a pipe, so a
 * vmrouted killed while writing never hands nft a truncated script. Throws
 * one line: nft's first error and the script line it points at.
 */
export async function applyNft(script: string, netns?: string): Promise<void> {
  await withUnlinkedFile(script.endsWith("\n") ? script : script + "\n", async (path) => {
    const [cmd, args] = nftCommand(["-f", path], netns);
    const r = await execa(cmd, args, { reject: false, env: ENV, maxBuffer: 64 * 1024 * 1024 });
    checkRan(r);
    if (r.exitCode !== 0) throw new Error(`nft -f: ${nftErrorLine(r.stderr, script) ?? failureLine(r)}`);
  });
}

/**
 * nft reports "FILE:LINE:COL-COL: Error: MESSAGE", then the line, then
 * carets. One line of it: the message, and the script line it points at.
 */
export function nftErrorLine(stderr: string, script: string): string | undefined {
  for (const raw of stderr.split("\n")) {
    const m = /^\S*?:(\d+):\d+(?:-\d+)?: Error: (.*)$/.exec(raw.trim());
    if (m) {
      const at = script.split("\n")[Number(m[1]) - 1]?.trim();
      return `${m[2]!.trim()} (line ${m[1]}${at ? `: ${at}` : ""})`;
    }
  }
  const plain = stderr.split("\n").map((l) => l.trim()).find((l) => l.startsWith("Error: "));
  return plain?.slice("Error: ".length);
}

function failureLine(r: Run): string {
  const first = r.stderr.split("\n").map((l) => l.trim()).find((l) => l !== "");
  if (first) return first.replace(/^Error: /, "");
  if (r.exitCode === undefined) return r.originalMessage || r.shortMessage || "could not run nft";
  return `exit code ${r.exitCode}`;
}
