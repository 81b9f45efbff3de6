/**
 * Networks of jobs: a default network per job when it starts, more on request; subnets,
 * VNIs and addresses from the IPAM (`ipam.ts`) inside store transactions, so two live
 * networks never overlap and no address is given twice; the VXLAN mesh of each network
 * pushed to the agents (EnsureNetwork with the underlay IPs of the other nodes that host
 * instances on it); everything released at job teardown.
 *
 * Outbound NAT (`nat`, off by default): the network's gateway lives on one node of the job,
 * the first host of the job (OAR's order) that has an agent, so the choice is stable for
 * the job's life. That node is a member of the network's mesh whether or not it runs an
 * instance of it, and its EnsureNetwork carries the gateway; every other member reaches the
 * gateway through its tunnel to that node. The agent does the rest (network/gateway.ts).
 */
import { errFields, FailedPreconditionError, InvalidArgumentError, newId, NotFoundError, type Logger } from '@oarcloud/common';
import type { Agents } from '../agents/agents.js';
import type { AgentNetworkAttachment, AttachmentRecord, InstanceRecord, JobRecord, NetworkRecord } from '../domain.js';
import type { Store } from '../store/store.js';
import { allocateAddresses, allocateSubnet, allocateVni, formatCidr, gatewayOf, macOf, overlaps, parseCidr, type Cidr } from './ipam.js';

export interface NetworkSettings {
  /** Pool the subnets are carved from (default 10.90.0.0/16). */
  pool: string;
  /** Prefix of pool subnets (default 24). */
  subnetPrefix: number;
  vniMin: number;
  vniMax: number;
}

export interface NetworkManagerOptions {
  store: Store;
  agents: Agents;
  log: Logger;
  settings: NetworkSettings;
  now?: () => number;
}

/** Inner MTU over VXLAN: 1450 on the kernel datapath, 1446 on the userspace one (notes/HOST.md). */
export function mtuForDatapath(datapath: string): number {
  return datapath === 'system' ? 1450 : 1446;
}

const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/;
const FACTS_TTL_MS = 30_000;

export class NetworkManager {
  /** Per network: the push queued (not started yet) and the last one started. */
  private readonly syncs = new Map<string, { queued?: Promise<void>; tail?: Promise<void>; force: boolean }>();
  /** `<network>@<node>` -> the vni and peers that node last took. */
  private readonly pushed = new Map<string, string>();
  private readonly pool: Cidr;
  private readonly now: () => number;
  private vniHint: number;
  private readonly facts = new Map<string, { underlayIp: string; datapath: string; atMs: number }>();

  constructor(private readonly o: NetworkManagerOptions) {
    this.pool = parseCidr(o.settings.pool);
    this.now = o.now ?? Date.now;
    this.vniHint = o.settings.vniMin;
  }

  /** A node's underlay IP and datapath (GetNode, cached); undefined when the agent does not answer. */
  async nodeFacts(node: string): Promise<{ underlayIp: string; datapath: string } | undefined> {
    const cur = this.facts.get(node);
    if (cur && this.now() - cur.atMs < FACTS_TTL_MS) return cur;
    const agent = this.o.agents.get(node);
    if (!agent) return undefined;
    try {
      const info = await agent.getNode();
      const f = { underlayIp: info.underlayIp, datapath: info.datapath, atMs: this.now() };
      this.facts.set(node, f);
      return f;
    } catch (err) {
      this.o.log.debug('node facts unavailable', { node, ...errFields(err) });
      return cur;
    }
  }

  private async mtuFor(job: JobRecord): Promise<number> {
    const facts = await Promise.all(job.hosts.map((h) => this.nodeFacts(h.node)));
    // Unknown datapath: the smaller (userspace) MTU is safe on both.
    return Math.min(...facts.map((f) => mtuForDatapath(f?.datapath ?? 'netdev')), 1450);
  }

  /** Creates the job's default network once; returns it. Call with the job's lock held. */
  async ensureDefault(job: JobRecord): Promise<NetworkRecord> {
    const cur = this.o.store.listNetworks({ jobId: job.id }).find((n) => n.isDefault);
    if (cur) return cur;
    const mtu = await this.mtuFor(job);
    const again = this.o.store.listNetworks({ jobId: job.id }).find((n) => n.isDefault);
    if (again) return again;
    const n = this.insert(job, 'default', undefined, false, mtu, true);
    this.o.log.info('network created', { jobId: job.id, networkId: n.id, subnet: n.subnet, vni: n.vni, default: true });
    return n;
  }

  /**
   * CreateNetwork: a network named `name` in a job, from the pool unless `subnet` is given.
   * With `nat`, its gateway is set up on the gateway node before this returns; if that
   * fails the network is removed again and the agent's error is thrown (nothing is left).
   */
  async create(job: JobRecord, name: string, subnet: string | undefined, nat: boolean): Promise<NetworkRecord> {
    if (!NAME_RE.test(name) || name === 'default') throw new InvalidArgumentError('name must be 1-32 lower-case letters, digits or dashes (and not "default")');
    let want: Cidr | undefined;
    if (subnet) {
      want = parseCidr(subnet);
      if (want.prefix < 16 || want.prefix > 29) throw new InvalidArgumentError('subnet prefix must be /16 to /29');
    }
    if (nat && !this.gatewayNodeOfJob(job)) throw new FailedPreconditionError(`no host of job ${job.id} has an agent to run the NAT gateway on`);
    const mtu = await this.mtuFor(job);
    const n = this.insert(job, name, want, nat, mtu, false);
    if (nat) {
      try {
        await this.sync(n.id, true);
      } catch (err) {
        this.o.store.deleteNetwork(n.id);
        await this.releaseOnHosts(n, job);
        this.o.log.warn('network not created: its NAT gateway could not be set up', { jobId: job.id, networkId: n.id, node: this.gatewayNode(n, job), ...errFields(err) });
        throw err;
      }
    }
    this.o.log.info('network created', { jobId: job.id, networkId: n.id, subnet: n.subnet, vni: n.vni, nat, gatewayNode: this.gatewayNode(n, job) ?? '' });
    return n;
  }

  /** The node that hosts a NAT network's gateway (see the module comment); undefined without NAT. */
  gatewayNode(n: NetworkRecord, job: JobRecord | undefined = this.o.store.getJob(n.jobId)): string | undefined {
    return n.nat && job ? this.gatewayNodeOfJob(job) : undefined;
  }

  private gatewayNodeOfJob(job: JobRecord): string | undefined {
    return job.hosts.map((h) => h.node).find((node) => this.o.agents.get(node) !== undefined);
  }

  /** Allocation and insert in one transaction: no await between reading what is used and writing. */
  private insert(job: JobRecord, name: string, want: Cidr | undefined, nat: boolean, mtu: number, isDefault: boolean): NetworkRecord {
    return this.o.store.transaction(() => {
      const live = this.o.store.listNetworks();
      if (live.some((n) => n.jobId === job.id && n.name === name)) throw new FailedPreconditionError(`job ${job.id} already has a network named ${name}`);
      const used = live.map((n) => parseCidr(n.subnet));
      let subnet: Cidr;
      if (want) {
        const clash = live.find((n) => overlaps(parseCidr(n.subnet), want));
        if (clash) throw new FailedPreconditionError(`subnet ${formatCidr(want)} overlaps a live network`);
        subnet = want;
      } else {
        subnet = allocateSubnet(this.pool, this.o.settings.subnetPrefix, used);
      }
      const vni = allocateVni({ min: this.o.settings.vniMin, max: this.o.settings.vniMax }, new Set(live.map((n) => n.vni)), this.vniHint);
      this.vniHint = vni + 1;
      const n: NetworkRecord = {
        id: newId('n'),
        jobId: job.id,
        owner: job.owner,
        name,
        subnet: formatCidr(subnet),
        gateway: gatewayOf(subnet),
        vni,
        mtu,
        nat,
        isDefault,
        createdAtMs: this.now(),
      };
      this.o.store.addNetwork(n);
      return n;
    });
  }

  /** The networks named by a request (ids or names) of a job; NOT_FOUND for any other. */
  resolve(job: JobRecord, refs: readonly string[]): NetworkRecord[] {
    const nets = this.o.store.listNetworks({ jobId: job.id });
    const out: NetworkRecord[] = [];
    for (const ref of refs) {
      const n = nets.find((x) => x.id === ref || x.name === ref);
      if (!n) throw new NotFoundError(`no network ${ref} in job ${job.id}`);
      if (!out.includes(n)) out.push(n);
    }
    return out;
  }

  /**
   * Addresses for new instances on `nets` (interface i = nets[i]). Pure with respect to
   * the store: call inside the transaction that inserts them.
   */
  allocate(instances: readonly InstanceRecord[], nets: readonly NetworkRecord[]): AttachmentRecord[] {
    const out: AttachmentRecord[] = [];
    for (const n of nets) {
      const used = new Set(this.o.store.listAttachments({ networkId: n.id }).map((a) => a.address));
      used.add(n.gateway);
      const addresses = allocateAddresses(parseCidr(n.subnet), used, instances.length);
      instances.forEach((inst, k) => out.push({ instanceId: inst.id, networkId: n.id, index: nets.indexOf(n), address: addresses[k]!, mac: macOf(addresses[k]!) }));
    }
    return out;
  }

  /** What the agent gets in the instance spec. */
  attachmentsOf(instanceId: string): AgentNetworkAttachment[] {
    return this.o.store.listAttachments({ instanceId }).flatMap((a) => {
      const n = this.o.store.getNetwork(a.networkId);
      if (!n) return [];
      return [{ networkId: n.id, vni: n.vni, interface: `eth${a.index}`, mac: a.mac, address: `${a.address}/${n.subnet.split('/')[1]}`, gateway: n.gateway, mtu: n.mtu }];
    });
  }

  /** Nodes that host live (not deleted) instances of a network. */
  private instanceNodes(networkId: string): string[] {
    return this.o.store.networkNodes(networkId);
  }

  /**
   * Pushes the mesh of a network to its member nodes: each gets the underlay IPs of the
   * others. Idempotent; throws the first failure after trying every node.
   *
   * Coalesced per network: while a push runs, every call joins the one push queued after it
   * (which reads the membership when it starts), so N instances created at once on a
   * network cost about two pushes, not N (a 1,000-instance job over 50 nodes made 50,000
   * EnsureNetwork calls before). A node whose peers did not change since the last push it
   * took is skipped unless `force` (the reconcile pass forces: an agent may have lost state).
   */
  sync(networkId: string, force = false): Promise<void> {
    const cur = this.syncs.get(networkId);
    if (cur?.queued) {
      cur.force ||= force;
      return cur.queued;
    }
    const entry: { queued?: Promise<void>; tail?: Promise<void>; force: boolean } = { force };
    const p = (cur?.tail ?? Promise.resolve())
      .catch(() => undefined)
      .then(() => {
        entry.queued = undefined; // running: later calls queue after this one
        return this.pushMesh(networkId, entry.force);
      });
    entry.queued = p;
    entry.tail = p;
    this.syncs.set(networkId, entry);
    void p.finally(() => {
      if (this.syncs.get(networkId) === entry) this.syncs.delete(networkId);
    }).catch(() => undefined);
    return p;
  }

  private async pushMesh(networkId: string, force: boolean): Promise<void> {
    const n = this.o.store.getNetwork(networkId);
    if (!n) return;
    const job = this.o.store.getJob(n.jobId);
    // An ended job's networks are on their way out: its teardown releases them.
    if (job?.state === 'ended') return;
    const gwNode = this.gatewayNode(n, job);
    const nodes = this.instanceNodes(networkId);
    if (gwNode && !nodes.includes(gwNode)) nodes.push(gwNode);
    nodes.sort();
    const gateway = gwNode ? { address: `${n.gateway}/${n.subnet.split('/')[1]}`, mtu: n.mtu } : undefined;
    // A node that left the network may forget it: push to it afresh when it comes back.
    for (const key of this.pushed.keys()) if (key.startsWith(`${n.id}@`) && !nodes.includes(key.slice(n.id.length + 1))) this.pushed.delete(key);
    const ips = new Map<string, string>();
    for (const node of nodes) {
      const f = await this.nodeFacts(node);
      if (f?.underlayIp) ips.set(node, f.underlayIp);
    }
    const results = await Promise.allSettled(
      nodes.map(async (node) => {
        const agent = this.o.agents.get(node);
        if (!agent) return;
        const peers = [...ips].filter(([other]) => other !== node).map(([, ip]) => ip);
        const key = `${n.id}@${node}`;
        const gw = node === gwNode ? gateway : undefined;
        const want = `${n.vni}:${peers.join(',')}:${gw ? gw.address : ''}`;
        if (!force && this.pushed.get(key) === want) return;
        await agent.ensureNetwork(n.id, n.vni, peers, { jobId: n.jobId, gateway: gw });
        // Deleted meanwhile (DeleteNetwork, teardown): its release may have gone first, so release again.
        if (gw && !this.o.store.getNetwork(n.id)) {
          await agent.releaseNetwork(n.id);
          return;
        }
        this.pushed.set(key, want);
      }),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** Syncs every network of the instance (after a create or a delete). Never throws. */
  async syncOf(networkIds: readonly string[], force = false): Promise<void> {
    await Promise.all(
      networkIds.map((id) => this.sync(id, force).catch((err: unknown) => this.o.log.warn('network not synced (the reconcile loop retries)', { networkId: id, ...errFields(err) }))),
    );
  }

  /** Every live network, pushed to every member node (reconcile pass). */
  async syncAll(): Promise<void> {
    await this.syncOf(
      this.o.store.listNetworks().map((n) => n.id),
      true,
    );
  }

  /**
   * DeleteNetwork: refused while an instance is attached (FAILED_PRECONDITION). Out of the
   * store first, then released on the hosts: a mesh push racing with it sees it gone and
   * releases after itself (see pushMesh).
   */
  async delete(n: NetworkRecord, job: JobRecord | undefined): Promise<void> {
    if (this.instanceNodes(n.id).length > 0) throw new FailedPreconditionError(`network ${n.id} still has instances: delete them first`);
    this.o.store.deleteNetwork(n.id);
    await this.releaseOnHosts(n, job);
    this.o.log.info('network deleted', { networkId: n.id, jobId: n.jobId });
  }

  private async releaseOnHosts(n: NetworkRecord, job: JobRecord | undefined): Promise<void> {
    const nodes = new Set(job?.hosts.map((h) => h.node) ?? []);
    await Promise.allSettled(
      [...nodes].map(async (node) => {
        try {
          this.pushed.delete(`${n.id}@${node}`);
          await this.o.agents.get(node)?.releaseNetwork(n.id);
        } catch (err) {
          this.o.log.warn('network not released on a node (its reconcile removes the tunnels)', { node, networkId: n.id, ...errFields(err) });
        }
      }),
    );
  }

  /** Teardown: every network of the job released on its hosts and deleted (subnets and VNIs back to the pool). */
  async releaseJob(job: JobRecord): Promise<number> {
    const nets = this.o.store.listNetworks({ jobId: job.id });
    for (const n of nets) {
      this.o.store.deleteNetwork(n.id);
      await this.releaseOnHosts(n, job);
    }
    if (nets.length > 0) this.o.log.info('job networks released', { jobId: job.id, networks: nets.length });
    return nets.length;
  }
}
