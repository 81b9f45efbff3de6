/**
 * Child process of the simulator: one REAL controller (startController: real SQLite store
 * in a temp folder, real gRPC to the simulated agents, real NATS consumer) with a FAKE OAR
 * source, so jobs spanning N nodes start at once. Its own process, so that its RSS is the
 * controller's alone. The store is wrapped (the Store interface is injectable) to stamp the
 * moment an agent's report lands in the controller's state.
 */
import { join } from 'node:path';
import { createLogger, createRegistry } from '@oarcloud/common';
import { ControllerConfigSchema, startController, type RunningController } from '../../packages/controller/src/index.js';
import { FakeOar } from '../../packages/controller/src/oar/fake.js';
import { SqliteStore } from '../../packages/controller/src/store/sqlite.js';
import type { Store } from '../../packages/controller/src/store/store.js';
import { wallMs } from './agents.js';
import { cpuMs, serveParent } from './ipc.js';

import { SIM_IMAGE, SIM_LAYER } from './image.js';

export interface SimJob {
  id: number;
  hosts: string[];
  /** Instances (one vCPU each) per host: the job gets as many cores there. */
  perHost: number;
}

export interface DispatchResult {
  total: number;
  running: number;
  /** First OAR event handed to the controller → last instance RUNNING in its store. */
  ms: number;
  /** Time until every job's OAR event was handled (instances placed and stored). */
  placedMs: number;
  /** Per job: its OAR event → its last instance RUNNING. */
  jobMs: number[];
}

let ctl: RunningController | undefined;
const oar = new FakeOar();
const firstRunning = new Map<string, number>();
const probes = new Map<string, number>();
let logId = 0;

/** The store, with every change of reported state stamped (wall clock, sub-ms). */
function recording(store: Store): Store {
  return new Proxy(store, {
    get(target, prop) {
      if (prop === 'setReported') {
        return (id: string, reported: Parameters<Store['setReported']>[1], reason: string, nowMs: number): number | undefined => {
          const changed = target.setReported(id, reported, reason, nowMs);
          if (changed !== undefined) {
            if (reported === 'running' && !firstRunning.has(id)) firstRunning.set(id, wallMs());
            if (reason.startsWith('probe-')) probes.set(reason, wallMs());
          }
          return changed;
        };
      }
      const v = (target as unknown as Record<string | symbol, unknown>)[prop];
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function memory(): { rssMb: number; heapMb: number } {
  (globalThis as { gc?: () => void }).gc?.();
  const m = process.memoryUsage();
  return { rssMb: m.rss / 2 ** 20, heapMb: m.heapUsed / 2 ** 20 };
}

serveParent({
  start: async (a: { dir: string; natsUrl: string; agents: Array<{ name: string; address: string }> }) => {
    const config = ControllerConfigSchema.parse({
      listen: '127.0.0.1:0',
      natsUrl: a.natsUrl,
      dbPath: join(a.dir, 'controller', 'state.db'),
      agents: a.agents,
      images: [{ name: SIM_IMAGE, layers: [SIM_LAYER] }],
      // Passes are run (and timed) on demand, not in the middle of a dispatch measurement.
      reconcileMs: 600_000,
      agentCreateTimeoutMs: 300_000,
      agentCallTimeoutMs: 120_000,
      // Jobs of 50 nodes x 20 instances: a /21 per job network (2,046 addresses), not a /24.
      networkPool: '10.0.0.0/8',
      networkSubnetPrefix: 21,
    });
    // The daemon's logger (info, to a file), as in production.
    const log = createLogger({ name: 'oarcloud-controller', level: 'info', destination: join(a.dir, 'controller.log') });
    ctl = await startController(config, { log, registry: createRegistry('controller'), store: recording(new SqliteStore(config.dbPath)), oar, oarCommands: oar, oarEvents: false });
    return { port: ctl.port, ...memory() };
  },

  dispatch: async (a: { jobs: SimJob[]; timeoutMs: number }): Promise<DispatchResult> => {
    const c = ctl!;
    let total = 0;
    for (const j of a.jobs) {
      const specId = `s-${j.id.toString(16).padStart(12, '0')}`;
      const count = j.hosts.length * j.perHost;
      total += count;
      c.store.putSpec({ id: specId, owner: 'sim', image: SIM_IMAGE, count, vcpus: 1, memoryMib: 64, sshKeys: [], namePrefix: '', createdAtMs: Date.now() });
      oar.addJob({
        id: j.id,
        user: 'sim',
        types: [`cloud=${specId}`],
        state: 'Running',
        walltimeS: 3600,
        startTime: Math.floor(Date.now() / 1000),
        hosts: j.hosts.map((node) => ({ node, cpuset: `0-${j.perHost - 1}`, cores: j.perHost })),
      });
    }
    const before = firstRunning.size;
    const t0 = wallMs();
    // The OAR events of every job at once (as a burst of job_state_logs rows would come).
    await Promise.all(a.jobs.map((j) => c.jobs.onOarEvent({ logId: ++logId, jobId: j.id, state: 'Running', date: 0 })));
    const placedMs = wallMs() - t0;
    const deadline = performance.now() + a.timeoutMs;
    while (firstRunning.size - before < total && performance.now() < deadline) await sleep(10);
    const ms = wallMs() - t0;
    const jobMs = a.jobs.map((j) => {
      const ts = c.store.listInstances({ jobId: j.id }).map((i) => firstRunning.get(i.id) ?? Infinity);
      return Math.max(...ts) - t0;
    });
    return { total, running: firstRunning.size - before, ms, placedMs, jobMs };
  },

  reconcile: async (a: { times: number }) => {
    const out: Array<{ ms: number; create: number; destroy: number; report: number; sync: number; unreachable: number }> = [];
    for (let k = 0; k < a.times; k++) {
      const t = performance.now();
      const r = await ctl!.reconciler.pass();
      const ms = performance.now() - t;
      out.push({ ms, create: r?.plan.create.length ?? 0, destroy: r?.plan.destroy.length ?? 0, report: r?.plan.report.length ?? 0, sync: r?.plan.syncJobs.length ?? 0, unreachable: r?.unreachable.length ?? 0 });
    }
    return out;
  },

  /** Wall-clock times at which the given probe tokens reached the store (waits for them, bounded). */
  probeTimes: async (a: { tokens: string[]; timeoutMs: number }) => {
    const deadline = performance.now() + a.timeoutMs;
    while (a.tokens.some((t) => !probes.has(t)) && performance.now() < deadline) await sleep(20);
    return Object.fromEntries(a.tokens.filter((t) => probes.has(t)).map((t) => [t, probes.get(t)!]));
  },

  /** OAR ends every job: its event → every host released (teardown awaited by onOarEvent). */
  end: async (a: { jobIds: number[] }) => {
    const t0 = performance.now();
    await Promise.all(
      a.jobIds.map((id) => {
        oar.setState(id, 'Terminated');
        return ctl!.jobs.onOarEvent({ logId: ++logId, jobId: id, state: 'Terminated', date: 0 });
      }),
    );
    const released = a.jobIds.filter((id) => ctl!.store.getJob(id)?.releasedAtMs).length;
    return { ms: performance.now() - t0, released };
  },

  memory: () => memory(),
  cpuMs: () => cpuMs(),
  counts: () => ({ instances: ctl!.store.listInstances({ liveOnly: true }).length, jobs: ctl!.store.listJobs().length }),

  stop: async () => {
    await ctl?.close();
  },
});
