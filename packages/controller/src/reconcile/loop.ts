/**
 * The reconcile loop: every `intervalMs`, relist every agent, read OAR's job states, diff
 * with the store (`diff.ts`) and repair, remove → update → add. A failed item is logged
 * and retried on the next pass; an unreachable agent is skipped (nothing is decided about
 * its node); with OAR's database unreachable nothing is removed at all.
 */
import { errFields, type Logger } from '@oarcloud/common';
import type { Agents } from '../agents/agents.js';
import type { ActualInstance, JobRecord } from '../domain.js';
import type { JobManager } from '../jobs/manager.js';
import type { NetworkManager } from '../networks/manager.js';
import type { OarFacts } from '../oar/types.js';
import type { Store } from '../store/store.js';
import { diff, type Plan } from './diff.js';

export interface ReconcilerOptions {
  store: Store;
  oar: OarFacts;
  agents: Agents;
  jobs: JobManager;
  /** Optional: networks' meshes re-pushed every pass (agents converge after a restart). */
  networks?: NetworkManager;
  log: Logger;
  intervalMs: number;
}

export interface PassReport {
  plan: Plan;
  unreachable: string[];
  failures: number;
  ms: number;
}

export class Reconciler {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<PassReport | undefined> | undefined;
  private stopped = false;
  /** Ended jobs whose teardown failed somewhere: retried with back-off, not every pass. */
  private readonly teardownRetry = new Map<number, { at: number; delayMs: number }>();

  constructor(private readonly o: ReconcilerOptions) {}

  start(): void {
    const tick = (): void => {
      if (this.stopped) return;
      void this.pass()
        .catch((err: unknown) => this.o.log.warn('reconcile pass failed', errFields(err)))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, this.o.intervalMs);
        });
    };
    tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running?.catch(() => undefined);
  }

  /** One pass (concurrent callers share the pass in progress). */
  pass(): Promise<PassReport | undefined> {
    this.running ??= this.doPass().finally(() => (this.running = undefined));
    return this.running;
  }

  private due(jobId: number): boolean {
    const r = this.teardownRetry.get(jobId);
    return !r || r.at <= Date.now();
  }

  private async syncJob(jobId: number): Promise<void> {
    await this.o.jobs.sync(jobId);
    const j = this.o.store.getJob(jobId);
    if (j?.state === 'ended' && !j.releasedAtMs) {
      const delayMs = Math.min((this.teardownRetry.get(jobId)?.delayMs ?? this.o.intervalMs) * 2, 120_000);
      this.teardownRetry.set(jobId, { at: Date.now() + delayMs, delayMs });
    } else {
      this.teardownRetry.delete(jobId);
    }
  }

  private async doPass(): Promise<PassReport | undefined> {
    const t0 = performance.now();
    const { store, oar, agents, jobs, log } = this.o;

    // 1. Cloud jobs OAR runs that we do not know (missed events, fresh store): look at them.
    const liveInOar = await oar.liveCloudJobs();
    for (const id of liveInOar) {
      const j = store.getJob(id);
      if (!j || (j.state !== 'ended' && (j.oarState !== 'Running' || (j.specId && !j.specApplied)))) {
        await jobs.sync(id).catch((err: unknown) => log.warn('job sync failed', { jobId: id, ...errFields(err) }));
      }
    }

    // 2. Actual state first, so anything an agent lists is already in the store.
    const actual = new Map<string, ActualInstance[]>();
    const unreachable: string[] = [];
    await Promise.all(
      agents.nodes().map(async (node) => {
        try {
          actual.set(node, await agents.get(node)!.listInstances());
        } catch (err) {
          unreachable.push(node);
          log.debug('agent not listed', { node, ...errFields(err) });
        }
      }),
    );

    // 3. OAR's states of every job involved, read after the relists.
    const desired = store.listInstances({ liveOnly: true });
    const jobIds = new Set<number>([...store.listJobs({ notEnded: true }).map((j) => j.id), ...desired.map((i) => i.jobId)]);
    for (const list of actual.values()) for (const a of list) jobIds.add(a.jobId);
    for (const j of store.listJobs()) if (j.state === 'ended' && !j.releasedAtMs) jobIds.add(j.id);
    const oarStates = await oar.states([...jobIds]);
    const jobMap = new Map<number, JobRecord>();
    for (const id of jobIds) {
      const j = store.getJob(id);
      if (j) jobMap.set(id, j);
    }

    const plan = diff({ desired, jobs: jobMap, actual, oarStates });
    let failures = 0;
    const attempt = async (what: string, fields: Record<string, unknown>, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        failures++;
        log.warn('reconcile item failed', { what, ...fields, ...errFields(err) });
      }
    };

    // remove
    await Promise.all([
      ...plan.releaseJobs.map(({ node, jobId }) =>
        attempt('release job', { node, jobId }, async () => {
          const ids = await agents.get(node)!.releaseJob(jobId);
          for (const id of ids) jobs.report(id, 'deleted', '');
          log.info('orphan job released', { node, jobId, instances: ids.length });
        }),
      ),
      ...plan.destroy
        .filter(({ id }) => !jobs.creating(id))
        .map(({ node, id }) =>
          attempt('destroy', { node, instanceId: id }, async () => {
            await agents.get(node)!.destroyInstance(id);
            log.info('orphan instance destroyed', { node, instanceId: id });
          }),
        ),
    ]);
    // update
    for (const r of plan.report) jobs.report(r.id, r.state, r.reason);
    await Promise.all([
      ...plan.stop.map(({ node, id }) => attempt('stop', { node, instanceId: id }, () => agents.get(node)!.stopInstance(id))),
      ...plan.start.map(({ node, id }) => attempt('start', { node, instanceId: id }, () => agents.get(node)!.startInstance(id))),
      ...plan.syncJobs.filter((id) => this.due(id)).map((id) => attempt('sync job', { jobId: id }, () => this.syncJob(id))),
    ]);
    // add (creates run in the background, deduplicated and backed off per instance)
    for (const id of plan.create) void jobs.createOne(id);
    // Network meshes: idempotent EnsureNetwork to the members of every live network.
    await this.o.networks?.syncAll();

    const ms = Math.round(performance.now() - t0);
    const changed = plan.releaseJobs.length + plan.destroy.length + plan.create.length + plan.syncJobs.length + plan.stop.length + plan.start.length;
    if (changed > 0 || failures > 0) {
      log.info('reconcile pass', {
        release: plan.releaseJobs.length,
        destroy: plan.destroy.length,
        create: plan.create.length,
        sync: plan.syncJobs.length,
        reported: plan.report.length,
        unreachable,
        failures,
        ms,
      });
    }
    return { plan, unreachable, failures, ms };
  }
}
