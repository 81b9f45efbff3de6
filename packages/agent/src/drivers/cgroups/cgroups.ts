/**
 * Job partitions: the cgroups libvirt places an OAR job's instances in.
 *
 * A domain gets `<resource><partition>/machine/oc-<node>-j<jobId>.job</partition>`; libvirt
 * wants that partition to exist beforehand in every controller it uses, and its instances
 * inherit the partition's cpuset, so they can only run on the job's cpus (notes/HOST.md
 * "cgroups under libvirt": a dotted name is kept as is; a leading `machine` too).
 *
 * Layouts (detected from mountinfo):
 * - v1 (and the hybrid layout): one hierarchy per controller; the partition is made in every
 *   mounted v1 controller hierarchy. Named hierarchies without controllers (`name=systemd`)
 *   are skipped: libvirt never makes groups there. The cgroup2 mount of the hybrid layout
 *   carries no controllers and is ignored.
 * - v2: one tree; `+cpuset +cpu +memory +pids` are enabled in `cgroup.subtree_control`
 *   along the path (those the parent offers).
 *
 * Only groups named by our pattern are ever made or removed, plus `machine` (made if
 * missing, shared with libvirt, never removed) and libvirt's `lxc-*.libvirt-lxc` groups
 * inside our partitions or left empty by a failed start.
 */
import { mkdir, readdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  FailedPreconditionError,
  formatCpuset,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  nullLogger,
  parseCpuset,
  type Logger,
} from '@oarcloud/common';
import { FakeRecorder } from '../images/fake-recorder.js';
import { parseMountinfo } from '../images/mountinfo.js';

export interface JobPartitionRef {
  node: string;
  jobId: number;
}

/** Controller name → directory of one cgroup (in v2 every name maps to the same dir). */
export type CgroupDirs = Record<string, string>;

export interface CgroupManager {
  readonly layout: 'v1' | 'v2';
  /**
   * Makes the job's partition in every controller with `cpuset` as its cpus (memory nodes:
   * the parent's) and returns its libvirt path (`/machine/oc-<node>-j<jobId>.job`).
   * Idempotent; an existing partition with other cpus gets the new ones. Cpus outside the
   * machine's, an empty or malformed cpuset, a bad node name or job id → InvalidArgumentError.
   * Calls for one job must not run concurrently.
   */
  ensureJobPartition(node: string, jobId: number, cpuset: string): Promise<string>;
  /**
   * Removes the job's partition everywhere, with libvirt's empty instance groups inside.
   * Idempotent: nothing to remove is a no-op. Tasks still inside → FailedPreconditionError
   * naming them; nothing is killed and nothing removed.
   */
  removeJobPartition(node: string, jobId: number): Promise<void>;
  /** Our partitions present in at least one controller (a half-made one included). */
  listJobPartitions(): Promise<JobPartitionRef[]>;
  /**
   * The cgroup dirs libvirt made for a domain inside `partition` (default `/machine`),
   * keyed by controller. NotFoundError when libvirt has made none (domain not running).
   */
  instanceCgroupFiles(partition: string | undefined, domainName: string): Promise<CgroupDirs>;
  /**
   * Removes the empty `lxc-*-<domain>.libvirt-lxc` groups a failed start can leave, under
   * `/machine` and our partitions. Groups with tasks are kept. Returns the removed dirs.
   */
  sweepEmptyLxcLeftovers(domainName: string): Promise<string[]>;
}

const NODE_RE = /^[a-zA-Z0-9][a-zA-Z0-9.-]{0,62}$/;
const PART_RE = /^oc-([a-zA-Z0-9][a-zA-Z0-9.-]{0,62})-j(\d{1,10})\.job$/;
const V2_CONTROLLERS = ['cpuset', 'cpu', 'memory', 'pids'];

/** The partition folder name of a job. */
export function jobPartitionName(node: string, jobId: number): string {
  if (!NODE_RE.test(node)) throw new InvalidArgumentError(`malformed node name ${JSON.stringify(String(node).slice(0, 80))}`);
  if (!Number.isSafeInteger(jobId) || jobId <= 0 || jobId >= 2 ** 31) throw new InvalidArgumentError(`bad job id ${jobId}`);
  return `oc-${node}-j${jobId}.job`;
}

/** Parses a partition folder name back; undefined when it is not ours. */
export function parseJobPartitionName(name: string): JobPartitionRef | undefined {
  const m = PART_RE.exec(name);
  if (!m) return undefined;
  const jobId = Number(m[2]);
  return jobId > 0 && jobId < 2 ** 31 ? { node: m[1]!, jobId } : undefined;
}

/** libvirt's machine name keeps only these characters of the domain name. */
function lxcGroupRe(domainName: string): RegExp {
  const clean = domainName.replace(/[^a-zA-Z0-9_.-]/g, '').replace(/[.]/g, '\\.');
  return new RegExp(`^lxc-\\d+-${clean}\\.libvirt-lxc$`);
}
const ANY_LXC_RE = /^lxc-\d+-.+\.libvirt-lxc$/;

export interface CgroupLayout {
  layout: 'v1' | 'v2';
  /** v1: controller name → hierarchy mount point (co-mounted controllers share one). v2: every enabled name → the mount. */
  hierarchies: Map<string, string>;
}

/**
 * Finds the cgroup layout in a mountinfo text. v1 when any v1 hierarchy carries a
 * controller (the hybrid layout included), else v2 when a cgroup2 mount exists.
 */
export function detectCgroupLayout(mountinfo: string): CgroupLayout {
  const mounts = parseMountinfo(mountinfo);
  const v1 = new Map<string, string>();
  for (const m of mounts) {
    if (m.fsType !== 'cgroup') continue;
    for (const opt of m.superOptions) {
      if (['rw', 'ro'].includes(opt) || opt.startsWith('name=') || opt.includes('=') || opt === 'noprefix' || opt === 'clone_children' || opt === 'xattr') continue;
      if (!v1.has(opt)) v1.set(opt, m.mountPoint);
    }
  }
  if (v1.size > 0) return { layout: 'v1', hierarchies: v1 };
  const v2 = mounts.find((m) => m.fsType === 'cgroup2');
  if (!v2) throw new FailedPreconditionError('no cgroup filesystem is mounted');
  return { layout: 'v2', hierarchies: new Map(V2_CONTROLLERS.map((c) => [c, v2.mountPoint])) };
}

/** File operations on cgroupfs (injectable: a temp dir does not behave like cgroupfs on rmdir). */
export interface CgroupFsOps {
  mkdir(path: string): Promise<void>;
  rmdir(path: string): Promise<void>;
}

export interface HostCgroupsOptions {
  /** mountinfo text; default: /proc/self/mountinfo. */
  mountinfo?: string;
  ops?: Partial<CgroupFsOps>;
  log?: Logger;
}

export class HostCgroups implements CgroupManager {
  readonly layout: 'v1' | 'v2';
  /** Distinct hierarchy dirs with the controller names they carry. */
  private readonly roots: Array<{ dir: string; controllers: string[] }>;
  private readonly cpusetRoot: string | undefined;
  private readonly ops: CgroupFsOps;
  private readonly log: Logger;

  constructor(opts: HostCgroupsOptions & { layout: CgroupLayout }) {
    this.layout = opts.layout.layout;
    const byDir = new Map<string, string[]>();
    for (const [ctrl, dir] of opts.layout.hierarchies) byDir.set(dir, [...(byDir.get(dir) ?? []), ctrl]);
    this.roots = [...byDir].map(([dir, controllers]) => ({ dir, controllers: controllers.sort() }));
    this.cpusetRoot = opts.layout.hierarchies.get('cpuset');
    this.ops = {
      mkdir: opts.ops?.mkdir ?? (async (p) => void (await mkdir(p))),
      rmdir: opts.ops?.rmdir ?? ((p) => rmdir(p)),
    };
    this.log = opts.log ?? nullLogger;
  }

  /** Reads the layout of this process's mount namespace (or of `opts.mountinfo`). */
  static async create(opts: HostCgroupsOptions = {}): Promise<HostCgroups> {
    const text = opts.mountinfo ?? (await readFile('/proc/self/mountinfo', 'utf8'));
    return new HostCgroups({ ...opts, layout: detectCgroupLayout(text) });
  }

  /** The cpus instances may use on this machine. */
  async machineCpus(): Promise<number[]> {
    if (!this.cpusetRoot) throw new FailedPreconditionError('the cpuset controller is not available');
    const file = this.layout === 'v1' ? 'cpuset.cpus' : 'cpuset.cpus.effective';
    return parseCpuset(await readText(join(this.cpusetRoot, file)));
  }

  async ensureJobPartition(node: string, jobId: number, cpuset: string): Promise<string> {
    const name = jobPartitionName(node, jobId);
    const cpus = parseCpuset(cpuset);
    if (cpus.length === 0) throw new InvalidArgumentError('a job partition needs at least one cpu');
    const machine = new Set(await this.machineCpus());
    const outside = cpus.filter((c) => !machine.has(c));
    if (outside.length > 0) throw new InvalidArgumentError(`cpus ${formatCpuset(outside)} are not on this machine (${formatCpuset(machine)})`);
    const want = formatCpuset(cpus);
    const made: string[] = [];
    try {
      for (const { dir, controllers } of this.roots) {
        const machineDir = join(dir, 'machine');
        const jobDir = join(machineDir, name);
        if (this.layout === 'v2') await this.enableControllers(dir);
        if (await this.makeDir(machineDir)) made.push(machineDir);
        if (this.layout === 'v2') await this.enableControllers(machineDir);
        if (controllers.includes('cpuset')) await this.inheritCpuset(dir, machineDir);
        if (await this.makeDir(jobDir)) made.push(jobDir);
        if (controllers.includes('cpuset')) {
          await this.inheritCpuset(machineDir, jobDir, true);
          const cur = formatCpuset(parseCpuset(await readText(join(jobDir, 'cpuset.cpus'))));
          if (cur !== want) await writeFile(join(jobDir, 'cpuset.cpus'), want);
        }
      }
    } catch (err) {
      // Undo: only the job dirs this call made (`machine` stays, libvirt shares it).
      for (const d of made.reverse()) if (d.endsWith(name)) await this.ops.rmdir(d).catch(() => undefined);
      if (err instanceof InvalidArgumentError) throw err;
      throw new FailedPreconditionError(`cannot make job partition ${name}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    this.log.debug('job partition ensured', { node, jobId, cpus: want });
    return `/machine/${name}`;
  }

  async removeJobPartition(node: string, jobId: number): Promise<void> {
    const name = jobPartitionName(node, jobId);
    const dirs: string[] = [];
    const busy: string[] = [];
    for (const { dir } of this.roots) {
      const jobDir = join(dir, 'machine', name);
      if (!(await isDir(jobDir))) continue;
      // Leaves first: libvirt's instance groups (and anything below them), then the job dir.
      for (const child of await subdirs(jobDir)) {
        if (!ANY_LXC_RE.test(child)) throw new FailedPreconditionError(`job partition ${name} holds a foreign cgroup ${child}`);
        dirs.push(...(await leavesFirst(join(jobDir, child))));
      }
      dirs.push(jobDir);
    }
    for (const d of dirs) {
      const pids = await this.tasks(d);
      if (pids.length > 0) busy.push(`${d}: ${pids.slice(0, 20).join(' ')}`);
    }
    if (busy.length > 0) throw new FailedPreconditionError(`job partition ${name} still has tasks: ${busy.join('; ')}`);
    for (const d of dirs) {
      try {
        await this.ops.rmdir(d);
      } catch (err) {
        if (errno(err) === 'ENOENT') continue;
        if (errno(err) === 'EBUSY') throw new FailedPreconditionError(`job partition ${name} is busy (${d})`, { cause: err });
        throw new InternalError(`cannot remove ${d}`, { cause: err });
      }
    }
    if (dirs.length > 0) this.log.info('job partition removed', { node, jobId });
  }

  async listJobPartitions(): Promise<JobPartitionRef[]> {
    const seen = new Map<string, JobPartitionRef>();
    for (const { dir } of this.roots) {
      for (const n of await subdirs(join(dir, 'machine'))) {
        const ref = parseJobPartitionName(n);
        if (ref) seen.set(n, ref);
      }
    }
    return [...seen.values()].sort((a, b) => a.node.localeCompare(b.node) || a.jobId - b.jobId);
  }

  async instanceCgroupFiles(partition: string | undefined, domainName: string): Promise<CgroupDirs> {
    const rel = this.partitionRel(partition);
    const re = lxcGroupRe(domainName);
    const out: CgroupDirs = {};
    for (const { dir, controllers } of this.roots) {
      const parent = join(dir, ...rel);
      const match = (await subdirs(parent)).find((n) => re.test(n));
      if (match) for (const c of controllers) out[c] = join(parent, match);
    }
    if (Object.keys(out).length === 0) throw new NotFoundError(`no cgroup of domain ${domainName} in ${partition ?? '/machine'}`);
    return out;
  }

  async sweepEmptyLxcLeftovers(domainName: string): Promise<string[]> {
    const re = lxcGroupRe(domainName);
    const removed: string[] = [];
    for (const { dir } of this.roots) {
      const machineDir = join(dir, 'machine');
      const parents = [machineDir, ...(await subdirs(machineDir)).filter((n) => PART_RE.test(n)).map((n) => join(machineDir, n))];
      for (const parent of parents) {
        for (const n of (await subdirs(parent)).filter((x) => re.test(x))) {
          const leaves = await leavesFirst(join(parent, n));
          let empty = true;
          for (const d of leaves) if ((await this.tasks(d)).length > 0) empty = false;
          if (!empty) continue;
          try {
            for (const d of leaves) await this.ops.rmdir(d);
            removed.push(join(parent, n));
          } catch (err) {
            this.log.warn('cannot remove lxc cgroup leftover', { dir: join(parent, n), err: err instanceof Error ? err.message : String(err) });
          }
        }
      }
    }
    if (removed.length > 0) this.log.info('lxc cgroup leftovers removed', { domainName, count: removed.length });
    return removed;
  }

  /** `/machine[/oc-…job]` → path parts, refusing anything else. */
  private partitionRel(partition: string | undefined): string[] {
    const p = partition ?? '/machine';
    const parts = p.split('/').filter((x) => x !== '');
    if (parts[0] !== 'machine' || parts.length > 2 || (parts.length === 2 && !PART_RE.test(parts[1]!))) {
      throw new InvalidArgumentError(`not an oarcloud partition: ${JSON.stringify(p.slice(0, 120))}`);
    }
    return parts;
  }

  /** mkdir; false if it was there already. */
  private async makeDir(d: string): Promise<boolean> {
    try {
      await this.ops.mkdir(d);
      return true;
    } catch (err) {
      if (errno(err) === 'EEXIST') return false;
      throw err;
    }
  }

  /** Copies cpuset.cpus/mems from `parent` where `child`'s are empty (v1 does not). */
  private async inheritCpuset(parent: string, child: string, memsOnly = false): Promise<void> {
    for (const f of memsOnly ? ['cpuset.mems'] : ['cpuset.mems', 'cpuset.cpus']) {
      if (this.layout === 'v2') continue; // v2: empty means "the parent's".
      if ((await readText(join(child, f))) !== '') continue;
      await writeFile(join(child, f), await readText(join(parent, f)));
    }
  }

  /** v2: lets `dir`'s children use our controllers (those `dir` has). */
  private async enableControllers(dir: string): Promise<void> {
    const available = (await readText(join(dir, 'cgroup.controllers'))).split(/\s+/);
    const enabled = (await readText(join(dir, 'cgroup.subtree_control'))).split(/\s+/);
    const missing = V2_CONTROLLERS.filter((c) => available.includes(c) && !enabled.includes(c));
    if (missing.length > 0) await writeFile(join(dir, 'cgroup.subtree_control'), missing.map((c) => `+${c}`).join(' '));
  }

  private async tasks(d: string): Promise<number[]> {
    const text = await readText(join(d, this.layout === 'v1' ? 'tasks' : 'cgroup.procs'));
    return text.split(/\s+/).filter((x) => x !== '').map(Number);
  }
}

async function readText(p: string): Promise<string> {
  try {
    return (await readFile(p, 'utf8')).trim();
  } catch (err) {
    if (errno(err) === 'ENOENT') return '';
    throw err;
  }
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch (err) {
    if (errno(err) === 'ENOENT') return false;
    throw err;
  }
}

async function subdirs(p: string): Promise<string[]> {
  try {
    return (await readdir(p, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name).sort();
  } catch (err) {
    if (errno(err) === 'ENOENT') return [];
    throw err;
  }
}

/** `root` and every dir below it, deepest first. */
async function leavesFirst(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const c of await subdirs(root)) out.push(...(await leavesFirst(join(root, c))));
  out.push(root);
  return out;
}

function errno(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null ? (err as NodeJS.ErrnoException).code : undefined;
}

/**
 * In-memory cgroup manager for tests: same contracts and validation as HostCgroups, state in
 * maps, calls recorded, errors injectable (`failNext`), tasks settable (`setTasks`).
 */
export class FakeCgroups extends FakeRecorder implements CgroupManager {
  readonly layout: 'v1' | 'v2' = 'v1';
  /** Partition name → its cpus and the pids inside. */
  readonly partitions = new Map<string, { ref: JobPartitionRef; cpus: string; tasks: number[] }>();
  /** Domain name → partition of its (simulated) instance cgroup. */
  readonly domains = new Map<string, { partition: string; empty: boolean }>();
  private readonly machine: number[];

  constructor(machineCpus = '0-3') {
    super();
    this.machine = parseCpuset(machineCpus);
  }

  async ensureJobPartition(node: string, jobId: number, cpuset: string): Promise<string> {
    this.record('ensureJobPartition', node, jobId, cpuset);
    const name = jobPartitionName(node, jobId);
    const cpus = parseCpuset(cpuset);
    if (cpus.length === 0) throw new InvalidArgumentError('a job partition needs at least one cpu');
    const outside = cpus.filter((c) => !this.machine.includes(c));
    if (outside.length > 0) throw new InvalidArgumentError(`cpus ${formatCpuset(outside)} are not on this machine (${formatCpuset(this.machine)})`);
    this.maybeFail('ensureJobPartition');
    const cur = this.partitions.get(name);
    if (cur) cur.cpus = formatCpuset(cpus);
    else this.partitions.set(name, { ref: { node, jobId }, cpus: formatCpuset(cpus), tasks: [] });
    return `/machine/${name}`;
  }

  async removeJobPartition(node: string, jobId: number): Promise<void> {
    this.record('removeJobPartition', node, jobId);
    const name = jobPartitionName(node, jobId);
    this.maybeFail('removeJobPartition');
    const cur = this.partitions.get(name);
    if (!cur) return;
    if (cur.tasks.length > 0) throw new FailedPreconditionError(`job partition ${name} still has tasks: ${cur.tasks.join(' ')}`);
    this.partitions.delete(name);
    for (const [d, v] of this.domains) if (v.partition === `/machine/${name}`) this.domains.delete(d);
  }

  async listJobPartitions(): Promise<JobPartitionRef[]> {
    this.record('listJobPartitions');
    return [...this.partitions.values()].map((p) => p.ref).sort((a, b) => a.node.localeCompare(b.node) || a.jobId - b.jobId);
  }

  async instanceCgroupFiles(partition: string | undefined, domainName: string): Promise<CgroupDirs> {
    this.record('instanceCgroupFiles', partition, domainName);
    const d = this.domains.get(domainName);
    const p = partition ?? '/machine';
    if (!d || d.partition !== p) throw new NotFoundError(`no cgroup of domain ${domainName} in ${p}`);
    const dir = `/fake/cgroup${p}/lxc-1-${domainName}.libvirt-lxc`;
    return { cpuset: dir, cpu: dir, memory: dir };
  }

  async sweepEmptyLxcLeftovers(domainName: string): Promise<string[]> {
    this.record('sweepEmptyLxcLeftovers', domainName);
    const d = this.domains.get(domainName);
    if (!d?.empty) return [];
    this.domains.delete(domainName);
    return [`/fake/cgroup${d.partition}/lxc-1-${domainName}.libvirt-lxc`];
  }

  /** Test helper: pids inside a job's partition. */
  setTasks(node: string, jobId: number, pids: number[]): void {
    const p = this.partitions.get(jobPartitionName(node, jobId));
    if (!p) throw new NotFoundError(`no partition for job ${jobId}`);
    p.tasks = [...pids];
  }
}
