/**
 * Fakes of OarFacts and OarCommands for tests: jobs kept in a map, calls recorded,
 * errors injectable. `submit` adds a Waiting job; tests move jobs with `setState`.
 */
import { InvalidArgumentError } from '@oarcloud/common';
import type { OarCommands, OarFacts, OarJobFacts, SubmitRequest } from './types.js';

export class FakeOar implements OarFacts, OarCommands {
  readonly jobs = new Map<number, OarJobFacts>();
  readonly submitted: SubmitRequest[] = [];
  readonly deleted: Array<{ user: string; jobId: number }> = [];
  /** When set, every OarFacts call throws it (database down). */
  down: Error | undefined;
  /** When set, `submit` refuses with this message. */
  refuse: string | undefined;
  private nextId = 100;
  private logId = 0;

  addJob(j: Partial<OarJobFacts> & { id: number; user: string }): OarJobFacts {
    const job: OarJobFacts = { state: 'Waiting', types: ['cloud'], walltimeS: 3600, startTime: 0, stopTime: 0, hosts: [], ...j };
    this.jobs.set(job.id, job);
    return job;
  }

  setState(id: number, state: string, hosts?: OarJobFacts['hosts']): void {
    const j = this.jobs.get(id)!;
    j.state = state;
    if (hosts) j.hosts = hosts;
    this.logId++;
  }

  private check(): void {
    if (this.down) throw this.down;
  }

  async job(jobId: number): Promise<OarJobFacts | undefined> {
    this.check();
    const j = this.jobs.get(jobId);
    return j && structuredClone(j);
  }

  async states(jobIds: readonly number[]): Promise<Map<number, string>> {
    this.check();
    return new Map(jobIds.filter((id) => this.jobs.has(id)).map((id) => [id, this.jobs.get(id)!.state]));
  }

  async liveCloudJobs(): Promise<number[]> {
    this.check();
    return [...this.jobs.values()]
      .filter((j) => ['Launching', 'Running', 'Suspended', 'Resuming'].includes(j.state) && j.types.some((t) => t === 'cloud' || t.startsWith('cloud=')))
      .map((j) => j.id);
  }

  async maxLogId(): Promise<number> {
    this.check();
    return this.logId;
  }

  async close(): Promise<void> {}

  async submit(req: SubmitRequest): Promise<number> {
    if (this.refuse) throw new InvalidArgumentError(`OAR refused the job: ${this.refuse}`);
    this.submitted.push(req);
    const id = this.nextId++;
    this.addJob({ id, user: req.user, types: req.types });
    return id;
  }

  async delete(user: string, jobId: number): Promise<void> {
    this.deleted.push({ user, jobId });
    const j = this.jobs.get(jobId);
    if (j && j.user === user) j.state = 'Error';
  }
}
