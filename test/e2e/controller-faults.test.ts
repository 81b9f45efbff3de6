/**
 * The controller's convergence on the real local cluster when its parts die at the worst
 * moments: the controller during a job's start and during its end, an agent while its
 * instances run, and hooks while the controller is down.
 */
import { execFileSync } from 'node:child_process';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InstanceState, JobServiceClient } from '@oarcloud/api';
import { bearer, callUnary } from '@oarcloud/common';
import {
  agentInstancesOf,
  AGENT_ADDRESSES,
  clusterUp,
  CONTROLLER_ADDRESS,
  jobLeftNothing,
  killDaemon,
  localStateDir,
  needCommand,
  needPath,
  needRoot,
  oarJob,
  oarsub,
  prerequisites,
  sh,
  userToken,
  waitFor,
  waitServing,
} from '@oarcloud/testkit';

const STATE = localStateDir();
const p = prerequisites('controller faults', [needRoot, needPath(`${STATE}/controller/admin.token`), needPath(`${STATE}/images/tiny/image.json`), needCommand('bash', 'infra/local/status.sh')]);

describe.skipIf(!p.ok)('controller faults - convergence on the local cluster', () => {
  const jobs = new JobServiceClient(CONTROLLER_ADDRESS, credentials.createInsecure());
  let token = '';
  const md = () => ({ metadata: bearer(token), timeoutMs: 20_000 });
  const started: number[] = [];

  /** A launch spec of `count` tiny instances (one per host), bound later with `oarsub -t cloud=<spec>`. */
  const spec = async (count: number): Promise<string> => {
    const job = await callUnary(jobs.reserve.bind(jobs), { nodes: count, coresPerNode: 1, walltimeS: 60, spec: { image: 'tiny:latest', count, vcpus: 1, memoryMib: 64, sshAuthorizedKeys: [], namePrefix: 'f' }, idempotencyKey: '' }, md());
    await callUnary(jobs.release.bind(jobs), { id: job.id }, md());
    started.push(job.id);
    return job.specId;
  };
  const submit = (specId: string, hosts = 2): number => {
    const id = oarsub('alice', ['-t', `cloud=${specId}`, '-l', `host=${hosts}/core=1,walltime=0:05:00`, 'sleep 300']);
    started.push(id);
    return id;
  };
  const allRunning = async (jobId: number, count: number): Promise<boolean> => {
    const list = await agentInstancesOf(jobId);
    return list.length === count && list.every((i) => i.state === InstanceState.INSTANCE_STATE_RUNNING);
  };

  beforeAll(async () => {
    await waitServing(CONTROLLER_ADDRESS);
    token = await userToken('alice');
  });

  afterAll(async () => {
    for (const id of started) {
      try {
        sh('oardel', [String(id)], 'alice');
      } catch {
        // already ended
      }
    }
    clusterUp();
    jobs.close();
  });

  it('the controller killed while a job starts catches up after a restart: the job gets its instances', async () => {
    const specId = await spec(2);
    killDaemon('controller');
    const id = submit(specId);
    await waitFor(() => oarJob(id).state === 'Running', { timeoutMs: 60_000, intervalMs: 300, what: `job ${id} Running without a controller` });
    clusterUp();
    await waitServing(CONTROLLER_ADDRESS);
    await waitFor(() => allRunning(id, 2), { timeoutMs: 30_000, intervalMs: 200, what: `job ${id} instances RUNNING after the restart` });
    sh('oardel', [String(id)], 'alice');
    await waitFor(() => jobLeftNothing(id), { timeoutMs: 30_000, intervalMs: 200, what: `job ${id} clean` });
  });

  it('the controller killed while a job ends leaves nothing behind once restarted', async () => {
    const id = submit(await spec(2));
    await waitFor(() => allRunning(id, 2), { timeoutMs: 60_000, intervalMs: 200, what: `job ${id} instances RUNNING` });
    killDaemon('controller');
    sh('oardel', [String(id)], 'alice');
    await waitFor(() => ['Terminated', 'Error'].includes(oarJob(id).state), { timeoutMs: 60_000, intervalMs: 300, what: `job ${id} ended` });
    // Nobody told the agents: the instances are still there until the controller is back.
    expect((await agentInstancesOf(id)).length).toBe(2);
    clusterUp();
    await waitFor(() => jobLeftNothing(id), { timeoutMs: 30_000, intervalMs: 200, what: `job ${id} clean after the restart` });
  });

  it('an agent killed while its instances run converges: they keep running and stay listed', async () => {
    const id = submit(await spec(2));
    await waitFor(() => allRunning(id, 2), { timeoutMs: 60_000, intervalMs: 200, what: `job ${id} instances RUNNING` });
    const before = await agentInstancesOf(id);
    const node = before[0]!.node;
    killDaemon(`agent-${node}`);
    clusterUp();
    await waitServing(AGENT_ADDRESSES[node]!);
    const after = await agentInstancesOf(id);
    expect(after.map((i) => [i.spec!.id, i.initPid]).sort()).toEqual(before.map((i) => [i.spec!.id, i.initPid]).sort());
    sh('oardel', [String(id)], 'alice');
    await waitFor(() => jobLeftNothing(id), { timeoutMs: 30_000, intervalMs: 200, what: `job ${id} clean` });
  });

  it('an instance destroyed behind the controller’s back is started again by the reconcile loop', async () => {
    const id = submit(await spec(1), 1);
    await waitFor(() => allRunning(id, 1), { timeoutMs: 60_000, intervalMs: 200, what: `job ${id} instance RUNNING` });
    const [victim] = await agentInstancesOf(id);
    execFileSync('virsh', ['-c', 'lxc:///system', 'destroy', `oc-${victim!.spec!.id}`], { stdio: 'ignore' });
    await waitFor(async () => (await allRunning(id, 1)) && (await agentInstancesOf(id))[0]!.initPid !== victim!.initPid, {
      timeoutMs: 30_000,
      intervalMs: 200,
      what: `job ${id} instance RUNNING again`,
    });
    sh('oardel', [String(id)], 'alice');
    await waitFor(() => jobLeftNothing(id), { timeoutMs: 30_000, intervalMs: 200, what: `job ${id} clean` });
  });

  it('hooks with the controller down exit 0 at once, OAR queues stay active and nodes Alive', async () => {
    killDaemon('controller');
    try {
      for (const kind of ['server-prologue', 'prologue', 'epilogue', 'server-epilogue']) {
        const t0 = Date.now();
        execFileSync('runuser', ['-u', 'oar', '--', 'bash', 'infra/oar/hooks/' + kind, '999999', 'alice', '/dev/null'], { stdio: 'ignore', timeout: 45_000 });
        expect(Date.now() - t0).toBeLessThan(5000);
      }
      const id = oarsub('alice', ['-t', 'cloud', '-l', 'host=1/core=1,walltime=0:02:00', 'true']);
      started.push(id);
      await waitFor(() => ['Terminated', 'Error'].includes(oarJob(id).state), { timeoutMs: 60_000, intervalMs: 300, what: `job ${id} ended` });
      expect(oarJob(id).state).toBe('Terminated');
      expect(sh('oarnotify', ['-l'])).not.toMatch(/notActive|inactive/i);
      const nodes = sh('oarnodes', ['-s']);
      expect(nodes).not.toMatch(/Suspected|Absent|Dead/);
    } finally {
      clusterUp();
      await waitServing(CONTROLLER_ADDRESS);
    }
  });
});
