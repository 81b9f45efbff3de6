/**
 * OarFacts from OAR's PostgreSQL database (read-only user). Column names checked on OAR
 * 2.5.9: jobs(job_id, job_user, state, assigned_moldable_job, start_time, stop_time),
 * job_types(job_id, type), moldable_job_descriptions(moldable_id, moldable_job_id,
 * moldable_walltime), assigned_resources(moldable_job_id, resource_id),
 * resources(resource_id, network_address, cpuset).
 */
import pg from 'pg';
import { formatCpuset, parseCpuset } from '@oarcloud/common';
import type { JobHost } from '../domain.js';
import type { OarFacts, OarJobFacts } from './types.js';

export class PgOarFacts implements OarFacts {
  private readonly pool: pg.Pool;

  constructor(url: string) {
    this.pool = new pg.Pool({ connectionString: url, max: 4, connectionTimeoutMillis: 3000, idleTimeoutMillis: 30_000, statement_timeout: 10_000 });
    // An idle client's error (server restart) must not crash the process: the next query reconnects.
    this.pool.on('error', () => {});
  }

  async job(jobId: number): Promise<OarJobFacts | undefined> {
    const j = await this.pool.query<{ job_id: string; job_user: string; state: string; assigned_moldable_job: number | null; start_time: number; stop_time: number }>(
      'SELECT job_id, job_user, state, assigned_moldable_job, start_time, stop_time FROM jobs WHERE job_id = $1',
      [jobId],
    );
    const row = j.rows[0];
    if (!row) return undefined;
    const [types, wall, res] = await Promise.all([
      this.pool.query<{ type: string }>('SELECT type FROM job_types WHERE job_id = $1 ORDER BY job_type_id', [jobId]),
      this.pool.query<{ moldable_walltime: number }>(
        `SELECT moldable_walltime FROM moldable_job_descriptions
          WHERE moldable_job_id = $1 ORDER BY (moldable_id = $2) DESC, moldable_id LIMIT 1`,
        [jobId, row.assigned_moldable_job ?? 0],
      ),
      row.assigned_moldable_job
        ? this.pool.query<{ network_address: string; cpuset: string }>(
            `SELECT r.network_address, r.cpuset FROM assigned_resources a
               JOIN resources r ON r.resource_id = a.resource_id
              WHERE a.moldable_job_id = $1 ORDER BY r.resource_id`,
            [row.assigned_moldable_job],
          )
        : Promise.resolve({ rows: [] as Array<{ network_address: string; cpuset: string }> }),
    ]);
    return {
      id: Number(row.job_id),
      user: row.job_user,
      state: row.state,
      types: types.rows.map((t) => t.type),
      walltimeS: wall.rows[0]?.moldable_walltime ?? 0,
      startTime: row.start_time,
      stopTime: row.stop_time,
      hosts: hostsOf(res.rows),
    };
  }

  async states(jobIds: readonly number[]): Promise<Map<number, string>> {
    if (jobIds.length === 0) return new Map();
    const r = await this.pool.query<{ job_id: string; state: string }>('SELECT job_id, state FROM jobs WHERE job_id = ANY($1::bigint[])', [jobIds]);
    return new Map(r.rows.map((x) => [Number(x.job_id), x.state]));
  }

  async liveCloudJobs(): Promise<number[]> {
    const r = await this.pool.query<{ job_id: string }>(
      `SELECT DISTINCT j.job_id FROM jobs j JOIN job_types t ON t.job_id = j.job_id
        WHERE j.state IN ('Launching', 'Running', 'Suspended', 'Resuming')
          AND (t.type = 'cloud' OR t.type LIKE 'cloud=%')
        ORDER BY j.job_id`,
    );
    return r.rows.map((x) => Number(x.job_id));
  }

  async maxLogId(): Promise<number> {
    const r = await this.pool.query<{ m: string | null }>('SELECT max(job_state_log_id) AS m FROM job_state_logs');
    return Number(r.rows[0]?.m ?? 0);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/**
 * Groups resource rows per host (first-seen order), merging their cpusets. A host's cores
 * are the resources OAR gave the job there (OAR's unit of reservation), not the distinct
 * cpus of their cpusets: a core resource may carry two hyperthreads, and emulated hosts
 * map several cores onto one cpu. Exported for tests.
 */
export function hostsOf(rows: ReadonlyArray<{ network_address: string; cpuset: string }>): JobHost[] {
  const hosts = new Map<string, { cpus: Set<number>; cores: number }>();
  for (const r of rows) {
    let h = hosts.get(r.network_address);
    if (!h) hosts.set(r.network_address, (h = { cpus: new Set(), cores: 0 }));
    h.cores++;
    for (const c of parseCpuset(r.cpuset)) h.cpus.add(c);
  }
  return [...hosts].map(([node, h]) => ({ node, cpuset: formatCpuset(h.cpus), cores: h.cores }));
}
