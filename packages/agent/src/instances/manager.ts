/**
 * The instance manager owns the actual state of this node: it creates, starts, stops and
 * destroys instances through the drivers, keeps a durable record of each, and reconciles
 * records with what really exists on the host.
 *
 * Contracts:
 * - Every mutation is idempotent (create with the same spec, destroy of an absent instance).
 * - Operations on one instance are serialised; different instances proceed in parallel.
 * - A failed create leaves nothing behind: each host step registers its undo.
 * - A record is written before any host object of the instance exists, so a host object
 *   with no record is an orphan, and the reconcile pass removes it.
 */
import { chown, lstat } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { AlreadyExistsError, checkId, checkName, errFields, FailedPreconditionError, InvalidArgumentError, isId, KeyedMutex, type Logger, NotFoundError, parseCpuset } from '@oarcloud/common';
import { domainName, type ContainerRuntime, type DomainSpec, type DomainStatus } from '../drivers/runtime.js';
import { hostIfName } from '../network/links.js';
import { validateAttachments, type NodeNetworks } from '../network/node-networks.js';
import type { InstanceEventSink, InstanceRecord, InstanceSpec, InstanceState } from './model.js';
import type { RecordStore } from './records.js';
import { Undo } from './undo.js';

/** What the manager needs of the image layer cache. */
export interface LayerPort {
  has(digest: string): Promise<boolean> | boolean;
}

export interface InjectedFile {
  path: string;
  content: string | Buffer;
  mode: number;
  uid?: number;
  gid?: number;
}

/** What the manager needs of the instance root filesystems (overlays). */
export interface RootfsPort {
  ensure(instanceId: string, layers: string[]): Promise<{ rootDir: string }>;
  inject(instanceId: string, files: InjectedFile[]): Promise<void>;
  unmount(instanceId: string): Promise<void>;
  remove(instanceId: string): Promise<void>;
  list(): Promise<string[]>;
}

/** What the manager needs of the cgroup manager (job partitions). */
export interface CgroupPort {
  ensureJobPartition(node: string, jobId: number, cpuset: string): Promise<string>;
  removeJobPartition(node: string, jobId: number): Promise<void>;
  listJobPartitions(): Promise<Array<{ node: string; jobId: number }>>;
}

export interface ManagerOptions {
  node: string;
  runtime: ContainerRuntime;
  layers: LayerPort;
  rootfs: RootfsPort;
  cgroups: CgroupPort;
  records: RecordStore;
  events: InstanceEventSink;
  log: Logger;
  /** The node's networks (ports, VLAN tags, tunnels); absent: instances get no interface plugged. */
  network?: NodeNetworks;
  /** Fetches missing image layers (the image cache); absent: a missing layer is NOT_FOUND. */
  images?: { ensure(layers: readonly string[]): Promise<unknown> };
  /** Where volumes are (`<volumesDir>/<volume id>`, shared storage); absent: no volumes. */
  volumesDir?: string;
  /** Program run as the instance's init. */
  init?: string;
  /** User-namespace id map of instances; base 0 runs them privileged. */
  idmap?: { base: number; count: number };
  /** Cpus and memory of the node (defaults: this machine's). */
  nodeCpus?: number;
  nodeMemoryMib?: number;
  now?: () => number;
}

export interface ReconcileReport {
  adopted: string[];
  orphanDomains: string[];
  orphanRootfs: string[];
  orphanPartitions: string[];
  rolledBack: string[];
  /** Stale OVS ports/tunnels removed (ours, confirmed on two passes). */
  networkRemoved: string[];
  stateChanges: Array<{ id: string; from: InstanceState; to: InstanceState }>;
  errors: Array<{ what: string; error: string }>;
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
const SSH_KEY_RE = /^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n]{0,256})?$/;
const IMAGE_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}(:[a-zA-Z0-9._-]{1,64})?$/;
const MIN_MEMORY_MIB = 16;
/**
 * CFS period of every instance (the kernel's default). An instance gets a quota of
 * vcpus × this per period, so it never uses more than `vcpus` cores' worth of CPU time even
 * when its job's cpuset on the node has more cpus (the cpuset bounds where, the quota how much).
 */
export const CPU_PERIOD_US = 100_000;

export class InstanceManager {
  private readonly o: Required<Omit<ManagerOptions, 'idmap' | 'network' | 'images' | 'volumesDir'>> &
    Pick<ManagerOptions, 'images' | 'volumesDir'> & { idmap?: { base: number; count: number }; network?: NodeNetworks };
  private readonly locks = new KeyedMutex();

  constructor(opts: ManagerOptions) {
    this.o = {
      init: '/sbin/init',
      nodeCpus: cpus().length,
      nodeMemoryMib: Math.floor(totalmem() / 1024 / 1024),
      now: Date.now,
      ...opts,
    };
    if (this.o.network) this.o.network.records = () => this.o.records.list();
  }

  get node(): string {
    return this.o.node;
  }

  /** Validates a spec against this node; throws InvalidArgumentError, changes nothing. */
  validate(spec: InstanceSpec): void {
    checkId(spec.id, 'i', 'instance id');
    checkName(spec.name, 'instance name');
    checkName(spec.hostname, 'hostname');
    if (!Number.isSafeInteger(spec.jobId) || spec.jobId <= 0) throw new InvalidArgumentError(`job id must be a positive integer, got ${spec.jobId}`);
    if (!/^[a-z_][a-z0-9_-]{0,31}$/.test(spec.owner)) throw new InvalidArgumentError(`malformed owner ${JSON.stringify(spec.owner.slice(0, 40))}`);
    if (!IMAGE_NAME_RE.test(spec.image.name)) throw new InvalidArgumentError(`malformed image name ${JSON.stringify(spec.image.name.slice(0, 80))}`);
    if (spec.image.layers.length === 0 || spec.image.layers.length > 64) throw new InvalidArgumentError('an image has 1 to 64 layers');
    for (const l of spec.image.layers) if (!DIGEST_RE.test(l)) throw new InvalidArgumentError(`malformed layer digest ${JSON.stringify(l.slice(0, 80))}`);
    const jobCpus = parseCpuset(spec.cpuset);
    if (jobCpus.length === 0) throw new InvalidArgumentError('cpuset is empty');
    const outside = jobCpus.filter((c) => c >= this.o.nodeCpus);
    if (outside.length > 0) throw new InvalidArgumentError(`cpus ${outside.join(',')} do not exist on node ${this.o.node} (it has ${this.o.nodeCpus})`);
    if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1) throw new InvalidArgumentError(`vcpus must be at least 1, got ${spec.vcpus}`);
    if (spec.vcpus > jobCpus.length) throw new InvalidArgumentError(`${spec.vcpus} vcpus do not fit the job's ${jobCpus.length} cpus (${spec.cpuset}) on this node`);
    if (!Number.isInteger(spec.memoryMib) || spec.memoryMib < MIN_MEMORY_MIB || spec.memoryMib > this.o.nodeMemoryMib) {
      throw new InvalidArgumentError(`memory must be ${MIN_MEMORY_MIB} to ${this.o.nodeMemoryMib} MiB, got ${spec.memoryMib}`);
    }
    if (spec.sshAuthorizedKeys.length > 32) throw new InvalidArgumentError('at most 32 SSH keys');
    for (const k of spec.sshAuthorizedKeys) if (!SSH_KEY_RE.test(k.trim())) throw new InvalidArgumentError(`not an SSH public key: ${JSON.stringify(k.slice(0, 40))}…`);
    validateAttachments(spec.networks);
    const vols = spec.volumes ?? [];
    if (vols.length > 16) throw new InvalidArgumentError('at most 16 volumes');
    for (const v of vols) {
      checkId(v.volumeId, 'v', 'volume id');
      const parts = typeof v.path === 'string' && v.path.startsWith('/') ? v.path.split('/').slice(1) : [];
      if (parts.length === 0 || parts.some((p) => p === '' || p === '.' || p === '..') || !/^[A-Za-z0-9_.,@%+=~/-]+$/.test(v.path)) {
        throw new InvalidArgumentError(`bad volume mount path ${JSON.stringify(String(v.path).slice(0, 80))}`);
      }
    }
    if (vols.length > 0 && !this.o.volumesDir) throw new InvalidArgumentError(`node ${this.o.node} has no volumes`);
  }

  /**
   * Creates and starts an instance; resolves when it is RUNNING. Idempotent by id: the
   * same spec again returns the instance; another spec under that id is ALREADY_EXISTS.
   */
  async create(spec: InstanceSpec): Promise<InstanceRecord> {
    this.validate(spec);
    return this.locks.run(spec.id, async () => {
      const existing = this.o.records.get(spec.id);
      if (existing) {
        if (!sameSpec(existing.spec, spec)) throw new AlreadyExistsError(`instance ${spec.id} exists with another spec`);
        return existing;
      }
      const clash = this.o.records.list().find((r) => r.spec.jobId === spec.jobId && r.spec.name === spec.name);
      if (clash) throw new AlreadyExistsError(`job ${spec.jobId} already has an instance named ${spec.name} (${clash.spec.id})`);
      if (!this.o.images) {
        for (const l of spec.image.layers) {
          if (!(await this.o.layers.has(l))) throw new NotFoundError(`image ${spec.image.name}: layer ${l} is not on node ${this.o.node}`);
        }
      }
      const now = this.o.now();
      const rec: InstanceRecord = { spec, state: 'creating', reason: '', createdAtMs: now, updatedAtMs: now, initPid: 0 };
      // Recorded first: its layers count as in use, so the cache never evicts them under us.
      this.save(rec);
      const log = this.o.log.child({ instanceId: spec.id, jobId: spec.jobId });
      const started = performance.now();
      const undo = new Undo();
      undo.add('record', () => this.o.records.remove(spec.id));
      try {
        await this.o.images?.ensure(spec.image.layers);
        const steps = await this.bringUp(rec, undo, true);
        undo.commit();
        log.info('instance created', { ms: Math.round(performance.now() - started), ...steps });
        return this.o.records.get(spec.id)!;
      } catch (err) {
        log.warn('instance create failed, rolling back', errFields(err));
        await undo.run(log);
        this.o.events.instanceChanged({ ...rec, state: 'failed', reason: errMessage(err), updatedAtMs: this.o.now() });
        this.o.events.instanceChanged({ ...rec, state: 'deleted', reason: errMessage(err), updatedAtMs: this.o.now() });
        throw err;
      }
    });
  }

  /** Starts a stopped instance; no-op when running. */
  async start(id: string): Promise<InstanceRecord> {
    checkId(id, 'i', 'instance id');
    return this.locks.run(id, async () => {
      const rec = this.mustGet(id);
      if (rec.state === 'running') return rec;
      const undo = new Undo();
      try {
        await this.bringUp(rec, undo, false);
        undo.commit();
      } catch (err) {
        await undo.run(this.o.log);
        this.save({ ...rec, state: 'stopped', reason: `start failed: ${errMessage(err)}` });
        throw err;
      }
      return this.o.records.get(id)!;
    });
  }

  /** Stops a running instance, keeping its writable layer; no-op when stopped. */
  async stop(id: string, reason = 'stopped by request'): Promise<InstanceRecord> {
    checkId(id, 'i', 'instance id');
    return this.locks.run(id, async () => {
      const rec = this.mustGet(id);
      if (rec.state === 'stopped') return rec;
      await this.o.runtime.destroy(id);
      await this.o.network?.unplug(rec.spec);
      await this.o.rootfs.unmount(id);
      return this.save({ ...rec, state: 'stopped', reason, initPid: 0 });
    });
  }

  /** Destroys an instance and every host object of it. Returns false if it did not exist. */
  async destroy(id: string): Promise<boolean> {
    checkId(id, 'i', 'instance id');
    return this.locks.run(id, async () => {
      const rec = this.o.records.get(id);
      await this.o.runtime.destroy(id);
      if (rec) await this.o.network?.unplug(rec.spec);
      await this.o.rootfs.remove(id);
      if (!rec) return false;
      this.o.records.remove(id);
      this.o.events.instanceChanged({ ...rec, state: 'deleted', reason: 'destroyed', initPid: 0, updatedAtMs: this.o.now() });
      await this.releasePartitionIfUnused(rec.spec.jobId);
      this.o.log.info('instance destroyed', { instanceId: id, jobId: rec.spec.jobId });
      return true;
    });
  }

  /** Destroys every instance of a job on this node and the job's host objects. */
  async releaseJob(jobId: number): Promise<string[]> {
    if (!Number.isSafeInteger(jobId) || jobId <= 0) throw new InvalidArgumentError(`job id must be a positive integer, got ${jobId}`);
    const ids = this.o.records
      .list()
      .filter((r) => r.spec.jobId === jobId)
      .map((r) => r.spec.id);
    const results = await Promise.allSettled(ids.map((id) => this.destroy(id)));
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    await this.releasePartitionIfUnused(jobId);
    if (failed.length > 0) throw failed[0]!.reason;
    return ids;
  }

  get(id: string): InstanceRecord {
    checkId(id, 'i', 'instance id');
    return this.mustGet(id);
  }

  list(jobId = 0): InstanceRecord[] {
    return this.o.records.list().filter((r) => jobId === 0 || r.spec.jobId === jobId);
  }

  /**
   * Compares records with the host and repairs: adopts running domains, marks instances
   * whose domain vanished as stopped, rolls back creates interrupted by a crash, and removes
   * orphans (domains, root filesystems, job partitions) that no record explains. Host
   * objects are listed before the records are read, so an instance created meanwhile is
   * never mistaken for an orphan.
   */
  async reconcile(): Promise<ReconcileReport> {
    const report: ReconcileReport = { adopted: [], orphanDomains: [], orphanRootfs: [], orphanPartitions: [], rolledBack: [], networkRemoved: [], stateChanges: [], errors: [] };
    const attempt = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        report.errors.push({ what, error: errMessage(err) });
        this.o.log.warn('reconcile step failed', { what, ...errFields(err) });
      }
    };
    let domains: DomainStatus[] = [];
    let roots: string[] = [];
    let partitions: Array<{ node: string; jobId: number }> = [];
    try {
      [domains, roots, partitions] = await Promise.all([this.o.runtime.list(), this.o.rootfs.list(), this.o.cgroups.listJobPartitions()]);
    } catch (err) {
      report.errors.push({ what: 'list host objects', error: errMessage(err) });
      return report;
    }
    const domainOf = new Map(domains.map((d) => [d.instanceId, d]));
    for (const rec of this.o.records.list()) {
      const id = rec.spec.id;
      if (this.locks.busy(id)) continue;
      const dom = domainOf.get(id);
      const alive = dom !== undefined && (dom.state === 'running' || dom.state === 'blocked' || dom.state === 'paused');
      if (rec.state === 'creating') {
        // A create that a crash interrupted: take it back entirely.
        await attempt(`roll back ${id}`, async () => {
          await this.destroy(id);
          report.rolledBack.push(id);
        });
      } else if (rec.state === 'running' && !alive) {
        await attempt(`mark ${id} stopped`, () =>
          this.locks.run(id, async () => {
            if (dom) await this.o.runtime.destroy(id);
            await this.o.network?.unplug(rec.spec);
            await this.o.rootfs.unmount(id);
            this.save({ ...rec, state: 'stopped', reason: 'instance exited', initPid: 0 });
            report.stateChanges.push({ id, from: 'running', to: 'stopped' });
          }),
        );
      } else if (rec.state !== 'running' && alive) {
        await attempt(`adopt ${id}`, () =>
          this.locks.run(id, async () => {
            this.save({ ...rec, state: 'running', reason: '', initPid: dom.initPid });
            report.stateChanges.push({ id, from: rec.state, to: 'running' });
          }),
        );
      } else if (alive && rec.initPid !== dom.initPid) {
        this.save({ ...rec, initPid: dom.initPid });
        report.adopted.push(id);
      } else if (alive) {
        report.adopted.push(id);
      }
    }
    for (const dom of domains) {
      if (!this.o.records.get(dom.instanceId) && !this.locks.busy(dom.instanceId)) {
        await attempt(`remove orphan domain ${dom.name}`, async () => {
          await this.o.runtime.destroy(dom.instanceId);
          report.orphanDomains.push(dom.instanceId);
        });
      }
    }
    for (const id of roots) {
      if (isId(id, 'i') && !this.o.records.get(id) && !this.locks.busy(id)) {
        await attempt(`remove orphan rootfs ${id}`, async () => {
          await this.o.rootfs.remove(id);
          report.orphanRootfs.push(id);
        });
      }
    }
    const liveJobs = new Set(this.o.records.list().map((r) => r.spec.jobId));
    for (const p of partitions) {
      if (p.node === this.o.node && !liveJobs.has(p.jobId) && !this.locks.busyPrefix(`job:${p.jobId}`)) {
        await attempt(`remove orphan partition of job ${p.jobId}`, async () => {
          await this.o.cgroups.removeJobPartition(p.node, p.jobId);
          report.orphanPartitions.push(`job ${p.jobId}`);
        });
      }
    }
    // Networks last: every record and domain is settled by now.
    if (this.o.network) {
      await attempt('networks', async () => {
        const r = await this.o.network!.reconcile((id) => this.locks.busy(id));
        report.networkRemoved.push(...r.removed);
        for (const e of r.errors) report.errors.push({ what: 'network', error: e });
      });
    }
    return report;
  }

  /** Mounts the root, injects identity, places the job partition, starts the domain. */
  /** Returns how long each step took (ms), for the log. */
  private async bringUp(rec: InstanceRecord, undo: Undo, firstBoot: boolean): Promise<{ rootfsMs: number; domainMs: number; plugMs: number }> {
    const { spec } = rec;
    let t = performance.now();
    const lap = (): number => {
      const now = performance.now();
      const ms = Math.round(now - t);
      t = now;
      return ms;
    };
    const { rootDir } = await this.o.rootfs.ensure(spec.id, spec.image.layers);
    undo.add('rootfs', () => (firstBoot ? this.o.rootfs.remove(spec.id) : this.o.rootfs.unmount(spec.id)));
    if (firstBoot) await this.o.rootfs.inject(spec.id, this.identityFiles(spec));
    const partition = await this.locks.run(`job:${spec.jobId}`, () => this.o.cgroups.ensureJobPartition(this.o.node, spec.jobId, spec.cpuset));
    undo.add('job partition', () => this.releasePartitionIfUnused(spec.jobId, spec.id));
    const domain: DomainSpec = {
      instanceId: spec.id,
      jobId: spec.jobId,
      node: this.o.node,
      rootDir,
      init: this.o.init,
      vcpus: spec.vcpus,
      cpuset: spec.cpuset,
      memoryMib: spec.memoryMib,
      cpuShares: 1024 * spec.vcpus,
      cpuPeriodUs: CPU_PERIOD_US,
      cpuQuotaUs: spec.vcpus * CPU_PERIOD_US,
      partition,
      idmap: this.o.idmap && this.o.idmap.base > 0 ? { start: this.o.idmap.base, count: this.o.idmap.count } : undefined,
      interfaces: this.o.network ? spec.networks.map((n, i) => ({ hostName: hostIfName(spec.id, i), guestName: n.interface, mac: n.mac, mtu: n.mtu })) : [],
      mounts: await this.volumeMounts(spec),
    };
    const rootfsMs = lap();
    const status = await this.o.runtime.create(domain);
    const domainMs = lap();
    undo.add('domain', () => this.o.runtime.destroy(spec.id));
    const running = (): void => void this.save({ ...rec, state: 'running', reason: '', initPid: status.initPid });
    // A first boot stays 'creating' (a live state: its networks' tunnels follow it) until its
    // ports are plugged, so RUNNING is never published for an instance whose network failed,
    // and a crash before then is rolled back whole. A restarted instance has no such state:
    // it is RUNNING from here (a crash leaves a running record, adopted by the next pass).
    if (!firstBoot) running();
    if (this.o.network && spec.networks.length > 0) {
      const net = this.o.network;
      undo.add('network ports', () => net.unplug(spec));
      await net.plug(spec, status.initPid);
    }
    if (firstBoot) running();
    return { rootfsMs, domainMs, plugMs: lap() };
  }

  /**
   * The instance's volumes as bind mounts. A volume folder still owned by the host's root
   * (just created by the controller) is handed to the container's root first.
   */
  private async volumeMounts(spec: InstanceSpec): Promise<Array<{ source: string; target: string; readOnly: boolean }>> {
    const out: Array<{ source: string; target: string; readOnly: boolean }> = [];
    for (const v of spec.volumes ?? []) {
      const source = join(this.o.volumesDir!, checkId(v.volumeId, 'v', 'volume id'));
      let st;
      try {
        st = await lstat(source);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`volume ${v.volumeId} is not on this node's volume storage (${this.o.volumesDir})`);
        throw err;
      }
      if (!st.isDirectory()) throw new FailedPreconditionError(`volume ${v.volumeId} is not a directory`);
      const base = this.o.idmap?.base ?? 0;
      if (base > 0 && st.uid === 0) await chown(source, base, base);
      out.push({ source, target: v.path, readOnly: v.readOnly });
    }
    return out;
  }

  /**
   * Runs `fn` with the instance's lock held (no start, stop or destroy meanwhile), e.g. to
   * copy its writable layer. NotFoundError when the instance is unknown.
   */
  async withInstance<T>(id: string, fn: (rec: InstanceRecord) => Promise<T>): Promise<T> {
    checkId(id, 'i', 'instance id');
    return this.locks.run(id, async () => fn(this.mustGet(id)));
  }

  /** Files that make an instance itself: hostname, hosts, root's SSH keys. */
  private identityFiles(spec: InstanceSpec): InjectedFile[] {
    const files: InjectedFile[] = [
      { path: '/etc/hostname', content: `${spec.hostname}\n`, mode: 0o644 },
      { path: '/etc/hosts', content: `127.0.0.1\tlocalhost\n127.0.1.1\t${spec.hostname}\n::1\tlocalhost ip6-localhost\n`, mode: 0o644 },
      { path: '/root/.ssh/authorized_keys', content: spec.sshAuthorizedKeys.map((k) => `${k.trim()}\n`).join(''), mode: 0o600 },
    ];
    const net = spec.networks.map((n) => `${n.interface} ${n.address} ${n.gateway || '-'} ${n.mtu || 1500}\n`).join('');
    if (net) files.push({ path: '/etc/oarcloud/net', content: net, mode: 0o644 });
    return files;
  }

  private async releasePartitionIfUnused(jobId: number, exceptId?: string): Promise<void> {
    const others = this.o.records.list().some((r) => r.spec.jobId === jobId && r.spec.id !== exceptId);
    if (others) return;
    await this.locks.run(`job:${jobId}`, async () => {
      try {
        await this.o.cgroups.removeJobPartition(this.o.node, jobId);
      } catch (err) {
        // Tasks still inside (a domain being torn down): the next reconcile pass retries.
        if (!(err instanceof FailedPreconditionError)) throw err;
        this.o.log.warn('job partition still busy', { jobId, ...errFields(err) });
      }
    });
  }

  private mustGet(id: string): InstanceRecord {
    const rec = this.o.records.get(id);
    if (!rec) throw new NotFoundError(`no instance ${id} on node ${this.o.node}`);
    return rec;
  }

  private save(rec: InstanceRecord): InstanceRecord {
    const next = { ...rec, updatedAtMs: this.o.now() };
    const prev = this.o.records.get(rec.spec.id);
    this.o.records.put(next);
    if (!prev || prev.state !== next.state || prev.reason !== next.reason) this.o.events.instanceChanged(next);
    return next;
  }
}

function sameSpec(a: InstanceSpec, b: InstanceSpec): boolean {
  // Records written before volumes existed have none.
  return JSON.stringify({ ...a, volumes: a.volumes ?? [] }) === JSON.stringify({ ...b, volumes: b.volumes ?? [] });
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export { domainName };
