/**
 * The fault soak: the fault suite (test/faults/faults.test.ts) with many rounds, its outcome
 * recorded from the suite's JSON report (OARCLOUD_FAULT_REPORT):
 * - faults.rounds_converged: rounds whose job, with a part SIGKILLed at a random point of
 *   its start or end, converged (instances RUNNING, then nothing of the job left and no
 *   orphan of any kind on the cluster) — out of `n`;
 * - faults.converge_ms: kill → every invariant holds again (median over the rounds);
 * - faults.round_ms: one whole round (submit → RUNNING → oardel → clean, kill and restart inside).
 * `--quick`: 7 rounds (as CI); otherwise 42 (OARCLOUD_FAULT_ROUNDS sets it). OARCLOUD_FAULT_SEED replays a run.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchContext } from './agent.js';
import { median, quantile, round } from './results.js';

interface FaultReport {
  seed: number;
  rounds: number;
  results: Array<{ round: number; victim: string; phase: string; delayMs: number; ok: boolean; convergeMs?: number; ms: number; error?: string }>;
}

export async function benchFaults(ctx: BenchContext): Promise<void> {
  const rounds = Number(process.env.OARCLOUD_FAULT_ROUNDS ?? (ctx.quick ? 7 : 42));
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), 'oc-bench-faults-'));
  const reportFile = join(dir, 'report.json');
  try {
    const r = spawnSync('npx', ['vitest', 'run', '--project', 'faults'], {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, OARCLOUD_FAULT_ROUNDS: String(rounds), OARCLOUD_FAULT_REPORT: reportFile },
      timeout: rounds * 6 * 60_000,
    });
    let report: FaultReport;
    try {
      report = JSON.parse(readFileSync(reportFile, 'utf8')) as FaultReport;
    } catch {
      console.error(`${r.stdout}${r.stderr}`.slice(-4000));
      throw new Error(`the fault suite wrote no report (vitest exit ${r.status})`);
    }
    const ok = report.results.filter((x) => x.ok);
    const failed = report.results.find((x) => !x.ok);
    const kinds = [...new Set(ok.map((x) => `${x.victim}@${x.phase}`))].sort();
    ctx.results.set('faults.rounds_converged', {
      value: ok.length,
      unit: 'rounds',
      stat: 'value',
      n: rounds,
      better: 'higher',
      what: `fault soak (test/faults): rounds that converged out of ${rounds} (seed ${report.seed}, replay with OARCLOUD_FAULT_SEED); kills: ${kinds.join(', ')}`,
      note: failed ? `stopped at round ${failed.round} (${failed.victim} killed ${failed.delayMs} ms into the ${failed.phase}): ${(failed.error ?? '').slice(0, 300)}` : 'all rounds converged',
      ...ctx.meta,
    });
    const conv = ok.map((x) => x.convergeMs ?? 0);
    if (conv.length > 0) {
      ctx.results.set('faults.converge_ms', {
        value: round(median(conv)),
        p95: round(quantile(conv, 0.95)),
        unit: 'ms',
        stat: 'median',
        n: conv.length,
        better: 'lower',
        what: 'kill -9 of a part → part back, job RUNNING (or gone) and no orphan anywhere (audit of agents, libvirt, mounts, cgroups, veths, OVS)',
        ...ctx.meta,
      });
      ctx.results.set('faults.round_ms', { value: round(median(ok.map((x) => x.ms))), unit: 'ms', stat: 'median', n: ok.length, better: 'lower', what: 'one fault round: submit → RUNNING → oardel → clean, one part killed and restarted inside', ...ctx.meta });
    }
    if (r.status !== 0) console.error(`${r.stdout}${r.stderr}`.slice(-4000));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
