/**
 * Child process of the simulator: a farm of simulated agents (agents.ts), driven over IPC.
 */
import { cpuMs, serveParent } from './ipc.js';
import { startSimFarm, type SimFarm } from './agents.js';

let farm: SimFarm | undefined;

serveParent({
  start: async (a: { names: string[]; natsUrl: string; heartbeatMs: number; firstIndex: number }) => {
    farm = await startSimFarm(a);
    return farm.nodes.map((n) => ({ name: n.name, address: `127.0.0.1:${n.port}` }));
  },
  stats: () => farm!.stats(),
  probe: (a: { count: number; perSecond: number }) => farm!.probe(a.count, a.perSecond),
  rss: () => process.memoryUsage().rss,
  cpuMs: () => cpuMs(),
  stop: async () => {
    await farm?.close();
  },
});
