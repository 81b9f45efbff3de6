import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentServiceClient, InstanceState } from '@oarcloud/api';
import { callUnary, nullLogger } from '@oarcloud/common';
import { freePort } from '@oarcloud/testkit';
import { startAgent, type RunningAgent } from './agent.js';
import { AgentConfigSchema } from './config.js';
import { fakeDrivers } from './drivers/fake/drivers.js';

const LAYER = `sha256:${'a'.repeat(64)}`;

describe('agent - the whole agent on fake drivers (what the scale simulator runs)', () => {
  let dir: string;
  let agent: RunningAgent;
  let client: AgentServiceClient;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'oc-agent-'));
    // Nobody listens on this port: NATS down must not keep the agent from serving.
    const config = AgentConfigSchema.parse({ nodeName: 'fake-1', listen: '127.0.0.1:0', natsUrl: `nats://127.0.0.1:${await freePort()}`, stateDir: join(dir, 'state'), instancesDir: join(dir, 'instances'), idmapBase: 0 });
    agent = await startAgent(config, { log: nullLogger, drivers: fakeDrivers('fake-1', { cpus: 8, layers: [{ digest: LAYER, bytes: 1024 }] }) });
    client = new AgentServiceClient(`127.0.0.1:${agent.port}`, credentials.createInsecure());
  });

  afterAll(async () => {
    client?.close();
    await agent?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('agent - creates on the fake host: RUNNING with the cpuset of its job, listed, then destroyed and gone', async () => {
    const spec = { id: 'i-00000000a001', name: 'a-1', jobId: 7, owner: 'alice', image: { name: 'x:1', layers: [LAYER] }, vcpus: 2, memoryMib: 64, cpuset: '4-7', sshAuthorizedKeys: [], hostname: 'a-1', networks: [] };
    const made = await callUnary(client.createInstance.bind(client), { spec }, { timeoutMs: 10_000 });
    expect(made.state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
    expect(made.node).toBe('fake-1');
    const listed = await callUnary(client.listInstances.bind(client), { jobId: 7 });
    expect(listed.instances.map((i) => i.spec?.id)).toEqual([spec.id]);
    // The fake host has 8 cpus: a job cpuset beyond them is refused, as on a real node.
    await expect(callUnary(client.createInstance.bind(client), { spec: { ...spec, id: 'i-00000000a002', name: 'a-2', cpuset: '8-9' } })).rejects.toThrow(/do not exist/);
    await callUnary(client.destroyInstance.bind(client), { id: spec.id }, { timeoutMs: 10_000 });
    expect((await callUnary(client.listInstances.bind(client), { jobId: 0 })).instances).toEqual([]);
  });
});
