/**
 * The controller on the real local cluster (infra/local): OAR jobs drive instances, from
 * reservation to a clean teardown. Parts that need instances run only once the agents
 * implement CreateInstance and the controller's config declares an image (`images:`);
 * they are skipped with the reason otherwise.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { credentials, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HookServiceClient, InstanceServiceClient, JobServiceClient, JobState, Role, UserServiceClient, type Instance } from '@oarcloud/api';
import { bearer, callUnary, parseCpuset, UnimplementedError } from '@oarcloud/common';
import { agentClient, CLUSTER_IMAGE, grpcHealth, integrationRequired, localStateDir, needCommand, needPath, needRoot, prerequisites, waitFor } from '@oarcloud/testkit';
import { loadControllerConfig } from '../../packages/controller/src/config.js';
import { adminToken, audit, liveOarJobs } from '../faults/world.js';

const STATE = localStateDir();
const CONTROLLER = '127.0.0.1:17000';
const CLI = 'packages/cli/dist/main.js';
const p = prerequisites('controller e2e', [
  needRoot,
  needPath(`${STATE}/controller.yaml`),
  needPath(`${STATE}/controller/admin.token`),
  needPath(CLI),
  needCommand('bash', 'infra/local/status.sh'),
]);

const sh = (cmd: string, args: string[], user?: string): string => {
  const full = user ? ['su', '-', user, '-c', [cmd, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')] : [cmd, ...args];
  return execFileSync(full[0]!, full.slice(1), { encoding: 'utf8', timeout: 60_000 });
};
const oarsub = (user: string, args: string[]): number => {
  const id = Number(/OAR_JOB_ID=(\d+)/.exec(sh('oarsub', args, user))?.[1]);
  if (!(id > 0)) throw new Error('oarsub gave no job id');
  return id;
};
const oarState = (id: number): string => (JSON.parse(sh('oarstat', ['-fj', String(id), '-J'])) as Record<string, { state: string }>)[String(id)]!.state;
const codeOf = (pr: Promise<unknown>): Promise<number> => pr.then(() => status.OK, (e: Error) => (e.cause as { code: number }).code);

describe.skipIf(!p.ok)('controller e2e - OAR jobs drive instances on the local cluster', () => {
  const config = p.ok ? loadControllerConfig(`${STATE}/controller.yaml`) : undefined;
  const c = credentials.createInsecure();
  const jobs = new JobServiceClient(CONTROLLER, c);
  const inst = new InstanceServiceClient(CONTROLLER, c);
  const users = new UserServiceClient(CONTROLLER, c);
  const hooks = new HookServiceClient(CONTROLLER, c);
  const agents = Object.fromEntries((config?.agents ?? []).map((a) => [a.name, agentClient(a.address, a.name)]));
  let alice = '';
  /** Why the instance parts cannot run yet ('' when they can). */
  let instancesBlocked = '';
  const image = config?.images.some((i) => i.name === CLUSTER_IMAGE) ? CLUSTER_IMAGE : undefined;
  const md = () => ({ metadata: bearer(alice), timeoutMs: 20_000 });

  /** Waits (bounded) until the job is over in OAR and the audit of every host finds nothing wrong. */
  const nothingLeft = async (jobId: number): Promise<void> => {
    let problems: string[] = [];
    await waitFor(
      async () => {
        if (liveOarJobs().has(jobId)) return false;
        problems = (await audit(adminToken())).problems;
        return problems.length === 0;
      },
      { timeoutMs: 30_000, intervalMs: 200, what: `nothing of job ${jobId} left on any host` },
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${problems.join('; ')}`);
    });
  };

  const agentInstancesOf = async (jobId: number): Promise<Instance[]> => {
    const all = await Promise.all(Object.values(agents).map((a) => callUnary(a.listInstances.bind(a), { jobId }, { timeoutMs: 5000 })));
    return all.flatMap((r) => r.instances).filter((i) => i.spec?.jobId === jobId);
  };

  beforeAll(async () => {
    await waitFor(async () => (await grpcHealth(CONTROLLER)) === 'SERVING', { timeoutMs: 20_000, what: 'controller serving' });
    const admin = { metadata: bearer(readFileSync(`${STATE}/controller/admin.token`, 'utf8').trim()), timeoutMs: 5000 };
    const list = await callUnary(users.listUsers.bind(users), {}, admin);
    alice = list.users.some((u) => u.name === 'alice')
      ? (await callUnary(users.issueToken.bind(users), { name: 'alice' }, admin)).token
      : (await callUnary(users.addUser.bind(users), { name: 'alice', role: Role.ROLE_USER }, admin)).token;
    if (!image) instancesBlocked = 'no image in the controller config (images:)';
    else {
      const a = Object.values(agents)[0]!;
      try {
        await callUnary(a.createInstance.bind(a), { spec: undefined }, { timeoutMs: 5000 });
      } catch (err) {
        if (err instanceof UnimplementedError) instancesBlocked = 'the agents answer UNIMPLEMENTED to CreateInstance';
      }
    }
    if (instancesBlocked) console.warn(`SKIP instance parts: ${instancesBlocked}`);
  });

  afterAll(() => {
    for (const x of [jobs, inst, users, hooks, ...Object.values(agents)]) x.close();
  });

  it('a plain `oarsub -t cloud` job is seen RUNNING with its hosts and cpusets, then ENDED after oardel, within seconds', async () => {
    const id = oarsub('alice', ['-t', 'cloud', '-l', 'host=2/core=1,walltime=0:05:00', 'sleep 300']);
    const running = await waitFor(
      async () => {
        const j = await callUnary(jobs.getJob.bind(jobs), { id }, md());
        return j.state === JobState.JOB_STATE_RUNNING ? j : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 200, what: 'job RUNNING in the controller' },
    );
    expect(running.owner).toBe('alice');
    expect(running.hosts.map((h) => h.node).sort()).toEqual(['node-1', 'node-2']);
    expect(running.hosts.every((h) => h.cores === 1 && /^\d+$/.test(h.cpuset))).toBe(true);
    sh('oardel', [String(id)], 'alice');
    const t0 = Date.now();
    await waitFor(async () => (await callUnary(jobs.getJob.bind(jobs), { id }, md())).state === JobState.JOB_STATE_ENDED, { timeoutMs: 30_000, intervalMs: 200, what: 'ENDED' });
    console.log(`e2e: oardel -> ENDED in the controller in ${Date.now() - t0} ms`);
    expect(await agentInstancesOf(id).catch(() => [])).toEqual([]);
  });

  it('Reserve submits as the caller; Release ends the job; a spec that can never fit is refused with no job', async () => {
    // Job ids only: states of earlier jobs may still move.
    const aliceJobs = (): string[] => Object.keys(JSON.parse(sh('oarstat', ['-u', 'alice', '-J']) || '{}') as object).sort();
    const before = aliceJobs();
    expect(
      await codeOf(
        callUnary(jobs.reserve.bind(jobs), { nodes: 1, coresPerNode: 1, walltimeS: 300, spec: { image: image ?? 'debian:12', count: 3, vcpus: 1, memoryMib: 128, sshAuthorizedKeys: [], namePrefix: '' }, idempotencyKey: '' }, md()),
      ),
    ).toBe(status.RESOURCE_EXHAUSTED);
    expect(aliceJobs()).toEqual(before);
    const job = await callUnary(jobs.reserve.bind(jobs), { nodes: 1, coresPerNode: 1, walltimeS: 300, spec: undefined, idempotencyKey: '' }, md());
    expect(job.owner).toBe('alice');
    await waitFor(() => oarState(job.id) === 'Running', { timeoutMs: 30_000, intervalMs: 300, what: 'OAR Running' });
    await callUnary(jobs.release.bind(jobs), { id: job.id }, md());
    await waitFor(async () => (await callUnary(jobs.getJob.bind(jobs), { id: job.id }, md())).state === JobState.JOB_STATE_ENDED, { timeoutMs: 30_000, intervalMs: 300, what: 'released' });
  });

  it('a hook with the controller down exits 0 quickly; the restarted controller catches up with what happened meanwhile', async () => {
    const pid = Number(readFileSync(`${STATE}/run/controller.pid`, 'utf8'));
    process.kill(pid, 'SIGKILL');
    await waitFor(() => spawnSync('bash', ['-c', `ss -ltn | grep -q ':17000 '`]).status !== 0, { timeoutMs: 10_000, what: 'controller down' });
    for (const kind of ['server-prologue', 'prologue']) {
      const t0 = Date.now();
      const r = spawnSync('node', [CLI, 'hook', kind, '424242', 'alice', '/dev/null', '--token-file', `${STATE}/controller/hook.token`], { encoding: 'utf8', timeout: 20_000 });
      const ms = Date.now() - t0;
      console.log(`e2e: hook ${kind} with the controller down: rc=${r.status} in ${ms} ms: ${r.stdout.trim()}`);
      expect(r.status).toBe(0);
      expect(ms).toBeLessThan(3000);
      expect(r.stdout.trim().split('\n')).toHaveLength(1);
    }
    // While the controller is down, a cloud job starts.
    const id = oarsub('alice', ['-t', 'cloud', '-l', 'host=1/core=1,walltime=0:05:00', 'sleep 300']);
    await waitFor(() => oarState(id) === 'Running', { timeoutMs: 30_000, intervalMs: 300, what: 'OAR Running' });
    sh('bash', ['infra/local/up.sh']);
    await waitFor(async () => (await grpcHealth(CONTROLLER)) === 'SERVING', { timeoutMs: 20_000, what: 'controller back' });
    await waitFor(async () => (await callUnary(jobs.getJob.bind(jobs), { id }, md())).state === JobState.JOB_STATE_RUNNING, { timeoutMs: 15_000, intervalMs: 200, what: 'caught up: RUNNING' });
    sh('oardel', [String(id)], 'alice');
    await waitFor(async () => (await callUnary(jobs.getJob.bind(jobs), { id }, md())).state === JobState.JOB_STATE_ENDED, { timeoutMs: 30_000, intervalMs: 300, what: 'ENDED' });
  });

  describe('instances (need the agents\' CreateInstance and an image)', () => {
    const skip = (): boolean => {
      if (instancesBlocked && integrationRequired()) throw new Error(`instance parts cannot run: ${instancesBlocked}`);
      if (instancesBlocked) console.warn(`SKIP: ${instancesBlocked}`);
      return !!instancesBlocked;
    };

    it('`oarsub -t cloud=<spec>` → the job command starts with its instances RUNNING, on the job hosts, inside the cpus OAR gave the job there; oardel → nothing of it left on any host', async (ctx) => {
      if (skip()) return ctx.skip();
      const job = await callUnary(
        jobs.reserve.bind(jobs),
        { nodes: 2, coresPerNode: 1, walltimeS: 300, spec: { image: image!, count: 2, vcpus: 1, memoryMib: 128, sshAuthorizedKeys: [], namePrefix: 'e2e' }, idempotencyKey: '' },
        md(),
      );
      await callUnary(jobs.release.bind(jobs), { id: job.id }, md());
      // The job's own command asks the controller for its instances, first thing: what it
      // sees is what a user's script would see when it starts.
      sh('bash', ['-c', `umask 077; printf %s '${alice}' > ~alice/.e2e-token; chown alice: ~alice/.e2e-token`]);
      const cmd = `OARCLOUD_TOKEN=$(cat ~/.e2e-token) node ${process.cwd()}/${CLI} ps --job $OAR_JOB_ID --json > ~/e2e-ps.$OAR_JOB_ID.part; mv ~/e2e-ps.$OAR_JOB_ID.part ~/e2e-ps.$OAR_JOB_ID; sleep 300`;
      const id = oarsub('alice', ['-t', `cloud=${job.specId}`, '-l', 'host=2/core=1,walltime=0:05:00', cmd]);
      try {
        const seen = await waitFor(
          () => {
            const out = sh('bash', ['-c', `cat ~alice/e2e-ps.${id} 2>/dev/null || true`]).trim();
            return out ? (JSON.parse(out) as Array<{ id: string; state: string; node: string }>) : undefined;
          },
          { timeoutMs: 60_000, intervalMs: 300, what: 'the job command started and listed its instances' },
        );
        expect(seen).toHaveLength(2);
        expect(seen.map((i) => i.state)).toEqual(['running', 'running']);
        // On the hosts OAR gave the job, each inside the cpus OAR gave the job on its host.
        const facts = (JSON.parse(sh('oarstat', ['-fj', String(id), '-J'])) as Record<string, { assigned_network_address: string[]; assigned_resources: number[] }>)[String(id)]!;
        const resources = JSON.parse(sh('oarnodes', ['-J'])) as Record<string, { network_address: string; cpuset: string }>;
        const oarCpus = new Map<string, Set<number>>();
        for (const r of facts.assigned_resources) {
          const res = resources[String(r)]!;
          oarCpus.set(res.network_address, new Set([...(oarCpus.get(res.network_address) ?? []), ...parseCpuset(res.cpuset)]));
        }
        const onAgents = await agentInstancesOf(id);
        expect(onAgents.map((i) => i.node).sort()).toEqual([...facts.assigned_network_address].sort());
        expect(onAgents.map((i) => i.spec!.id).sort()).toEqual(seen.map((i) => i.id).sort());
        for (const i of onAgents) {
          expect(i.initPid).toBeGreaterThan(0);
          const allowed = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${i.initPid}/status`, 'utf8'))![1]!;
          expect([...parseCpuset(allowed)].sort(), `instance ${i.spec!.id} on ${i.node}`).toEqual([...oarCpus.get(i.node)!].sort());
        }
      } finally {
        sh('oardel', [String(id)], 'alice');
      }
      const t0 = Date.now();
      await nothingLeft(id);
      console.log(`e2e: oardel -> nothing of job ${id} on any host in ${Date.now() - t0} ms`);
    });

    it('a job whose walltime ends, or whose command ends, leaves nothing on any host', async (ctx) => {
      if (skip()) return ctx.skip();
      const job = await callUnary(
        jobs.reserve.bind(jobs),
        { nodes: 1, coresPerNode: 1, walltimeS: 300, spec: { image: image!, count: 1, vcpus: 1, memoryMib: 128, sshAuthorizedKeys: [], namePrefix: '' }, idempotencyKey: '' },
        md(),
      );
      await callUnary(jobs.release.bind(jobs), { id: job.id }, md());
      const normal = oarsub('alice', ['-t', `cloud=${job.specId}`, '-l', 'host=1/core=1,walltime=0:05:00', 'sleep 5']);
      const wall = oarsub('alice', ['-t', `cloud=${job.specId}`, '-l', 'host=1/core=1,walltime=0:00:20', 'sleep 300']);
      for (const id of [normal, wall]) {
        await waitFor(async () => (await agentInstancesOf(id)).length === 1, { timeoutMs: 60_000, intervalMs: 300, what: `job ${id} instance` });
        await waitFor(() => ['Terminated', 'Error'].includes(oarState(id)), { timeoutMs: 90_000, intervalMs: 500, what: `job ${id} end` });
        await nothingLeft(id);
      }
    });

    it('a spec that does not fit the job it is bound to: the job says why (API and CLI), no instance anywhere', async (ctx) => {
      if (skip()) return ctx.skip();
      // Bound with plain oarsub, so nothing can check it before OAR starts the job.
      const spec = await callUnary(
        jobs.reserve.bind(jobs),
        { nodes: 1, coresPerNode: 1, walltimeS: 300, spec: { image: image!, count: 1, vcpus: 1, memoryMib: 128, sshAuthorizedKeys: [], namePrefix: '' }, idempotencyKey: '' },
        md(),
      );
      await callUnary(jobs.release.bind(jobs), { id: spec.id }, md());
      const big = await callUnary(
        jobs.reserve.bind(jobs),
        { nodes: 1, coresPerNode: 0, walltimeS: 300, spec: { image: image!, count: 1, vcpus: 64, memoryMib: 128, sshAuthorizedKeys: [], namePrefix: '' }, idempotencyKey: '' },
        md(),
      );
      const id = oarsub('alice', ['-t', `cloud=${big.specId}`, '-l', 'host=1/core=1,walltime=0:05:00', 'sleep 300']);
      try {
        const j = await waitFor(
          async () => {
            const got = await callUnary(jobs.getJob.bind(jobs), { id }, md());
            return got.state === JobState.JOB_STATE_RUNNING && got.error ? got : undefined;
          },
          { timeoutMs: 30_000, intervalMs: 300, what: 'the job running with its error' },
        );
        expect(j.error).toMatch(/64/);
        expect(j.instanceCount).toBe(0);
        const cli = spawnSync('su', ['-', 'alice', '-c', `OARCLOUD_TOKEN=${alice} node ${process.cwd()}/${CLI} job ${id}`], { encoding: 'utf8', timeout: 20_000 });
        expect(cli.status).toBe(0);
        expect(cli.stdout).toMatch(new RegExp(`^error:\\s+.*64`, 'm'));
        expect(await agentInstancesOf(id)).toEqual([]);
        expect((await callUnary(inst.listInstances.bind(inst), { jobId: id, allUsers: false }, md())).instances).toEqual([]);
      } finally {
        sh('oardel', [String(id)], 'alice');
        await callUnary(jobs.release.bind(jobs), { id: big.id }, md());
      }
    });
  });
});
