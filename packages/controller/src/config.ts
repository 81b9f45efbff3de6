/**
 * The controller's configuration (`/etc/oarcloud/controller.yaml`, overridden by
 * `OARCLOUD_CONTROLLER_*`). Defaults live here and nowhere else.
 */
import { z } from 'zod';
import { HOST_PORT_RE, loadConfig, TlsConfigSchema } from '@oarcloud/common';

export const AgentEndpointSchema = z.object({
  /** Node name (OAR `network_address`). */
  name: z.string().min(1),
  /** The agent's gRPC address. */
  address: z.string().regex(HOST_PORT_RE),
});

export const ControllerConfigSchema = z
  .object({
    listen: z.string().regex(HOST_PORT_RE).default('0.0.0.0:7000'),
    /**
     * A second listener for the same services over TLS, with the certificate of \`tls\`
     * (required then): what users and agents off this host should use, so tokens never
     * cross the network in clear. \`listen\` can then stay on loopback (hooks, local admin).
     */
    tlsListen: z.string().regex(HOST_PORT_RE).optional(),
    metricsListen: z.string().regex(HOST_PORT_RE).default('127.0.0.1:9100'),
    natsUrl: z.string().default('nats://127.0.0.1:4222'),
    /** The embedded store (SQLite). */
    dbPath: z.string().default('/var/lib/oarcloud/controller/state.db'),
    /** Read access to OAR's PostgreSQL database (job states, resources). */
    oarDatabaseUrl: z.string().default('postgresql://oarreader@127.0.0.1:5432/oar'),
    agents: z.array(AgentEndpointSchema).default([]),
    reconcileMs: z.number().int().min(200).max(600_000).default(3000),
    /**
     * Images made public at start: `{ dir }` is an image folder (image.json + layer.tar, as
     * `tools/images/build-*.sh` makes them) imported into the image store; `{ name, layers }`
     * only declares an image whose layers the nodes already have (tests, simulations).
     */
    images: z
      .array(
        z.union([
          z.object({ name: z.string().min(1), layers: z.array(z.string().regex(/^sha256:[0-9a-f]{64}$/)).min(1).max(64) }).strict(),
          z.object({ dir: z.string().min(1), name: z.string().min(1).optional() }).strict(),
        ]),
      )
      .default([]),
    /** Image layer blobs (gzip); default `<dirname(dbPath)>/layers`. */
    layersDir: z.string().optional(),
    /**
     * Volumes (one folder each); must be the same shared storage (e.g. NFS) as the agents'
     * `volumesDir`. Default `<dirname(dbPath)>/volumes`.
     */
    volumesDir: z.string().optional(),
    /** Node token file (agents fetch layers with it); default `<dirname(dbPath)>/node.token`. */
    nodeTokenFile: z.string().optional(),
    /** Deadline of one CreateInstance call (the agent answers once the instance runs). */
    agentCreateTimeoutMs: z.number().int().min(1000).max(600_000).default(90_000),
    /** Deadline of the other agent calls (list, release, destroy, stop, start). */
    agentCallTimeoutMs: z.number().int().min(200).max(120_000).default(15_000),
    /** Pool the job networks' subnets are carved from, and their prefix length. */
    networkPool: z.string().regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/).default('10.90.0.0/16'),
    networkSubnetPrefix: z.number().int().min(16).max(29).default(24),
    /** VXLAN network identifiers handed to networks (VNIs below 4096 are left to operators). */
    vniMin: z.number().int().min(1).max(0xffffff).default(4096),
    vniMax: z.number().int().min(1).max(0xffffff).default(0xffffff),
    /** Hook token file (HookService auth); default `<dirname(dbPath)>/hook.token`. */
    hookTokenFile: z.string().optional(),
    /** Admin token file written at first start; default `<dirname(dbPath)>/admin.token`. */
    adminTokenFile: z.string().optional(),
    /**
     * Mutual TLS to the agents (`oarcloud admin pki`): this controller's certificate (role
     * controller) and the CA the agents' certificates must come from. Absent: insecure.
     */
    tls: TlsConfigSchema.optional(),
    logLevel: z.enum(['debug', 'info', 'warn', 'error', 'silent']).default('info'),
  })
  .strict();

export type ControllerConfig = z.infer<typeof ControllerConfigSchema>;

export function loadControllerConfig(file: string | undefined, env: NodeJS.ProcessEnv = process.env): ControllerConfig {
  return loadConfig(ControllerConfigSchema, { file, envPrefix: 'OARCLOUD_CONTROLLER', env });
}
