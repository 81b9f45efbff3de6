/**
 * Scale benchmarks (issue: measure it), with the simulator of tools/sim: one real controller,
 * N simulated agents (real gRPC, real NATS), a fake OAR. One run at 100 and 1,000 nodes
 * (and 5,000 unless --quick) with light simulated agents, and at 100 (and 1,000 unless
 * --quick) with real agents on fake drivers (keys ending `_real_agents`); 20 one-vCPU
 * instances per node, jobs of 50 nodes:
 * - sim.dispatch_per_s_<N>_nodes: instances placed, created on their agents and RUNNING in
 *   the controller's store, per second, all jobs started at once. Anchor (not measured
 *   here): Nomad's published C1M run, 1,000,000 containers on 5,000 hosts in under 5
 *   minutes, about 3,300 per second;
 * - sim.job_start_to_running_ms_<N>_nodes: OAR event → the job's 1,000 instances RUNNING
 *   (median over the jobs started together);
 * - sim.reconcile_pass_ms_<N>_nodes: one full reconcile pass (relist every agent, diff);
 * - sim.controller_rss_mb_<N>_nodes: controller memory with every instance running;
 * - events.publish_to_controller_p99_ms: an agent's instance event (JetStream) → the
 *   controller's store updated, at 1,000 nodes; baseline: raw core NATS publish →
 *   subscriber on the same kind of server, same pace.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { startNatsServer } from '../sim/nats.js';
import { runSim } from '../sim/sim.js';
import type { BenchContext } from './agent.js';
import { median, quantile, round } from './results.js';

const C1M_PER_S = 3333;

/** Raw NATS: `count` messages published at `perSecond`, each timed publish → subscriber. */
async function rawNatsLatencies(count: number, perSecond: number): Promise<number[]> {
  const dir = mkdtempSync(join(tmpdir(), 'oc-bench-nats-'));
  const server = await startNatsServer(dir);
  const pub = await connect({ servers: server.url });
  const sub = await connect({ servers: server.url });
  try {
    const got: number[] = [];
    const s = sub.subscribe('bench.raw');
    const done = (async () => {
      for await (const m of s) {
        got.push(performance.now() - Number(new TextDecoder().decode(m.data)));
        if (got.length === count) break;
      }
    })();
    await sub.flush();
    for (let i = 0; i < count; i++) {
      pub.publish('bench.raw', String(performance.now()));
      if (i % 10 === 9) await new Promise((r) => setTimeout(r, (10 / perSecond) * 1000));
    }
    await pub.flush();
    await Promise.race([done, new Promise((r) => setTimeout(r, 30_000))]);
    return got;
  } finally {
    await pub.close();
    await sub.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function benchSim(ctx: BenchContext): Promise<void> {
  const r = ctx.results;
  // Light simulated agents at every size; real agents (packages/agent on fake drivers) at
  // the smaller ones: they cost far more CPU, and this machine runs them beside the controller.
  const runs = [
    ...(ctx.quick ? [100, 1000] : [100, 1000, 5000]).map((nodes) => ({ nodes, real: false })),
    ...(ctx.quick ? [100] : [100, 1000]).map((nodes) => ({ nodes, real: true })),
  ];
  const probes = ctx.quick ? 1000 : 3000;
  for (const { nodes, real } of runs) {
    console.log(`bench sim: ${nodes} nodes${real ? ', real agents' : ''}…`);
    const s = await runSim({ nodes, realAgents: real, perHost: 20, nodesPerJob: 50, probes: real ? 0 : probes, probeRate: 1000, log: (l) => console.log(l) });
    const tag = `${nodes}_nodes${real ? '_real_agents' : ''}`;
    const about = `${nodes} ${real ? 'real agents (packages/agent on fake drivers)' : 'simulated nodes'}, ${s.instances} instances in ${s.jobs} jobs of ${s.nodesPerJob} nodes, all started at once`;
    r.set(`sim.dispatch_per_s_${tag}`, {
      value: round(s.dispatch.perSecond),
      unit: 'instances/s',
      stat: 'value',
      n: s.instances,
      better: 'higher',
      what: `instances placed, created on their agents and RUNNING, per second (${about})`,
      baseline: { what: 'Nomad C1M, published (1M containers on 5,000 hosts in < 5 min); not measured here', value: C1M_PER_S },
      note: `placement of all ${s.instances} took ${round(s.dispatch.placedMs)} ms; CPU during the dispatch: controller ${round(s.dispatch.controllerCpuMs / 1000, 1)} s, agents ${round(s.dispatch.farmsCpuMs / 1000, 1)} s, on the same 2 cores`,
      ...ctx.meta,
    });
    r.time(`sim.job_start_to_running_ms_${tag}`, ctx.meta, `OAR Running event → the job's ${s.nodesPerJob * s.perHost} instances RUNNING (${about})`, s.dispatch.jobMs);
    r.time(`sim.reconcile_pass_ms_${tag}`, ctx.meta, `one full reconcile pass: relist ${nodes} agents, OAR states, diff, network meshes (${s.instances} instances)`, s.reconcileMs);
    r.set(`sim.controller_rss_mb_${tag}`, {
      value: round(s.memory.rssMb),
      unit: 'MB',
      stat: 'value',
      n: 1,
      better: 'lower',
      what: `controller resident memory with ${nodes} nodes and ${s.instances} instances running (heap ${round(s.memory.heapMb)} MB)`,
      note: `idle with ${nodes} agents connected: ${round(s.memory.idleRssMb)} MB`,
      ...ctx.meta,
    });
    if (nodes === 1000 && !real) {
      const raw = await rawNatsLatencies(probes, 1000);
      r.set('events.publish_to_controller_p99_ms', {
        value: round(quantile(s.events.latencyMs, 0.99), 2),
        unit: 'ms',
        stat: 'p99',
        n: s.events.latencyMs.length,
        better: 'lower',
        what: `agent instance event (JetStream publish) → controller store updated, 1,000/s, ${nodes} nodes running ${s.instances} instances; median ${round(median(s.events.latencyMs), 2)} ms, ${s.events.lost} lost`,
        baseline: { what: 'raw core NATS publish → subscriber, same pace, private nats-server', value: round(quantile(raw, 0.99), 2) },
        ...ctx.meta,
      });
    }
  }
}
