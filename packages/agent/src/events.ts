/**
 * The agent's events on NATS: one InstanceEvent per state change, one NodeHeartbeat every
 * few seconds (DESIGN.md). Publishing never blocks or fails an operation.
 */
import { cpus, loadavg, release, totalmem } from 'node:os';
import si from 'systeminformation';
import { InstanceEvent, NodeHeartbeat, type InstanceMetrics } from '@oarcloud/api';
import { subjects, type EventPublisher } from '@oarcloud/common';
import type { InstanceEventSink, InstanceRecord } from './instances/model.js';
import { stateToProto } from './server/convert.js';

export class NatsInstanceEvents implements InstanceEventSink {
  private seq = 0;

  constructor(
    private readonly node: string,
    private readonly publisher: EventPublisher,
  ) {}

  instanceChanged(rec: InstanceRecord): void {
    const ev = InstanceEvent.encode({
      node: this.node,
      instanceId: rec.spec.id,
      jobId: rec.spec.jobId,
      state: stateToProto(rec.state),
      reason: rec.reason,
      atMs: rec.updatedAtMs,
      seq: ++this.seq,
    }).finish();
    this.publisher.publish(subjects.instance(this.node, rec.spec.id), ev);
  }
}

export interface HeartbeatSource {
  node: string;
  datapath: string;
  /** The node's VXLAN endpoint ('' : none). */
  underlayIp?: string;
  agentVersion: string;
  libvirtVersion: string;
  instances(): InstanceRecord[];
  /** CPU and memory use of a running instance from its init's pid (absent: none reported). */
  usage?: (initPid: number) => Promise<{ cpuSeconds: number; memoryBytes: number }>;
}

/** Usage of every running instance that has an init; one that cannot be read is left out. */
async function instanceMetrics(running: readonly InstanceRecord[], usage: HeartbeatSource['usage']): Promise<InstanceMetrics[]> {
  if (!usage) return [];
  const all = await Promise.all(
    running
      .filter((r) => r.initPid > 1)
      .map(async (r) => {
        const u = await usage(r.initPid).catch(() => undefined);
        return u && { instanceId: r.spec.id, cpuSeconds: u.cpuSeconds, memoryBytes: u.memoryBytes };
      }),
  );
  return all.filter((m) => m !== undefined);
}

/** Publishes a heartbeat now and every `intervalMs`; returns a stop function. */
export function startHeartbeat(src: HeartbeatSource, publisher: EventPublisher, intervalMs: number): () => void {
  const beat = async (): Promise<void> => {
    // `active` leaves out reclaimable caches: what instances and daemons really use.
    const mem = await si.mem().catch(() => undefined);
    const running = src.instances().filter((r) => r.state === 'running');
    const metrics = await instanceMetrics(running, src.usage);
    const msg = NodeHeartbeat.encode({
      info: {
        name: src.node,
        cores: cpus().length,
        memoryBytes: totalmem(),
        agentVersion: src.agentVersion,
        libvirtVersion: src.libvirtVersion,
        datapath: src.datapath,
        kernel: release(),
        underlayIp: src.underlayIp ?? '',
      },
      load1: loadavg()[0] ?? 0,
      memoryUsedBytes: mem?.active ?? 0,
      instances: running.length,
      vcpusUsed: running.reduce((n, r) => n + r.spec.vcpus, 0),
      atMs: Date.now(),
      instanceMetrics: metrics,
    }).finish();
    publisher.publish(subjects.node(src.node), msg);
  };
  void beat();
  const timer = setInterval(() => void beat(), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
