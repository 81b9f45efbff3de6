import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  HookKind,
  HookServiceClient,
  InstanceServiceClient,
  InstanceState,
  JobServiceClient,
  JobState,
  NodeServiceClient,
  Role,
  UserServiceClient,
  type Job,
} from '@oarcloud/api';
import { bearer, callUnary, InvalidArgumentError, memoryLogger, UnavailableError } from '@oarcloud/common';
import { startFakeAgent, waitFor, type FakeAgent } from '@oarcloud/testkit';
import { ControllerConfigSchema } from './config.js';
import { startController, type RunningController } from './controller.js';
import { FakeOar } from './oar/fake.js';

const LAYER = `sha256:${'a'.repeat(64)}`;
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB test@x';

function codeOf(p: Promise<unknown>): Promise<number> {
  return p.then(
    () => status.OK,
    (err: Error) => (err.cause as { code: number }).code,
  );
}

describe('controller - services, lifecycle and reconcile against fake agents and a fake OAR', () => {
  let dir: string;
  let oar: FakeOar;
  let a1: FakeAgent;
  let a2: FakeAgent;
  let ctl: RunningController;
  let addr: string;
  let admin: string;
  let alice: string;
  let bob: string;
  const log = memoryLogger();
  const clients = () => {
    const c = credentials.createInsecure();
    return { jobs: new JobServiceClient(addr, c), inst: new InstanceServiceClient(addr, c), users: new UserServiceClient(addr, c), hooks: new HookServiceClient(addr, c), nodes: new NodeServiceClient(addr, c) };
  };
  let c: ReturnType<typeof clients>;
  const md = (t: string) => ({ metadata: bearer(t), timeoutMs: 10_000 });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'oc-ctl-'));
    oar = new FakeOar();
    a1 = await startFakeAgent('node-1');
    a2 = await startFakeAgent('node-2');
    const config = ControllerConfigSchema.parse({
      listen: '127.0.0.1:0',
      dbPath: join(dir, 'state.db'),
      agents: [
        { name: 'node-1', address: a1.address },
        { name: 'node-2', address: a2.address },
      ],
      images: [{ name: 'debian:12', layers: [LAYER] }],
      reconcileMs: 200,
      agentCallTimeoutMs: 2000,
      agentCreateTimeoutMs: 5000,
    });
    ctl = await startController(config, { log, oar, oarCommands: oar, oarEvents: false, natsEvents: false });
    addr = `127.0.0.1:${ctl.port}`;
    c = clients();
    admin = readFileSync(join(dir, 'admin.token'), 'utf8').trim();
    alice = (await callUnary(c.users.addUser.bind(c.users), { name: 'alice', role: Role.ROLE_USER }, md(admin))).token;
    bob = (await callUnary(c.users.addUser.bind(c.users), { name: 'bob', role: Role.ROLE_UNSPECIFIED }, md(admin))).token;
  });

  afterAll(async () => {
    await ctl?.close();
    await a1?.close();
    await a2?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A job of alice that OAR runs on both nodes (one core each), applied as the LISTEN source would. */
  async function runningJob(types = ['cloud']): Promise<number> {
    const id = 1000 + Math.floor(Math.random() * 1e6);
    oar.addJob({ id, user: 'alice', types, state: 'Running', hosts: [{ node: 'node-1', cpuset: '1', cores: 1 }, { node: 'node-2', cpuset: '0', cores: 1 }] });
    await ctl.jobs.onOarEvent({ logId: id, jobId: id, state: 'Running', date: 0 });
    return id;
  }

  it('config - tlsListen without tls is refused before anything is opened', async () => {
    const other = join(dir, 'tls-less');
    const config = ControllerConfigSchema.parse({ listen: '127.0.0.1:0', tlsListen: '127.0.0.1:0', dbPath: join(other, 'state.db') });
    await expect(startController(config, { log, oar, oarCommands: oar, oarEvents: false, natsEvents: false })).rejects.toThrow(InvalidArgumentError);
    expect(existsSync(other)).toBe(false);
  });

  it('auth - tokens files, unauthenticated, permission denied, whoami', async () => {
    expect(statSync(join(dir, 'admin.token')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'hook.token')).mode & 0o777).toBe(0o640);
    expect(await codeOf(callUnary(c.users.whoAmI.bind(c.users), {}, { timeoutMs: 5000 }))).toBe(status.UNAUTHENTICATED);
    expect(await codeOf(callUnary(c.users.whoAmI.bind(c.users), {}, md('nope')))).toBe(status.UNAUTHENTICATED);
    expect(await codeOf(callUnary(c.users.listUsers.bind(c.users), {}, md(alice)))).toBe(status.PERMISSION_DENIED);
    expect(await codeOf(callUnary(c.nodes.listNodes.bind(c.nodes), {}, md(bob)))).toBe(status.PERMISSION_DENIED);
    expect(await callUnary(c.users.whoAmI.bind(c.users), {}, md(alice))).toMatchObject({ name: 'alice', role: Role.ROLE_USER });
    expect(await codeOf(callUnary(c.users.addUser.bind(c.users), { name: 'alice', role: Role.ROLE_USER }, md(admin)))).toBe(status.ALREADY_EXISTS);
    expect(await codeOf(callUnary(c.users.addUser.bind(c.users), { name: 'Bad Name', role: Role.ROLE_USER }, md(admin)))).toBe(status.INVALID_ARGUMENT);
    // A user token cannot call the hook service; the hook token cannot call user services.
    expect(await codeOf(callUnary(c.hooks.jobEvent.bind(c.hooks), { kind: HookKind.HOOK_KIND_PROLOGUE, jobId: 1, node: '' }, md(alice)))).toBe(status.PERMISSION_DENIED);
    expect(await codeOf(callUnary(c.users.whoAmI.bind(c.users), {}, md(ctl.hookToken)))).toBe(status.UNAUTHENTICATED);
    // A reissued token revokes the old one.
    const tmp = (await callUnary(c.users.addUser.bind(c.users), { name: 'carol', role: Role.ROLE_USER }, md(admin))).token;
    const again = (await callUnary(c.users.issueToken.bind(c.users), { name: 'carol' }, md(admin))).token;
    expect(await codeOf(callUnary(c.users.whoAmI.bind(c.users), {}, md(tmp)))).toBe(status.UNAUTHENTICATED);
    expect(await codeOf(callUnary(c.users.whoAmI.bind(c.users), {}, md(again)))).toBe(status.OK);
    await callUnary(c.users.removeUser.bind(c.users), { name: 'carol' }, md(admin));
    expect(await codeOf(callUnary(c.users.whoAmI.bind(c.users), {}, md(again)))).toBe(status.UNAUTHENTICATED);
  });

  it('reserve - submits oarsub as the caller with the spec bound, refuses bad or impossible specs, changes nothing then', async () => {
    const spec = { image: 'debian:12', count: 2, vcpus: 1, memoryMib: 256, sshAuthorizedKeys: [KEY], namePrefix: 'web' };
    const job: Job = await callUnary(c.jobs.reserve.bind(c.jobs), { nodes: 2, coresPerNode: 1, walltimeS: 3600, spec, idempotencyKey: 'k1' }, md(alice));
    expect(job).toMatchObject({ owner: 'alice', state: JobState.JOB_STATE_PENDING });
    expect(job.specId).toMatch(/^s-[0-9a-f]{12}$/);
    expect(oar.submitted.at(-1)).toEqual({ user: 'alice', types: [`cloud=${job.specId}`], resources: 'host=2/core=1,walltime=1:00:00', command: 'sleep 3600' });
    const n = oar.submitted.length;
    const same = await callUnary(c.jobs.reserve.bind(c.jobs), { nodes: 2, coresPerNode: 1, walltimeS: 3600, spec, idempotencyKey: 'k1' }, md(alice));
    expect(same.id).toBe(job.id);
    expect(await codeOf(callUnary(c.jobs.reserve.bind(c.jobs), { nodes: 2, coresPerNode: 1, walltimeS: 3600, spec: { ...spec, count: 3 }, idempotencyKey: '' }, md(alice)))).toBe(status.RESOURCE_EXHAUSTED);
    expect(await codeOf(callUnary(c.jobs.reserve.bind(c.jobs), { nodes: 1, coresPerNode: 0, walltimeS: 3600, spec: { ...spec, image: 'nope:1' }, idempotencyKey: '' }, md(alice)))).toBe(status.NOT_FOUND);
    expect(await codeOf(callUnary(c.jobs.reserve.bind(c.jobs), { nodes: 0, coresPerNode: 0, walltimeS: 3600, spec: undefined, idempotencyKey: '' }, md(alice)))).toBe(status.INVALID_ARGUMENT);
    expect(await codeOf(callUnary(c.jobs.reserve.bind(c.jobs), { nodes: 1, coresPerNode: 0, walltimeS: 3600, spec: { ...spec, vcpus: 0 }, idempotencyKey: '' }, md(alice)))).toBe(status.INVALID_ARGUMENT);
    expect(oar.submitted.length).toBe(n);
    oar.refuse = '[ADMISSION RULE] Error: too many hosts';
    expect(await codeOf(callUnary(c.jobs.reserve.bind(c.jobs), { nodes: 1, coresPerNode: 0, walltimeS: 3600, spec: undefined, idempotencyKey: '' }, md(alice)))).toBe(status.INVALID_ARGUMENT);
    oar.refuse = undefined;
    // bob does not see alice's job.
    expect(await codeOf(callUnary(c.jobs.getJob.bind(c.jobs), { id: job.id }, md(bob)))).toBe(status.NOT_FOUND);
    expect((await callUnary(c.jobs.listJobs.bind(c.jobs), { allUsers: true }, md(bob))).jobs).toEqual([]);
    expect((await callUnary(c.jobs.listJobs.bind(c.jobs), { allUsers: true }, md(admin))).jobs.map((j) => j.id)).toContain(job.id);
  });

  it('get job - a live cloud job no event brought is learnt from OAR; an ended one the store never knew is NOT_FOUND and not recorded', async () => {
    const all = async () => (await callUnary(c.jobs.listJobs.bind(c.jobs), { allUsers: true }, md(admin))).jobs.map((j) => j.id).sort();
    const live = 2_000_000 + Math.floor(Math.random() * 1e6);
    const ended = live + 1;
    oar.addJob({ id: live, user: 'alice', state: 'Running', hosts: [{ node: 'node-1', cpuset: '1', cores: 1 }] });
    oar.addJob({ id: ended, user: 'alice', state: 'Terminated', stopTime: 1 });
    const before = await all();
    expect(before).not.toContain(live);
    expect(await callUnary(c.jobs.getJob.bind(c.jobs), { id: live }, md(alice))).toMatchObject({ id: live, owner: 'alice', state: JobState.JOB_STATE_RUNNING });
    // A read, by the owner, a stranger or the admin, of an old job changes nothing.
    for (const t of [alice, bob, admin]) expect(await codeOf(callUnary(c.jobs.getJob.bind(c.jobs), { id: ended }, md(t)))).toBe(status.NOT_FOUND);
    expect(await codeOf(callUnary(c.jobs.release.bind(c.jobs), { id: ended }, md(alice)))).toBe(status.NOT_FOUND);
    expect(await all()).toEqual([...before, live].sort());
    // The hooks still learn an ended job (a store that lost it must still tear it down).
    await callUnary(c.hooks.jobEvent.bind(c.hooks), { kind: HookKind.HOOK_KIND_SERVER_EPILOGUE, jobId: ended, node: '' }, md(ctl.hookToken));
    await waitFor(async () => (await all()).includes(ended), { what: `job ${ended} recorded by the epilogue hook` });
  });

  it('lifecycle - the spec is placed and created on the job hosts when OAR runs it; the prologue wait sees it ready; the end releases every host', async () => {
    const job = await callUnary(
      c.jobs.reserve.bind(c.jobs),
      { nodes: 2, coresPerNode: 1, walltimeS: 600, spec: { image: 'debian:12', count: 2, vcpus: 1, memoryMib: 128, sshAuthorizedKeys: [], namePrefix: '' }, idempotencyKey: '' },
      md(alice),
    );
    const hosts = [{ node: 'node-1', cpuset: '1', cores: 1 }, { node: 'node-2', cpuset: '0', cores: 1 }];
    oar.setState(job.id, 'Launching', hosts);
    // The server prologue, through the hook service (returns at once), then the prologue's wait.
    await callUnary(c.hooks.jobEvent.bind(c.hooks), { kind: HookKind.HOOK_KIND_SERVER_PROLOGUE, jobId: job.id, node: '' }, md(ctl.hookToken));
    const ready = await callUnary(c.hooks.waitJobReady.bind(c.hooks), { jobId: job.id, timeoutMs: 5000 }, md(ctl.hookToken));
    expect(ready).toEqual({ ready: true, running: 2, expected: 2 });
    const on1 = [...a1.instances.values()].filter((i) => i.spec?.jobId === job.id);
    const on2 = [...a2.instances.values()].filter((i) => i.spec?.jobId === job.id);
    expect(on1).toHaveLength(1);
    expect(on2).toHaveLength(1);
    expect(on1[0]!.spec).toMatchObject({ cpuset: '1', owner: 'alice', vcpus: 1, memoryMib: 128, image: { name: 'debian:12', layers: [LAYER] } });
    expect(on2[0]!.spec?.cpuset).toBe('0');
    expect(new Set([on1[0]!.spec!.name, on2[0]!.spec!.name])).toEqual(new Set([`j${job.id}-1`, `j${job.id}-2`]));
    // The Running event afterwards changes nothing (idempotent).
    oar.setState(job.id, 'Running');
    const before = a1.callsOf('CreateInstance').length + a2.callsOf('CreateInstance').length;
    await ctl.jobs.onOarEvent({ logId: 5_000_001, jobId: job.id, state: 'Running', date: 0 });
    const list = await callUnary(c.inst.listInstances.bind(c.inst), { jobId: job.id, allUsers: false }, md(alice));
    expect(list.instances.map((i) => i.state)).toEqual([InstanceState.INSTANCE_STATE_RUNNING, InstanceState.INSTANCE_STATE_RUNNING]);
    expect(a1.callsOf('CreateInstance').length + a2.callsOf('CreateInstance').length).toBe(before);
    expect((await callUnary(c.jobs.getJob.bind(c.jobs), { id: job.id }, md(alice))).state).toBe(JobState.JOB_STATE_RUNNING);
    // By name, and not for bob.
    const one = await callUnary(c.inst.getInstance.bind(c.inst), { id: `j${job.id}-1` }, md(alice));
    expect(one.spec?.jobId).toBe(job.id);
    expect(await codeOf(callUnary(c.inst.getInstance.bind(c.inst), { id: one.spec!.id }, md(bob)))).toBe(status.NOT_FOUND);
    expect(await codeOf(callUnary(c.inst.getInstance.bind(c.inst), { id: `j${job.id}-1` }, md(bob)))).toBe(status.NOT_FOUND);

    // The end: oardel through Release, then OAR's Error state.
    await callUnary(c.jobs.release.bind(c.jobs), { id: job.id }, md(alice));
    expect(oar.deleted.at(-1)).toEqual({ user: 'alice', jobId: job.id });
    await ctl.jobs.onOarEvent({ logId: 5_000_002, jobId: job.id, state: 'Error', date: 0 });
    expect(a1.callsOf('ReleaseJob').map((x) => x.target)).toContain(String(job.id));
    expect(a2.callsOf('ReleaseJob').map((x) => x.target)).toContain(String(job.id));
    expect([...a1.instances.values(), ...a2.instances.values()].filter((i) => i.spec?.jobId === job.id)).toEqual([]);
    const after = await callUnary(c.jobs.getJob.bind(c.jobs), { id: job.id }, md(alice));
    expect(after.state).toBe(JobState.JOB_STATE_ENDED);
    expect(after.instanceCount).toBe(0);
    // A late Running replay never restarts an ended job.
    await ctl.jobs.onOarEvent({ logId: 5_000_003, jobId: job.id, state: 'Running', date: 0 });
    expect([...a1.instances.values()].filter((i) => i.spec?.jobId === job.id)).toEqual([]);
  });

  it('run instances - placement into a running job, RESOURCE_EXHAUSTED stores nothing, refused in a job of someone else', async () => {
    const id = await runningJob();
    const spec = { image: 'debian:12', count: 2, vcpus: 1, memoryMib: 64, sshAuthorizedKeys: [], namePrefix: 'w' };
    expect(await codeOf(callUnary(c.inst.runInstances.bind(c.inst), { jobId: id, spec: { ...spec, count: 3 }, networks: [], idempotencyKey: '' }, md(alice)))).toBe(status.RESOURCE_EXHAUSTED);
    expect(ctl.store.listInstances({ jobId: id })).toEqual([]);
    expect(await codeOf(callUnary(c.inst.runInstances.bind(c.inst), { jobId: id, spec, networks: [], idempotencyKey: '' }, md(bob)))).toBe(status.NOT_FOUND);
    const r = await callUnary(c.inst.runInstances.bind(c.inst), { jobId: id, spec, networks: [], idempotencyKey: 'r1' }, md(alice));
    expect(r.instances.map((i) => i.node).sort()).toEqual(['node-1', 'node-2']);
    const again = await callUnary(c.inst.runInstances.bind(c.inst), { jobId: id, spec, networks: [], idempotencyKey: 'r1' }, md(alice));
    expect(again.instances.map((i) => i.spec?.id)).toEqual(r.instances.map((i) => i.spec?.id));
    expect(await codeOf(callUnary(c.inst.runInstances.bind(c.inst), { jobId: id, spec: { ...spec, count: 1 }, networks: [], idempotencyKey: '' }, md(alice)))).toBe(status.RESOURCE_EXHAUSTED);
    await waitFor(() => ctl.store.listInstances({ jobId: id }).every((i) => i.reported === 'running'), { what: 'instances running' });
    // Stop, start, delete through the agent.
    const x = r.instances[0]!.spec!.id;
    expect((await callUnary(c.inst.stopInstance.bind(c.inst), { id: x }, md(alice))).state).toBe(InstanceState.INSTANCE_STATE_STOPPED);
    expect((await callUnary(c.inst.startInstance.bind(c.inst), { id: x }, md(alice))).state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
    await callUnary(c.inst.deleteInstance.bind(c.inst), { id: x }, md(alice));
    expect(a1.instances.has(x) || a2.instances.has(x)).toBe(false);
    const left = await callUnary(c.inst.listInstances.bind(c.inst), { jobId: id, allUsers: false }, md(alice));
    expect(left.instances.map((i) => i.spec?.id)).not.toContain(x);
    expect(await codeOf(callUnary(c.inst.getInstance.bind(c.inst), { id: r.instances[0]!.spec!.name }, md(alice)))).toBe(status.NOT_FOUND);
  });

  it('a spec that does not fit the job is refused at start: no instance, the wait ends at once', async () => {
    const job = await callUnary(
      c.jobs.reserve.bind(c.jobs),
      { nodes: 1, coresPerNode: 0, walltimeS: 600, spec: { image: 'debian:12', count: 1, vcpus: 4, memoryMib: 128, sshAuthorizedKeys: [], namePrefix: '' }, idempotencyKey: '' },
      md(alice),
    );
    oar.setState(job.id, 'Running', [{ node: 'node-1', cpuset: '0-1', cores: 2 }]);
    const t0 = Date.now();
    const ready = await callUnary(c.hooks.waitJobReady.bind(c.hooks), { jobId: job.id, timeoutMs: 5000 }, md(ctl.hookToken));
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(ready.ready).toBe(false);
    expect(ctl.store.getJob(job.id)?.error).toMatch(/do not fit/);
    expect(ctl.store.listInstances({ jobId: job.id })).toEqual([]);
  });

  it('the prologue wait of a job that is not a cloud job returns at once', async () => {
    oar.addJob({ id: 4242, user: 'alice', types: ['besteffort'], state: 'Launching', hosts: [{ node: 'node-1', cpuset: '0', cores: 1 }] });
    const t0 = Date.now();
    const r = await callUnary(c.hooks.waitJobReady.bind(c.hooks), { jobId: 4242, timeoutMs: 5000 }, md(ctl.hookToken));
    expect(r).toEqual({ ready: true, running: 0, expected: 0 });
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(ctl.store.getJob(4242)).toBeUndefined();
  });

  it('create - UNAVAILABLE is retried; the epilogue hook tears down even while OAR still says Running', async () => {
    a1.failNext('CreateInstance', new UnavailableError('agent restarting'), 1);
    const id = await runningJob();
    await ctl.jobs.runInstances('alice', id, { image: 'debian:12', count: 2, vcpus: 1, memoryMib: 64, sshKeys: [], namePrefix: 'u' });
    await waitFor(() => ctl.store.listInstances({ jobId: id }).every((i) => i.reported === 'running'), { what: 'created after a retry', timeoutMs: 5000 });
    await callUnary(c.hooks.jobEvent.bind(c.hooks), { kind: HookKind.HOOK_KIND_EPILOGUE, jobId: id, node: 'node-1' }, md(ctl.hookToken));
    await waitFor(() => ![...a1.instances.values(), ...a2.instances.values()].some((i) => i.spec?.jobId === id), { what: 'released' });
    expect(ctl.store.getJob(id)?.state).toBe('ended');
  });

  it('reconcile - releases orphans, recreates what is missing, goes on without an unreachable agent or OAR', async () => {
    const id = await runningJob();
    await ctl.jobs.runInstances('alice', id, { image: 'debian:12', count: 2, vcpus: 1, memoryMib: 64, sshKeys: [], namePrefix: 'r' });
    await waitFor(() => ctl.store.listInstances({ jobId: id }).every((i) => i.reported === 'running'), { what: 'running' });
    // Drift: an instance vanished on node-1; an orphan of a job OAR ended sits on node-2.
    const lost = [...a1.instances.values()].find((i) => i.spec?.jobId === id)!;
    a1.instances.delete(lost.spec!.id);
    a2.instances.set('i-0000000orph1', { ...lost, spec: { ...lost.spec!, id: 'i-0000000orph1', jobId: 77, name: 'orph' }, node: 'node-2' });
    oar.addJob({ id: 77, user: 'bob', state: 'Terminated' });
    await ctl.reconciler.pass();
    expect(a2.instances.has('i-0000000orph1')).toBe(false);
    await waitFor(() => a1.instances.has(lost.spec!.id), { what: 'recreated' });
    // OAR down: nothing is removed.
    a2.instances.set('i-0000000orph2', { ...lost, spec: { ...lost.spec!, id: 'i-0000000orph2', jobId: 77, name: 'orph2' }, node: 'node-2' });
    oar.down = new Error('database down');
    await expect(ctl.reconciler.pass()).rejects.toThrow('database down');
    expect(a2.instances.has('i-0000000orph2')).toBe(true);
    oar.down = undefined;
    // One agent unreachable: the other is still repaired.
    await a1.close();
    const report = await ctl.reconciler.pass();
    expect(report?.unreachable).toEqual(['node-1']);
    expect(a2.instances.has('i-0000000orph2')).toBe(false);
    const nodes = await callUnary(c.nodes.listNodes.bind(c.nodes), {}, md(admin));
    expect(nodes.nodes.find((n) => n.info?.name === 'node-1')?.healthy).toBe(false);
    expect(nodes.nodes.find((n) => n.info?.name === 'node-2')?.healthy).toBe(true);
  });
});
