/**
 * Agents over gRPC: one AgentServiceClient per configured node, every call with a deadline,
 * UNAVAILABLE retried with back-off (agent calls are idempotent), reachability recorded for
 * NodeService. Proto ↔ domain conversion of agent messages happens here and nowhere else.
 */
import * as grpc from '@grpc/grpc-js';
import { AgentServiceClient, InstanceState, type Instance } from '@oarcloud/api';
import { Duplex, Transform, type Readable } from 'node:stream';
import { callUnary, errFields, fromGrpcError, OarcloudError, tlsChannelOptions, UnavailableError, type Logger } from '@oarcloud/common';
import type { ActualInstance, AgentInstanceSpec, ReportedState } from '../domain.js';
import type { AgentPort, Agents, HeartbeatFacts, InstanceUsage, NodeHealth } from './agents.js';
import { UsageBook } from './usage.js';

export interface AgentEndpoint {
  name: string;
  address: string;
}

export interface GrpcAgentsOptions {
  log: Logger;
  createTimeoutMs: number;
  callTimeoutMs: number;
  /** Attempts for a call that fails with UNAVAILABLE (default 3). */
  attempts?: number;
  /** Per node (mutual TLS checks each agent's name), or one for all; default insecure. */
  credentials?: grpc.ChannelCredentials | ((node: string) => grpc.ChannelCredentials);
  now?: () => number;
}

const STATE_OF: Record<number, ReportedState> = {
  [InstanceState.INSTANCE_STATE_UNSPECIFIED]: 'unknown',
  [InstanceState.INSTANCE_STATE_CREATING]: 'creating',
  [InstanceState.INSTANCE_STATE_RUNNING]: 'running',
  [InstanceState.INSTANCE_STATE_STOPPED]: 'stopped',
  [InstanceState.INSTANCE_STATE_FAILED]: 'failed',
  [InstanceState.INSTANCE_STATE_DELETED]: 'deleted',
};

export function reportedStateOf(s: InstanceState): ReportedState {
  return STATE_OF[s] ?? 'unknown';
}

export function actualFromProto(i: Instance, node: string): ActualInstance {
  return {
    id: i.spec?.id ?? '',
    jobId: i.spec?.jobId ?? 0,
    name: i.spec?.name ?? '',
    node: i.node || node,
    state: reportedStateOf(i.state),
    reason: i.reason,
  };
}

export function specToProto(s: AgentInstanceSpec) {
  return {
    id: s.id,
    name: s.name,
    jobId: s.jobId,
    owner: s.owner,
    image: { name: s.image.name, layers: [...s.image.layers] },
    vcpus: s.vcpus,
    memoryMib: s.memoryMib,
    cpuset: s.cpuset,
    sshAuthorizedKeys: [...s.sshKeys],
    hostname: s.hostname,
    networks: s.networks.map((n) => ({ ...n })),
    volumes: s.volumes?.length ? { mounts: s.volumes.map((v) => ({ ...v })) } : undefined,
  };
}

class GrpcAgent implements AgentPort {
  readonly client: AgentServiceClient;
  health: NodeHealth;

  constructor(
    readonly node: string,
    address: string,
    private readonly o: GrpcAgentsOptions,
  ) {
    const creds = typeof o.credentials === 'function' ? o.credentials(node) : o.credentials;
    this.client = new AgentServiceClient(address, creds ?? grpc.credentials.createInsecure(), {
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 2000,
      ...(creds ? tlsChannelOptions(address) : {}),
    });
    this.health = {
      node,
      address,
      reachable: false,
      lastOkMs: 0,
      lastError: 'not contacted yet',
      lastHeartbeatMs: 0,
      cores: 0,
      memoryBytes: 0,
      load1: 0,
      instances: 0,
      vcpusUsed: 0,
      memoryUsedBytes: 0,
    };
  }

  private async call<T>(what: string, timeoutMs: number, fn: (timeoutMs: number) => Promise<T>): Promise<T> {
    const attempts = this.o.attempts ?? 3;
    let delay = 200;
    for (let i = 1; ; i++) {
      try {
        const res = await fn(timeoutMs);
        this.ok();
        return res;
      } catch (err) {
        if (err instanceof UnavailableError) {
          this.health.reachable = false;
          this.health.lastError = err.message;
          if (i < attempts) {
            this.o.log.debug('agent unavailable, retrying', { node: this.node, call: what, attempt: i, ...errFields(err) });
            await new Promise((r) => setTimeout(r, delay));
            delay *= 2;
            continue;
          }
        } else if (err instanceof OarcloudError) {
          this.ok(); // an application error is an answer: the agent is reachable
        }
        throw err;
      }
    }
  }

  private ok(): void {
    this.health.reachable = true;
    this.health.lastOkMs = (this.o.now ?? Date.now)();
    this.health.lastError = '';
  }

  createInstance(spec: AgentInstanceSpec): Promise<ActualInstance> {
    return this.call('CreateInstance', this.o.createTimeoutMs, async (timeoutMs) =>
      actualFromProto(await callUnary(this.client.createInstance.bind(this.client), { spec: specToProto(spec) }, { timeoutMs }), this.node),
    );
  }

  destroyInstance(id: string): Promise<boolean> {
    return this.call('DestroyInstance', this.o.callTimeoutMs, async (timeoutMs) => (await callUnary(this.client.destroyInstance.bind(this.client), { id }, { timeoutMs })).existed);
  }

  startInstance(id: string): Promise<ActualInstance> {
    return this.call('StartInstance', this.o.createTimeoutMs, async (timeoutMs) =>
      actualFromProto(await callUnary(this.client.startInstance.bind(this.client), { id }, { timeoutMs }), this.node),
    );
  }

  stopInstance(id: string): Promise<ActualInstance> {
    return this.call('StopInstance', this.o.callTimeoutMs, async (timeoutMs) =>
      actualFromProto(await callUnary(this.client.stopInstance.bind(this.client), { id }, { timeoutMs }), this.node),
    );
  }

  listInstances(jobId = 0): Promise<ActualInstance[]> {
    // One attempt: the reconcile pass retries on its own schedule.
    return this.call('ListInstances', this.o.callTimeoutMs, async (timeoutMs) =>
      (await callUnary(this.client.listInstances.bind(this.client), { jobId }, { timeoutMs })).instances.map((i) => actualFromProto(i, this.node)),
    );
  }

  getNode(): Promise<{ underlayIp: string; datapath: string }> {
    return this.call('GetNode', this.o.callTimeoutMs, async (timeoutMs) => {
      const n = await callUnary(this.client.getNode.bind(this.client), {}, { timeoutMs });
      return { underlayIp: n.underlayIp, datapath: n.datapath };
    });
  }

  ensureNetwork(networkId: string, vni: number, peers: string[], opts: { jobId?: number; gateway?: { address: string; mtu: number } } = {}): Promise<void> {
    return this.call('EnsureNetwork', this.o.callTimeoutMs, async (timeoutMs) => {
      await callUnary(this.client.ensureNetwork.bind(this.client), { networkId, vni, peers, jobId: opts.jobId ?? 0, gateway: opts.gateway }, { timeoutMs });
    });
  }

  releaseNetwork(networkId: string): Promise<void> {
    return this.call('ReleaseNetwork', this.o.callTimeoutMs, async (timeoutMs) => {
      await callUnary(this.client.releaseNetwork.bind(this.client), { networkId }, { timeoutMs });
    });
  }

  connect(instanceId: string, port: number): Duplex {
    const call = this.client.connect();
    const d = new Duplex({
      read: () => call.resume(),
      write: (chunk: Buffer, _enc, cb) => {
        if (call.write({ frame: { $case: 'data', value: chunk } })) cb();
        else call.once('drain', () => cb());
      },
      final: (cb) => {
        call.end();
        cb();
      },
      destroy: (err, cb) => {
        call.cancel();
        cb(err);
      },
    });
    call.on('data', (f: { frame?: { $case: string; value: unknown } }) => {
      if (f.frame?.$case === 'data' && !d.push(f.frame.value as Buffer)) call.pause();
    });
    call.on('end', () => d.push(null));
    call.on('error', (err: unknown) => d.destroy(fromGrpcError(err)));
    call.write({ frame: { $case: 'open', value: { instanceId, port } } });
    return d;
  }

  exportLayer(instanceId: string): Readable {
    // No deadline: a big layer takes as long as it takes; the agent freezes only while copying.
    const call = this.client.exportLayer({ instanceId });
    const out = new Transform({
      readableObjectMode: false,
      writableObjectMode: true,
      transform(msg: { data: Uint8Array }, _enc, cb) {
        cb(null, Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength));
      },
      destroy(err, cb) {
        call.cancel();
        cb(err);
      },
    });
    call.on('error', (err: unknown) => out.destroy(fromGrpcError(err)));
    call.pipe(out);
    return out;
  }

  getConsoleLog(instanceId: string, maxBytes: number): Promise<Buffer> {
    return this.call('GetConsoleLog', this.o.callTimeoutMs, async (timeoutMs) => {
      const res = await callUnary(this.client.getConsoleLog.bind(this.client), { id: instanceId, maxBytes }, { timeoutMs });
      return Buffer.from(res.data);
    });
  }

  releaseJob(jobId: number): Promise<string[]> {
    return this.call('ReleaseJob', this.o.callTimeoutMs, async (timeoutMs) =>
      [...(await callUnary(this.client.releaseJob.bind(this.client), { jobId }, { timeoutMs })).destroyedInstanceIds],
    );
  }
}

export class GrpcAgents implements Agents {
  private readonly byNode = new Map<string, GrpcAgent>();
  private readonly usages = new UsageBook();

  constructor(endpoints: readonly AgentEndpoint[], o: GrpcAgentsOptions) {
    for (const e of endpoints) this.byNode.set(e.name, new GrpcAgent(e.name, e.address, o));
  }

  nodes(): string[] {
    return [...this.byNode.keys()];
  }

  get(node: string): AgentPort | undefined {
    return this.byNode.get(node);
  }

  health(): NodeHealth[] {
    return [...this.byNode.values()].map((a) => ({ ...a.health }));
  }

  heartbeat(h: HeartbeatFacts): void {
    const a = this.byNode.get(h.node);
    if (!a) return;
    Object.assign(a.health, {
      lastHeartbeatMs: h.atMs,
      cores: h.cores,
      memoryBytes: h.memoryBytes,
      load1: h.load1,
      instances: h.instances,
      vcpusUsed: h.vcpusUsed,
      memoryUsedBytes: h.memoryUsedBytes,
    });
    if (h.instanceMetrics) this.usages.record(h.node, h.atMs, h.instanceMetrics);
  }

  usage(instanceId: string): InstanceUsage | undefined {
    return this.usages.get(instanceId);
  }

  close(): void {
    for (const a of this.byNode.values()) a.client.close();
  }
}
