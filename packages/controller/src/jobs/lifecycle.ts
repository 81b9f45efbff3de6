/**
 * Pure mapping from OAR's job states to ours, and what the controller must do about a job.
 */
import type { JobState } from '../domain.js';

const PENDING = new Set(['Waiting', 'Hold', 'toLaunch', 'Launching', 'toAckReservation', 'toError']);
// Suspended/Resuming: the job keeps its resources, so its instances stay.
const RUNNING = new Set(['Running', 'Suspended', 'Resuming']);
const ENDED = new Set(['Finishing', 'Terminated', 'Error']);

/** Our state for an OAR state name; an unknown name is `pending` (nothing started, nothing removed). */
export function jobStateOf(oarState: string): JobState {
  if (RUNNING.has(oarState)) return 'running';
  if (ENDED.has(oarState)) return 'ended';
  if (PENDING.has(oarState)) return 'pending';
  return 'pending';
}

/**
 * Whether the job holds its resources, so that its instances may exist: Launching counts
 * (the server prologue runs then and starts the instances before the job's command).
 */
export function jobHoldsResources(oarState: string): boolean {
  return oarState === 'Launching' || RUNNING.has(oarState);
}

/** The type `cloud` or `cloud=<spec-id>` among an OAR job's types; undefined: not ours. */
export function cloudTypeOf(types: readonly string[]): { specId: string } | undefined {
  for (const t of types) {
    if (t === 'cloud') return { specId: '' };
    const m = /^cloud=(.+)$/.exec(t);
    if (m) return { specId: m[1]! };
  }
  return undefined;
}

export type JobAction = 'start' | 'teardown' | 'none';

/** What a new OAR state asks of the controller. */
export function actionFor(oarState: string): JobAction {
  if (jobHoldsResources(oarState)) return 'start';
  if (jobStateOf(oarState) === 'ended') return 'teardown';
  return 'none';
}
