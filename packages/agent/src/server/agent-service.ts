/**
 * The gRPC edge of the agent: proto in, domain calls, proto out. Nothing else in the agent
 * sees generated types.
 */
import { cpus, release, totalmem } from 'node:os';
import type * as grpc from '@grpc/grpc-js';
import type { Readable } from 'node:stream';
import { AgentServiceService, type AgentServiceServer, type ConnectFrame, type ExportLayerChunk, type ExportLayerRequest } from '@oarcloud/api';
import { checkId, errFields, FailedPreconditionError, InvalidArgumentError, streamContext, toGrpcStatus, withUnimplemented, type GrpcServer, type Logger } from '@oarcloud/common';
import type { InstanceManager } from '../instances/manager.js';
import type { NodeNetworks } from '../network/node-networks.js';
import { openInstancePort } from './connect.js';
import { instanceToProto, specFromProto } from './convert.js';

export const AGENT_VERSION = '0.1.0';

export interface AgentServiceDeps {
  grpc: GrpcServer;
  manager: InstanceManager;
  log: Logger;
  datapath: string;
  /** This node's VXLAN endpoint ('' : none). */
  underlayIp?: string;
  network?: NodeNetworks;
  libvirtVersion: string;
  /** The last `maxBytes` of an instance's console output (instances/console.ts). */
  consoleLog(instanceId: string, maxBytes: number): Buffer;
  /** The instance's writable layer as a tar stream (images/export.ts); absent: UNIMPLEMENTED. */
  exportLayer?(instanceId: string): Promise<{ stream: Readable }>;
}

export function agentServiceImpl(d: AgentServiceDeps): AgentServiceServer {
  const { grpc, manager } = d;
  const node = manager.node;
  return withUnimplemented<AgentServiceServer>(AgentServiceService, {
    getNode: grpc.unary('GetNode', async () => ({
      name: node,
      cores: cpus().length,
      memoryBytes: totalmem(),
      agentVersion: AGENT_VERSION,
      libvirtVersion: d.libvirtVersion,
      datapath: d.datapath,
      kernel: release(),
      underlayIp: d.underlayIp ?? '',
    })),
    ensureNetwork: grpc.unary('EnsureNetwork', async (req) => {
      if (!d.network) throw new FailedPreconditionError('this agent has no network support');
      const gateway = req.gateway ? { address: req.gateway.address, mtu: req.gateway.mtu } : undefined;
      return d.network.ensureNetwork(req.networkId, req.vni, [...req.peers], { gateway, jobId: req.jobId || undefined });
    }),
    releaseNetwork: grpc.unary('ReleaseNetwork', async (req) => {
      if (!d.network) throw new FailedPreconditionError('this agent has no network support');
      await d.network.releaseNetwork(req.networkId);
      return {};
    }),
    createInstance: grpc.unary('CreateInstance', async (req) => instanceToProto(await manager.create(specFromProto(req.spec)), node)),
    startInstance: grpc.unary('StartInstance', async (req) => instanceToProto(await manager.start(req.id), node)),
    stopInstance: grpc.unary('StopInstance', async (req) => instanceToProto(await manager.stop(req.id), node)),
    destroyInstance: grpc.unary('DestroyInstance', async (req) => ({ existed: await manager.destroy(checkId(req.id, 'i', 'instance id')) })),
    getInstance: grpc.unary('GetInstance', async (req) => instanceToProto(manager.get(req.id), node)),
    listInstances: grpc.unary('ListInstances', async (req) => ({ instances: manager.list(req.jobId).map((r) => instanceToProto(r, node)) })),
    releaseJob: grpc.unary('ReleaseJob', async (req) => {
      const destroyedInstanceIds = await manager.releaseJob(req.jobId);
      // The job's networks here (NAT gateways above all), once its instances are gone.
      await d.network?.releaseJob(req.jobId);
      return { destroyedInstanceIds };
    }),
    getConsoleLog: grpc.unary('GetConsoleLog', async (req) => {
      manager.get(req.id);
      const max = Math.min(req.maxBytes || 64 * 1024, 1024 * 1024);
      return { data: d.consoleLog(req.id, max) };
    }),
    connect: (call) => relayConnect(call, d),
    ...(d.exportLayer ? { exportLayer: (call: grpc.ServerWritableStream<ExportLayerRequest, ExportLayerChunk>) => exportLayer(call, d) } : {}),
  });
}

/** Streams an instance's writable layer (ExportLayer). */
function exportLayer(call: grpc.ServerWritableStream<ExportLayerRequest, ExportLayerChunk>, d: AgentServiceDeps): void {
  const started = performance.now();
  const ctx = streamContext('ExportLayer', call);
  void (async () => {
    const id = checkId(call.request.instanceId, 'i', 'instance id');
    const { stream } = await d.exportLayer!(id);
    ctx.signal.addEventListener('abort', () => stream.destroy());
    for await (const chunk of stream) {
      if (!call.write({ data: chunk as Buffer })) await new Promise((r) => call.once('drain', r));
    }
    d.grpc.record('ExportLayer', 0, started);
    call.end();
  })().catch((err: unknown) => {
    d.log.warn('layer export failed', { instanceId: call.request.instanceId, ...errFields(err) });
    const st = toGrpcStatus(err);
    d.grpc.record('ExportLayer', st.code!, started);
    call.emit('error', st);
  });
}

/** Relays a Connect stream to an instance port: first frame `open`, then `data` both ways. */
function relayConnect(call: grpc.ServerDuplexStream<ConnectFrame, ConnectFrame>, d: AgentServiceDeps): void {
  const started = performance.now();
  const ctx = streamContext('Connect', call);
  let conn: ReturnType<typeof openInstancePort> | undefined;
  const fail = (err: unknown): void => {
    conn?.kill();
    const st = toGrpcStatus(err);
    d.grpc.record('Connect', st.code!, started);
    call.emit('error', st);
  };
  ctx.signal.addEventListener('abort', () => conn?.kill());
  call.on('data', (frame: ConnectFrame) => {
    try {
      if (!conn) {
        if (frame.frame?.$case !== 'open') throw new InvalidArgumentError('the first frame must be open');
        const { instanceId, port } = frame.frame.value;
        const rec = d.manager.get(instanceId);
        conn = openInstancePort(rec.initPid, port);
        conn.output.on('data', (chunk: Buffer) => {
          if (!call.write({ frame: { $case: 'data', value: chunk } })) {
            conn!.output.pause();
            call.once('drain', () => conn?.output.resume());
          }
        });
        conn.closed.then(() => {
          d.grpc.record('Connect', 0, started);
          call.end();
        });
      } else if (frame.frame?.$case === 'data') {
        conn.input.write(frame.frame.value);
      }
    } catch (err) {
      d.log.debug('connect refused', errFields(err));
      fail(err);
    }
  });
  call.on('end', () => conn?.input.end());
  call.on('error', () => conn?.kill());
}
