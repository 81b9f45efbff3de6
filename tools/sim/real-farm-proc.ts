/**
 * Child process of the simulator: a farm of REAL agents (packages/agent startAgent: the
 * gRPC service, instance manager, reconcile loop, NATS events and heartbeats, each with
 * its own NATS connection) running on the fake host drivers (fakeDrivers: runtime, cgroups,
 * layers, rootfs, Open vSwitch, links, NAT), many to a process. Heavier than farm-proc's
 * light agents, so used at smaller sizes: it shows the real agent code at scale.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '@oarcloud/common';
import { AgentConfigSchema, fakeDrivers, startAgent, type RunningAgent } from '../../packages/agent/src/index.js';
import { SIM_LAYER } from './image.js';
import { cpuMs, serveParent } from './ipc.js';

const agents: Array<{ name: string; agent: RunningAgent }> = [];
let dir: string | undefined;

serveParent({
  start: async (a: { names: string[]; natsUrl: string; heartbeatMs: number; firstIndex: number }) => {
    dir = mkdtempSync(join(tmpdir(), 'oc-sim-real-'));
    // One warn-level log for the farm: an info line per instance would cost more than the agent.
    const log = createLogger({ name: 'oarcloud-agent', level: 'warn', destination: join(dir, 'agents.log') });
    for (const [k, name] of a.names.entries()) {
      const i = a.firstIndex + k;
      const config = AgentConfigSchema.parse({
        nodeName: name,
        listen: '127.0.0.1:0',
        natsUrl: a.natsUrl,
        stateDir: join(dir, name),
        instancesDir: join(dir, name, 'instances'),
        underlayIp: `10.${200 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`,
        heartbeatMs: a.heartbeatMs,
        idmapBase: 0,
      });
      const agent = await startAgent(config, { log: log.child({ node: name }), drivers: fakeDrivers(name, { layers: [{ digest: SIM_LAYER, bytes: 1 << 20 }] }) });
      agents.push({ name, agent });
    }
    return agents.map(({ name, agent }) => ({ name, address: `127.0.0.1:${agent.port}` }));
  },
  stats: () => ({ calls: {}, events: 0, heartbeats: 0, instances: agents.reduce((n, { agent }) => n + agent.manager.list().length, 0) }),
  probe: () => ({}),
  rss: () => process.memoryUsage().rss,
  cpuMs: () => cpuMs(),
  stop: async () => {
    await Promise.all(agents.map(({ agent }) => agent.close().catch(() => undefined)));
    if (dir) rmSync(dir, { recursive: true, force: true });
  },
});
