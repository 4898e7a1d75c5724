import { access } from "node:fs/promises";
import { execa } from "execa";

// Gateway devices are dummies. Some kernels (these lab machines) have no dummy
// driver: `ip link add x type dummy` fails with "Unknown device type". An empty
// bridge behaves the same for our purpose (a place for the gateway address),
// so we fall back to it, and say so. Detected without creating any device.

export interface GatewayKind {
  kind: "dummy" | "bridge";
  reason?: string;
}

const exists = (path: string) => access(path).then(() => true, () => false);

export async function detectGatewayKind(): Promise<GatewayKind> {
  if (await exists("/sys/module/dummy")) return { kind: "dummy" };
  // Loaded on demand on most hosts; loading it changes no network state.
  await execa("modprobe", ["-q", "dummy"], { reject: false }).catch(() => undefined);
  if (await exists("/sys/module/dummy")) return { kind: "dummy" };
  return { kind: "bridge", reason: "kernel has no dummy driver; gateway devices are empty bridges" };
}
