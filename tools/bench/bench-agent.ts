/**
 * A private agent for a benchmark: its own node name (so the cluster's controller never
 * sees its instances), its own state folder under the local cluster's state dir, a fake
 * job id, and helpers to make instance specs and call it. `close()` releases the job,
 * stops the agent and removes its folders.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { AgentServiceClient, type Instance, type InstanceSpec } from '@oarcloud/api';
import { callUnary } from '@oarcloud/common';
import { freePort, launchDaemon, localStateDir } from '@oarcloud/testkit';

export interface BenchAgent {
  node: string;
  jobId: number;
  /** The agent's own folder (its state dir is `<dir>/state`). */
  dir: string;
  instancesDir: string;
  client: AgentServiceClient;
  /** A fresh spec of `image` (ids unique to this process), 1 vCPU on cpus 0-1. */
  spec(image: { name: string; layers: string[] }, over?: Partial<InstanceSpec>): InstanceSpec;
  create(s: InstanceSpec, timeoutMs?: number): Promise<Instance>;
  destroy(id: string): Promise<void>;
  close(): Promise<void>;
}

/** Id prefix of every instance a benchmark process makes (`i-<4 hex of the pid>…`). */
export const benchIdPrefix = `i-${(process.pid % 0xffff).toString(16).padStart(4, '0')}`;

export async function startBenchAgent(o: { prefix: string; jobBase: number; config?: Record<string, unknown> }): Promise<BenchAgent> {
  const node = `${o.prefix}-${process.pid}`;
  const jobId = o.jobBase + (process.pid % 9_000);
  const dir = mkdtempSync(join(localStateDir(), `${o.prefix}-`));
  const instancesDir = join(localStateDir(), 'instances', node);
  mkdirSync(instancesDir, { recursive: true });
  // The agent runs as its systemd unit runs it (infra/systemd/oarcloud-agent.service): with 16 libuv
  // threads, which its koffi calls to libvirt run on (packages/agent drivers/libvirt/runtime.ts).
  process.env.UV_THREADPOOL_SIZE ??= '16';
  const agent = await launchDaemon('agent', dir, {
    nodeName: node,
    listen: `127.0.0.1:${await freePort()}`,
    metricsListen: `127.0.0.1:${await freePort()}`,
    natsUrl: 'nats://127.0.0.1:14222',
    stateDir: join(dir, 'state'),
    instancesDir,
    datapath: 'netdev',
    logLevel: 'warn',
    ...o.config,
  });
  const client = new AgentServiceClient(agent.address, credentials.createInsecure());
  let seq = 0;
  return {
    node,
    jobId,
    dir,
    instancesDir,
    client,
    spec(image, over = {}) {
      const k = ++seq;
      const id = `${benchIdPrefix}${k.toString(16).padStart(8, '0')}`;
      return { id, name: `b${k}`, jobId, owner: 'bench', image: { name: image.name, layers: image.layers }, vcpus: 1, memoryMib: 128, cpuset: '0-1', sshAuthorizedKeys: [], hostname: `b${k}`, networks: [], ...over };
    },
    create: (s, timeoutMs = 60_000) => callUnary(client.createInstance.bind(client), { spec: s }, { timeoutMs }),
    destroy: async (id) => void (await callUnary(client.destroyInstance.bind(client), { id }, { timeoutMs: 60_000 })),
    async close() {
      await callUnary(client.releaseJob.bind(client), { jobId }, { timeoutMs: 120_000 }).catch(() => undefined);
      client.close();
      await agent.stop();
      rmSync(instancesDir, { recursive: true, force: true });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
