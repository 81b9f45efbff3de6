/**
 * OAR's job-state events: LISTEN on `oarcloud_job_state` (infra/oar/db-trigger.sql), and
 * on every (re)connect a replay of `job_state_logs` past the cursor, since notifications
 * sent while nobody listens are lost. LISTEN is issued before the replay so nothing falls
 * between the two; events at or below the last delivered id are dropped, so each log id is
 * delivered once, in order.
 */
import pg from 'pg';
import { errFields, type Logger } from '@oarcloud/common';
import type { OarStateEvent } from './types.js';

export const JOB_STATE_CHANNEL = 'oarcloud_job_state';
/** frag_jobs inserts (oardel, walltime kill): the job is about to be killed. A hint, never replayed. */
export const JOB_FRAG_CHANNEL = 'oarcloud_job_frag';

export interface OarListenerOptions {
  url: string;
  log: Logger;
  /** The last log id already applied (replay starts after it). Read on every connect. */
  cursor(): number;
  /** Applies one event. Awaited: events are delivered one at a time, in log id order. */
  onEvent(ev: OarStateEvent): Promise<void>;
  /** OAR was asked to kill the job (a hint: not replayed, may be lost). */
  onFrag?(jobId: number): void;
  /** Called after each successful (re)connect and replay. */
  onConnected?(replayed: number): void;
  maxBackoffMs?: number;
}

export interface OarListener {
  readonly connected: boolean;
  /** Drops the connection (as a network failure would): it reconnects and replays. For tests. */
  disconnect(): void;
  close(): Promise<void>;
}

export function startOarListener(o: OarListenerOptions): OarListener {
  const maxBackoff = o.maxBackoffMs ?? 5000;
  let closed = false;
  let client: pg.Client | undefined;
  let connected = false;
  let delivered = 0;
  let chain: Promise<void> = Promise.resolve();
  let wake: (() => void) | undefined;

  // One queue for replayed rows and notifications, applied strictly one by one.
  const deliver = (ev: OarStateEvent): Promise<void> => {
    chain = chain.then(async () => {
      if (ev.logId <= delivered || closed) return;
      try {
        await o.onEvent(ev);
      } catch (err) {
        o.log.error('oar event not applied', { ...ev, ...errFields(err) });
      }
      delivered = ev.logId;
    });
    return chain;
  };

  const session = async (): Promise<void> => {
    const c = new pg.Client({ connectionString: o.url, keepAlive: true, connectionTimeoutMillis: 5000 });
    client = c;
    const ended = new Promise<void>((resolve) => {
      c.on('error', (err) => {
        o.log.warn('oar database connection lost', errFields(err));
        resolve();
      });
      c.on('end', () => resolve());
      wake = resolve;
    });
    c.on('notification', (n) => {
      if (n.channel === JOB_FRAG_CHANNEL && n.payload) {
        const jobId = parseFragNotification(n.payload);
        if (jobId !== undefined) o.onFrag?.(jobId);
        return;
      }
      if (n.channel !== JOB_STATE_CHANNEL || !n.payload) return;
      const ev = parseNotification(n.payload);
      if (ev) void deliver(ev);
      else o.log.warn('malformed job state notification', { payload: n.payload.slice(0, 200) });
    });
    await c.connect();
    await c.query(`LISTEN ${JOB_STATE_CHANNEL}`);
    if (o.onFrag) await c.query(`LISTEN ${JOB_FRAG_CHANNEL}`);
    connected = true;
    delivered = Math.max(delivered, o.cursor());
    const from = delivered;
    const r = await c.query<{ job_state_log_id: string; job_id: number; job_state: string; date_start: number }>(
      'SELECT job_state_log_id, job_id, job_state, date_start FROM job_state_logs WHERE job_state_log_id > $1 ORDER BY job_state_log_id',
      [from],
    );
    for (const row of r.rows) void deliver({ logId: Number(row.job_state_log_id), jobId: row.job_id, state: row.job_state, date: row.date_start });
    await chain;
    o.log.info('oar events connected', { cursor: from, replayed: r.rows.length });
    o.onConnected?.(r.rows.length);
    await ended;
  };

  const run = async (): Promise<void> => {
    let backoff = 200;
    while (!closed) {
      const t0 = Date.now();
      try {
        await session();
      } catch (err) {
        if (!closed) o.log.warn('oar events unavailable', { retryMs: backoff, ...errFields(err) });
      }
      connected = false;
      const c = client;
      client = undefined;
      await c?.end().catch(() => {});
      if (closed) break;
      if (Date.now() - t0 > 30_000) backoff = 200;
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, maxBackoff);
    }
  };
  const running = run();

  return {
    get connected() {
      return connected;
    },
    disconnect() {
      const c = client;
      wake?.();
      void c?.end().catch(() => {});
    },
    async close() {
      closed = true;
      wake?.();
      await client?.end().catch(() => {});
      await running;
      await chain;
    },
  };
}

/** Parses the trigger's JSON payload {log_id, job_id, state, date}; undefined if malformed. */
export function parseNotification(payload: string): OarStateEvent | undefined {
  try {
    const p = JSON.parse(payload) as { log_id?: unknown; job_id?: unknown; state?: unknown; date?: unknown };
    const logId = Number(p.log_id);
    const jobId = Number(p.job_id);
    if (!Number.isSafeInteger(logId) || !Number.isSafeInteger(jobId) || typeof p.state !== 'string') return undefined;
    return { logId, jobId, state: p.state, date: Number(p.date ?? 0) };
  } catch {
    return undefined;
  }
}

/** Parses the frag trigger's JSON payload {job_id}; undefined if malformed. */
export function parseFragNotification(payload: string): number | undefined {
  try {
    const jobId = Number((JSON.parse(payload) as { job_id?: unknown }).job_id);
    return Number.isSafeInteger(jobId) && jobId > 0 ? jobId : undefined;
  } catch {
    return undefined;
  }
}
