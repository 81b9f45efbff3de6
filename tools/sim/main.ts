/**
 * `npx tsx tools/sim/main.ts [--nodes 1000] [--per-host 20] [--nodes-per-job 50] [--probes 2000] [--burst 0] [--real-agents]`:
 * one simulator run (sim.ts), its summary on stdout as JSON. `npm run bench -- sim` records figures.
 */
import { parseArgs } from 'node:util';
import { quantile } from '../bench/results.js';
import { runSim } from './sim.js';

const { values } = parseArgs({
  options: {
    nodes: { type: 'string', default: '100' },
    'per-host': { type: 'string', default: '20' },
    'nodes-per-job': { type: 'string', default: '50' },
    probes: { type: 'string', default: '2000' },
    burst: { type: 'string', default: '0' },
    'real-agents': { type: 'boolean', default: false },
  },
});
const r = await runSim({
  nodes: Number(values.nodes),
  perHost: Number(values['per-host']),
  nodesPerJob: Number(values['nodes-per-job']),
  probes: Number(values.probes),
  burst: Number(values.burst),
  realAgents: values['real-agents'],
  log: (l) => console.error(l),
});
const { latencyMs, ...events } = r.events;
console.log(
  JSON.stringify(
    { ...r, events: { ...events, n: latencyMs.length, p50: quantile(latencyMs, 0.5), p99: quantile(latencyMs, 0.99), max: Math.max(...latencyMs) }, dispatch: { ...r.dispatch, jobMs: undefined, jobMsMedian: quantile(r.dispatch.jobMs, 0.5), jobMsMax: Math.max(...r.dispatch.jobMs) } },
    null,
    2,
  ),
);
