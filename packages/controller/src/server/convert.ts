/**
 * The gRPC edge of the controller: proto messages in, validated domain values out, and
 * back. Nothing else in the controller's services sees generated types.
 */
import {
  InstanceState,
  JobState as PbJobState,
  Role as PbRole,
  type Instance as PbInstance,
  type Job as PbJob,
  type LaunchSpec as PbLaunchSpec,
  type NodeStatus,
  type ReserveRequest,
  type User as PbUser,
} from '@oarcloud/api';
import { checkName, InvalidArgumentError } from '@oarcloud/common';
import type { InstanceUsage, NodeHealth } from '../agents/agents.js';
import type { AgentNetworkAttachment, InstanceRecord, JobRecord, JobState, LaunchRequest, Role, UserRecord } from '../domain.js';

const IMAGE_RE = /^[a-z0-9][a-z0-9._/-]{0,127}(:[A-Za-z0-9._-]{1,64})?$/;
export const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
const MAX_WALLTIME_S = 366 * 24 * 3600;

const JOB_STATE: Record<JobState, PbJobState> = {
  pending: PbJobState.JOB_STATE_PENDING,
  running: PbJobState.JOB_STATE_RUNNING,
  ended: PbJobState.JOB_STATE_ENDED,
};

export function jobToProto(j: JobRecord, instanceCount: number): PbJob {
  return {
    id: j.id,
    owner: j.owner,
    state: JOB_STATE[j.state],
    oarState: j.oarState,
    hosts: j.hosts.map((h) => ({ node: h.node, cpuset: h.cpuset, cores: h.cores })),
    walltimeS: j.walltimeS,
    startedAtMs: j.startedAtMs,
    endedAtMs: j.endedAtMs,
    specId: j.specId,
    instanceCount,
    error: j.error,
  };
}

function instanceState(i: InstanceRecord): InstanceState {
  if (i.desired === 'deleted' && i.reported !== 'running') return InstanceState.INSTANCE_STATE_DELETED;
  switch (i.reported) {
    case 'running':
      return InstanceState.INSTANCE_STATE_RUNNING;
    case 'stopped':
      return InstanceState.INSTANCE_STATE_STOPPED;
    case 'failed':
      return InstanceState.INSTANCE_STATE_FAILED;
    case 'deleted':
      return InstanceState.INSTANCE_STATE_DELETED;
    default:
      return i.desired === 'running' ? InstanceState.INSTANCE_STATE_CREATING : InstanceState.INSTANCE_STATE_UNSPECIFIED;
  }
}

export function instanceToProto(i: InstanceRecord, job: JobRecord | undefined, networks: AgentNetworkAttachment[] = [], usage?: InstanceUsage): PbInstance {
  return {
    spec: {
      id: i.id,
      name: i.name,
      jobId: i.jobId,
      owner: i.owner,
      image: { name: i.image, layers: [] },
      vcpus: i.vcpus,
      memoryMib: i.memoryMib,
      cpuset: job?.hosts.find((h) => h.node === i.node)?.cpuset ?? '',
      sshAuthorizedKeys: [...i.sshKeys],
      hostname: i.name,
      networks: networks.map((n) => ({ ...n })),
      volumes: i.volumes?.length ? { mounts: i.volumes.map((v) => ({ ...v })) } : undefined,
    },
    node: i.node,
    state: instanceState(i),
    reason: i.reason,
    createdAtMs: i.createdAtMs,
    updatedAtMs: i.updatedAtMs,
    initPid: 0,
    // Only while it runs: the figures of a stopped instance would be stale.
    usage: usage && i.reported === 'running' ? { ...usage } : undefined,
  };
}

export function roleToProto(r: Role): PbRole {
  return r === 'admin' ? PbRole.ROLE_ADMIN : PbRole.ROLE_USER;
}

export function roleFromProto(r: PbRole): Role {
  if (r === PbRole.ROLE_ADMIN) return 'admin';
  if (r === PbRole.ROLE_USER || r === PbRole.ROLE_UNSPECIFIED) return 'user';
  throw new InvalidArgumentError(`unknown role ${r as number}`);
}

export function userToProto(u: UserRecord): PbUser {
  return { name: u.name, role: roleToProto(u.role), createdAtMs: u.createdAtMs };
}

export function checkUserName(name: string): string {
  if (!USER_RE.test(name)) throw new InvalidArgumentError(`user name must be a Unix login (lower-case letters, digits, _ or -, at most 32): ${JSON.stringify(name.slice(0, 40))}`);
  return name;
}

export function checkJobId(id: number, what = 'job id'): number {
  if (!Number.isSafeInteger(id) || id <= 0) throw new InvalidArgumentError(`${what} must be a positive integer`);
  return id;
}

/** A launch spec from the API, validated. */
export function launchFromProto(s: PbLaunchSpec | undefined): LaunchRequest {
  if (!s) throw new InvalidArgumentError('spec is required');
  if (!IMAGE_RE.test(s.image)) throw new InvalidArgumentError(`spec.image must be name:tag, e.g. debian:12 (got ${JSON.stringify(s.image.slice(0, 80))})`);
  if (s.count < 1 || s.count > 1000) throw new InvalidArgumentError('spec.count must be 1 to 1000');
  if (s.vcpus < 1 || s.vcpus > 1024) throw new InvalidArgumentError('spec.vcpus must be 1 to 1024');
  if (s.memoryMib < 16 || s.memoryMib > 16 * 1024 * 1024) throw new InvalidArgumentError('spec.memory_mib must be 16 to 16777216');
  if (s.sshAuthorizedKeys.length > 32) throw new InvalidArgumentError('at most 32 ssh keys');
  for (const k of s.sshAuthorizedKeys) {
    if (k.length > 16_384 || /[\r\n]/.test(k) || !/^(ssh-|ecdsa-|sk-)/.test(k.trim())) throw new InvalidArgumentError('an ssh key must be one authorized_keys line (ssh-…, ecdsa-…, sk-…)');
  }
  if (s.namePrefix) checkName(s.namePrefix, 'spec.name_prefix');
  if (s.namePrefix.length > 50) throw new InvalidArgumentError('spec.name_prefix must be at most 50 characters');
  return {
    image: s.image,
    count: s.count,
    vcpus: s.vcpus,
    memoryMib: s.memoryMib,
    sshKeys: s.sshAuthorizedKeys.map((k) => k.trim()),
    namePrefix: s.namePrefix,
    volumes: (s.volumes?.mounts ?? []).map((v) => ({ volumeId: v.volumeId, path: v.path, readOnly: v.readOnly })),
  };
}

export interface ReserveInput {
  nodes: number;
  coresPerNode: number;
  walltimeS: number;
  spec?: LaunchRequest;
  idempotencyKey: string;
}

export function reserveFromProto(r: ReserveRequest): ReserveInput {
  if (r.nodes < 1 || r.nodes > 10_000) throw new InvalidArgumentError('nodes must be 1 to 10000');
  if (r.coresPerNode > 4096) throw new InvalidArgumentError('cores_per_node must be 0 (whole nodes) to 4096');
  if (!Number.isSafeInteger(r.walltimeS) || r.walltimeS < 60 || r.walltimeS > MAX_WALLTIME_S) throw new InvalidArgumentError('walltime_s must be 60 s to 366 days');
  if (r.idempotencyKey.length > 128) throw new InvalidArgumentError('idempotency_key must be at most 128 characters');
  return {
    nodes: r.nodes,
    coresPerNode: r.coresPerNode,
    walltimeS: r.walltimeS,
    spec: r.spec ? launchFromProto(r.spec) : undefined,
    idempotencyKey: r.idempotencyKey,
  };
}

/** OAR's walltime syntax `H:MM:SS`. */
export function oarWalltime(s: number): string {
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return `${h}:${String(m).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

export function nodeToProto(h: NodeHealth): NodeStatus {
  return {
    info: { name: h.node, cores: h.cores, memoryBytes: h.memoryBytes, agentVersion: '', libvirtVersion: '', datapath: '', kernel: '', underlayIp: '' },
    healthy: h.reachable,
    load1: h.load1,
    instances: h.instances,
    coresUsed: h.vcpusUsed,
    memoryUsedBytes: h.memoryUsedBytes,
    lastSeenMs: Math.max(h.lastOkMs, h.lastHeartbeatMs),
  };
}
