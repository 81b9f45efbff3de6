/**
 * JobService: Reserve (launch spec + oarsub as the caller), GetJob, ListJobs, Release (oardel).
 */
import { JobServiceService, type Job, type JobServiceServer } from '@oarcloud/api';
import { FailedPreconditionError, newId, NotFoundError, withUnimplemented } from '@oarcloud/common';
import type { Caller, JobRecord } from '../domain.js';
import { placeInstances } from '../placement/placement.js';
import { checkJobId, jobToProto, oarWalltime, reserveFromProto } from './convert.js';
import type { ServiceDeps } from './deps.js';

/** A job the caller may see (their own, or any for an admin); NotFoundError otherwise. */
export async function visibleJob(d: ServiceDeps, caller: Caller, id: number): Promise<JobRecord> {
  let job = d.store.getJob(id);
  // A live cloud job submitted with plain oarsub that no event brought yet: look at OAR.
  if (!job) {
    await d.jobs.sync(id, { liveOnly: true }).catch(() => undefined);
    job = d.store.getJob(id);
  }
  if (!job || (job.owner !== caller.name && caller.role !== 'admin')) throw new NotFoundError(`no job ${id}`);
  return job;
}

export function jobOut(d: ServiceDeps, job: JobRecord): Job {
  return jobToProto(job, d.store.listInstances({ jobId: job.id }).filter((i) => i.desired !== 'deleted').length);
}

export function jobServiceImpl(d: ServiceDeps): JobServiceServer {
  return withUnimplemented<JobServiceServer>(JobServiceService, {
    reserve: d.grpc.unary('Reserve', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      const r = reserveFromProto(req);
      if (r.idempotencyKey) {
        const prev = d.store.getIdempotent(caller.name, `reserve:${r.idempotencyKey}`);
        if (prev) return jobOut(d, await visibleJob(d, caller, (JSON.parse(prev) as { jobId: number }).jobId));
      }
      let specId = '';
      if (r.spec) {
        // Known core counts: refuse at once what can never fit (whole nodes: checked at start).
        if (r.coresPerNode > 0) {
          placeInstances(
            Array.from({ length: r.nodes }, (_, i) => ({ node: `host-${i}`, cores: r.coresPerNode })),
            [],
            { count: r.spec.count, vcpus: r.spec.vcpus },
          );
        }
        if (!d.images.resolve(r.spec.image, caller.name)) throw new NotFoundError(`image ${r.spec.image} is unknown`);
        const volumes = r.spec.volumes?.length ? d.volumes.resolveMounts(caller.name, r.spec.volumes) : [];
        specId = newId('s');
        // Stored before oarsub: the job may start before oarsub returns.
        d.store.putSpec({ id: specId, owner: caller.name, createdAtMs: d.now(), ...r.spec, volumes });
      }
      const resources = `host=${r.nodes}${r.coresPerNode > 0 ? `/core=${r.coresPerNode}` : ''},walltime=${oarWalltime(r.walltimeS)}`;
      const jobId = await d.oarCommands.submit({
        user: caller.name,
        types: [specId ? `cloud=${specId}` : 'cloud'],
        resources,
        command: `sleep ${r.walltimeS}`,
      });
      d.log.info('job reserved', { jobId, owner: caller.name, specId, resources });
      if (r.idempotencyKey) d.store.putIdempotent(caller.name, `reserve:${r.idempotencyKey}`, JSON.stringify({ jobId }), d.now());
      return jobOut(d, await d.jobs.recordSubmitted(jobId, caller.name, specId, r.walltimeS));
    }),
    getJob: d.grpc.unary('GetJob', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      return jobOut(d, await visibleJob(d, caller, checkJobId(req.id)));
    }),
    listJobs: d.grpc.unary('ListJobs', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      const all = req.allUsers && caller.role === 'admin';
      return { jobs: d.store.listJobs(all ? {} : { owner: caller.name }).map((j) => jobOut(d, j)) };
    }),
    release: d.grpc.unary('Release', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      const job = await visibleJob(d, caller, checkJobId(req.id));
      if (job.state !== 'ended') {
        try {
          await d.oarCommands.delete(job.owner, job.id);
        } catch (err) {
          // oardel refuses a job that just ended: that is a success for us.
          await d.jobs.sync(job.id).catch(() => undefined);
          if (d.store.getJob(job.id)?.state !== 'ended') throw new FailedPreconditionError(`job ${job.id} could not be released`, { cause: err });
        }
        d.log.info('job released', { jobId: job.id, by: caller.name });
      }
      return jobOut(d, d.store.getJob(job.id)!);
    }),
  });
}
