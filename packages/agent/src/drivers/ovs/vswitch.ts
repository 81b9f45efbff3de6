/**
 * The virtual switch contract: what the agent needs from Open vSwitch (or a fake).
 *
 * One integration bridge per node. A network is a local VLAN tag on it (access ports);
 * between nodes, one VXLAN port per (network, remote node) keyed by the network's VNI,
 * an access port of the network's VLAN too, and `protected` so that NORMAL switching never
 * forwards from one tunnel to another (split horizon: the mesh is full, so nothing needs
 * relaying, and a broadcast must not loop). Everything is plain NORMAL switching: no
 * OpenFlow rule to keep in sync.
 *
 * A network with outbound NAT has, on the one node that hosts its gateway, an internal
 * port (`gatewayPortName(network)`) on the network's VLAN: its kernel device carries the
 * gateway address (network/gateway.ts does the address, forwarding and NAT).
 *
 * Ownership: every port we create carries `external_ids:oarcloud-kind` (`instance`,
 * `tunnel` or `gateway`) and the ids it belongs to; `list` returns those only and
 * `remove*` refuse (NotManagedError) to touch a port without them. The bridge carries
 * `external_ids:oarcloud-managed=true`.
 *
 * All methods are idempotent; they may run concurrently for different ports.
 */
import { createHash } from 'node:crypto';
import { OarcloudError } from '@oarcloud/common';

/** external_ids keys of our objects. */
export const EXT = {
  managed: 'oarcloud-managed',
  kind: 'oarcloud-kind',
  instance: 'oarcloud-instance',
  network: 'oarcloud-network',
  vni: 'oarcloud-vni',
  remote: 'oarcloud-remote',
} as const;

export interface InstancePort {
  /** Interface name (the instance's host-side veth). */
  name: string;
  instanceId: string;
  networkId: string;
  /** Local VLAN tag of the network on this node (1–4094). */
  tag: number;
}

export interface TunnelPort {
  /** Port name, `tunnelName(vni, remoteIp)`. */
  name: string;
  networkId: string;
  vni: number;
  remoteIp: string;
  tag: number;
}

export interface GatewayPort {
  /** Port (and internal interface) name, `gatewayPortName(networkId)`. */
  name: string;
  networkId: string;
  tag: number;
  /** `mtu_request` of the internal interface (the network's inner MTU). */
  mtu: number;
}

export interface SwitchState {
  ports: InstancePort[];
  tunnels: TunnelPort[];
  gateways: GatewayPort[];
}

/** A port exists but is not ours (no oarcloud external_ids): never touched. */
export class NotManagedError extends OarcloudError {
  override readonly name = 'NotManagedError';
}

/** Deterministic, ≤ 15 characters: `vx` + 13 hex of sha256(vni/remote). */
export function tunnelName(vni: number, remoteIp: string): string {
  return `vx${createHash('sha256').update(`${vni}/${remoteIp}`).digest('hex').slice(0, 13)}`;
}

/** Deterministic, 15 characters: `ocg` + the 12 hex of the network id (never an instance port: `g` is not hex). */
export function gatewayPortName(networkId: string): string {
  return `ocg${networkId.slice(2)}`;
}

export interface VSwitch {
  /**
   * Creates the integration bridge with the configured datapath (`netdev` | `system`) if
   * absent and marks it ours. A bridge of that name with another datapath is an error
   * (FailedPreconditionError): changing it would cut every port off.
   */
  ensureBridge(): Promise<void>;
  /**
   * Adds (or updates the tag and ids of) an instance port. The interface need not exist
   * yet in the switch's namespace (OVS plugs it when it appears). Idempotent. A port of
   * that name that is not ours: NotManagedError.
   */
  ensurePort(p: InstancePort): Promise<void>;
  /** Removes one of our ports (instance or tunnel). Absent: false. Not ours: NotManagedError. */
  removePort(name: string): Promise<boolean>;
  /**
   * Adds (or updates) the VXLAN port of a network towards `remoteIp`: access port of
   * `tag`, `options:key=vni`, protected. Returns its name. Idempotent.
   */
  ensureTunnel(t: Omit<TunnelPort, 'name'>): Promise<string>;
  /** Same as removePort, for symmetry with ensureTunnel. */
  removeTunnel(name: string): Promise<boolean>;
  /**
   * Adds (or updates the tag, MTU and ids of) the internal port of a network's NAT gateway,
   * an access port of `tag`, not protected. Returns its name. Its kernel device exists once
   * this returns (created by ovs-vswitchd in the switch's netns). Idempotent. A port of that
   * name that is not ours: NotManagedError.
   */
  ensureGatewayPort(g: Omit<GatewayPort, 'name'>): Promise<string>;
  /** Our ports on the bridge, by external_ids. */
  list(): Promise<SwitchState>;
}
