/**
 * The reconcile diff: desired state (store) against actual state (agents' relists) and
 * OAR's view of the jobs. Pure; the loop (`loop.ts`) applies the plan remove → update → add.
 */
import type { ActualInstance, InstanceRecord, JobRecord, ReportedState } from '../domain.js';
import { jobHoldsResources, jobStateOf } from '../jobs/lifecycle.js';

export interface DiffInput {
  /** Store instances (live ones: not both desired and reported deleted). */
  desired: readonly InstanceRecord[];
  /** Store jobs, by id (those referenced by desired instances or seen on agents, at least). */
  jobs: ReadonlyMap<number, JobRecord>;
  /** Each reachable agent's instances; unreachable nodes are absent (nothing decided for them). */
  actual: ReadonlyMap<string, readonly ActualInstance[]>;
  /** OAR's states of the relevant jobs, read after the relists; a job OAR does not know is absent. */
  oarStates: ReadonlyMap<number, string>;
}

export interface Plan {
  /** A job that does not hold its resources any more still has instances on a node. */
  releaseJobs: Array<{ node: string; jobId: number }>;
  /** An instance of a live job that the store does not want there. */
  destroy: Array<{ node: string; id: string }>;
  stop: Array<{ node: string; id: string }>;
  start: Array<{ node: string; id: string }>;
  /** Reported state to record. */
  report: Array<{ id: string; state: ReportedState; reason: string }>;
  /** Desired running in a live job, absent from its (reachable) node. */
  create: string[];
  /** Store jobs to bring in line with OAR (state changed, or ended and not torn down). */
  syncJobs: number[];
}

/** True when the job may have instances: OAR says it holds its resources and we did not end it. */
export function jobIsLive(jobId: number, jobs: ReadonlyMap<number, JobRecord>, oarStates: ReadonlyMap<number, string>): boolean {
  const oar = oarStates.get(jobId);
  if (oar === undefined || !jobHoldsResources(oar)) return false;
  return jobs.get(jobId)?.state !== 'ended';
}

export function diff(input: DiffInput): Plan {
  const plan: Plan = { releaseJobs: [], destroy: [], stop: [], start: [], report: [], create: [], syncJobs: [] };
  const desiredById = new Map(input.desired.map((i) => [i.id, i]));
  // By node once: scanning every desired instance for every node made a 5,000-node pass quadratic.
  const desiredByNode = new Map<string, InstanceRecord[]>();
  for (const i of input.desired) {
    const list = desiredByNode.get(i.node);
    if (list) list.push(i);
    else desiredByNode.set(i.node, [i]);
  }
  const live = (jobId: number): boolean => jobIsLive(jobId, input.jobs, input.oarStates);

  for (const [node, list] of input.actual) {
    const released = new Set<number>();
    const present = new Set<string>();
    for (const a of list) {
      present.add(a.id);
      const want = desiredById.get(a.id);
      if (want && (want.reported !== a.state || want.reason !== a.reason)) plan.report.push({ id: a.id, state: a.state, reason: a.reason });
      if (!live(a.jobId)) {
        if (!released.has(a.jobId)) plan.releaseJobs.push({ node, jobId: a.jobId });
        released.add(a.jobId);
        continue;
      }
      if (!want || want.desired === 'deleted' || want.node !== node || want.jobId !== a.jobId) {
        if (a.state !== 'deleted') plan.destroy.push({ node, id: a.id });
        continue;
      }
      if (want.desired === 'stopped' && a.state === 'running') plan.stop.push({ node, id: a.id });
      if (want.desired === 'running' && a.state === 'stopped') plan.start.push({ node, id: a.id });
    }
    for (const want of desiredByNode.get(node) ?? []) {
      if (present.has(want.id)) continue;
      if (want.desired === 'deleted') {
        if (want.reported !== 'deleted') plan.report.push({ id: want.id, state: 'deleted', reason: '' });
      } else if (want.desired === 'running' && live(want.jobId)) {
        plan.create.push(want.id);
      }
    }
  }

  for (const [id, job] of input.jobs) {
    const oar = input.oarStates.get(id);
    if (job.state === 'ended') {
      if (!job.releasedAtMs) plan.syncJobs.push(id);
      continue;
    }
    if (oar === undefined || jobStateOf(oar) !== job.state || oar !== job.oarState || (jobHoldsResources(oar) && job.specId !== '' && !job.specApplied)) {
      plan.syncJobs.push(id);
    }
  }
  return plan;
}
