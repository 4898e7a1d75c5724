import { z } from "zod";

// The declarative spec (`vmroutectl apply -f`, PUT /v1/spec) and the single
// endpoint requests of the CLI share these shapes. Shapes only: whether an
// address fits a network is checked in resolve.ts, against the whole state.

export const networkInputSchema = z
  .object({
    gateway: z.string({ required_error: "is required" }),
    /** Masquerade traffic from this network to destinations outside every vmrouted network. */
    natOutgoing: z.boolean().optional(),
  })
  .strict();

const tapInput = z
  .object({
    kind: z.literal("tap"),
    network: z.string(),
    ip: z.string(),
    mac: z.string().optional(),
    name: z.string().optional(),
  })
  .strict();

const netnsInput = z
  .object({
    kind: z.literal("netns"),
    network: z.string(),
    ip: z.string(),
    mac: z.string().optional(),
    netns: z.string(),
  })
  .strict();

export const endpointInputSchema = z.discriminatedUnion("kind", [tapInput, netnsInput]);

export const specSchema = z
  .object({
    networks: z.record(networkInputSchema).default({}),
    endpoints: z.array(endpointInputSchema).default([]),
  })
  .strict();

export type NetworkInput = z.infer<typeof networkInputSchema>;
export type EndpointInput = z.infer<typeof endpointInputSchema>;
export type Spec = z.infer<typeof specSchema>;

/** One line naming the key and the problem, e.g. `endpoints.2.ip: Required`. */
export function describeZodError(error: z.ZodError, what: string): string {
  const issue = error.issues[0];
  if (!issue) return `${what}: invalid`;
  const path = issue.path.length ? issue.path.join(".") : "(top level)";
  let message = issue.message;
  if (issue.code === "unrecognized_keys") message = `unknown key(s) ${issue.keys.map((k) => `'${k}'`).join(", ")}`;
  if (issue.code === "invalid_union_discriminator") message = `must be one of ${issue.options.map(String).join(", ")}`;
  return `${what}: ${path}: ${message}`;
}
