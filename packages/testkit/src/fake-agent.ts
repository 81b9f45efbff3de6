/**
 * A fake node agent: a real gRPC server speaking AgentService (its implementation type is
 * the generated `AgentServiceServer`, so it cannot drift from the contract), keeping
 * instances in a map, recording every call, and taking injected errors and delays.
 * For controller tests: `const a = await startFakeAgent('node-1')` then `a.address`.
 */
import {
  AgentServiceService,
  InstanceState,
  type AgentServiceServer,
  type Instance,
  type InstanceSpec,
} from '@oarcloud/api';
import { GrpcServer, nullLogger, NotFoundError, AlreadyExistsError, withUnimplemented, type OarcloudError } from '@oarcloud/common';

export type FakeAgentMethod =
  | 'CreateInstance'
  | 'DestroyInstance'
  | 'StartInstance'
  | 'StopInstance'
  | 'ListInstances'
  | 'ReleaseJob'
  | 'GetInstance'
  | 'GetNode'
  | 'EnsureNetwork'
  | 'ReleaseNetwork';

export interface FakeAgentCall {
  method: FakeAgentMethod;
  /** Instance id or job id the call was about ('' for lists). */
  target: string;
  atMs: number;
}

export interface FakeAgentNetwork {
  vni: number;
  peers: string[];
  gateway?: { address: string; mtu: number };
  jobId?: number;
}

export interface FakeAgent {
  readonly node: string;
  readonly address: string;
  readonly port: number;
  /** Instances by id (live state; tests may edit it to simulate drift). */
  readonly instances: Map<string, Instance>;
  readonly calls: FakeAgentCall[];
  /**
   * Networks declared by EnsureNetwork: id → { vni, peers, and on the gateway node of a NAT
   * network its gateway and job } (removed by ReleaseNetwork).
   */
  readonly networks: Map<string, FakeAgentNetwork>;
  /** What GetNode answers as the underlay address. */
  underlayIp: string;
  /** The next `times` calls of `method` fail with `err`. */
  failNext(method: FakeAgentMethod, err: OarcloudError, times?: number): void;
  /** Every CreateInstance waits this long before answering. */
  createDelayMs: number;
  callsOf(method: FakeAgentMethod): FakeAgentCall[];
  close(): Promise<void>;
}

export async function startFakeAgent(node: string, opts: { listen?: string } = {}): Promise<FakeAgent> {
  const grpc = new GrpcServer({ log: nullLogger, services: ['oarcloud.v1.AgentService'] });
  const instances = new Map<string, Instance>();
  const calls: FakeAgentCall[] = [];
  const failures = new Map<FakeAgentMethod, { err: OarcloudError; times: number }>();
  const state = { createDelayMs: 0, underlayIp: '' };
  const networks = new Map<string, FakeAgentNetwork>();

  const enter = (method: FakeAgentMethod, target: string): void => {
    calls.push({ method, target, atMs: Date.now() });
    const f = failures.get(method);
    if (f && f.times > 0) {
      f.times--;
      throw f.err;
    }
  };
  const get = (id: string): Instance => {
    const i = instances.get(id);
    if (!i) throw new NotFoundError(`no instance ${id} on ${node}`);
    return i;
  };
  const setState = (i: Instance, s: InstanceState): Instance => {
    i.state = s;
    i.updatedAtMs = Date.now();
    return i;
  };
  const same = (a: InstanceSpec | undefined, b: InstanceSpec | undefined): boolean => JSON.stringify(a) === JSON.stringify(b);

  const impl: Partial<AgentServiceServer> = {
    getNode: grpc.unary('GetNode', async () => {
      enter('GetNode', '');
      return { name: node, cores: 2, memoryBytes: 4 << 30, agentVersion: 'fake', libvirtVersion: '', datapath: 'netdev', kernel: '', underlayIp: state.underlayIp };
    }),
    ensureNetwork: grpc.unary('EnsureNetwork', async (req) => {
      enter('EnsureNetwork', req.networkId);
      networks.set(req.networkId, {
        vni: req.vni,
        peers: [...req.peers],
        ...(req.gateway ? { gateway: { address: req.gateway.address, mtu: req.gateway.mtu } } : {}),
        ...(req.gateway && req.jobId ? { jobId: req.jobId } : {}),
      });
      return { vlan: 1, tunnels: req.peers.length, gateway: !!req.gateway };
    }),
    releaseNetwork: grpc.unary('ReleaseNetwork', async (req) => {
      enter('ReleaseNetwork', req.networkId);
      networks.delete(req.networkId);
      return {};
    }),
    createInstance: grpc.unary('CreateInstance', async (req) => {
      const spec = req.spec!;
      enter('CreateInstance', spec.id);
      if (state.createDelayMs > 0) await new Promise((r) => setTimeout(r, state.createDelayMs));
      const cur = instances.get(spec.id);
      if (cur) {
        if (!same(cur.spec, spec)) throw new AlreadyExistsError(`instance ${spec.id} exists with another spec`);
        return cur;
      }
      const now = Date.now();
      const inst: Instance = { spec, node, state: InstanceState.INSTANCE_STATE_RUNNING, reason: '', createdAtMs: now, updatedAtMs: now, initPid: 4242, usage: undefined };
      instances.set(spec.id, inst);
      return inst;
    }),
    startInstance: grpc.unary('StartInstance', async (req) => {
      enter('StartInstance', req.id);
      return setState(get(req.id), InstanceState.INSTANCE_STATE_RUNNING);
    }),
    stopInstance: grpc.unary('StopInstance', async (req) => {
      enter('StopInstance', req.id);
      return setState(get(req.id), InstanceState.INSTANCE_STATE_STOPPED);
    }),
    destroyInstance: grpc.unary('DestroyInstance', async (req) => {
      enter('DestroyInstance', req.id);
      return { existed: instances.delete(req.id) };
    }),
    getInstance: grpc.unary('GetInstance', async (req) => {
      enter('GetInstance', req.id);
      return get(req.id);
    }),
    listInstances: grpc.unary('ListInstances', async (req) => {
      enter('ListInstances', req.jobId ? String(req.jobId) : '');
      return { instances: [...instances.values()].filter((i) => !req.jobId || i.spec?.jobId === req.jobId) };
    }),
    releaseJob: grpc.unary('ReleaseJob', async (req) => {
      enter('ReleaseJob', String(req.jobId));
      const ids = [...instances.values()].filter((i) => i.spec?.jobId === req.jobId).map((i) => i.spec!.id);
      for (const id of ids) instances.delete(id);
      return { destroyedInstanceIds: ids };
    }),
  };
  grpc.addService(AgentServiceService, withUnimplemented<AgentServiceServer>(AgentServiceService, impl));
  const port = await grpc.listen(opts.listen ?? '127.0.0.1:0');
  grpc.setServing(true);

  return {
    node,
    port,
    address: `127.0.0.1:${port}`,
    instances,
    calls,
    networks,
    get underlayIp() {
      return state.underlayIp;
    },
    set underlayIp(v: string) {
      state.underlayIp = v;
    },
    get createDelayMs() {
      return state.createDelayMs;
    },
    set createDelayMs(v: number) {
      state.createDelayMs = v;
    },
    failNext(method, err, times = 1) {
      failures.set(method, { err, times });
    },
    callsOf(method) {
      return calls.filter((c) => c.method === method);
    },
    close: () => grpc.close(100),
  };
}
