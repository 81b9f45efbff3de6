/**
 * The scale simulator: N simulated node agents (real gRPC servers on 127.0.0.1, real NATS
 * events and heartbeats; agents.ts, in farm child processes), one REAL controller (its own
 * child process: real SQLite store, real gRPC, real NATS consumer; FAKE OAR so jobs spanning
 * many nodes start at once) and a private nats-server. One run:
 *  1. dispatch: jobs of `nodesPerJob` nodes with `perHost` one-vCPU instances per node, all
 *     started at once (OAR event → placed, stored, CreateInstance to every agent, RUNNING);
 *  2. reconcile: full passes (relist every agent, OAR states, diff, network meshes);
 *  3. memory of the controller at that size;
 *  4. events: instance events paced at `probeRate`/s, agent publish → controller store;
 *     then a burst as fast as the farm can publish (throughput);
 *  5. end: OAR ends every job → every host released.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DispatchResult, SimJob } from './controller-proc.js';
import { spawnChild, type Child } from './ipc.js';
import { startNatsServer } from './nats.js';

export interface SimOptions {
  nodes: number;
  /** Real agents (packages/agent on fake drivers) instead of the light simulated ones. */
  realAgents?: boolean;
  perHost?: number;
  nodesPerJob?: number;
  heartbeatMs?: number;
  /** Paced events for the latency figure, and their rate. */
  probes?: number;
  probeRate?: number;
  /** Events of the throughput burst (0: none). */
  burst?: number;
  reconcilePasses?: number;
  /** Bound of the dispatch wait. */
  timeoutMs?: number;
  log?: (line: string) => void;
}

export interface SimResult {
  nodes: number;
  instances: number;
  jobs: number;
  nodesPerJob: number;
  perHost: number;
  /** With the CPU time the controller and the simulated agents used during the dispatch. */
  dispatch: DispatchResult & { perSecond: number; controllerCpuMs: number; farmsCpuMs: number };
  reconcileMs: number[];
  reconcilePlan: { create: number; destroy: number; report: number; unreachable: number };
  memory: { idleRssMb: number; rssMb: number; heapMb: number };
  events: { latencyMs: number[]; lost: number; burstPerSecond: number; burstLost: number };
  endMs: number;
  released: number;
  agentCalls: Record<string, number>;
  agentEvents: number;
  heartbeats: number;
  farmRssMb: number;
  wallS: number;
}

const here = (f: string) => fileURLToPath(new URL(f, import.meta.url));

export async function runSim(o: SimOptions): Promise<SimResult> {
  const perHost = o.perHost ?? 20;
  const nodesPerJob = Math.min(o.nodesPerJob ?? 50, o.nodes);
  const log = o.log ?? (() => undefined);
  const t00 = performance.now();
  const dir = mkdtempSync(join(tmpdir(), 'oc-sim-'));
  const nats = await startNatsServer(dir);
  const farms: Child[] = [];
  let controller: Child | undefined;
  try {
    const names = Array.from({ length: o.nodes }, (_, i) => `sim-${String(i + 1).padStart(5, '0')}`);
    const perFarm = o.realAgents ? 250 : 2500;
    const agents: Array<{ name: string; address: string }> = [];
    for (let f = 0; f * perFarm < names.length; f++) {
      const farm = spawnChild(here(o.realAgents ? './real-farm-proc.ts' : './farm-proc.ts'));
      farms.push(farm);
      agents.push(...(await farm.call<Array<{ name: string; address: string }>>('start', { names: names.slice(f * perFarm, (f + 1) * perFarm), natsUrl: nats.url, heartbeatMs: o.heartbeatMs ?? 5000, firstIndex: f * perFarm })));
    }
    log(`sim: ${agents.length} ${o.realAgents ? 'real agents (fake drivers)' : 'simulated agents'} up in ${farms.length} farm process(es)`);
    // OARCLOUD_SIM_CPU_PROF=DIR: the controller writes a V8 CPU profile there (open it in Chrome DevTools).
    const prof = process.env.OARCLOUD_SIM_CPU_PROF;
    controller = spawnChild(here('./controller-proc.ts'), { execArgv: ['--expose-gc', ...(prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : [])] });
    const started = await controller.call<{ rssMb: number }>('start', { dir, natsUrl: nats.url, agents });
    // The first pass (at start, with nothing yet) contacts every agent: channels are connected before timing.
    await controller.call('reconcile', { times: 1 });
    const idle = await controller.call<{ rssMb: number }>('memory');
    log(`sim: controller up (rss ${started.rssMb.toFixed(0)} MB at start, ${idle.rssMb.toFixed(0)} MB with ${o.nodes} agents connected)`);

    const jobs: SimJob[] = [];
    for (let k = 0; k * nodesPerJob < names.length; k++) jobs.push({ id: 1000 + k, hosts: names.slice(k * nodesPerJob, (k + 1) * nodesPerJob), perHost });
    const cpu = async (): Promise<{ controller: number; farms: number }> => ({
      controller: await controller!.call<number>('cpuMs'),
      farms: (await Promise.all(farms.map((f) => f.call<number>('cpuMs')))).reduce((a, b) => a + b, 0),
    });
    const cpu0 = await cpu();
    const d = await controller.call<DispatchResult>('dispatch', { jobs, timeoutMs: o.timeoutMs ?? 600_000 });
    const cpu1 = await cpu();
    const dispatch = { ...d, perSecond: (d.running / d.ms) * 1000, controllerCpuMs: cpu1.controller - cpu0.controller, farmsCpuMs: cpu1.farms - cpu0.farms };
    log(
      `sim: dispatch ${d.running}/${d.total} RUNNING in ${(d.ms / 1000).toFixed(1)} s (${dispatch.perSecond.toFixed(0)}/s; placed in ${(d.placedMs / 1000).toFixed(1)} s; CPU: controller ${(dispatch.controllerCpuMs / 1000).toFixed(1)} s, simulated agents ${(dispatch.farmsCpuMs / 1000).toFixed(1)} s)`,
    );
    if (d.running < d.total) throw new Error(`only ${d.running} of ${d.total} instances RUNNING before the timeout`);

    const cpu2 = await cpu();
    const passes = await controller.call<Array<{ ms: number; create: number; destroy: number; report: number; unreachable: number }>>('reconcile', { times: o.reconcilePasses ?? 3 });
    const cpu3 = await cpu();
    const last = passes.at(-1)!;
    log(
      `sim: reconcile passes ${passes.map((p) => p.ms.toFixed(0)).join(', ')} ms (CPU: controller ${((cpu3.controller - cpu2.controller) / 1000).toFixed(1)} s, agents ${((cpu3.farms - cpu2.farms) / 1000).toFixed(1)} s)`,
    );
    const mem = await controller.call<{ rssMb: number; heapMb: number }>('memory');
    log(`sim: controller rss ${mem.rssMb.toFixed(0)} MB, heap ${mem.heapMb.toFixed(0)} MB`);

    // Events: paced probes (latency), then a burst (throughput). One farm publishes them.
    const probes = o.probes ?? 2000;
    const sent = await farms[0]!.call<Record<string, number>>('probe', { count: probes, perSecond: o.probeRate ?? 1000 });
    const applied = await controller.call<Record<string, number>>('probeTimes', { tokens: Object.keys(sent), timeoutMs: 30_000 });
    const latencyMs = Object.entries(sent)
      .filter(([t]) => applied[t] !== undefined)
      .map(([t, at]) => applied[t]! - at);
    let burstPerSecond = 0;
    let burstLost = 0;
    if ((o.burst ?? 0) > 0) {
      const bs = await farms[0]!.call<Record<string, number>>('probe', { count: o.burst, perSecond: 1e9 });
      const ba = await controller.call<Record<string, number>>('probeTimes', { tokens: Object.keys(bs), timeoutMs: 60_000 });
      const first = Math.min(...Object.values(bs));
      const lastApplied = Math.max(...Object.values(ba));
      burstLost = Object.keys(bs).length - Object.keys(ba).length;
      burstPerSecond = (Object.keys(ba).length / (lastApplied - first)) * 1000;
    }
    log(`sim: events ${latencyMs.length}/${probes} applied; burst ${burstPerSecond.toFixed(0)}/s`);

    const end = await controller.call<{ ms: number; released: number }>('end', { jobIds: jobs.map((j) => j.id) });
    log(`sim: end of ${jobs.length} jobs → released in ${(end.ms / 1000).toFixed(1)} s`);
    const stats = await Promise.all(farms.map((f) => f.call<{ calls: Record<string, number>; events: number; heartbeats: number }>('stats')));
    const agentCalls: Record<string, number> = {};
    for (const s of stats) for (const [k, v] of Object.entries(s.calls)) agentCalls[k] = (agentCalls[k] ?? 0) + v;
    const farmRss = (await Promise.all(farms.map((f) => f.call<number>('rss')))).reduce((a, b) => a + b, 0);
    return {
      nodes: o.nodes,
      instances: d.total,
      jobs: jobs.length,
      nodesPerJob,
      perHost,
      dispatch,
      reconcileMs: passes.map((p) => p.ms),
      reconcilePlan: { create: last.create, destroy: last.destroy, report: last.report, unreachable: last.unreachable },
      memory: { idleRssMb: idle.rssMb, rssMb: mem.rssMb, heapMb: mem.heapMb },
      events: { latencyMs, lost: probes - latencyMs.length, burstPerSecond, burstLost },
      endMs: end.ms,
      released: end.released,
      agentCalls,
      agentEvents: stats.reduce((s, x) => s + x.events, 0),
      heartbeats: stats.reduce((s, x) => s + x.heartbeats, 0),
      farmRssMb: farmRss / 2 ** 20,
      wallS: (performance.now() - t00) / 1000,
    };
  } finally {
    await controller?.call('stop').catch(() => undefined);
    await controller?.kill(process.env.OARCLOUD_SIM_CPU_PROF ? 30_000 : 0);
    for (const f of farms) {
      await f.call('stop').catch(() => undefined);
      await f.kill();
    }
    await nats.stop();
    if (!process.env.OARCLOUD_SIM_KEEP) rmSync(dir, { recursive: true, force: true });
    else log(`sim: kept ${dir}`);
  }
}
