/**
 * HookService: what OAR's hooks call. JobEvent queues the work and returns at once (a
 * server hook must never wait); WaitJobReady waits, bounded, for the job's instances.
 */
import { HookKind, HookServiceService, type HookServiceServer } from '@oarcloud/api';
import { errFields, InvalidArgumentError, withUnimplemented } from '@oarcloud/common';
import { checkJobId } from './convert.js';
import type { ServiceDeps } from './deps.js';

export const WAIT_CAP_MS = 60_000;

const KIND_NAME: Record<number, string> = {
  [HookKind.HOOK_KIND_SERVER_PROLOGUE]: 'server-prologue',
  [HookKind.HOOK_KIND_SERVER_EPILOGUE]: 'server-epilogue',
  [HookKind.HOOK_KIND_PROLOGUE]: 'prologue',
  [HookKind.HOOK_KIND_EPILOGUE]: 'epilogue',
};

export function hookServiceImpl(d: ServiceDeps): HookServiceServer {
  return withUnimplemented<HookServiceServer>(HookServiceService, {
    jobEvent: d.grpc.unary('JobEvent', async (req, ctx) => {
      d.auth.hook(ctx);
      const jobId = checkJobId(req.jobId);
      const kind = KIND_NAME[req.kind];
      if (!kind) throw new InvalidArgumentError('kind is required (server-prologue, server-epilogue, prologue, epilogue)');
      d.log.info('hook', { kind, jobId, node: req.node });
      const work =
        req.kind === HookKind.HOOK_KIND_SERVER_PROLOGUE || req.kind === HookKind.HOOK_KIND_PROLOGUE ? d.jobs.sync(jobId) : d.jobs.end(jobId, `${kind} hook`);
      void work.catch((err: unknown) => d.log.warn('hook work failed (the reconcile loop retries)', { kind, jobId, ...errFields(err) }));
      return {};
    }),
    waitJobReady: d.grpc.unary('WaitJobReady', async (req, ctx) => {
      d.auth.hook(ctx);
      const jobId = checkJobId(req.jobId);
      const timeoutMs = Math.min(req.timeoutMs || 30_000, WAIT_CAP_MS);
      const t0 = performance.now();
      const r = await d.jobs.waitReady(jobId, timeoutMs, ctx.signal);
      d.log.info('job ready wait', { jobId, ...r, ms: Math.round(performance.now() - t0) });
      return r;
    }),
  });
}
