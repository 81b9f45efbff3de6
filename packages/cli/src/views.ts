/**
 * The command's edge: API messages become plain views, used both for tables and as the
 * `--json` output (stable keys, lower-case state names, times in ms since the epoch).
 */
import { InstanceState, JobState, Role, type Image, type Instance, type Job, type NodeStatus, type User } from '@oarcloud/api';

export interface JobView {
  id: number;
  owner: string;
  state: string;
  oarState: string;
  hosts: Array<{ node: string; cpuset: string; cores: number }>;
  walltimeS: number;
  startedAtMs: number;
  endedAtMs: number;
  specId: string;
  instances: number;
  /** Why the bound launch spec was not applied; empty when it was (or there is none). */
  error: string;
}

export interface InstanceView {
  id: string;
  name: string;
  jobId: number;
  owner: string;
  node: string;
  state: string;
  reason: string;
  image: string;
  vcpus: number;
  memoryMib: number;
  cpuset: string;
  createdAtMs: number;
  updatedAtMs: number;
  /** What it used at its node's last heartbeat; only while it runs, once measured. */
  usage?: UsageView;
}

export interface UsageView {
  /** Percent of one core between the node's last two heartbeats. */
  cpuPercent: number;
  cpuSeconds: number;
  memoryBytes: number;
  atMs: number;
}

export interface UserView {
  name: string;
  role: string;
  createdAtMs: number;
}

export interface NodeView {
  name: string;
  healthy: boolean;
  load1: number;
  instances: number;
  cores: number;
  coresUsed: number;
  coresFree: number;
  memoryBytes: number;
  memoryUsedBytes: number;
  lastSeenMs: number;
}

export interface ImageView {
  name: string;
  owner: string;
  public: boolean;
  sizeBytes: number;
  layers: number;
  parent: string;
  createdAtMs: number;
}

/** `INSTANCE_STATE_RUNNING` → `running`. */
function enumName(names: Record<number, string>, value: number, prefix: string): string {
  const n = names[value] ?? 'UNSPECIFIED';
  return (n.startsWith(prefix) ? n.slice(prefix.length) : n).toLowerCase();
}

export const jobState = (s: JobState): string => enumName(JobState as unknown as Record<number, string>, s, 'JOB_STATE_');
export const instanceState = (s: InstanceState): string => enumName(InstanceState as unknown as Record<number, string>, s, 'INSTANCE_STATE_');
export const roleName = (r: Role): string => enumName(Role as unknown as Record<number, string>, r, 'ROLE_');

export function jobView(j: Job): JobView {
  return {
    id: j.id,
    owner: j.owner,
    state: jobState(j.state),
    oarState: j.oarState,
    hosts: j.hosts.map((h) => ({ node: h.node, cpuset: h.cpuset, cores: h.cores })),
    walltimeS: j.walltimeS,
    startedAtMs: j.startedAtMs,
    endedAtMs: j.endedAtMs,
    specId: j.specId,
    instances: j.instanceCount,
    error: j.error,
  };
}

export function instanceView(i: Instance): InstanceView {
  const s = i.spec;
  return {
    id: s?.id ?? '',
    name: s?.name ?? '',
    jobId: s?.jobId ?? 0,
    owner: s?.owner ?? '',
    node: i.node,
    state: instanceState(i.state),
    reason: i.reason,
    image: s?.image?.name ?? '',
    vcpus: s?.vcpus ?? 0,
    memoryMib: s?.memoryMib ?? 0,
    cpuset: s?.cpuset ?? '',
    createdAtMs: i.createdAtMs,
    updatedAtMs: i.updatedAtMs,
    ...(i.usage ? { usage: { cpuPercent: i.usage.cpuPercent, cpuSeconds: i.usage.cpuSeconds, memoryBytes: i.usage.memoryBytes, atMs: i.usage.atMs } } : {}),
  };
}

export function userView(u: User | undefined): UserView {
  return { name: u?.name ?? '', role: roleName(u?.role ?? Role.ROLE_UNSPECIFIED), createdAtMs: u?.createdAtMs ?? 0 };
}

export function nodeView(n: NodeStatus): NodeView {
  const cores = n.info?.cores ?? 0;
  return {
    name: n.info?.name ?? '',
    healthy: n.healthy,
    load1: n.load1,
    instances: n.instances,
    cores,
    coresUsed: n.coresUsed,
    coresFree: Math.max(0, cores - n.coresUsed),
    memoryBytes: n.info?.memoryBytes ?? 0,
    memoryUsedBytes: n.memoryUsedBytes,
    lastSeenMs: n.lastSeenMs,
  };
}

export function imageView(i: Image): ImageView {
  return { name: i.name, owner: i.owner, public: i.public, sizeBytes: i.sizeBytes, layers: i.layers.length, parent: i.parent, createdAtMs: i.createdAtMs };
}
