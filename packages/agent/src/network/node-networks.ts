/**
 * The networks of this node: local VLAN tags (deterministic per node: the lowest free tag,
 * persisted, so a restart keeps them), instance ports, the VXLAN tunnels of each network
 * towards its peers, present while the node has a live instance on the network or hosts its
 * gateway, and the outbound NAT gateways the controller put on this node (an OVS internal
 * port on the network's VLAN + the host side of gateway.ts).
 *
 * Contracts:
 * - plug/unplug/ensureNetwork/releaseNetwork are idempotent; operations on one network are
 *   serialised, tag allocation is serialised node-wide.
 * - Only objects tagged ours (external_ids) are listed or removed (VSwitch contract).
 * - reconcile removes stale ports/tunnels/gateways only when two consecutive passes saw
 *   them stale; gateways this node hosts are re-ensured on every pass (drift repaired).
 * - A gateway is set up with an undo list: a failed ensure leaves no port and no table.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { errFields, FailedPreconditionError, InvalidArgumentError, isId, KeyedMutex, type Logger, ResourceExhaustedError } from '@oarcloud/common';
import { gatewayPortName, tunnelName, type VSwitch } from '../drivers/ovs/vswitch.js';
import type { InstanceRecord, InstanceSpec, NetworkAttachment } from '../instances/model.js';
import { Undo } from '../instances/undo.js';
import { subnetOfAddress, type GatewayHost } from './gateway.js';
import { hostIfName, type HostLinks } from './links.js';
import { gatewayNetworks, planNetworks, type LocalNetwork, type NetworkPlan, type WantedPort } from './plan.js';

export interface NetworkStateStore {
  load(): Record<string, LocalNetwork>;
  save(nets: Record<string, LocalNetwork>): void;
}

export class FileNetworkStateStore implements NetworkStateStore {
  private readonly file: string;
  constructor(stateDir: string) {
    mkdirSync(stateDir, { recursive: true });
    this.file = join(stateDir, 'networks.json');
  }
  load(): Record<string, LocalNetwork> {
    try {
      return JSON.parse(readFileSync(this.file, 'utf8')) as Record<string, LocalNetwork>;
    } catch {
      return {};
    }
  }
  save(nets: Record<string, LocalNetwork>): void {
    writeFileSync(`${this.file}.tmp`, JSON.stringify(nets));
    renameSync(`${this.file}.tmp`, this.file);
  }
}

export class MemoryNetworkStateStore implements NetworkStateStore {
  nets: Record<string, LocalNetwork> = {};
  load(): Record<string, LocalNetwork> {
    return structuredClone(this.nets);
  }
  save(nets: Record<string, LocalNetwork>): void {
    this.nets = structuredClone(nets);
  }
}

const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

/** Throws InvalidArgumentError unless the attachments of a spec are well formed. */
export function validateAttachments(list: NetworkAttachment[]): void {
  if (list.length > 36) throw new InvalidArgumentError('at most 36 network interfaces');
  const names = new Set<string>();
  const nets = new Set<string>();
  for (const [i, a] of list.entries()) {
    const bad = (what: string, v: unknown): never => {
      throw new InvalidArgumentError(`networks[${i}].${what} is invalid: ${JSON.stringify(v)?.slice(0, 80)}`);
    };
    if (!isId(a.networkId, 'n')) bad('network_id', a.networkId);
    if (!Number.isInteger(a.vni) || a.vni < 1 || a.vni > 0xffffff) bad('vni', a.vni);
    if (!IFNAME.test(a.interface)) bad('interface', a.interface);
    if (!MAC.test(a.mac) || (parseInt(a.mac.slice(0, 2), 16) & 1) === 1) bad('mac', a.mac);
    const m = /^([\d.]+)\/(\d{1,2})$/.exec(a.address);
    if (!m || !IPV4.test(m[1]!) || Number(m[2]) < 8 || Number(m[2]) > 30) bad('address', a.address);
    if (a.gateway !== '' && !IPV4.test(a.gateway)) bad('gateway', a.gateway);
    if (!Number.isInteger(a.mtu) || a.mtu < 576 || a.mtu > 9000) bad('mtu', a.mtu);
    if (names.has(a.interface)) bad('interface (duplicate)', a.interface);
    if (nets.has(a.networkId)) bad('network_id (attached twice)', a.networkId);
    names.add(a.interface);
    nets.add(a.networkId);
  }
}

export interface NodeNetworksOptions {
  sw: VSwitch;
  links: HostLinks;
  /** Host side of NAT gateways; absent: a gateway asked for is FAILED_PRECONDITION. */
  nat?: GatewayHost;
  store: NetworkStateStore;
  /** '' : no tunnels (single-host networks only). */
  underlayIp: string;
  log: Logger;
}

const LIVE_STATES = new Set(['running', 'creating']);

export class NodeNetworks {
  private nets: Record<string, LocalNetwork>;
  private readonly locks = new KeyedMutex();
  /** Stale objects seen on the previous reconcile pass (removed when seen again). */
  private suspects = new Set<string>();
  /** Instance records, supplied by the manager (the truth of who is on which network). */
  records: () => InstanceRecord[] = () => [];

  constructor(private readonly o: NodeNetworksOptions) {
    this.nets = o.store.load();
  }

  get underlayIp(): string {
    return this.o.underlayIp;
  }

  private bridgeReady = false;

  /** Creates the integration bridge if needed (again after a failure: OVS may come up later). */
  async init(): Promise<void> {
    if (this.bridgeReady) return;
    await this.o.sw.ensureBridge();
    this.bridgeReady = true;
  }

  /** Local networks (a copy), for tests and diagnostics. */
  networks(): Record<string, LocalNetwork> {
    return structuredClone(this.nets);
  }

  private save(): void {
    this.o.store.save(this.nets);
  }

  /** The local entry of a network, allocating its tag (lowest free) if new. */
  private ensureLocal(networkId: string, vni: number): Promise<LocalNetwork> {
    return this.locks.run('alloc', async () => {
      const cur = this.nets[networkId];
      if (cur) {
        if (cur.vni !== vni) {
          cur.vni = vni;
          this.save();
        }
        return cur;
      }
      const used = new Set(Object.values(this.nets).map((n) => n.tag));
      let tag = 1;
      while (used.has(tag)) tag++;
      if (tag > 4094) throw new ResourceExhaustedError('no free VLAN tag on this node (4094 networks)');
      const n: LocalNetwork = { vni, tag, peers: [] };
      this.nets[networkId] = n;
      this.save();
      return n;
    });
  }

  /** The node takes part in the network's mesh: a live local instance on it, or its gateway here. */
  private active(networkId: string, exceptInstance?: string): boolean {
    if (this.nets[networkId]?.gateway) return true;
    return this.records().some((r) => r.spec.id !== exceptInstance && LIVE_STATES.has(r.state) && r.spec.networks.some((a) => a.networkId === networkId));
  }

  /**
   * Plugs every interface of a started instance: link ready in the switch's netns, port
   * with the network's tag, offload off inside, then the network's tunnels. Registers
   * nothing itself: the caller undoes with `unplug`.
   */
  async plug(spec: InstanceSpec, initPid: number): Promise<void> {
    await this.init();
    for (const [i, a] of spec.networks.entries()) {
      const net = await this.ensureLocal(a.networkId, a.vni);
      const name = hostIfName(spec.id, i);
      await this.o.links.prepare(name, a.mtu);
      // Independent (the switch's end, the guest's end): side by side.
      await Promise.all([this.o.sw.ensurePort({ name, instanceId: spec.id, networkId: a.networkId, tag: net.tag }), this.o.links.offloadOff(initPid, a.interface)]);
    }
    for (const a of spec.networks) await this.syncTunnels(a.networkId);
  }

  /** Removes the ports of an instance (its domain is gone or going) and tunnels no longer needed. */
  async unplug(spec: InstanceSpec): Promise<void> {
    for (const [i] of spec.networks.entries()) {
      const name = hostIfName(spec.id, i);
      await this.o.sw.removePort(name);
      await this.o.links.remove(name);
    }
    for (const a of spec.networks) await this.syncTunnels(a.networkId, spec.id);
  }

  /**
   * EnsureNetwork: records the peers, the gateway (or its absence) and the job, then
   * converges the network's gateway and tunnels.
   */
  async ensureNetwork(
    networkId: string,
    vni: number,
    peers: string[],
    opts: { gateway?: { address: string; mtu: number }; jobId?: number } = {},
  ): Promise<{ vlan: number; tunnels: number; gateway: boolean }> {
    if (!isId(networkId, 'n')) throw new InvalidArgumentError(`malformed network id ${JSON.stringify(networkId.slice(0, 40))}`);
    if (!Number.isInteger(vni) || vni < 1 || vni > 0xffffff) throw new InvalidArgumentError(`vni must be 1-16777215, got ${vni}`);
    for (const p of peers) if (!IPV4.test(p)) throw new InvalidArgumentError(`peer must be an IPv4 address, got ${JSON.stringify(p.slice(0, 40))}`);
    const gw = opts.gateway;
    if (gw) {
      subnetOfAddress(gw.address);
      if (!Number.isInteger(gw.mtu) || gw.mtu < 576 || gw.mtu > 9000) throw new InvalidArgumentError(`gateway mtu must be 576-9000, got ${gw.mtu}`);
      if (!this.o.nat) throw new FailedPreconditionError('this agent cannot host NAT gateways');
    }
    if (opts.jobId !== undefined && (!Number.isSafeInteger(opts.jobId) || opts.jobId < 0)) throw new InvalidArgumentError(`job id must be a positive integer, got ${opts.jobId}`);
    const want = [...new Set(peers)].filter((p) => p !== this.o.underlayIp).sort();
    await this.init();
    const net = await this.ensureLocal(networkId, vni);
    const wantGw = gw ? { address: gw.address, mtu: gw.mtu } : undefined;
    const jobId = opts.jobId || net.jobId;
    const hadGateway = !!net.gateway;
    if (JSON.stringify(net.peers) !== JSON.stringify(want) || JSON.stringify(net.gateway) !== JSON.stringify(wantGw) || net.jobId !== jobId) {
      net.peers = want;
      if (wantGw) net.gateway = wantGw;
      else delete net.gateway;
      if (jobId) net.jobId = jobId;
      this.save();
    }
    // Only a network that has or had a gateway here has gateway work (nft and OVS calls): the
    // mesh pushes after every instance create made them for every plain network. A gateway
    // left by a lost record is tagged ours and removed by the reconcile pass.
    if (net.gateway || hadGateway) await this.syncGateway(networkId);
    const tunnels = await this.syncTunnels(networkId);
    return { vlan: this.active(networkId) ? net.tag : 0, tunnels, gateway: !!net.gateway };
  }

  /**
   * Converges the gateway of one network with what the node was told: port + host side
   * when it hosts it (undone on failure), neither otherwise.
   */
  private syncGateway(networkId: string): Promise<void> {
    return this.locks.run(`gw:${networkId}`, async () => {
      const net = this.nets[networkId];
      const name = gatewayPortName(networkId);
      if (!net?.gateway) {
        await this.removeGateway(networkId);
        return;
      }
      const nat = this.o.nat;
      if (!nat) throw new FailedPreconditionError('this agent cannot host NAT gateways');
      const { address, mtu } = net.gateway;
      const { gateways } = await this.o.sw.list();
      const undo = new Undo();
      try {
        const cur = gateways.find((g) => g.name === name);
        if (!cur || cur.tag !== net.tag || cur.mtu !== mtu || cur.networkId !== networkId) {
          if (!cur) undo.add('gateway port', () => this.o.sw.removePort(name));
          await this.o.sw.ensureGatewayPort({ networkId, tag: net.tag, mtu });
        }
        const had = (await this.locks.run('nat', () => nat.list())).some((t) => t.networkId === networkId);
        if (!had) undo.add('nat table', () => this.locks.run('nat', () => nat.remove(networkId)));
        const r = await this.locks.run('nat', () => nat.ensure({ networkId, device: name, address, mtu }));
        undo.commit();
        if (r.changed) this.o.log.info('network gateway ensured', { networkId, address, uplink: r.uplink, tag: net.tag });
      } catch (err) {
        await undo.run(this.o.log);
        throw err;
      }
    });
  }

  /** Removes the gateway of a network from this node (table first, then port). Idempotent. */
  private async removeGateway(networkId: string): Promise<boolean> {
    const removedNat = this.o.nat ? await this.locks.run('nat', () => this.o.nat!.remove(networkId)) : false;
    const removedPort = await this.o.sw.removePort(gatewayPortName(networkId));
    if (removedNat || removedPort) this.o.log.info('network gateway removed', { networkId });
    return removedNat || removedPort;
  }

  /** ReleaseNetwork: removes the network's gateway and tunnels and forgets it unless instances still use it. */
  async releaseNetwork(networkId: string): Promise<void> {
    if (!isId(networkId, 'n')) throw new InvalidArgumentError(`malformed network id ${JSON.stringify(networkId.slice(0, 40))}`);
    const net = this.nets[networkId];
    if (net?.gateway) {
      delete net.gateway;
      this.save();
    }
    await this.locks.run(`gw:${networkId}`, () => this.removeGateway(networkId));
    await this.locks.run(networkId, async () => {
      const { tunnels } = await this.o.sw.list();
      for (const t of tunnels) if (t.networkId === networkId) await this.o.sw.removeTunnel(t.name);
      if (!this.active(networkId) && this.nets[networkId]) {
        delete this.nets[networkId];
        this.save();
      }
    });
  }

  /** ReleaseJob: releases the networks of the job this node knows (their gateways above all). Returns their ids. */
  async releaseJob(jobId: number): Promise<string[]> {
    const ids = Object.keys(this.nets).filter((id) => this.nets[id]!.jobId === jobId);
    for (const id of ids) await this.releaseNetwork(id);
    return ids;
  }

  /** Converges the tunnels of one network; returns how many it has. */
  private syncTunnels(networkId: string, exceptInstance?: string): Promise<number> {
    return this.locks.run(networkId, async () => {
      const net = this.nets[networkId];
      const on = !!net && !!this.o.underlayIp && this.active(networkId, exceptInstance);
      const want = new Map<string, string>();
      if (on) for (const p of net.peers) if (p !== this.o.underlayIp) want.set(tunnelName(net.vni, p), p);
      const { tunnels } = await this.o.sw.list();
      const mine = tunnels.filter((t) => t.networkId === networkId);
      for (const t of mine) if (!want.has(t.name) || t.tag !== net?.tag) await this.o.sw.removeTunnel(t.name);
      const kept = new Set(mine.filter((t) => want.has(t.name) && t.tag === net?.tag).map((t) => t.name));
      for (const [name, peer] of want) if (!kept.has(name)) await this.o.sw.ensureTunnel({ networkId, vni: net!.vni, remoteIp: peer, tag: net!.tag });
      return want.size;
    });
  }

  /**
   * One reconcile pass: the diff of `planNetworks`, removals confirmed on two passes,
   * additions at once. Networks with no live local instance and no tunnel are forgotten.
   */
  async reconcile(busy: (instanceId: string) => boolean): Promise<{ plan: NetworkPlan; removed: string[]; errors: string[] }> {
    const errors: string[] = [];
    const removed: string[] = [];
    await this.init();
    const actual = await this.o.sw.list();
    const records = this.records();
    const wantedPorts: WantedPort[] = [];
    const activeNetworks = new Set<string>();
    for (const r of records) {
      if (!LIVE_STATES.has(r.state)) continue;
      r.spec.networks.forEach((a, i) => {
        activeNetworks.add(a.networkId);
        // A creating instance plugs its ports itself; running ones must have theirs.
        if (r.state === 'running') wantedPorts.push({ name: hostIfName(r.spec.id, i), instanceId: r.spec.id, networkId: a.networkId });
      });
    }
    // A node that hosts a gateway is in the network's mesh even with no instance on it.
    for (const id of gatewayNetworks(this.nets)) activeNetworks.add(id);
    let natTables: string[] = [];
    if (this.o.nat) {
      try {
        natTables = (await this.locks.run('nat', () => this.o.nat!.list())).map((t) => t.networkId);
      } catch (err) {
        errors.push(`nat list: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    const plan = planNetworks({ wantedPorts, activeNetworks, networks: this.nets, actual, natTables, underlayIp: this.o.underlayIp, busy });
    const suspects = new Set<string>();
    const attempt = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        errors.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
        this.o.log.warn('network reconcile step failed', { what, ...errFields(err) });
      }
    };
    for (const name of [...plan.removePorts, ...plan.removeTunnels]) {
      if (!this.suspects.has(name)) {
        suspects.add(name);
        continue;
      }
      await attempt(`remove ${name}`, async () => {
        await this.o.sw.removePort(name);
        removed.push(name);
      });
    }
    // Stale gateways: the port (by name) and the table (by network), each confirmed on two
    // passes and re-checked under the gateway's lock (an EnsureNetwork may want it by now).
    const gwItems = [
      ...plan.removeGateways.map((name) => ({ key: name, id: `n-${name.slice(3)}`, fn: () => this.o.sw.removePort(name) })),
      ...plan.removeNat.map((id) => ({ key: `nat:${id}`, id, fn: () => this.locks.run('nat', () => this.o.nat!.remove(id)) })),
    ];
    for (const item of gwItems) {
      if (!this.suspects.has(item.key)) {
        suspects.add(item.key);
        continue;
      }
      await attempt(`remove ${item.key}`, () =>
        this.locks.run(`gw:${item.id}`, async () => {
          if (this.nets[item.id]?.gateway) return;
          if (await item.fn()) removed.push(item.key);
        }),
      );
    }
    this.suspects = suspects;
    for (const g of plan.ensureGateways) await attempt(`gateway of ${g.networkId}`, () => this.syncGateway(g.networkId));
    // Uplink forwarding the agent turned on and nothing of ours uses any more (e.g. a flushed ruleset).
    if (this.o.nat) await attempt('nat settle', () => this.locks.run('nat', () => this.o.nat!.settle()));
    for (const p of plan.retagPorts) await attempt(`retag ${p.name}`, () => this.o.sw.ensurePort(p));
    for (const t of plan.addTunnels) await attempt(`tunnel ${t.vni}/${t.remoteIp}`, () => this.o.sw.ensureTunnel(t));
    // Forget networks nobody here uses any more (their peers come back with the next EnsureNetwork).
    const tunnelNets = new Set(actual.tunnels.map((t) => t.networkId));
    let changed = false;
    for (const id of Object.keys(this.nets)) {
      if (!activeNetworks.has(id) && !tunnelNets.has(id) && !records.some((r) => r.spec.networks.some((a) => a.networkId === id))) {
        delete this.nets[id];
        changed = true;
      }
    }
    if (changed) this.save();
    return { plan, removed, errors };
  }
}
