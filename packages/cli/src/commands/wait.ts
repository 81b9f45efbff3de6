/**
 * `--wait`: polls the controller until a job runs and its instances are RUNNING, with
 * progress and elapsed time on stderr (one updating line on a TTY, a line per change
 * otherwise).
 */
import { DeadlineExceededError, FailedPreconditionError } from '@oarcloud/common';
import type { Ctx } from '../context.js';
import { duration } from '../output.js';
import { instanceView, jobView, type InstanceView, type JobView } from '../views.js';

export interface WaitResult {
  job: JobView;
  instances: InstanceView[];
}

export interface WaitOptions {
  jobId: number;
  /** Instances that must be RUNNING (ids); empty: every live instance of the job, at least `count`. */
  ids?: readonly string[];
  count: number;
  timeoutMs: number;
  intervalMs?: number;
}

export async function waitForJob(ctx: Ctx, o: WaitOptions): Promise<WaitResult> {
  const api = ctx.api();
  const t0 = Date.now();
  let last = '';
  const progress = (line: string): void => {
    const text = `${line} (${duration(Date.now() - t0)})`;
    if (ctx.out.stderrIsTTY) ctx.out.err(`\r\x1b[2K${text}`);
    else if (line !== last) ctx.out.err(`${text}\n`);
    last = line;
  };
  try {
    for (;;) {
      const job = jobView(await api.call(api.jobs, api.jobs.getJob, { id: o.jobId }));
      if (job.state === 'ended') throw new FailedPreconditionError(`job ${o.jobId} ended (OAR state ${job.oarState}) before its instances were running`);
      if (job.error) throw new FailedPreconditionError(`job ${o.jobId} runs without its instances: ${job.error}`);
      let instances: InstanceView[] = [];
      if (job.state === 'running' && o.count > 0) {
        const all = (await api.call(api.instances, api.instances.listInstances, { jobId: o.jobId, allUsers: false })).instances.map(instanceView);
        instances = o.ids?.length ? all.filter((i) => o.ids!.includes(i.id)) : all;
        const failed = instances.find((i) => i.state === 'failed');
        if (failed) throw new FailedPreconditionError(`instance ${failed.name} (${failed.id}) failed on ${failed.node || '?'}: ${failed.reason || 'no reason given'}`);
      }
      const running = instances.filter((i) => i.state === 'running').length;
      if (job.state === 'running' && running >= o.count && (!o.ids?.length || running === o.ids.length)) {
        progress(`job ${job.id}: running on ${job.hosts.map((h) => h.node).join(', ')}${o.count ? `, ${running}/${o.count} instances running` : ''}`);
        if (ctx.out.stderrIsTTY) ctx.out.err('\n');
        return { job, instances };
      }
      if (job.state === 'pending') progress(`job ${job.id}: waiting for OAR to start it (${job.oarState})`);
      else progress(`job ${job.id}: running on ${job.hosts.map((h) => h.node).join(', ')}, ${running}/${o.count} instances running`);
      if (Date.now() - t0 > o.timeoutMs) {
        throw new DeadlineExceededError(`gave up waiting after ${duration(o.timeoutMs)}: ${last}; the job is still there (oarcloud jobs, oarcloud release ${o.jobId})`);
      }
      await new Promise((r) => setTimeout(r, o.intervalMs ?? 1000));
    }
  } catch (err) {
    if (ctx.out.stderrIsTTY && last) ctx.out.err('\n');
    throw err;
  }
}
