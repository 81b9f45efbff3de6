/**
 * A whole controller (in-process, on a random port) against the real OAR of the local
 * cluster, with fake agents standing for node-1 and node-2: an `oarsub -t cloud=<spec>`
 * job gets its instances created on its hosts with their cpusets as soon as OAR runs it,
 * and released on every host when it ends. Measures OAR's Running → CreateInstance sent.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryLogger } from '@oarcloud/common';
import { localStateDir, needCommand, needPath, needRoot, prerequisites, startFakeAgent, waitFor, type FakeAgent } from '@oarcloud/testkit';
import { ControllerConfigSchema, loadControllerConfig } from '../../packages/controller/src/config.js';
import { startController, type RunningController } from '../../packages/controller/src/controller.js';

const configFile = `${localStateDir()}/controller.yaml`;
const p = prerequisites('OAR + controller', [needRoot, needPath(configFile), needCommand('oarstat', '-V')]);
const LAYER = `sha256:${'b'.repeat(64)}`;

function oarsub(args: string[]): number {
  const cmd = ['oarsub', ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  return Number(/OAR_JOB_ID=(\d+)/.exec(execFileSync('su', ['-', 'alice', '-c', cmd], { encoding: 'utf8', timeout: 30_000 }))?.[1]);
}

describe.skipIf(!p.ok)('oar controller - real OAR events drive instances on (fake) agents', () => {
  let dir: string;
  let a1: FakeAgent;
  let a2: FakeAgent;
  let ctl: RunningController;
  const log = memoryLogger();

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'oc-oarctl-'));
    a1 = await startFakeAgent('node-1');
    a2 = await startFakeAgent('node-2');
    const real = loadControllerConfig(configFile);
    const config = ControllerConfigSchema.parse({
      listen: '127.0.0.1:0',
      dbPath: join(dir, 'state.db'),
      oarDatabaseUrl: real.oarDatabaseUrl,
      agents: [
        { name: 'node-1', address: a1.address },
        { name: 'node-2', address: a2.address },
      ],
      images: [{ name: 'debian:12', layers: [LAYER] }],
      reconcileMs: 1000,
    });
    ctl = await startController(config, { log, natsEvents: false });
  });

  afterAll(async () => {
    await ctl?.close();
    await a1?.close();
    await a2?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('creates the spec instances when OAR runs the job, and releases every host when it ends', async () => {
    const specId = 's-00000000e2e1';
    ctl.store.putSpec({ id: specId, owner: 'alice', image: 'debian:12', count: 2, vcpus: 1, memoryMib: 64, sshKeys: [], namePrefix: 'it', createdAtMs: Date.now() });
    const id = oarsub(['-t', `cloud=${specId}`, '-l', 'host=2/core=1,walltime=0:05:00', 'sleep 4']);
    await waitFor(() => a1.callsOf('CreateInstance').length > 0 && a2.callsOf('CreateInstance').length > 0, { timeoutMs: 30_000, intervalMs: 20, what: 'CreateInstance on both hosts' });
    const job = ctl.store.getJob(id)!;
    const created = [...a1.instances.values(), ...a2.instances.values()].filter((i) => i.spec?.jobId === id);
    expect(created.map((i) => i.node).sort()).toEqual(['node-1', 'node-2']);
    for (const i of created) expect(i.spec?.cpuset).toBe(job.hosts.find((h) => h.node === i.node)?.cpuset);
    const runningEvent = log.lines.find((l) => l.msg === 'oar job event' && l.fields.jobId === id && l.fields.state === 'Running');
    const launching = log.lines.find((l) => l.msg === 'oar job event' && l.fields.jobId === id && l.fields.state === 'Launching');
    const firstCreate = Math.min(...[...a1.callsOf('CreateInstance'), ...a2.callsOf('CreateInstance')].map((c) => c.atMs));
    console.log(`oar-controller: job ${id}: start action on ${launching ? 'Launching' : 'Running'}; event→dispatch ${String((launching ?? runningEvent)?.fields.ms)} ms; first CreateInstance at ${firstCreate}`);
    await waitFor(() => a1.callsOf('ReleaseJob').some((c) => c.target === String(id)) && a2.callsOf('ReleaseJob').some((c) => c.target === String(id)), {
      timeoutMs: 60_000,
      intervalMs: 100,
      what: 'ReleaseJob on both hosts',
    });
    expect([...a1.instances.values(), ...a2.instances.values()].filter((i) => i.spec?.jobId === id)).toEqual([]);
    await waitFor(() => ctl.store.getJob(id)?.releasedAtMs, { timeoutMs: 10_000, what: 'released' });
    expect(ctl.store.getJob(id)?.state).toBe('ended');
  });
});
