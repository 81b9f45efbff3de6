/**
 * InstanceService: run instances into a running job of the caller, look them up by id or
 * name, stop/start/delete them and read their console through their agent.
 */
import type * as grpc from '@grpc/grpc-js';
import { InstanceServiceService, type ConnectFrame, type InstanceServiceServer } from '@oarcloud/api';
import { errFields, FailedPreconditionError, InvalidArgumentError, isId, NotFoundError, streamContext, toGrpcStatus, withUnimplemented } from '@oarcloud/common';
import type { Caller, InstanceRecord } from '../domain.js';
import { checkJobId, instanceToProto, launchFromProto } from './convert.js';
import type { ServiceDeps } from './deps.js';
import { visibleJob } from './job-service.js';

/** An instance the caller may see, by id or by name among their live instances. */
export function visibleInstance(d: ServiceDeps, caller: Caller, idOrName: string): InstanceRecord {
  if (!idOrName) throw new InvalidArgumentError('id (instance id or name) is required');
  const mine = (i: InstanceRecord | undefined): i is InstanceRecord => !!i && (i.owner === caller.name || caller.role === 'admin');
  if (isId(idOrName, 'i')) {
    const i = d.store.getInstance(idOrName);
    if (mine(i)) return i;
  } else {
    const found = d.store
      .listInstances(caller.role === 'admin' ? { liveOnly: true } : { owner: caller.name, liveOnly: true })
      .filter((i) => i.name === idOrName && i.desired !== 'deleted');
    if (found.length === 1) return found[0]!;
    if (found.length > 1) throw new InvalidArgumentError(`${found.length} instances are named ${idOrName}: use the id`);
  }
  throw new NotFoundError(`no instance ${idOrName}`);
}

export function instanceServiceImpl(d: ServiceDeps): InstanceServiceServer {
  const out = (i: InstanceRecord) => instanceToProto(i, d.store.getJob(i.jobId), d.networks.attachmentsOf(i.id), d.agents.usage(i.id));
  return withUnimplemented<InstanceServiceServer>(InstanceServiceService, {
    runInstances: d.grpc.unary('RunInstances', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      const jobId = checkJobId(req.jobId);
      const spec = launchFromProto(req.spec);
      if (req.networks.length > 16) throw new InvalidArgumentError('at most 16 networks');
      spec.networks = [...req.networks];
      const key = req.idempotencyKey ? `run:${jobId}:${req.idempotencyKey}` : '';
      if (key) {
        const prev = d.store.getIdempotent(caller.name, key);
        if (prev) return { instances: (JSON.parse(prev) as string[]).map((id) => out(d.store.getInstance(id)!)) };
      }
      const job = await visibleJob(d, caller, jobId);
      const list = await d.jobs.runInstances(job.owner, job.id, spec);
      if (key) d.store.putIdempotent(caller.name, key, JSON.stringify(list.map((i) => i.id)), d.now());
      return { instances: list.map(out) };
    }),
    getInstance: d.grpc.unary('GetInstance', async (req, ctx) => out(visibleInstance(d, d.auth.caller(ctx), req.id))),
    listInstances: d.grpc.unary('ListInstances', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      const all = req.allUsers && caller.role === 'admin';
      if (req.jobId !== 0) await visibleJob(d, caller, checkJobId(req.jobId));
      const list = d.store.listInstances({
        ...(all || (caller.role === 'admin' && req.jobId) ? {} : { owner: caller.name }),
        ...(req.jobId ? { jobId: req.jobId } : {}),
        liveOnly: true,
      });
      return { instances: list.map(out) };
    }),
    stopInstance: d.grpc.unary('StopInstance', async (req, ctx) => out(await d.jobs.instanceAction(visibleInstance(d, d.auth.caller(ctx), req.id), 'stop'))),
    startInstance: d.grpc.unary('StartInstance', async (req, ctx) => out(await d.jobs.instanceAction(visibleInstance(d, d.auth.caller(ctx), req.id), 'start'))),
    getConsoleLog: d.grpc.unary('GetConsoleLog', async (req, ctx) => {
      const inst = visibleInstance(d, d.auth.caller(ctx), req.id);
      const maxBytes = Math.min(req.maxBytes || 64 * 1024, 1024 * 1024);
      // Not placed yet: nothing printed, which is not an error.
      if (!inst.node) return { data: Buffer.alloc(0) };
      const agent = d.agents.get(inst.node);
      if (!agent) throw new FailedPreconditionError(`no agent is configured for node ${inst.node}`);
      // An instance its agent no longer has (deleted, being re-created) printed nothing there.
      return { data: await agent.getConsoleLog(inst.id, maxBytes).catch((err: unknown) => {
        if (err instanceof NotFoundError) return Buffer.alloc(0);
        throw err;
      }) };
    }),
    connect: (call) => relayConnect(call, d),
    deleteInstance: d.grpc.unary('DeleteInstance', async (req, ctx) => {
      await d.jobs.instanceAction(visibleInstance(d, d.auth.caller(ctx), req.id), 'delete');
      return {};
    }),
  });
}

/**
 * Connect: the first frame `open{instance_id, port}` is authorised by the caller's
 * ownership of the instance (another user's is NOT_FOUND), then the stream is relayed to
 * the agent of the instance's node, bytes both ways with back-pressure; the client's
 * half-close half-closes the agent stream; agent errors come back as their status.
 */
function relayConnect(call: grpc.ServerDuplexStream<ConnectFrame, ConnectFrame>, d: ServiceDeps): void {
  const started = performance.now();
  const ctx = streamContext('Connect', call);
  let upstream: ReturnType<NonNullable<ReturnType<ServiceDeps['agents']['get']>>['connect']> | undefined;
  let done = false;
  const finish = (err?: unknown): void => {
    if (done) return;
    done = true;
    if (err) {
      const st = toGrpcStatus(err);
      d.grpc.record('Connect', st.code!, started);
      call.emit('error', st);
    } else {
      d.grpc.record('Connect', 0, started);
      call.end();
    }
    upstream?.destroy();
  };
  ctx.signal.addEventListener('abort', () => {
    done = true;
    upstream?.destroy();
  });
  call.on('data', (frame: ConnectFrame) => {
    try {
      if (!upstream) {
        if (frame.frame?.$case !== 'open') throw new InvalidArgumentError('the first frame must be open');
        const { instanceId, port } = frame.frame.value;
        if (!Number.isInteger(port) || port < 1 || port > 65535) throw new InvalidArgumentError(`port must be 1-65535, got ${port}`);
        const inst = visibleInstance(d, d.auth.caller(ctx), instanceId);
        if (inst.desired === 'deleted') throw new NotFoundError(`no instance ${instanceId}`);
        const agent = d.agents.get(inst.node);
        if (!agent) throw new FailedPreconditionError(`no agent is configured for node ${inst.node}`);
        const up = agent.connect(inst.id, port);
        upstream = up;
        up.on('data', (chunk: Buffer) => {
          if (!call.write({ frame: { $case: 'data', value: chunk } })) {
            up.pause();
            call.once('drain', () => up.resume());
          }
        });
        up.on('end', () => finish());
        up.on('error', (err) => {
          d.log.debug('connect relay ended by the agent', errFields(err));
          finish(err);
        });
      } else if (frame.frame?.$case === 'data') {
        if (!upstream.write(frame.frame.value)) {
          call.pause();
          upstream.once('drain', () => call.resume());
        }
      }
    } catch (err) {
      d.log.debug('connect refused', errFields(err));
      finish(err);
    }
  });
  call.on('end', () => upstream?.end());
  call.on('error', () => upstream?.destroy());
}
