/**
 * The container runtime contract: what the agent needs from libvirt (or a fake).
 *
 * Domains are transient (created from XML, never "defined"): the agent keeps the durable
 * record of each instance itself, so a stopped instance is simply one with no domain, and
 * nothing has to be undefined afterwards. Every domain the runtime creates carries oarcloud
 * metadata (namespace `OARCLOUD_METADATA_NS`) naming its instance, job and node; the
 * runtime only ever lists, touches or destroys domains that carry it for its own node.
 */

/** libvirt metadata namespace of oarcloud domains. */
export const OARCLOUD_METADATA_NS = 'https://oarcloud.dev/xmlns/instance/1';

/** libvirt domain name of an instance. */
export function domainName(instanceId: string): string {
  return `oc-${instanceId}`;
}

export interface DomainInterface {
  /** Host-side interface name (≤ 15 chars), deterministic per instance and index. */
  hostName: string;
  /** Interface name inside the container. */
  guestName: string;
  mac: string;
  /**
   * OVS bridge libvirt plugs the host end into (`<interface type='bridge'>` with an
   * openvswitch virtualport), with this VLAN tag. Absent: `<interface type='ethernet'>`,
   * the host end is left unplugged for the agent to plug (see network/links.ts).
   */
  bridge?: string;
  vlan?: number;
  mtu?: number;
}

export interface DomainSpec {
  instanceId: string;
  jobId: number;
  /** The node this agent runs as (several emulated nodes may share one libvirtd). */
  node: string;
  /** Root filesystem of the container (the mounted overlay). */
  rootDir: string;
  /** Program run as init inside the container. */
  init: string;
  vcpus: number;
  /** Cpus the container may run on, cpuset list syntax (the job's cpus on this node). */
  cpuset: string;
  memoryMib: number;
  /** Relative CPU weight (cgroup cpu.shares). */
  cpuShares?: number;
  /**
   * CFS bandwidth limit of the whole container (`<cputune><period>/<quota>`, cgroup
   * cpu.cfs_period_us / cpu.cfs_quota_us): at most `cpuQuotaUs` of CPU time per
   * `cpuPeriodUs`, i.e. quota/period cpus' worth. Both or neither; absent: no limit
   * beyond the cpuset.
   */
  cpuPeriodUs?: number;
  cpuQuotaUs?: number;
  /**
   * libvirt resource partition, e.g. `/machine/oc-node-1-j17.job` (must already exist in
   * every cgroup controller; see CgroupManager).
   */
  partition?: string;
  /** User-namespace id map: container ids 0..count-1 map to host ids start..start+count-1. */
  idmap?: { start: number; count: number };
  interfaces: DomainInterface[];
  /** Host folders bind-mounted into the container (volumes). */
  mounts?: Array<{ source: string; target: string; readOnly: boolean }>;
  /** File that receives the container's console output. */
  consoleLog?: string;
}

export type DomainState = 'running' | 'blocked' | 'paused' | 'shutdown' | 'shutoff' | 'crashed' | 'unknown';

export interface DomainStatus {
  name: string;
  instanceId: string;
  jobId: number;
  node: string;
  state: DomainState;
  /** Host pid of the container's init; 0 if unknown. */
  initPid: number;
}

export type DomainEventKind = 'started' | 'stopped' | 'crashed' | 'other';

/** Limits that can be changed on a running domain (ContainerRuntime.setLimits). */
export interface DomainLimits {
  memoryMib?: number;
  cpuShares?: number;
  /** CFS period (µs, 1000–1000000); with or without a new quota. */
  cpuPeriodUs?: number;
  /** CFS quota (µs per period, ≥ 1000), or -1 for no limit. */
  cpuQuotaUs?: number;
}

export interface DomainEvent {
  name: string;
  instanceId: string;
  kind: DomainEventKind;
  /** libvirt's detail code, for logs. */
  detail: number;
}

export interface ContainerRuntime {
  /**
   * Creates and starts a transient domain from `spec`. Not idempotent on its own: if a
   * domain of that instance already exists it fails with AlreadyExistsError (callers check
   * with `get` first). May take hundreds of ms; never blocks the Node event loop.
   */
  create(spec: DomainSpec): Promise<DomainStatus>;
  /**
   * Stops the domain at once (SIGKILL of its init) and waits until libvirt has released
   * it. Idempotent: returns false when there was no such domain.
   */
  destroy(instanceId: string): Promise<boolean>;
  /** The domain of an instance on this node, or undefined. */
  get(instanceId: string): Promise<DomainStatus | undefined>;
  /** Every oarcloud domain of this node (never another node's, never foreign domains). */
  list(): Promise<DomainStatus[]>;
  /**
   * Changes limits of a running domain live (memory MiB, CPU shares, CFS period/quota);
   * fields left out are kept. Bad values → InvalidArgumentError before anything changes;
   * no such domain of this node → NotFoundError.
   */
  setLimits(instanceId: string, limits: DomainLimits): Promise<void>;
  /** libvirt's version as `major.minor.micro` (empty for fakes). */
  version(): Promise<string>;
  /**
   * The host path of a running instance's console (the pty libvirt allocated, whose output
   * is the instance's /dev/console), or undefined when the domain is absent or not running
   * (fakes: none). It changes at every start of the domain.
   */
  consolePty(instanceId: string): Promise<string | undefined>;
  /** Subscribes to lifecycle events of this node's domains; returns an unsubscribe function. */
  onEvent(listener: (ev: DomainEvent) => void): () => void;
  /** Releases connections and the event loop thread. */
  close(): Promise<void>;
}
