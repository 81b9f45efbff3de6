/**
 * Private networks on the real local cluster: instances of one job on node-1 and node-2
 * (each emulated node with its own netns and its own OVS) reach each other through a real
 * VXLAN tunnel; another job's instances are unreachable, ICMP and TCP, both ways, even with
 * an address forced into the other's subnet; an agent restarted mid-way converges;
 * InstanceService.Connect reaches an instance's sshd through the controller; teardown
 * leaves no port, tunnel or link of the job on any node.
 *
 * The probes run host tools (ping, nc, md5sum) inside each instance's network namespace
 * (`nsenter -t <init pid> -n`): the instance's own eth0, addresses and routes, so the path
 * measured is exactly the instance's.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync, rmSync } from 'node:fs';
import { credentials, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InstanceServiceClient, InstanceState, NetworkServiceClient, type ConnectFrame, type Instance } from '@oarcloud/api';
import { bearer, callUnary } from '@oarcloud/common';
import {
  instanceNetPid,
  agentClient,
  agentInstancesOf,
  CLUSTER_IMAGE,
  AGENT_ADDRESSES,
  clusterUp,
  CONTROLLER_ADDRESS,
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
const NODES: Record<string, { netns: string; db: string }> = {
  'node-1': { netns: 'oc-node-1', db: `unix:${STATE}/nodes/node-1/ovs/db.sock` },
  'node-2': { netns: 'oc-node-2', db: `unix:${STATE}/nodes/node-2/ovs/db.sock` },
  localhost: { netns: 'oc-localhost', db: `unix:${STATE}/nodes/localhost/ovs/db.sock` },
};
const p = prerequisites('network e2e', [
  needRoot,
  needPath(`${STATE}/controller.yaml`),
  needPath(`${STATE}/controller/admin.token`),
  needPath(`${STATE}/nodes/node-1/ovs/db.sock`),
  needPath('/var/run/netns/oc-node-1'),
  needCommand('nsenter', '--version'),
  needCommand('nc', '-h'),
  needCommand('ping', '-V'),
]);

const run = (cmd: string, args: string[], timeoutMs = 30_000) => spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs });
/** Runs a shell command inside the network namespace of the instance whose init is `pid`. */
const inNet = (pid: number, script: string, timeoutMs = 30_000) => run('nsenter', ['-t', String(instanceNetPid(pid)), '-n', '--', 'sh', '-c', script], timeoutMs);
const pingOk = (pid: number, ip: string, count = 2): boolean => inNet(pid, `ping -c ${count} -W 1 -i 0.2 ${ip}`).status === 0;
const tcpOk = (pid: number, ip: string, port: number): boolean => inNet(pid, `nc -z -w 2 ${ip} ${port}`).status === 0;
const codeOf = (pr: Promise<unknown>): Promise<number> => pr.then(() => status.OK, (e: Error) => (e.cause as { code: number }).code);

interface OurObjects {
  ports: string[];
  tunnels: string[];
}
/** Our OVS ports/tunnels of a node whose external_ids name one of `networkIds` (or instances). */
function ourObjects(node: string, networkIds: string[], instanceIds: string[]): OurObjects {
  const out = run('ovs-vsctl', [`--db=${NODES[node]!.db}`, '--timeout=5', '--format=json', '--data=json', '--columns=name,external_ids', 'list', 'Port']);
  const rows = (JSON.parse(out.stdout || '{"data":[]}') as { data: Array<[string, ['map', Array<[string, string]>]]> }).data;
  const res: OurObjects = { ports: [], tunnels: [] };
  for (const [name, [, kv]] of rows) {
    const ids = Object.fromEntries(kv);
    if (ids['oarcloud-kind'] === 'tunnel' && networkIds.includes(ids['oarcloud-network']!)) res.tunnels.push(name);
    if (ids['oarcloud-kind'] === 'instance' && (instanceIds.includes(ids['oarcloud-instance']!) || networkIds.includes(ids['oarcloud-network']!))) res.ports.push(name);
  }
  return res;
}

/** Host-side links of the instances left in a node's netns (or the host's). */
function leftLinks(node: string, instanceIds: string[]): string[] {
  const ns = NODES[node]!.netns;
  const out = run('ip', [...(ns ? ['-n', ns] : []), '-o', 'link']).stdout;
  return instanceIds.map((id) => `oc${id.slice(2)}`).filter((prefix) => out.includes(prefix));
}

describe.skipIf(!p.ok)('network e2e - private networks across emulated hosts', () => {
  const image = CLUSTER_IMAGE;
  const c = credentials.createInsecure();
  const inst = new InstanceServiceClient(CONTROLLER_ADDRESS, c);
  const nets = new NetworkServiceClient(CONTROLLER_ADDRESS, c);
  const agents = Object.fromEntries(Object.entries(AGENT_ADDRESSES).map(([n, a]) => [n, agentClient(a, n)]));
  let alice = '';
  let bob = '';
  const md = (token = alice) => ({ metadata: bearer(token), timeoutMs: 30_000 });
  const jobs: Array<{ id: number; user: string }> = [];

  /** Submits a cloud job of one core on each of two hosts. */
  function submit(user: string): number {
    const id = oarsub(user, ['-t', 'cloud', '-l', 'host=2/core=1,walltime=0:10:00', 'sleep 600']);
    jobs.push({ id, user });
    return id;
  }

  /** Waits until job `id` runs, starts `count` instances, waits until they all run. */
  async function jobWithInstances(id: number, token: string, count: number): Promise<{ id: number; instances: Instance[]; pids: Map<string, number> }> {
    await waitFor(() => oarJob(id).state === 'Running', { timeoutMs: 180_000, intervalMs: 500, what: `job ${id} Running` });
    await waitFor(async () => (await codeOf(callUnary(inst.listInstances.bind(inst), { jobId: id, allUsers: false }, md(token)))) === status.OK, { timeoutMs: 20_000, what: 'job known' });
    const t0 = Date.now();
    await waitFor(
      async () => {
        try {
          return await callUnary(inst.runInstances.bind(inst), { jobId: id, spec: { image, count, vcpus: 1, memoryMib: 64, sshAuthorizedKeys: [], namePrefix: `net${id}` }, networks: [], idempotencyKey: `net-e2e-${id}` }, md(token));
        } catch {
          return undefined; // the job may not be seen Running by the controller yet
        }
      },
      { timeoutMs: 20_000, intervalMs: 300, what: 'RunInstances' },
    );
    const instances = await waitFor(
      async () => {
        const l = (await callUnary(inst.listInstances.bind(inst), { jobId: id, allUsers: false }, md(token))).instances;
        return l.length === count && l.every((i) => i.state === InstanceState.INSTANCE_STATE_RUNNING) ? l : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 200, what: `instances of job ${id} RUNNING` },
    );
    console.log(`network e2e: job ${id}: ${count} instances RUNNING with a network in ${Date.now() - t0} ms on ${instances.map((i) => `${i.node}:${i.spec!.networks[0]?.address}`).join(', ')}`);
    const pids = new Map<string, number>();
    for (const a of await agentInstancesOf(id)) pids.set(a.spec!.id, a.initPid);
    return { id, instances, pids };
  }

  const addr = (i: Instance): string => i.spec!.networks[0]!.address.split('/')[0]!;

  beforeAll(async () => {
    await waitServing(CONTROLLER_ADDRESS);
    alice = await userToken('alice');
    bob = await userToken('bob');
    // Both jobs at once: on a shared cluster another job queued between them could hold the
    // nodes for its whole walltime.
    jobA = submit('alice');
    jobB = submit('bob');
  });

  afterAll(async () => {
    for (const j of jobs) spawnSync('su', ['-', j.user, '-c', `oardel ${j.id}`], { timeout: 20_000 });
    for (const x of [inst, nets, ...Object.values(agents)]) x.close();
  });

  let jobA = 0;
  let jobB = 0;
  let A: Awaited<ReturnType<typeof jobWithInstances>>;
  let B: Awaited<ReturnType<typeof jobWithInstances>>;

  it('network - two instances of one job on node-1 and node-2 ping each other and move 8 MB over TCP through the VXLAN tunnel', async () => {
    A = await jobWithInstances(jobA, alice, 2);
    const [a1, a2] = A.instances;
    expect(new Set(A.instances.map((i) => i.node)).size).toBe(2);
    const att = a1!.spec!.networks[0]!;
    expect(att.interface).toBe('eth0');
    expect(att.mtu).toBe(1446);
    expect(att.address).toMatch(/^10\.90\.\d+\.\d+\/24$/);
    expect(att.gateway).toMatch(/\.1$/);
    expect(att.mac).toMatch(/^02:0c:/);
    expect(addr(a1!)).not.toBe(addr(a2!));
    const netList = (await callUnary(nets.listNetworks.bind(nets), { jobId: A.id }, md())).networks;
    expect(netList).toHaveLength(1);
    expect(netList[0]!.vni).toBeGreaterThanOrEqual(4096);
    const p1 = A.pids.get(a1!.spec!.id)!;
    const p2 = A.pids.get(a2!.spec!.id)!;
    // Cross-host: there is a tunnel of the network on each node.
    for (const n of [a1!.node, a2!.node]) expect(ourObjects(n, [att.networkId], []).tunnels.length).toBeGreaterThanOrEqual(1);
    await waitFor(() => pingOk(p1, addr(a2!), 1), { timeoutMs: 10_000, intervalMs: 200, what: 'first ping' });
    const ping = inNet(p1, `ping -c 10 -i 0.2 -W 1 ${addr(a2!)}`);
    expect(ping.status).toBe(0);
    console.log(`network e2e: cross-host ping ${/rtt [^\n]*/.exec(ping.stdout)?.[0]}`);
    expect(pingOk(p2, addr(a1!))).toBe(true);

    // TCP: 8 MB from a1 to a2, checksum compared on the receiving side.
    const file = `/tmp/oc-net-e2e-${process.pid}.bin`;
    const data = randomBytes(8 * 1024 * 1024);
    writeFileSync(file, data);
    const want = createHash('md5').update(data).digest('hex');
    const out = `/tmp/oc-net-e2e-${process.pid}.md5`;
    rmSync(out, { force: true });
    const listener = execFileSync('bash', ['-c', `nohup nsenter -t ${p2} -n -- sh -c 'nc -l -N -w 30 5001 | md5sum > ${out}' >/dev/null 2>&1 & echo $!`], { encoding: 'utf8' });
    expect(Number(listener)).toBeGreaterThan(1);
    await waitFor(() => inNet(p2, 'ss -ltn | grep -q ":5001 "').status === 0, { timeoutMs: 5000, intervalMs: 100, what: 'listener' });
    const t0 = performance.now();
    const send = inNet(p1, `nc -N -w 20 ${addr(a2!)} 5001 < ${file}`, 60_000);
    const ms = performance.now() - t0;
    expect(send.status).toBe(0);
    const got = await waitFor(() => run('cat', [out]).stdout.split(' ')[0]?.trim() || undefined, { timeoutMs: 10_000, intervalMs: 100, what: 'md5' });
    expect(got).toBe(want);
    console.log(`network e2e: cross-host TCP 8 MiB in ${ms.toFixed(0)} ms = ${((8 / ms) * 1000).toFixed(1)} MiB/s, md5 ok`);
    rmSync(file, { force: true });
    rmSync(out, { force: true });
  }, 240_000);

  it('network - instances of another job cannot reach them, ICMP and TCP, both ways, even with an address in the other subnet', async () => {
    B = await jobWithInstances(jobB, bob, 2);
    const aNet = A.instances[0]!.spec!.networks[0]!;
    const bNet = B.instances[0]!.spec!.networks[0]!;
    expect(bNet.networkId).not.toBe(aNet.networkId);
    expect(bNet.vni).not.toBe(aNet.vni);
    expect(bNet.address.split('.').slice(0, 3)).not.toEqual(aNet.address.split('.').slice(0, 3));
    console.log(`network e2e: job A on ${A.instances.map((i) => i.node).join(',')}, job B on ${B.instances.map((i) => i.node).join(',')}`);
    const bPids = B.instances.map((i) => B.pids.get(i.spec!.id)!);
    // B works within itself (sanity: a failing probe below must mean isolation, not a dead network).
    await waitFor(() => pingOk(bPids[0]!, addr(B.instances[1]!), 1), { timeoutMs: 10_000, intervalMs: 200, what: 'B ping' });
    // sshd (dropbear) listens on 22 in every instance: TCP probes aim at it.
    expect(tcpOk(bPids[0]!, addr(B.instances[1]!), 22)).toBe(true);
    for (const a of A.instances) {
      const pa = A.pids.get(a.spec!.id)!;
      for (const b of B.instances) {
        const pb = B.pids.get(b.spec!.id)!;
        expect(pingOk(pa, addr(b), 2)).toBe(false);
        expect(pingOk(pb, addr(a), 2)).toBe(false);
        expect(tcpOk(pa, addr(b), 22)).toBe(false);
        expect(tcpOk(pb, addr(a), 22)).toBe(false);
      }
    }
    // Force an address of B's subnet onto A's first instance (and the reverse): still nothing.
    const pa = A.pids.get(A.instances[0]!.spec!.id)!;
    const pb = B.pids.get(B.instances[0]!.spec!.id)!;
    const prefix = (x: string) => x.split('.').slice(0, 3).join('.');
    expect(inNet(pa, `ip addr add ${prefix(bNet.address)}.250/24 dev eth0`).status).toBe(0);
    expect(inNet(pb, `ip addr add ${prefix(aNet.address)}.250/24 dev eth0`).status).toBe(0);
    for (const b of B.instances) {
      expect(pingOk(pa, addr(b), 2)).toBe(false);
      expect(tcpOk(pa, addr(b), 22)).toBe(false);
    }
    for (const a of A.instances) {
      expect(pingOk(pb, addr(a), 2)).toBe(false);
      expect(tcpOk(pb, addr(a), 22)).toBe(false);
    }
    inNet(pa, `ip addr del ${prefix(bNet.address)}.250/24 dev eth0`);
    inNet(pb, `ip addr del ${prefix(aNet.address)}.250/24 dev eth0`);
    // Another user's network is NOT_FOUND to them; so is their instance to RunInstances on it.
    expect(await codeOf(callUnary(nets.deleteNetwork.bind(nets), { id: aNet.networkId }, md(bob)))).toBe(status.NOT_FOUND);
    expect(
      await codeOf(callUnary(inst.runInstances.bind(inst), { jobId: B.id, spec: { image, count: 1, vcpus: 1, memoryMib: 64, sshAuthorizedKeys: [], namePrefix: 'x' }, networks: [aNet.networkId], idempotencyKey: '' }, md(bob))),
    ).toBe(status.NOT_FOUND);
  }, 240_000);

  it('network - Connect through the controller reaches port 22 (SSH banner); another user gets NOT_FOUND', async () => {
    const target = A.instances[0]!.spec!.id;
    const connect = (token: string): Promise<{ banner: string; code: number }> =>
      new Promise((resolve) => {
        const call = inst.connect(bearer(token));
        let buf = '';
        const done = (code: number): void => {
          call.cancel();
          resolve({ banner: buf, code });
        };
        call.on('data', (f: ConnectFrame) => {
          if (f.frame?.$case === 'data') buf += Buffer.from(f.frame.value).toString('latin1');
          if (buf.includes('\n')) done(status.OK);
        });
        call.on('error', (e: { code: number }) => done(e.code));
        call.on('end', () => done(status.OK));
        call.write({ frame: { $case: 'open', value: { instanceId: target, port: 22 } } });
        setTimeout(() => done(status.DEADLINE_EXCEEDED), 15_000);
      });
    const t0 = Date.now();
    const ok = await connect(alice);
    console.log(`network e2e: Connect banner in ${Date.now() - t0} ms: ${ok.banner.split('\n')[0]!.trim()}`);
    expect(ok.banner).toMatch(/^SSH-2\.0-/);
    expect((await connect(bob)).code).toBe(status.NOT_FOUND);
  }, 60_000);

  it('network - an agent killed mid-way and restarted converges: a removed tunnel comes back, a stale port of ours goes', async () => {
    const node = A.instances[1]!.node;
    const net = A.instances[0]!.spec!.networks[0]!;
    const db = NODES[node]!.db;
    killDaemon(`agent-${node}`);
    const before = ourObjects(node, [net.networkId], []);
    expect(before.tunnels.length).toBeGreaterThanOrEqual(1);
    // Drift while the agent is down: its tunnel is gone, a stale port of ours appeared.
    for (const t of before.tunnels) run('ovs-vsctl', [`--db=${db}`, 'del-port', t]);
    run('ovs-vsctl', [`--db=${db}`, '--may-exist', 'add-port', 'br-int', 'ocstale0', '--', 'set', 'Port', 'ocstale0', 'tag=4000', 'external_ids:oarcloud-kind=instance', 'external_ids:oarcloud-instance=i-0000000000ff', `external_ids:oarcloud-network=${net.networkId}`]);
    const p1 = A.pids.get(A.instances[0]!.spec!.id)!;
    expect(pingOk(p1, addr(A.instances[1]!), 2)).toBe(false);
    const t0 = Date.now();
    clusterUp();
    await waitServing(AGENT_ADDRESSES[node]!);
    await waitFor(() => pingOk(p1, addr(A.instances[1]!), 1), { timeoutMs: 30_000, intervalMs: 300, what: 'ping back after restart' });
    await waitFor(() => !ourObjects(node, [net.networkId], []).ports.includes('ocstale0'), { timeoutMs: 30_000, intervalMs: 500, what: 'stale port removed' });
    console.log(`network e2e: agent restart -> tunnel back and stale port gone in ${Date.now() - t0} ms`);
    expect(ourObjects(node, [net.networkId], []).tunnels).toEqual(before.tunnels);
  }, 120_000);

  it('network - after teardown no port, tunnel or link of the jobs is left on any node, and their subnets are free', async () => {
    const all = [A, B];
    const netIds = all.map((j) => j.instances[0]!.spec!.networks[0]!.networkId);
    const instIds = all.flatMap((j) => j.instances.map((i) => i.spec!.id));
    for (const j of jobs.splice(0)) sh('oardel', [String(j.id)], j.user);
    const t0 = Date.now();
    await waitFor(async () => (await Promise.all(all.map((j) => agentInstancesOf(j.id)))).every((l) => l.length === 0), { timeoutMs: 60_000, intervalMs: 300, what: 'agents empty' });
    await waitFor(
      () => Object.keys(NODES).every((n) => {
        const o = ourObjects(n, netIds, instIds);
        return o.ports.length === 0 && o.tunnels.length === 0 && leftLinks(n, instIds).length === 0;
      }),
      { timeoutMs: 30_000, intervalMs: 300, what: 'no port, tunnel or link left' },
    );
    console.log(`network e2e: teardown clean on every node in ${Date.now() - t0} ms`);
    await waitFor(async () => (await callUnary(nets.listNetworks.bind(nets), { jobId: A.id }, md())).networks.length === 0, { timeoutMs: 30_000, intervalMs: 300, what: 'networks released' });
  }, 120_000);
});
