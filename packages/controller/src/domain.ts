/**
 * The controller's own types. Generated proto types never reach past `server/convert.ts`
 * and `agents/convert.ts`.
 */

/** Our view of an OAR job's life (see `jobs/lifecycle.ts` for the mapping). */
export type JobState = 'pending' | 'running' | 'ended';

/** One host of a job: its OAR `network_address`, the job's cpus there, their count. */
export interface JobHost {
  node: string;
  cpuset: string;
  cores: number;
}

/** What to launch in a job (stored by Reserve, bound to a job by `-t cloud=<spec-id>`). */
export interface LaunchSpec {
  id: string;
  owner: string;
  image: string;
  count: number;
  vcpus: number;
  memoryMib: number;
  sshKeys: string[];
  namePrefix: string;
  /** Volumes to mount into every instance (names or ids until placed). */
  volumes?: VolumeMount[];
  createdAtMs: number;
}

/** The launch request part of a spec (RunInstances takes it without id/owner). */
export type LaunchRequest = Omit<LaunchSpec, 'id' | 'owner' | 'createdAtMs'> & {
  /** Network ids or names of the job to attach (interface i = networks[i]); empty: the job's default network. */
  networks?: string[];
};

export interface JobRecord {
  id: number;
  owner: string;
  state: JobState;
  /** OAR's own state name (Waiting, Running, Terminated…). */
  oarState: string;
  hosts: JobHost[];
  /** The launch spec bound to the job ('' when none). */
  specId: string;
  walltimeS: number;
  startedAtMs: number;
  endedAtMs: number;
  /** Last job_state_logs id applied to this job. */
  lastLogId: number;
  /** The bound spec's instances have been placed (so they are placed once). */
  specApplied: boolean;
  /** Why the job's instances could not be started ('' when fine). */
  error: string;
  /** When teardown finished on every host (0: not yet). */
  releasedAtMs: number;
}

export type DesiredState = 'running' | 'stopped' | 'deleted';
export type ReportedState = 'unknown' | 'creating' | 'running' | 'stopped' | 'failed' | 'deleted';

export interface InstanceRecord {
  id: string;
  jobId: number;
  owner: string;
  name: string;
  node: string;
  vcpus: number;
  memoryMib: number;
  image: string;
  sshKeys: string[];
  /** Volumes mounted into the instance (ids resolved at placement). */
  volumes?: VolumeMount[];
  desired: DesiredState;
  reported: ReportedState;
  reason: string;
  createdAtMs: number;
  updatedAtMs: number;
}

export type Role = 'user' | 'admin';

export interface UserRecord {
  name: string;
  role: Role;
  createdAtMs: number;
}

/** The authenticated caller of a cloud API call. */
export interface Caller {
  name: string;
  role: Role;
}

/** An instance as an agent reports it (domain side of AgentService.Instance). */
export interface ActualInstance {
  id: string;
  jobId: number;
  name: string;
  node: string;
  state: ReportedState;
  reason: string;
}

/** Everything an agent needs to create an instance (domain side of InstanceSpec). */
export interface AgentInstanceSpec {
  id: string;
  name: string;
  jobId: number;
  owner: string;
  image: { name: string; layers: string[] };
  vcpus: number;
  memoryMib: number;
  cpuset: string;
  sshKeys: string[];
  hostname: string;
  networks: AgentNetworkAttachment[];
  volumes?: VolumeMount[];
}

/** A volume mounted into an instance (domain side of VolumeMount). */
export interface VolumeMount {
  /** `v-<12 hex>` once resolved (requests may name the volume). */
  volumeId: string;
  path: string;
  readOnly: boolean;
}

/** A private network of a job (an isolated L2 segment with a subnet). */
export interface NetworkRecord {
  id: string;
  jobId: number;
  owner: string;
  name: string;
  /** `10.90.3.0/24` */
  subnet: string;
  gateway: string;
  /** VXLAN network identifier, unique among live networks. */
  vni: number;
  mtu: number;
  nat: boolean;
  /** The job's default network (created when the job starts). */
  isDefault: boolean;
  createdAtMs: number;
}

/** An instance's interface on a network (its address is unique in the network). */
export interface AttachmentRecord {
  instanceId: string;
  networkId: string;
  /** Interface index: eth<index>. */
  index: number;
  /** Dotted address, without prefix. */
  address: string;
  mac: string;
}

/** One interface as an agent needs it (domain side of NetworkAttachment). */
export interface AgentNetworkAttachment {
  networkId: string;
  vni: number;
  interface: string;
  mac: string;
  /** With prefix: `10.90.0.5/24`. */
  address: string;
  gateway: string;
  mtu: number;
}

/** A layer of the controller's image store: sha256 of the uncompressed tar, stored gzipped. */
export interface LayerRecord {
  digest: string;
  /** Bytes of the uncompressed tar. */
  size: number;
  /** Bytes of the stored (compressed) blob; 0 when the layer is only declared (no blob). */
  storedSize: number;
  createdAtMs: number;
}

/** An image: `name:tag`, layers bottom first. */
export interface ImageRecord {
  name: string;
  owner: string;
  public: boolean;
  /** The image it was saved from ('' for a base image). */
  parent: string;
  layers: string[];
  sizeBytes: number;
  createdAtMs: number;
}

/** A user's persistent volume (a directory on shared storage). */
export interface VolumeRecord {
  id: string;
  owner: string;
  name: string;
  createdAtMs: number;
}
