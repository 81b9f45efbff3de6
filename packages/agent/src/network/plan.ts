/**
 * The node's network reconcile as a pure diff: what the switch should hold (from the
 * instance records and the networks the controller declared) against what it holds.
 * Applied remove → add by NodeNetworks.reconcile.
 */
import type { GatewayPort, InstancePort, SwitchState, TunnelPort } from '../drivers/ovs/vswitch.js';
import { gatewayPortName, tunnelName } from '../drivers/ovs/vswitch.js';

/** What the node knows of a network (persisted). */
export interface LocalNetwork {
  vni: number;
  /** Local VLAN tag, unique on this node. */
  tag: number;
  /** Underlay IPs of the other nodes with instances on it (from EnsureNetwork). */
  peers: string[];
  /** Set when this node hosts the network's outbound NAT gateway (from EnsureNetwork). */
  gateway?: { address: string; mtu: number };
  /** The network's job, when the controller said (ReleaseJob releases the network). */
  jobId?: number;
}

/** An instance interface that should be plugged (its instance has a live domain). */
export interface WantedPort {
  name: string;
  instanceId: string;
  networkId: string;
}

export interface NetworkPlanInput {
  wantedPorts: WantedPort[];
  /** Networks with at least one live local instance. */
  activeNetworks: Set<string>;
  networks: Record<string, LocalNetwork>;
  actual: SwitchState;
  /** Networks that have one of our NAT tables on this node. */
  natTables: string[];
  /** This node's underlay address ('' : none, so no tunnels at all). */
  underlayIp: string;
  /** Ids of instances being created or destroyed right now: their ports are left alone. */
  busy: (instanceId: string) => boolean;
}

export interface NetworkPlan {
  removePorts: string[];
  removeTunnels: string[];
  retagPorts: InstancePort[];
  addTunnels: Array<Omit<TunnelPort, 'name'>>;
  /** Gateway ports of networks that have no gateway here (any more). */
  removeGateways: string[];
  /** NAT tables of networks that have no gateway here (any more). */
  removeNat: string[];
  /** Gateways to (re)ensure: every one this node hosts (ensure is read-mostly and fixes drift). */
  ensureGateways: Array<Omit<GatewayPort, 'name'>>;
}

/** Networks whose gateway this node hosts. */
export function gatewayNetworks(networks: Record<string, LocalNetwork>): string[] {
  return Object.keys(networks).filter((id) => networks[id]!.gateway);
}

export function planNetworks(i: NetworkPlanInput): NetworkPlan {
  const plan: NetworkPlan = { removePorts: [], removeTunnels: [], retagPorts: [], addTunnels: [], removeGateways: [], removeNat: [], ensureGateways: [] };
  const wanted = new Map(i.wantedPorts.map((p) => [p.name, p]));
  for (const p of i.actual.ports) {
    if (i.busy(p.instanceId)) continue;
    const w = wanted.get(p.name);
    const net = w && i.networks[w.networkId];
    if (!w || !net) plan.removePorts.push(p.name);
    else if (p.tag !== net.tag || p.networkId !== w.networkId) plan.retagPorts.push({ name: p.name, instanceId: w.instanceId, networkId: w.networkId, tag: net.tag });
  }
  const wantedTunnels = new Map<string, Omit<TunnelPort, 'name'>>();
  if (i.underlayIp) {
    for (const id of i.activeNetworks) {
      const net = i.networks[id];
      if (!net) continue;
      for (const peer of net.peers) {
        if (peer === i.underlayIp) continue;
        wantedTunnels.set(tunnelName(net.vni, peer), { networkId: id, vni: net.vni, remoteIp: peer, tag: net.tag });
      }
    }
  }
  const have = new Map(i.actual.tunnels.map((t) => [t.name, t]));
  for (const t of i.actual.tunnels) {
    const w = wantedTunnels.get(t.name);
    if (!w) plan.removeTunnels.push(t.name);
    else if (w.tag !== t.tag || w.networkId !== t.networkId) plan.addTunnels.push(w);
  }
  for (const [name, w] of wantedTunnels) if (!have.has(name)) plan.addTunnels.push(w);
  const gws = new Set(gatewayNetworks(i.networks));
  for (const g of i.actual.gateways) if (!gws.has(g.networkId) || g.name !== gatewayPortName(g.networkId)) plan.removeGateways.push(g.name);
  for (const id of i.natTables) if (!gws.has(id)) plan.removeNat.push(id);
  for (const id of gws) plan.ensureGateways.push({ networkId: id, tag: i.networks[id]!.tag, mtu: i.networks[id]!.gateway!.mtu });
  return plan;
}
