/**
 * `npm run bench [-- [--quick] [group…]]`: runs the benchmarks (all groups by default) on
 * the local cluster and merges the figures into bench/results.json and bench/RESULTS.md.
 */
import { fileURLToPath } from 'node:url';
import { benchAgent, type BenchContext } from './agent.js';
import { benchController } from './controller.js';
import { benchFaults } from './faults.js';
import { benchImages } from './images.js';
import { benchNet } from './net.js';
import { benchSim } from './sim.js';
import { commit, machine, ResultsFile } from './results.js';

const groups: Record<string, (ctx: BenchContext) => Promise<void>> = {
  agent: benchAgent,
  controller: benchController,
  net: benchNet,
  sim: benchSim,
  faults: benchFaults,
  images: benchImages,
};

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const wanted = args.filter((a) => !a.startsWith('--'));
const unknown = wanted.filter((g) => !(g in groups));
if (unknown.length > 0) {
  console.error(`unknown benchmark group(s): ${unknown.join(', ')}; known: ${Object.keys(groups).join(', ')}`);
  process.exit(2);
}
const root = fileURLToPath(new URL('../..', import.meta.url));
const results = new ResultsFile(process.env.OARCLOUD_BENCH_DIR ?? `${root}bench`);
const ctx: BenchContext = {
  results,
  quick,
  meta: { machine: machine(), commit: commit(root), date: new Date().toISOString().slice(0, 10), command: `npm run bench -- ${args.join(' ')}`.trim() },
};
const failed: string[] = [];
for (const g of wanted.length > 0 ? wanted : Object.keys(groups)) {
  const t0 = performance.now();
  console.log(`bench ${g}…`);
  try {
    await groups[g]!(ctx);
  } catch (err) {
    // One group failing does not lose the others' figures; the run still fails at the end.
    failed.push(g);
    console.error(`bench ${g} FAILED: ${(err as Error).stack ?? String(err)}`);
  }
  results.save();
  console.log(`bench ${g} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}
for (const [k, f] of Object.entries(results.results)) {
  console.log(`${k.padEnd(36)} ${String(f.value).padStart(8)} ${f.unit}${f.baseline ? `   baseline ${f.baseline.value} ${f.unit}   ratio ${f.ratio}` : ''}`);
}
if (failed.length > 0) {
  console.error(`bench: ${failed.length} group(s) failed: ${failed.join(', ')}`);
  process.exitCode = 1;
}
