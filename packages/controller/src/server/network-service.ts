/**
 * NetworkService: the caller's job networks. Create adds a network to a running job of
 * the caller (with `nat`: and its gateway, before it answers); List shows a job's networks;
 * Delete removes one with no instance on it.
 * Another user's job or network is NOT_FOUND.
 */
import { NetworkServiceService, type Network as PbNetwork, type NetworkServiceServer } from '@oarcloud/api';
import { FailedPreconditionError, InvalidArgumentError, isId, NotFoundError, withUnimplemented } from '@oarcloud/common';
import type { Caller, NetworkRecord } from '../domain.js';
import { checkJobId } from './convert.js';
import type { ServiceDeps } from './deps.js';
import { visibleJob } from './job-service.js';

/** `gatewayNode`: the node of the NAT gateway ('' without NAT), from NetworkManager.gatewayNode. */
export function networkToProto(n: NetworkRecord, gatewayNode = ''): PbNetwork {
  return { id: n.id, name: n.name, jobId: n.jobId, owner: n.owner, subnet: n.subnet, gateway: n.gateway, vni: n.vni, mtu: n.mtu, nat: n.nat, gatewayNode };
}

function visibleNetwork(d: ServiceDeps, caller: Caller, id: string): NetworkRecord {
  if (!isId(id, 'n')) throw new InvalidArgumentError('id must be a network id (n-…)');
  const n = d.store.getNetwork(id);
  if (!n || (n.owner !== caller.name && caller.role !== 'admin')) throw new NotFoundError(`no network ${id}`);
  return n;
}

export function networkServiceImpl(d: ServiceDeps): NetworkServiceServer {
  const out = (n: NetworkRecord): PbNetwork => networkToProto(n, d.networks.gatewayNode(n) ?? '');
  return withUnimplemented<NetworkServiceServer>(NetworkServiceService, {
    createNetwork: d.grpc.unary('CreateNetwork', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      const job = await visibleJob(d, caller, checkJobId(req.jobId));
      const key = req.idempotencyKey ? `net:${job.id}:${req.idempotencyKey}` : '';
      if (key) {
        const prev = d.store.getIdempotent(caller.name, key);
        const n = prev ? d.store.getNetwork(prev) : undefined;
        if (n) return out(n);
      }
      if (job.state !== 'running' || job.hosts.length === 0) throw new FailedPreconditionError(`job ${job.id} is not running`);
      const n = await d.networks.create(job, req.name, req.subnet || undefined, req.nat);
      if (key) d.store.putIdempotent(caller.name, key, n.id, d.now());
      return out(n);
    }),
    listNetworks: d.grpc.unary('ListNetworks', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      if (req.jobId) {
        const job = await visibleJob(d, caller, checkJobId(req.jobId));
        return { networks: d.store.listNetworks({ jobId: job.id }).map(out) };
      }
      return { networks: d.store.listNetworks().filter((n) => n.owner === caller.name || caller.role === 'admin').map(out) };
    }),
    deleteNetwork: d.grpc.unary('DeleteNetwork', async (req, ctx) => {
      const n = visibleNetwork(d, d.auth.caller(ctx), req.id);
      await d.networks.delete(n, d.store.getJob(n.jobId));
      return {};
    }),
  });
}
