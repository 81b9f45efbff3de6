/**
 * The agents as the controller sees them: one small interface per node (`AgentPort`) and a
 * pool of them (`Agents`). The gRPC implementation is in `grpc-pool.ts`; unit tests run it
 * against the fake agent server of @oarcloud/testkit.
 */
import type { Duplex, Readable } from 'node:stream';
import type { ActualInstance, AgentInstanceSpec } from '../domain.js';

export interface AgentPort {
  readonly node: string;
  /** Idempotent by spec id; resolves once the agent reports the instance (RUNNING or FAILED). */
  createInstance(spec: AgentInstanceSpec): Promise<ActualInstance>;
  /** Idempotent: false when there was nothing to destroy. */
  destroyInstance(id: string): Promise<boolean>;
  startInstance(id: string): Promise<ActualInstance>;
  stopInstance(id: string): Promise<ActualInstance>;
  /** Every instance on the node (of one job when jobId > 0). */
  listInstances(jobId?: number): Promise<ActualInstance[]>;
  /** Destroys every instance of the job on the node and its host objects. Idempotent. */
  releaseJob(jobId: number): Promise<string[]>;
  /** Facts about the node that networks need. */
  getNode(): Promise<{ underlayIp: string; datapath: string }>;
  /**
   * Declares a network's peers on the node (idempotent); with `gateway`, the node hosts the
   * network's NAT gateway (without, it has none); `jobId` binds it to the job's ReleaseJob.
   */
  ensureNetwork(networkId: string, vni: number, peers: string[], opts?: { jobId?: number; gateway?: { address: string; mtu: number } }): Promise<void>;
  /** Forgets a network on the node (idempotent). */
  releaseNetwork(networkId: string): Promise<void>;
  /**
   * A byte stream to a TCP port of an instance on the node (AgentService.Connect). The
   * duplex ends when the port closes; `end()` half-closes; errors are OarcloudErrors
   * (NOT_FOUND, FAILED_PRECONDITION…); `destroy()` cancels.
   */
  connect(instanceId: string, port: number): Duplex;
  /**
   * The instance's writable layer as an uncompressed tar (AgentService.ExportLayer);
   * errors are OarcloudErrors emitted by the stream.
   */
  exportLayer(instanceId: string): Readable;
  /** The last `maxBytes` of the instance's console output (AgentService.GetConsoleLog). */
  getConsoleLog(instanceId: string, maxBytes: number): Promise<Buffer>;
}

export interface NodeHealth {
  node: string;
  address: string;
  /** The last gRPC call to the agent succeeded (or was answered with an application error). */
  reachable: boolean;
  lastOkMs: number;
  lastError: string;
  /** From the NATS heartbeat. */
  lastHeartbeatMs: number;
  cores: number;
  memoryBytes: number;
  load1: number;
  instances: number;
  vcpusUsed: number;
  memoryUsedBytes: number;
}

export interface HeartbeatFacts {
  node: string;
  atMs: number;
  cores: number;
  memoryBytes: number;
  load1: number;
  instances: number;
  vcpusUsed: number;
  memoryUsedBytes: number;
  /** Use of the node's running instances (cgroup figures); absent: none reported. */
  instanceMetrics?: ReadonlyArray<{ instanceId: string; cpuSeconds: number; memoryBytes: number }>;
}

/** What a running instance used at its node's last heartbeat. */
export interface InstanceUsage {
  cpuSeconds: number;
  /** Percent of one core between the node's last two heartbeats that carried the instance. */
  cpuPercent: number;
  memoryBytes: number;
  atMs: number;
}

export interface Agents {
  /** Nodes with a configured agent. */
  nodes(): string[];
  /** The agent of a node; undefined when the node has none configured. */
  get(node: string): AgentPort | undefined;
  health(): NodeHealth[];
  heartbeat(h: HeartbeatFacts): void;
  /** The instance's use at the last heartbeat of its node that listed it; undefined: none. */
  usage(instanceId: string): InstanceUsage | undefined;
  close(): void;
}
