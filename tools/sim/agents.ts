/**
 * A farm of light simulated node agents in one process: each node is a real grpc-js server
 * on its own 127.0.0.1 port speaking AgentService (the implementation is typed by the
 * generated `AgentServiceServer`, so it cannot drift from the contract), keeping its
 * instances in a map, and publishing real InstanceEvents and NodeHeartbeats on NATS the way
 * the agent does (packages/agent/src/events.ts), on one shared connection.
 *
 * Lighter than @oarcloud/testkit's fake agent on purpose: no health/reflection services and
 * no call log per node, so thousands of them fit in one process.
 */
import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { AgentServiceService, InstanceEvent, InstanceState, NodeHeartbeat, type AgentServiceServer, type Instance } from '@oarcloud/api';
import { AlreadyExistsError, ensureEventStream, NotFoundError, subjects, toGrpcStatus, withUnimplemented } from '@oarcloud/common';

export interface SimNode {
  name: string;
  port: number;
  underlayIp: string;
  instances: Map<string, Instance>;
  seq: number;
}

export interface SimFarmStats {
  calls: Record<string, number>;
  events: number;
  heartbeats: number;
  instances: number;
}

export interface SimFarm {
  readonly nodes: SimNode[];
  stats(): SimFarmStats;
  /**
   * Publishes `count` instance events at about `perSecond`, round-robin over the running
   * instances of every node, each a real change (the reason carries a unique token).
   * Returns token → wall-clock publish time (ms, sub-ms precision).
   */
  probe(count: number, perSecond: number): Promise<Record<string, number>>;
  close(): Promise<void>;
}

/** Wall-clock time with sub-millisecond precision, comparable across processes on one host. */
export function wallMs(): number {
  return performance.timeOrigin + performance.now();
}

function unary<Req, Res>(fn: (req: Req) => Res | Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, cb) => {
    Promise.resolve()
      .then(() => fn(call.request))
      .then(
        (res) => cb(null, res),
        (err: unknown) => cb(toGrpcStatus(err)),
      );
  };
}

export async function startSimFarm(o: { names: string[]; natsUrl: string; heartbeatMs: number; firstIndex?: number }): Promise<SimFarm> {
  const nc: NatsConnection = await connect({ servers: o.natsUrl, name: 'oarcloud-sim-agents' });
  // As the real agent does: the JetStream stream keeps every event (its cost is part of the picture).
  await ensureEventStream(nc);
  const calls: Record<string, number> = {};
  const count = (m: string): void => {
    calls[m] = (calls[m] ?? 0) + 1;
  };
  let events = 0;
  let heartbeats = 0;
  const servers: grpc.Server[] = [];
  const nodes: SimNode[] = [];

  const publish = (n: SimNode, inst: Instance): void => {
    const ev = InstanceEvent.encode({
      node: n.name,
      instanceId: inst.spec!.id,
      jobId: inst.spec!.jobId,
      state: inst.state,
      reason: inst.reason,
      atMs: Date.now(),
      seq: ++n.seq,
    }).finish();
    nc.publish(subjects.instance(n.name, inst.spec!.id), ev);
    events++;
  };

  const implFor = (n: SimNode): AgentServiceServer => {
    const get = (id: string): Instance => {
      const i = n.instances.get(id);
      if (!i) throw new NotFoundError(`no instance ${id} on ${n.name}`);
      return i;
    };
    const impl: Partial<AgentServiceServer> = {
      getNode: unary(() => {
        count('GetNode');
        return { name: n.name, cores: 64, memoryBytes: 256 * 2 ** 30, agentVersion: 'sim', libvirtVersion: '', datapath: 'system', kernel: '', underlayIp: n.underlayIp };
      }),
      createInstance: unary((req) => {
        count('CreateInstance');
        const spec = req.spec!;
        const cur = n.instances.get(spec.id);
        if (cur) {
          if (cur.spec?.jobId !== spec.jobId || cur.spec?.name !== spec.name) throw new AlreadyExistsError(`instance ${spec.id} exists with another spec`);
          return cur;
        }
        const now = Date.now();
        const inst: Instance = { spec, node: n.name, state: InstanceState.INSTANCE_STATE_CREATING, reason: '', createdAtMs: now, updatedAtMs: now, initPid: 0, usage: undefined };
        publish(n, inst);
        inst.state = InstanceState.INSTANCE_STATE_RUNNING;
        inst.initPid = 1000 + n.instances.size;
        n.instances.set(spec.id, inst);
        publish(n, inst);
        return inst;
      }),
      startInstance: unary((req) => {
        count('StartInstance');
        const i = get(req.id);
        i.state = InstanceState.INSTANCE_STATE_RUNNING;
        publish(n, i);
        return i;
      }),
      stopInstance: unary((req) => {
        count('StopInstance');
        const i = get(req.id);
        i.state = InstanceState.INSTANCE_STATE_STOPPED;
        publish(n, i);
        return i;
      }),
      destroyInstance: unary((req) => {
        count('DestroyInstance');
        const i = n.instances.get(req.id);
        if (i) {
          n.instances.delete(req.id);
          publish(n, { ...i, state: InstanceState.INSTANCE_STATE_DELETED });
        }
        return { existed: !!i };
      }),
      getInstance: unary((req) => {
        count('GetInstance');
        return get(req.id);
      }),
      listInstances: unary((req) => {
        count('ListInstances');
        return { instances: [...n.instances.values()].filter((i) => !req.jobId || i.spec?.jobId === req.jobId) };
      }),
      releaseJob: unary((req) => {
        count('ReleaseJob');
        const ids: string[] = [];
        for (const [id, i] of n.instances) {
          if (i.spec?.jobId !== req.jobId) continue;
          n.instances.delete(id);
          publish(n, { ...i, state: InstanceState.INSTANCE_STATE_DELETED });
          ids.push(id);
        }
        return { destroyedInstanceIds: ids };
      }),
      ensureNetwork: unary((req) => {
        count('EnsureNetwork');
        return { vlan: 1, tunnels: req.peers.length, gateway: !!req.gateway };
      }),
      releaseNetwork: unary(() => {
        count('ReleaseNetwork');
        return {};
      }),
    };
    return withUnimplemented<AgentServiceServer>(AgentServiceService, impl);
  };

  const first = o.firstIndex ?? 0;
  for (const [k, name] of o.names.entries()) {
    const i = first + k + 1;
    const n: SimNode = { name, port: 0, underlayIp: `10.${200 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, instances: new Map(), seq: 0 };
    const server = new grpc.Server();
    server.addService(AgentServiceService, implFor(n));
    n.port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    servers.push(server);
    nodes.push(n);
  }

  // Heartbeats spread over the interval (a tick every 100 ms beats the nodes due then), as
  // independent agents would.
  const ticks = Math.max(1, Math.round(o.heartbeatMs / 100));
  let tick = 0;
  const hb = setInterval(() => {
    const t = tick++ % ticks;
    for (let i = t; i < nodes.length; i += ticks) {
      const n = nodes[i]!;
      const running = [...n.instances.values()].filter((x) => x.state === InstanceState.INSTANCE_STATE_RUNNING);
      const msg = NodeHeartbeat.encode({
        info: { name: n.name, cores: 64, memoryBytes: 256 * 2 ** 30, agentVersion: 'sim', libvirtVersion: '', datapath: 'system', kernel: '', underlayIp: n.underlayIp },
        load1: 0.5,
        memoryUsedBytes: running.length * 64 * 2 ** 20,
        instances: running.length,
        vcpusUsed: running.reduce((s, x) => s + (x.spec?.vcpus ?? 0), 0),
        atMs: Date.now(),
        instanceMetrics: [],
      }).finish();
      nc.publish(subjects.node(n.name), msg);
      heartbeats++;
    }
  }, 100);

  let probeSeq = 0;
  return {
    nodes,
    stats: () => ({ calls: { ...calls }, events, heartbeats, instances: nodes.reduce((s, n) => s + n.instances.size, 0) }),
    async probe(total, perSecond) {
      const targets: Array<[SimNode, Instance]> = [];
      // Interleave nodes so consecutive probes hit different nodes.
      const lists = nodes.map((n) => [...n.instances.values()].filter((i) => i.state === InstanceState.INSTANCE_STATE_RUNNING).map((i) => [n, i] as [SimNode, Instance]));
      for (let k = 0; targets.length < lists.reduce((s, l) => s + l.length, 0); k++) for (const l of lists) if (l[k]) targets.push(l[k]!);
      if (targets.length === 0) throw new Error('no running instance to probe');
      const sent: Record<string, number> = {};
      const batch = Math.max(1, Math.round(perSecond / 100));
      const t0 = performance.now();
      for (let k = 0; k < total; k++) {
        const [n, inst] = targets[k % targets.length]!;
        const token = `probe-${++probeSeq}`;
        inst.reason = token;
        inst.updatedAtMs = Date.now();
        sent[token] = wallMs();
        publish(n, inst);
        // Pace: 10 ms slices of `batch` events.
        if ((k + 1) % batch === 0) {
          const due = t0 + ((k + 1) / perSecond) * 1000;
          const wait = due - performance.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        }
      }
      await nc.flush();
      return sent;
    },
    async close() {
      clearInterval(hb);
      await nc.drain().catch(() => undefined);
      await Promise.all(servers.map((s) => new Promise<void>((r) => s.tryShutdown(() => r()))));
    },
  };
}
