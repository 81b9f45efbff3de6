/**
 * The agent's configuration (`/etc/oarcloud/agent.yaml`, overridden by `OARCLOUD_AGENT_*`).
 * Defaults live here and nowhere else.
 */
import { hostname } from 'node:os';
import { z } from 'zod';
import { HOST_PORT_RE, loadConfig, TlsConfigSchema } from '@oarcloud/common';

export const AgentConfigSchema = z
  .object({
    /** The node's name: its OAR `network_address`. */
    nodeName: z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9.-]{0,62}$/).default(hostname()),
    /** gRPC listen address (the controller calls it). */
    listen: z.string().regex(HOST_PORT_RE).default('0.0.0.0:7101'),
    /** Prometheus `/metrics` listen address. */
    metricsListen: z.string().regex(HOST_PORT_RE).default('127.0.0.1:9101'),
    natsUrl: z.string().default('nats://127.0.0.1:4222'),
    libvirtUri: z.string().default('lxc:///system'),
    /** Agent state: image cache, instance records. */
    stateDir: z.string().default('/var/lib/oarcloud/agent'),
    /** Where instance roots (overlays) are mounted; must be under a shared mount. */
    instancesDir: z.string().default('/var/lib/oarcloud/instances'),
    /** The Open vSwitch integration bridge. */
    bridge: z.string().default('br-int'),
    /** OVS datapath: `system` (kernel module) or `netdev` (userspace). */
    datapath: z.enum(['system', 'netdev']).default('system'),
    /** The node's ovsdb-server (`unix:PATH` or `tcp:HOST:PORT`). */
    ovsdb: z.string().regex(/^(unix:\/\S+|tcp:\S+:\d+)$/).default('unix:/var/run/openvswitch/db.sock'),
    /**
     * Network namespace of the node's ovs-vswitchd ('' : the agent's own). When set, the
     * agent moves each instance's host-side veth into it before plugging it.
     */
    netns: z.string().regex(/^([A-Za-z0-9_.-]{1,64})?$/).default(''),
    /** This node's VXLAN tunnel endpoint address ('' : no tunnels, single-host networks only). */
    underlayIp: z.string().regex(/^((\d{1,3}\.){3}\d{1,3})?$/).default(''),
    /**
     * Interface the NAT gateways of networks with `nat` masquerade out of (in `netns`);
     * '' : the one holding `underlayIp`, else the default route's.
     */
    natUplink: z.string().regex(/^([A-Za-z0-9_.-]{1,15})?$/).default(''),
    /**
     * User-namespace id map of instances: container ids 0..idmapCount-1 are host ids
     * idmapBase… (layers are unpacked shifted by idmapBase). 0 runs instances privileged.
     */
    idmapBase: z.number().int().min(0).max(2 ** 31).default(100_000),
    idmapCount: z.number().int().min(1).max(2 ** 24).default(65_536),
    /**
     * The controller's gRPC address: missing image layers are fetched from it (ImageService
     * FetchLayer) with the node token. '' : no fetching (layers must be imported by hand).
     */
    controllerAddress: z.string().regex(/^(|[^\s:]+:\d{1,5})$/).default(''),
    /** File holding the controller's node token (its `node.token`, 0600 on every node). */
    controllerTokenFile: z.string().default('/etc/oarcloud/node.token'),
    /**
     * Dial `controllerAddress` over TLS (the controller's `tlsListen`), its certificate
     * checked against `tls.ca` with the controller role, so the node token never crosses
     * the network in clear. Needs `tls`.
     */
    controllerTls: z.boolean().default(false),
    /** Budget of the layer cache in bytes; unused layers are evicted beyond it (0: no limit). */
    layerCacheBytes: z.number().int().min(0).default(20 * 1024 ** 3),
    /**
     * Where volumes live (`<volumesDir>/<volume id>`): the same shared storage (e.g. NFS) as
     * the controller's `volumesDir`.
     */
    volumesDir: z.string().default('/var/lib/oarcloud/volumes'),
    heartbeatMs: z.number().int().min(200).max(600_000).default(5000),
    reconcileMs: z.number().int().min(200).max(600_000).default(5000),
    /** Mutual TLS with the controller (`oarcloud admin pki`); absent: insecure, for development. */
    tls: TlsConfigSchema.optional(),
    logLevel: z.enum(['debug', 'info', 'warn', 'error', 'silent']).default('info'),
  })
  .strict();

export type AgentConfig = z.infer<typeof AgentConfigSchema>;

export function loadAgentConfig(file: string | undefined, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  return loadConfig(AgentConfigSchema, { file, envPrefix: 'OARCLOUD_AGENT', env });
}
