/**
 * The agent's own model of an instance (never the generated proto types: those stay at the
 * gRPC edge, see server/convert.ts).
 */

export type InstanceState = 'creating' | 'running' | 'stopped' | 'failed' | 'deleted';

export interface NetworkAttachment {
  networkId: string;
  vni: number;
  interface: string;
  mac: string;
  /** `10.90.0.5/24` */
  address: string;
  gateway: string;
  mtu: number;
}

/** A volume mounted into an instance: `<volumesDir>/<volumeId>` at `path`. */
export interface VolumeMount {
  volumeId: string;
  /** Absolute path inside the instance. */
  path: string;
  readOnly: boolean;
}

export interface InstanceSpec {
  id: string;
  name: string;
  jobId: number;
  owner: string;
  image: { name: string; layers: string[] };
  vcpus: number;
  memoryMib: number;
  /** The job's cpus on this node. */
  cpuset: string;
  sshAuthorizedKeys: string[];
  hostname: string;
  networks: NetworkAttachment[];
  /** Absent in records written before volumes existed. */
  volumes?: VolumeMount[];
}

/** What the agent persists about an instance (one JSON file each). */
export interface InstanceRecord {
  spec: InstanceSpec;
  state: InstanceState;
  reason: string;
  createdAtMs: number;
  updatedAtMs: number;
  initPid: number;
}

export interface InstanceEventSink {
  /** Called on every state change; must not throw or block. */
  instanceChanged(rec: InstanceRecord): void;
}
