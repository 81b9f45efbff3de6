import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InstanceServiceClient, NetworkServiceClient, Role, UserServiceClient, type ConnectFrame, type InstanceSpec } from '@oarcloud/api';
import { bearer, callUnary, FailedPreconditionError, memoryLogger } from '@oarcloud/common';
import { startFakeAgent, waitFor, type FakeAgent } from '@oarcloud/testkit';
import { ControllerConfigSchema } from '../config.js';
import { startController, type RunningController } from '../controller.js';
import { FakeOar } from '../oar/fake.js';
import { overlaps, parseCidr } from './ipam.js';

const LAYER = `sha256:${'a'.repeat(64)}`;
const codeOf = (p: Promise<unknown>): Promise<number> => p.then(() => status.OK, (err: Error) => (err.cause as { code: number }).code);

describe('controller networks - default network, IPAM, mesh, NetworkService, teardown (fake agents, fake OAR)', () => {
  let dir: string;
  let oar: FakeOar;
  let a1: FakeAgent;
  let a2: FakeAgent;
  let ctl: RunningController;
  let nets: NetworkServiceClient;
  let inst: InstanceServiceClient;
  let alice = '';
  let bob = '';
  const md = (t: string) => ({ metadata: bearer(t), timeoutMs: 10_000 });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'oc-net-'));
    oar = new FakeOar();
    a1 = await startFakeAgent('node-1');
    a2 = await startFakeAgent('node-2');
    a1.underlayIp = '192.168.240.11';
    a2.underlayIp = '192.168.240.12';
    const config = ControllerConfigSchema.parse({
      listen: '127.0.0.1:0',
      dbPath: join(dir, 'state.db'),
      agents: [
        { name: 'node-1', address: a1.address },
        { name: 'node-2', address: a2.address },
      ],
      images: [{ name: 'tiny:latest', layers: [LAYER] }],
      reconcileMs: 60_000,
      agentCallTimeoutMs: 2000,
      agentCreateTimeoutMs: 5000,
    });
    ctl = await startController(config, { log: memoryLogger(), oar, oarCommands: oar, oarEvents: false, natsEvents: false });
    const addr = `127.0.0.1:${ctl.port}`;
    const c = credentials.createInsecure();
    nets = new NetworkServiceClient(addr, c);
    inst = new InstanceServiceClient(addr, c);
    const users = new UserServiceClient(addr, c);
    const admin = readFileSync(join(dir, 'admin.token'), 'utf8').trim();
    alice = (await callUnary(users.addUser.bind(users), { name: 'alice', role: Role.ROLE_USER }, md(admin))).token;
    bob = (await callUnary(users.addUser.bind(users), { name: 'bob', role: Role.ROLE_USER }, md(admin))).token;
    users.close();
  });

  afterAll(async () => {
    nets?.close();
    inst?.close();
    await ctl?.close();
    await a1?.close();
    await a2?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  let seq = 0;
  async function runningJob(user = 'alice', cores = 2): Promise<number> {
    const id = 5000 + seq++;
    oar.addJob({ id, user, types: ['cloud'], state: 'Running', hosts: [{ node: 'node-1', cpuset: '0-1', cores }, { node: 'node-2', cpuset: '0-1', cores }] });
    await ctl.jobs.onOarEvent({ logId: id, jobId: id, state: 'Running', date: 0 });
    return id;
  }
  const specsOf = (jobId: number): InstanceSpec[] => [...a1.instances.values(), ...a2.instances.values()].map((i) => i.spec!).filter((s) => s.jobId === jobId);
  const run = (token: string, jobId: number, count: number, networks: string[] = []) =>
    callUnary(inst.runInstances.bind(inst), { jobId, spec: { image: 'tiny:latest', count, vcpus: 1, memoryMib: 64, sshAuthorizedKeys: [], namePrefix: '' }, networks, idempotencyKey: '' }, md(token));

  it('networks - a job gets its default network when it starts; instances get distinct addresses, MACs, gateway and MTU; the mesh is pushed', async () => {
    const job = await runningJob();
    const list = (await callUnary(nets.listNetworks.bind(nets), { jobId: job }, md(alice))).networks;
    expect(list).toHaveLength(1);
    const def = list[0]!;
    expect(def).toMatchObject({ name: 'default', jobId: job, owner: 'alice', mtu: 1446, nat: false });
    expect(def.subnet).toMatch(/^10\.90\.\d+\.0\/24$/);
    expect(def.gateway).toBe(def.subnet.replace(/0\/24$/, '1'));
    expect(def.vni).toBeGreaterThanOrEqual(4096);
    await run(alice, job, 3);
    const specs = await waitFor(() => (specsOf(job).length === 3 ? specsOf(job) : undefined), { timeoutMs: 5000, what: 'created' });
    const atts = specs.map((s) => s.networks[0]!);
    expect(atts.every((a) => a.networkId === def.id && a.vni === def.vni && a.interface === 'eth0' && a.gateway === def.gateway && a.mtu === 1446)).toBe(true);
    expect(new Set(atts.map((a) => a.address)).size).toBe(3);
    expect(new Set(atts.map((a) => a.mac)).size).toBe(3);
    expect(atts.every((a) => a.address.endsWith('/24') && !a.address.startsWith(def.gateway + '/'))).toBe(true);
    await waitFor(() => a1.networks.get(def.id) && a2.networks.get(def.id), { timeoutMs: 5000, what: 'EnsureNetwork' });
    expect(a1.networks.get(def.id)).toEqual({ vni: def.vni, peers: ['192.168.240.12'] });
    expect(a2.networks.get(def.id)).toEqual({ vni: def.vni, peers: ['192.168.240.11'] });
  });

  it('networks - CreateNetwork gives a non-overlapping subnet and another VNI; RunInstances attaches to it; bad refs are NOT_FOUND', async () => {
    const job = await runningJob();
    const other = await runningJob('bob');
    const n2 = await callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'back', subnet: '', nat: false, idempotencyKey: 'k' }, md(alice));
    expect(await callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'back', subnet: '', nat: false, idempotencyKey: 'k' }, md(alice))).toEqual(n2);
    const all = (await callUnary(nets.listNetworks.bind(nets), { jobId: 0 }, md(alice))).networks;
    for (const x of all) for (const y of all) if (x.id !== y.id) expect(overlaps(parseCidr(x.subnet), parseCidr(y.subnet))).toBe(false);
    expect(new Set(all.map((n) => n.vni)).size).toBe(all.length);
    // A chosen subnet that overlaps a live one is refused; a free one is taken as is.
    expect(await codeOf(callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'c', subnet: n2.subnet, nat: false, idempotencyKey: '' }, md(alice)))).toBe(status.FAILED_PRECONDITION);
    expect((await callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'c', subnet: '172.31.8.0/24', nat: false, idempotencyKey: '' }, md(alice))).subnet).toBe('172.31.8.0/24');
    expect(await codeOf(callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'd', subnet: '10.1.2.3/24', nat: false, idempotencyKey: '' }, md(alice)))).toBe(status.INVALID_ARGUMENT);
    // A bad name or a bad subnet changes nothing.
    expect(await codeOf(callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'Bad_Name', subnet: '', nat: true, idempotencyKey: '' }, md(alice)))).toBe(status.INVALID_ARGUMENT);
    expect(await codeOf(callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'e', subnet: '10.0.0.0/8', nat: true, idempotencyKey: '' }, md(alice)))).toBe(status.INVALID_ARGUMENT);
    expect((await callUnary(nets.listNetworks.bind(nets), { jobId: job }, md(alice))).networks.some((n) => n.name === 'e')).toBe(false);
    const r = await run(alice, job, 1, ['back']);
    expect(r.instances[0]!.spec!.networks.map((a) => a.networkId)).toEqual([n2.id]);
    // Another user's network or job: NOT_FOUND, exactly as if absent.
    expect(await codeOf(run(bob, other, 1, [n2.id]))).toBe(status.NOT_FOUND);
    expect(await codeOf(run(alice, job, 1, ['nope']))).toBe(status.NOT_FOUND);
    expect(await codeOf(callUnary(nets.deleteNetwork.bind(nets), { id: n2.id }, md(bob)))).toBe(status.NOT_FOUND);
    expect(await codeOf(callUnary(nets.listNetworks.bind(nets), { jobId: job }, md(bob)))).toBe(status.NOT_FOUND);
    expect(await codeOf(callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'x', subnet: '', nat: false, idempotencyKey: '' }, md(bob)))).toBe(status.NOT_FOUND);
    // In use: refused; once its instance is deleted: gone, and released on the hosts.
    expect(await codeOf(callUnary(nets.deleteNetwork.bind(nets), { id: n2.id }, md(alice)))).toBe(status.FAILED_PRECONDITION);
    await callUnary(inst.deleteInstance.bind(inst), { id: r.instances[0]!.spec!.id }, md(alice));
    await callUnary(nets.deleteNetwork.bind(nets), { id: n2.id }, md(alice));
    expect(a1.callsOf('ReleaseNetwork').some((c) => c.target === n2.id)).toBe(true);
    expect((await callUnary(nets.listNetworks.bind(nets), { jobId: job }, md(alice))).networks.map((n) => n.name).sort()).toEqual(['c', 'default']);
  });

  it('nat - a NAT network gets its gateway on the first host of the job at once; members reach it through the mesh; other networks have none', async () => {
    const job = await runningJob();
    const n = await callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'out', subnet: '', nat: true, idempotencyKey: '' }, md(alice));
    expect(n).toMatchObject({ name: 'out', nat: true, gatewayNode: 'node-1' });
    const prefix = n.subnet.split('/')[1];
    // Before any instance: the gateway node alone, with the gateway and the job.
    expect(a1.networks.get(n.id)).toEqual({ vni: n.vni, peers: [], gateway: { address: `${n.gateway}/${prefix}`, mtu: n.mtu }, jobId: job });
    expect(a2.networks.get(n.id)).toBeUndefined();
    expect((await callUnary(nets.listNetworks.bind(nets), { jobId: job }, md(alice))).networks.find((x) => x.id === n.id)?.gatewayNode).toBe('node-1');
    const def = (await callUnary(nets.listNetworks.bind(nets), { jobId: job }, md(alice))).networks.find((x) => x.name === 'default')!;
    expect(def).toMatchObject({ nat: false, gatewayNode: '' });
    // Instances on both hosts: node-2 peers with the gateway node, which keeps the gateway.
    const r = await run(alice, job, 2, ['out']);
    expect(new Set(r.instances.map((i) => i.node))).toEqual(new Set(['node-1', 'node-2']));
    await waitFor(() => a2.networks.get(n.id), { timeoutMs: 5000, what: 'EnsureNetwork on node-2' });
    expect(a2.networks.get(n.id)).toEqual({ vni: n.vni, peers: ['192.168.240.11'] });
    await waitFor(() => (a1.networks.get(n.id)?.peers.length ? true : undefined), { timeoutMs: 5000, what: 'peers of node-1' });
    expect(a1.networks.get(n.id)).toMatchObject({ peers: ['192.168.240.12'], gateway: { address: `${n.gateway}/${prefix}` } });
    // With its instances gone the gateway node keeps the gateway; the network can be deleted, and is released everywhere.
    for (const i of r.instances) await callUnary(inst.deleteInstance.bind(inst), { id: i.spec!.id }, md(alice));
    expect(a1.networks.get(n.id)?.gateway).toBeDefined();
    await callUnary(nets.deleteNetwork.bind(nets), { id: n.id }, md(alice));
    expect(a1.networks.has(n.id)).toBe(false);
    expect(a2.callsOf('ReleaseNetwork').some((c) => c.target === n.id)).toBe(true);
    // Another user's job: NOT_FOUND, nothing created.
    const before = a1.callsOf('EnsureNetwork').length;
    expect(await codeOf(callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'x', subnet: '', nat: true, idempotencyKey: '' }, md(bob)))).toBe(status.NOT_FOUND);
    expect(a1.callsOf('EnsureNetwork').length).toBe(before);
  });

  it('nat - a gateway the agent cannot set up fails CreateNetwork with its error and leaves nothing: not in the store, released on the hosts', async () => {
    const job = await runningJob();
    a1.failNext('EnsureNetwork', new FailedPreconditionError('no uplink for NAT'), 1);
    const releases = a1.callsOf('ReleaseNetwork').length;
    expect(await codeOf(callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'out', subnet: '', nat: true, idempotencyKey: '' }, md(alice)))).toBe(status.FAILED_PRECONDITION);
    expect((await callUnary(nets.listNetworks.bind(nets), { jobId: job }, md(alice))).networks.map((x) => x.name)).toEqual(['default']);
    expect(a1.callsOf('ReleaseNetwork').length).toBeGreaterThan(releases);
    // Once the agent can, the same request works.
    expect((await callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'out', subnet: '', nat: true, idempotencyKey: '' }, md(alice))).nat).toBe(true);
  });

  it('networks - teardown releases every network of the job: subnets and VNIs return to the pool', async () => {
    const job = await runningJob();
    await run(alice, job, 2);
    const def = (await callUnary(nets.listNetworks.bind(nets), { jobId: job }, md(alice))).networks[0]!;
    const out = await callUnary(nets.createNetwork.bind(nets), { jobId: job, name: 'out', subnet: '', nat: true, idempotencyKey: '' }, md(alice));
    expect(a1.networks.get(out.id)?.gateway).toBeDefined();
    oar.setState(job, 'Terminated');
    await ctl.jobs.onOarEvent({ logId: 90_000 + job, jobId: job, state: 'Terminated', date: 0 });
    expect(ctl.store.listNetworks({ jobId: job })).toEqual([]);
    expect(a2.callsOf('ReleaseNetwork').some((c) => c.target === def.id)).toBe(true);
    // The NAT gateway goes with the job (ReleaseJob on its node, then ReleaseNetwork).
    expect(a1.networks.has(out.id)).toBe(false);
    expect(a1.callsOf('ReleaseNetwork').some((c) => c.target === out.id)).toBe(true);
    // The released subnet is the lowest free one again.
    const used = ctl.store.listNetworks().map((n) => parseCidr(n.subnet));
    expect(used.some((u) => overlaps(u, parseCidr(def.subnet)))).toBe(false);
  });

  it('connect - the first frame must be open; another user\'s instance is NOT_FOUND; the agent\'s answer is relayed', async () => {
    const job = await runningJob();
    const r = await run(alice, job, 1);
    const id = r.instances[0]!.spec!.id;
    const attempt = (token: string, first: ConnectFrame): Promise<number> =>
      new Promise((resolve) => {
        const call = inst.connect(bearer(token));
        call.on('data', () => {});
        call.on('error', (e: { code: number }) => resolve(e.code));
        call.on('end', () => resolve(status.OK));
        call.write(first);
      });
    expect(await attempt(bob, { frame: { $case: 'open', value: { instanceId: id, port: 22 } } })).toBe(status.NOT_FOUND);
    expect(await attempt(alice, { frame: { $case: 'data', value: Buffer.from('x') } })).toBe(status.INVALID_ARGUMENT);
    expect(await attempt(alice, { frame: { $case: 'open', value: { instanceId: id, port: 0 } } })).toBe(status.INVALID_ARGUMENT);
    // The fake agent does not implement Connect: its status comes back through the relay.
    expect(await attempt(alice, { frame: { $case: 'open', value: { instanceId: id, port: 22 } } })).toBe(status.UNIMPLEMENTED);
  });
});
