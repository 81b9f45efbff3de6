/**
 * The life of cloud jobs: OAR events and hooks come in, instances get placed, created and
 * torn down. Every entry point is idempotent and may be called any number of times, in any
 * order, from any source (hook, database event, reconcile pass): OAR's *current* state is
 * read each time and decides, the event is only a trigger. Work on one job is serialised;
 * agent calls that may take long (CreateInstance) run outside that lock and are
 * deduplicated per instance.
 */
import { EventEmitter } from 'node:events';
import { errFields, FailedPreconditionError, InvalidArgumentError, KeyedMutex, type Logger, newId, NotFoundError, OarcloudError, UnavailableError } from '@oarcloud/common';
import type { AgentPort, Agents } from '../agents/agents.js';
import type { NetworkManager } from '../networks/manager.js';
import type { InstanceRecord, JobRecord, LaunchRequest, ReportedState, VolumeMount } from '../domain.js';
import type { OarFacts, OarJobFacts, OarStateEvent } from '../oar/types.js';
import { placeInstances } from '../placement/placement.js';
import type { Store } from '../store/store.js';
import type { ImageCatalog } from './images.js';
import { actionFor, cloudTypeOf, jobStateOf } from './lifecycle.js';

export interface JobManagerOptions {
  store: Store;
  oar: OarFacts;
  agents: Agents;
  images: ImageCatalog;
  networks: NetworkManager;
  /** Resolves volume names to the owner's volume ids (NOT_FOUND for others'); absent: no volumes. */
  volumes?: { resolveMounts(owner: string, mounts: readonly VolumeMount[] | undefined): VolumeMount[] };
  log: Logger;
  now?: () => number;
}

export interface ReadyState {
  ready: boolean;
  running: number;
  expected: number;
}

/** Failures that a retry cannot fix: the instance is marked failed and not retried soon. */
function permanent(err: unknown): boolean {
  return err instanceof OarcloudError && !(err instanceof UnavailableError) && err.name !== 'DeadlineExceededError';
}

export class JobManager {
  private readonly locks = new KeyedMutex<number>();
  private readonly inflight = new Map<string, Promise<void>>();
  /** Instance id → earliest time of the next create attempt after a failure. */
  private readonly backoff = new Map<string, { at: number; delayMs: number }>();
  /** Jobs OAR says are not ours (no cloud type), so their events cost nothing. */
  private readonly notOurs = new Set<number>();
  private readonly changes = new EventEmitter();
  private readonly now: () => number;
  private readonly log: Logger;

  constructor(private readonly o: JobManagerOptions) {
    this.now = o.now ?? Date.now;
    this.log = o.log;
    this.changes.setMaxListeners(0);
  }

  // ------------------------------------------------------------------ entry points

  /** A job_state_logs row (LISTEN or replay): apply the job's current state, then move the cursor. */
  async onOarEvent(ev: OarStateEvent): Promise<void> {
    const t0 = performance.now();
    if (!this.notOurs.has(ev.jobId)) {
      const res = await this.sync(ev.jobId, { logId: ev.logId });
      if (res !== 'not-ours') this.log.info('oar job event', { jobId: ev.jobId, state: ev.state, logId: ev.logId, action: res, ms: Math.round(performance.now() - t0) });
    }
    this.o.store.setCursor(ev.logId);
  }

  /**
   * Brings the job in line with OAR's current state: records it, starts its instances
   * while it holds its resources, tears it down once it ended. Idempotent. With
   * `liveOnly`, a job the store does not know yet is recorded only while OAR has not
   * ended it: a read of an old job id must not fill the store with OAR's history.
   */
  async sync(jobId: number, opts: { logId?: number; liveOnly?: boolean } = {}): Promise<'not-ours' | 'start' | 'teardown' | 'none'> {
    return this.locks.run(jobId, async () => {
      const facts = await this.o.oar.job(jobId);
      let job = this.o.store.getJob(jobId);
      if (!facts) {
        if (job && job.state !== 'ended') {
          await this.teardownLocked(job, 'job unknown to OAR');
          return 'teardown';
        }
        return 'not-ours';
      }
      const cloud = cloudTypeOf(facts.types);
      if (!cloud) {
        if (!job) {
          this.notOurs.add(jobId);
          return 'not-ours';
        }
      }
      // Nothing ever ran for a job that ended before we heard of it: nothing to record or undo.
      if (!job && opts.liveOnly && jobStateOf(facts.state) === 'ended') return 'not-ours';
      job = this.record(job, facts, cloud?.specId ?? job?.specId ?? '', opts.logId);
      if (job.state === 'ended') {
        if (!job.releasedAtMs) await this.teardownLocked(job, `OAR state ${facts.state}`);
        return 'teardown';
      }
      const action = actionFor(facts.state);
      if (action === 'start') {
        if (job.hosts.length > 0) await this.o.networks.ensureDefault(job);
        this.applySpec(job);
        void this.createMissing(jobId);
      }
      return action;
    });
  }

  /** The job ends (epilogue hooks): teardown whatever OAR says now (it may still say Running). */
  async end(jobId: number, why: string): Promise<void> {
    await this.locks.run(jobId, async () => {
      let job = this.o.store.getJob(jobId);
      if (!job) {
        const facts = await this.o.oar.job(jobId);
        const cloud = facts && cloudTypeOf(facts.types);
        if (!facts || !cloud) return;
        job = this.record(undefined, facts, cloud.specId);
      }
      if (job.state === 'ended' && job.releasedAtMs) return;
      await this.teardownLocked(job, why);
    });
  }

  /**
   * RunInstances: places `req.count` instances in a job of `owner` that holds its
   * resources, stores them, then creates them in the background. Nothing is stored when
   * they do not fit (ResourceExhaustedError).
   */
  async runInstances(owner: string, jobId: number, req: LaunchRequest): Promise<InstanceRecord[]> {
    if (!this.o.images.resolve(req.image, owner)) throw new NotFoundError(`image ${req.image} is unknown`);
    req = { ...req, volumes: this.resolveVolumes(owner, req.volumes) };
    const added = await this.locks.run(jobId, async () => {
      const job = this.o.store.getJob(jobId);
      if (!job || job.owner !== owner) throw new NotFoundError(`no job ${jobId}`);
      if (job.state === 'ended') throw new FailedPreconditionError(`job ${jobId} has ended`);
      const facts = await this.o.oar.job(jobId);
      if (!facts || actionFor(facts.state) !== 'start' || job.hosts.length === 0) {
        throw new FailedPreconditionError(`job ${jobId} is not running (OAR state ${facts?.state ?? 'unknown'})`);
      }
      const nets = req.networks && req.networks.length > 0 ? this.o.networks.resolve(job, req.networks) : [await this.o.networks.ensureDefault(job)];
      return this.o.store.transaction(() => {
        const list = this.place(job, req);
        this.o.store.addInstances(list);
        this.o.store.addAttachments(this.o.networks.allocate(list, nets));
        return list;
      });
    });
    for (const i of added) void this.createOne(i.id);
    return added;
  }

  /** Reserve: records a job just submitted with oarsub, before OAR's first event about it. */
  async recordSubmitted(jobId: number, owner: string, specId: string, walltimeS: number): Promise<JobRecord> {
    return this.locks.run(jobId, async () => {
      const cur = this.o.store.getJob(jobId);
      if (cur) return cur.specId ? cur : this.o.store.updateJob(jobId, { specId });
      const job: JobRecord = {
        id: jobId,
        owner,
        state: 'pending',
        oarState: 'Waiting',
        hosts: [],
        specId,
        walltimeS,
        startedAtMs: 0,
        endedAtMs: 0,
        lastLogId: 0,
        specApplied: false,
        error: '',
        releasedAtMs: 0,
      };
      this.o.store.putJob(job);
      return job;
    });
  }

  /** Waits until the job's instances are all running, bounded by `timeoutMs`. */
  async waitReady(jobId: number, timeoutMs: number, signal?: AbortSignal): Promise<ReadyState> {
    const deadline = this.now() + timeoutMs;
    const check = (): ReadyState & { final: boolean } => {
      const job = this.o.store.getJob(jobId);
      // Not a cloud job (or OAR unreadable): nothing to wait for, never hold a prologue.
      if (!job) return { ready: true, running: 0, expected: 0, final: true };
      const list = this.o.store.listInstances({ jobId }).filter((i) => i.desired === 'running');
      const running = list.filter((i) => i.reported === 'running').length;
      const failed = list.some((i) => i.reported === 'failed');
      const expected = list.length;
      const settled = job.specApplied || !job.specId;
      const ready = settled && !job.error && running === expected;
      return { ready, running, expected, final: ready || failed || !!job.error || job.state === 'ended' };
    };
    // A hook may ask before any event reached us: make sure the job was looked at.
    await Promise.race([this.sync(jobId).catch(() => undefined), new Promise((r) => setTimeout(r, Math.max(0, timeoutMs)))]);
    for (;;) {
      const st = check();
      const left = deadline - this.now();
      if (st.final || left <= 0 || signal?.aborted) return { ready: st.ready, running: st.running, expected: st.expected };
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.changes.off(String(jobId), done);
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, 500));
        this.changes.on(String(jobId), done);
      });
    }
  }

  /**
   * An agent reported an instance state (NATS event or relist). While the controller is
   * still creating the instance, RUNNING waits for that create to finish: it also joins the
   * instance's networks to their mesh, and RUNNING means reachable.
   */
  report(id: string, state: ReportedState, reason: string): void {
    if (state === 'running' && this.inflight.has(id)) return;
    this.recordState(id, state, reason);
  }

  private recordState(id: string, state: ReportedState, reason: string): void {
    const jobId = this.o.store.setReported(id, state, reason, this.now());
    if (jobId !== undefined) {
      this.changes.emit(String(jobId));
      if (state === 'running') this.backoff.delete(id);
    }
  }

  /** Creates every instance of the job that should run and is not running yet. */
  async createMissing(jobId: number): Promise<void> {
    const list = this.o.store.listInstances({ jobId }).filter((i) => i.desired === 'running' && i.reported !== 'running');
    await Promise.all(list.map((i) => this.createOne(i.id)));
  }

  /**
   * Creates one instance on its agent (idempotent by id; concurrent calls share one
   * attempt; after a failure, retried no sooner than its back-off unless `force`).
   */
  createOne(id: string, force = false): Promise<void> {
    const running = this.inflight.get(id);
    if (running) return running;
    const b = this.backoff.get(id);
    if (!force && b && b.at > this.now()) return Promise.resolve();
    const p = this.doCreate(id).finally(() => this.inflight.delete(id));
    this.inflight.set(id, p);
    return p;
  }

  creating(id: string): boolean {
    return this.inflight.has(id);
  }

  // ------------------------------------------------------------------ internals

  /** Records OAR's facts about a job in the store (never moving an ended job back). */
  private record(cur: JobRecord | undefined, facts: OarJobFacts, specId: string, logId?: number): JobRecord {
    const mapped = jobStateOf(facts.state);
    const state = cur?.state === 'ended' ? 'ended' : mapped;
    const next: JobRecord = {
      id: facts.id,
      owner: facts.user,
      state,
      oarState: facts.state,
      hosts: facts.hosts.length > 0 ? facts.hosts : (cur?.hosts ?? []),
      specId: cur?.specId || specId,
      walltimeS: facts.walltimeS,
      startedAtMs: facts.startTime ? facts.startTime * 1000 : (cur?.startedAtMs ?? 0),
      endedAtMs: state === 'ended' ? (facts.stopTime ? facts.stopTime * 1000 : cur?.endedAtMs || this.now()) : 0,
      lastLogId: Math.max(cur?.lastLogId ?? 0, logId ?? 0),
      specApplied: cur?.specApplied ?? false,
      error: cur?.error ?? '',
      releasedAtMs: cur?.releasedAtMs ?? 0,
    };
    this.o.store.putJob(next);
    if (!cur || cur.state !== next.state) this.changes.emit(String(facts.id));
    return next;
  }

  /** Places the bound launch spec's instances once; a spec that cannot run is recorded as the job's error. */
  private applySpec(job: JobRecord): void {
    if (job.specApplied || !job.specId || job.hosts.length === 0) return;
    const fail = (error: string): void => {
      this.log.warn('launch spec not applied', { jobId: job.id, specId: job.specId, error });
      this.o.store.updateJob(job.id, { specApplied: true, error });
      this.changes.emit(String(job.id));
    };
    const spec = this.o.store.getSpec(job.specId);
    if (!spec) return fail(`launch spec ${job.specId} is unknown`);
    if (spec.owner !== job.owner) return fail(`launch spec ${job.specId} belongs to another user`);
    if (!this.o.images.resolve(spec.image, spec.owner)) return fail(`image ${spec.image} is unknown`);
    let list: InstanceRecord[];
    try {
      list = this.place(job, { ...spec, volumes: this.resolveVolumes(spec.owner, spec.volumes) });
    } catch (err) {
      return fail(err instanceof Error ? err.message : String(err));
    }
    const nets = this.o.store.listNetworks({ jobId: job.id }).filter((n) => n.isDefault);
    try {
      this.o.store.transaction(() => {
        this.o.store.addInstances(list);
        this.o.store.addAttachments(this.o.networks.allocate(list, nets));
        this.o.store.updateJob(job.id, { specApplied: true, error: '' });
      });
    } catch (err) {
      return fail(err instanceof Error ? err.message : String(err));
    }
    this.log.info('instances placed', { jobId: job.id, specId: job.specId, placement: list.map((i) => `${i.name}@${i.node}`) });
  }

  private resolveVolumes(owner: string, mounts: readonly VolumeMount[] | undefined): VolumeMount[] {
    if (!mounts || mounts.length === 0) return [];
    if (!this.o.volumes) throw new FailedPreconditionError('this controller has no volumes');
    return this.o.volumes.resolveMounts(owner, mounts);
  }

  /** New instance records for a request, placed on the job's hosts (throws when they do not fit). */
  private place(job: JobRecord, req: LaunchRequest): InstanceRecord[] {
    if (req.count < 1 || req.count > 1000) throw new InvalidArgumentError('count must be 1 to 1000');
    const live = this.o.store.listInstances({ jobId: job.id }).filter((i) => i.desired !== 'deleted');
    const nodes = placeInstances(job.hosts, live, { count: req.count, vcpus: req.vcpus });
    const prefix = req.namePrefix || `j${job.id}`;
    const taken = new Set(live.map((i) => i.name));
    const now = this.now();
    let n = 1;
    return nodes.map((node) => {
      while (taken.has(`${prefix}-${n}`)) n++;
      const name = `${prefix}-${n}`;
      taken.add(name);
      return {
        id: newId('i'),
        jobId: job.id,
        owner: job.owner,
        name,
        node,
        vcpus: req.vcpus,
        memoryMib: req.memoryMib,
        image: req.image,
        sshKeys: [...req.sshKeys],
        volumes: (req.volumes ?? []).map((v) => ({ ...v })),
        desired: 'running',
        reported: 'unknown',
        reason: '',
        createdAtMs: now,
        updatedAtMs: now,
      } satisfies InstanceRecord;
    });
  }

  private async doCreate(id: string): Promise<void> {
    const inst = this.o.store.getInstance(id);
    if (!inst || inst.desired !== 'running') return;
    const job = this.o.store.getJob(inst.jobId);
    const log = this.log.child({ instanceId: id, jobId: inst.jobId, node: inst.node });
    if (!job || job.state === 'ended') return;
    const host = job.hosts.find((h) => h.node === inst.node);
    const agent = this.o.agents.get(inst.node);
    const image = this.o.images.resolve(inst.image, inst.owner);
    const t0 = performance.now();
    try {
      if (!host) throw new FailedPreconditionError(`node ${inst.node} is not a host of job ${job.id}`);
      if (!agent) throw new FailedPreconditionError(`no agent is configured for node ${inst.node}`);
      if (!image) throw new NotFoundError(`image ${inst.image} is unknown`);
      this.recordState(id, 'creating', '');
      const networks = this.o.networks.attachmentsOf(id);
      const actual = await agent.createInstance({
        id,
        name: inst.name,
        jobId: inst.jobId,
        owner: inst.owner,
        image,
        vcpus: inst.vcpus,
        memoryMib: inst.memoryMib,
        cpuset: host.cpuset,
        sshKeys: inst.sshKeys,
        hostname: inst.name,
        networks,
        volumes: inst.volumes ?? [],
      });
      // The mesh of its networks now includes this node; reported after it, so that RUNNING
      // means reachable from the job's other instances.
      await this.o.networks.syncOf(networks.map((n) => n.networkId));
      this.recordState(id, actual.state, actual.reason);
      this.backoff.delete(id);
      log.info('instance created', { state: actual.state, ms: Math.round(performance.now() - t0) });
      // The job may have ended (or the instance been deleted) while we were creating it.
      const after = this.o.store.getInstance(id);
      if (after?.desired === 'deleted' || this.o.store.getJob(inst.jobId)?.state === 'ended') await this.destroyOn(agent, id, log);
    } catch (err) {
      const prev = this.backoff.get(id)?.delayMs ?? 1000;
      const delayMs = Math.min(prev * 2, 60_000);
      this.backoff.set(id, { at: this.now() + delayMs, delayMs });
      const reason = err instanceof Error ? err.message : String(err);
      this.recordState(id, permanent(err) ? 'failed' : 'unknown', reason);
      log.warn('instance not created', { retryInMs: delayMs, ms: Math.round(performance.now() - t0), ...errFields(err) });
    }
  }

  private async destroyOn(agent: AgentPort, id: string, log: Logger): Promise<void> {
    try {
      await agent.destroyInstance(id);
      this.report(id, 'deleted', '');
    } catch (err) {
      log.warn('instance not destroyed (the reconcile loop retries)', errFields(err));
    }
  }

  /**
   * Teardown, with the job's lock held: the job is ended and its instances deleted in the
   * store first (so nothing restarts them), then ReleaseJob on every host, in parallel. A
   * host that fails is retried by the reconcile loop.
   */
  private async teardownLocked(job: JobRecord, why: string): Promise<void> {
    const t0 = performance.now();
    const now = this.now();
    this.o.store.transaction(() => {
      this.o.store.updateJob(job.id, { state: 'ended', endedAtMs: job.endedAtMs || now });
      this.o.store.deleteJobInstances(job.id, now);
    });
    this.changes.emit(String(job.id));
    const instances = this.o.store.listInstances({ jobId: job.id });
    const nodes = new Set([...job.hosts.map((h) => h.node), ...instances.map((i) => i.node)]);
    const results = await Promise.allSettled(
      [...nodes].map(async (node) => {
        const agent = this.o.agents.get(node);
        if (!agent) return; // a host without an agent (e.g. the frontend) has nothing of ours
        await agent.releaseJob(job.id);
        for (const i of instances) if (i.node === node) this.report(i.id, 'deleted', '');
      }),
    );
    const failed = results.filter((r) => r.status === 'rejected');
    // Networks after the instances: ReleaseJob removed their ports (and so their tunnels).
    if (failed.length === 0) await this.o.networks.releaseJob(job);
    if (failed.length === 0) this.o.store.updateJob(job.id, { releasedAtMs: this.now() });
    this.log.info('job torn down', {
      jobId: job.id,
      why,
      hosts: [...nodes],
      instances: instances.length,
      failedHosts: failed.length,
      ms: Math.round(performance.now() - t0),
      ...(failed[0] ? errFields((failed[0] as PromiseRejectedResult).reason) : {}),
    });
  }

  /** Stop/Start/Delete of one instance through its agent (InstanceService). */
  async instanceAction(inst: InstanceRecord, action: 'stop' | 'start' | 'delete'): Promise<InstanceRecord> {
    const agent = this.o.agents.get(inst.node);
    const now = this.now();
    if (action === 'delete') {
      this.o.store.setDesired(inst.id, 'deleted', now);
      if (agent) {
        await agent.destroyInstance(inst.id);
        this.report(inst.id, 'deleted', '');
      }
      // Addresses back to their networks; the other members drop their tunnel to this node if it was the last.
      const nets = this.o.store.listAttachments({ instanceId: inst.id }).map((a) => a.networkId);
      this.o.store.deleteAttachments(inst.id);
      await this.o.networks.syncOf(nets);
      return this.o.store.getInstance(inst.id)!;
    }
    if (inst.desired === 'deleted') throw new NotFoundError(`no instance ${inst.id}`);
    if (!agent) throw new FailedPreconditionError(`no agent is configured for node ${inst.node}`);
    this.o.store.setDesired(inst.id, action === 'stop' ? 'stopped' : 'running', now);
    const actual = action === 'stop' ? await agent.stopInstance(inst.id) : await agent.startInstance(inst.id);
    this.report(inst.id, actual.state, actual.reason);
    return this.o.store.getInstance(inst.id)!;
  }
}
