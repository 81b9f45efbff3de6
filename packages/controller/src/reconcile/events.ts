/**
 * NATS events as hints: instance state changes (`oarcloud.v1.instance.>`) update reported
 * states at once, node heartbeats (`oarcloud.v1.node.*`) feed node health. A plain
 * subscription on the subjects the OARCLOUD stream keeps is enough: after a restart the
 * first reconcile relist is the truth, so nothing has to be replayed from the stream.
 * It connects in the background, forever, with back-off: NATS down never blocks anything.
 */
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { InstanceEvent, NodeHeartbeat } from '@oarcloud/api';
import { errFields, subjects, type Logger } from '@oarcloud/common';
import type { Agents } from '../agents/agents.js';
import { reportedStateOf } from '../agents/grpc-pool.js';
import type { JobManager } from '../jobs/manager.js';

export interface EventConsumer {
  readonly connected: boolean;
  close(): Promise<void>;
}

export function startEventConsumer(o: { url: string; log: Logger; jobs: JobManager; agents: Agents }): EventConsumer {
  let nc: NatsConnection | undefined;
  let closed = false;
  let connected = false;
  const lastSeq = new Map<string, number>();

  const onInstance = (data: Uint8Array): void => {
    const ev = InstanceEvent.decode(data);
    // Per-node sequence: drop what is older than what we applied (a restarted agent starts over at 1).
    const prev = lastSeq.get(ev.node) ?? 0;
    if (ev.seq > 0 && ev.seq <= prev && prev - ev.seq < 1000) return;
    lastSeq.set(ev.node, ev.seq);
    o.jobs.report(ev.instanceId, reportedStateOf(ev.state), ev.reason);
  };
  const onNode = (data: Uint8Array): void => {
    const hb = NodeHeartbeat.decode(data);
    if (!hb.info) return;
    o.agents.heartbeat({
      node: hb.info.name,
      atMs: hb.atMs || Date.now(),
      cores: hb.info.cores,
      memoryBytes: hb.info.memoryBytes,
      load1: hb.load1,
      instances: hb.instances,
      vcpusUsed: hb.vcpusUsed,
      memoryUsedBytes: hb.memoryUsedBytes,
      instanceMetrics: hb.instanceMetrics,
    });
  };
  const consume = async (sub: Subscription, fn: (d: Uint8Array) => void): Promise<void> => {
    for await (const m of sub) {
      try {
        fn(m.data);
      } catch (err) {
        o.log.warn('malformed event', { subject: m.subject, ...errFields(err) });
      }
    }
  };

  const run = async (): Promise<void> => {
    let delay = 200;
    while (!closed) {
      try {
        nc = await connect({ servers: o.url, name: 'oarcloud-controller', maxReconnectAttempts: -1, reconnectTimeWait: 500, timeout: 2000 });
        connected = true;
        delay = 200;
        o.log.info('nats connected', { url: o.url });
        void consume(nc.subscribe(subjects.allInstances), onInstance);
        void consume(nc.subscribe(subjects.allNodes), onNode);
        for await (const s of nc.status()) {
          if (s.type === 'disconnect') connected = false;
          if (s.type === 'reconnect') connected = true;
        }
        await nc.closed();
      } catch (err) {
        if (!closed) o.log.warn('nats unavailable', { url: o.url, retryMs: delay, ...errFields(err) });
      }
      connected = false;
      if (closed) break;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  };
  void run();

  return {
    get connected() {
      return connected;
    },
    async close() {
      closed = true;
      await nc?.close().catch(() => undefined);
    },
  };
}
