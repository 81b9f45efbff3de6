/**
 * What the controller needs of OAR, as small interfaces: facts read from OAR's database,
 * its job-state event stream, and the user commands (oarsub/oardel). Real implementations
 * live beside this file; tests use fakes.
 */
import type { JobHost } from '../domain.js';

/** One row of `job_state_logs`. */
export interface OarStateEvent {
  logId: number;
  jobId: number;
  state: string;
  /** `date_start`, seconds since the epoch. */
  date: number;
}

export interface OarJobFacts {
  id: number;
  user: string;
  state: string;
  types: string[];
  walltimeS: number;
  /** Seconds since the epoch; 0 when not started / not stopped. */
  startTime: number;
  stopTime: number;
  /** Hosts with the job's cpus there; empty before OAR assigned resources. */
  hosts: JobHost[];
}

/** Reads from OAR's database. Every method may throw (database down): callers retry. */
export interface OarFacts {
  /** A job's facts, undefined when OAR does not know the job. */
  job(jobId: number): Promise<OarJobFacts | undefined>;
  /** OAR states of these jobs; a job OAR does not know is absent from the map. */
  states(jobIds: readonly number[]): Promise<Map<number, string>>;
  /** Ids of the jobs with a `cloud` type that hold their resources (Launching, Running…). */
  liveCloudJobs(): Promise<number[]>;
  /** The highest job_state_log_id (0 when empty). */
  maxLogId(): Promise<number>;
  close(): Promise<void>;
}

export interface SubmitRequest {
  user: string;
  types: string[];
  /** `-l` resource request, e.g. `host=2/core=1,walltime=1:00:00`. */
  resources: string;
  command: string;
}

/** The OAR user commands, run as the given user. */
export interface OarCommands {
  /** `oarsub` as `user`; returns the job id. InvalidArgumentError when OAR refuses. */
  submit(req: SubmitRequest): Promise<number>;
  /** `oardel` as `user`. */
  delete(user: string, jobId: number): Promise<void>;
}
