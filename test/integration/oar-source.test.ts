/**
 * The controller's OAR sources against the real OAR database of the local cluster:
 * LISTEN delivers a cloud job's transitions, a replay after a reconnect delivers what was
 * missed, and the job's facts (owner, types, hosts, cpusets, walltime) are read right.
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { nullLogger } from '@oarcloud/common';
import { localStateDir, needCommand, needPath, needRoot, prerequisites, waitFor } from '@oarcloud/testkit';
import { loadControllerConfig } from '../../packages/controller/src/config.js';
import { PgOarFacts } from '../../packages/controller/src/oar/facts.js';
import { startOarListener } from '../../packages/controller/src/oar/listener.js';
import type { OarStateEvent } from '../../packages/controller/src/oar/types.js';

const configFile = `${localStateDir()}/controller.yaml`;
const p = prerequisites('OAR database', [needRoot, needPath(configFile), needCommand('oarstat', '-V'), needCommand('bash', 'infra/local/status.sh')]);

function oarsub(user: string, args: string[]): number {
  const cmd = ['oarsub', ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const out = execFileSync('su', ['-', user, '-c', cmd], { encoding: 'utf8', timeout: 30_000 });
  const id = Number(/OAR_JOB_ID=(\d+)/.exec(out)?.[1]);
  if (!(id > 0)) throw new Error(`oarsub said: ${out}`);
  return id;
}

describe.skipIf(!p.ok)('oar source - LISTEN, replay and job facts on the real OAR database', () => {
  const url = p.ok ? loadControllerConfig(configFile).oarDatabaseUrl : '';

  it('hints at an oardel the moment OAR records it, seconds before the job leaves Running', async () => {
    const frags: Array<{ jobId: number; atMs: number }> = [];
    const states: OarStateEvent[] = [];
    const listener = startOarListener({
      url,
      log: nullLogger,
      cursor: () => Number.MAX_SAFE_INTEGER,
      onEvent: async (ev) => void states.push(ev),
      onFrag: (jobId) => void frags.push({ jobId, atMs: Date.now() }),
    });
    try {
      await waitFor(() => listener.connected, { what: 'listener connected' });
      const id = oarsub('alice', ['-t', 'cloud', '-l', 'host=1/core=1,walltime=0:05:00', 'sleep 300']);
      await waitFor(() => execFileSync('oarstat', ['-s', '-j', String(id)], { encoding: 'utf8' }).includes('Running'), { timeoutMs: 60_000, intervalMs: 300, what: 'Running' });
      const t0 = Date.now();
      execFileSync('su', ['-', 'alice', '-c', `oardel ${id}`], { stdio: 'ignore', timeout: 30_000 });
      const hint = await waitFor(() => frags.find((f) => f.jobId === id), { timeoutMs: 10_000, intervalMs: 20, what: 'frag hint' });
      expect(hint.atMs - t0).toBeLessThan(2000);
      await waitFor(() => ['Error', 'Terminated'].includes(execFileSync('oarstat', ['-s', '-j', String(id)], { encoding: 'utf8' }).split(':').pop()!.trim()), { timeoutMs: 60_000, intervalMs: 300, what: 'job end' });
      console.log(`oar source: oardel -> frag hint in ${hint.atMs - t0} ms; oardel -> job ended in ${Date.now() - t0} ms`);
      expect(frags.filter((f) => f.jobId === id)).toHaveLength(1);
    } finally {
      await listener.close();
    }
  });

  it('delivers Running then Terminated of a cloud job, with its hosts and cpusets read right', async () => {
    const facts = new PgOarFacts(url);
    const events: Array<OarStateEvent & { atMs: number }> = [];
    const cursor = await facts.maxLogId();
    let applied = cursor;
    const listener = startOarListener({
      url,
      log: nullLogger,
      cursor: () => applied,
      onEvent: async (ev) => {
        events.push({ ...ev, atMs: Date.now() });
        applied = ev.logId;
      },
    });
    try {
      await waitFor(() => listener.connected, { what: 'listener connected' });
      const id = oarsub('alice', ['-t', 'cloud=s-0123456789ab', '-l', 'host=2/core=1,walltime=0:05:00', 'sleep 3']);
      const running = await waitFor(() => events.find((e) => e.jobId === id && e.state === 'Running'), { timeoutMs: 30_000, what: 'Running' });
      const f = await facts.job(id);
      expect(f).toMatchObject({ id, user: 'alice', types: ['cloud=s-0123456789ab'], walltimeS: 300 });
      expect(f!.hosts.map((h) => h.node).sort()).toEqual(['node-1', 'node-2']);
      for (const h of f!.hosts) {
        expect(h.cores).toBe(1);
        expect(h.cpuset).toMatch(/^[01]$/);
      }
      expect(await facts.liveCloudJobs()).toContain(id);
      await waitFor(() => events.find((e) => e.jobId === id && e.state === 'Terminated'), { timeoutMs: 60_000, what: 'Terminated' });
      const mine = events.filter((e) => e.jobId === id).map((e) => e.state);
      expect(mine).toEqual(expect.arrayContaining(['Waiting', 'toLaunch', 'Launching', 'Running', 'Finishing', 'Terminated']));
      // In order, each log id once.
      const ids = events.map((e) => e.logId);
      expect(ids).toEqual([...ids].sort((a, b) => a - b));
      expect(new Set(ids).size).toBe(ids.length);
      expect((await facts.states([id, 999_999])).get(id)).toBe('Terminated');
      console.log(`oar-source: Running of job ${id} delivered ${running.atMs - running.date * 1000} ms after its log date (1 s resolution)`);
    } finally {
      await listener.close();
      await facts.close();
    }
  });

  it('replays after a reconnect what was missed while disconnected, and nothing twice', async () => {
    const facts = new PgOarFacts(url);
    let applied = await facts.maxLogId();
    const events: OarStateEvent[] = [];
    const opts = {
      url,
      log: nullLogger,
      cursor: () => applied,
      onEvent: async (ev: OarStateEvent) => {
        events.push(ev);
        applied = ev.logId;
      },
    };
    let listener = startOarListener(opts);
    try {
      await waitFor(() => listener.connected, { what: 'connected' });
      await listener.close();
      // While nobody listens: a whole job happens.
      const id = oarsub('alice', ['-t', 'cloud', '-l', 'host=1/core=1,walltime=0:05:00', 'true']);
      await waitFor(async () => ['Terminated', 'Error'].includes((await facts.states([id])).get(id) ?? ''), { timeoutMs: 60_000, intervalMs: 300, what: 'job end' });
      expect(events.filter((e) => e.jobId === id)).toEqual([]);
      listener = startOarListener(opts);
      await waitFor(() => events.find((e) => e.jobId === id && e.state === 'Terminated'), { timeoutMs: 10_000, what: 'replayed Terminated' });
      // A dropped connection reconnects and replays from the cursor: nothing is delivered twice.
      const n = events.length;
      listener.disconnect();
      const id2 = oarsub('alice', ['-t', 'cloud', '-l', 'host=1/core=1,walltime=0:05:00', 'true']);
      await waitFor(() => events.find((e) => e.jobId === id2 && e.state === 'Running'), { timeoutMs: 30_000, what: 'Running after reconnect' });
      const ids = events.map((e) => e.logId);
      expect(new Set(ids).size).toBe(ids.length);
      expect(events.length).toBeGreaterThan(n);
      await waitFor(() => events.find((e) => e.jobId === id2 && e.state === 'Terminated'), { timeoutMs: 60_000, what: 'second job end' });
    } finally {
      await listener.close();
      await facts.close();
    }
  });
});
