/**
 * Outbound NAT of a network on the real local cluster, driven with the built `oarcloud`
 * command where a user would: alice's job on two emulated nodes gets a `--nat` network; its
 * gateway lives on one node of the job (G, `gatewayNode`); an instance on the OTHER node
 * reaches, through the VXLAN tunnel to G and G's uplink (its underlay link), a ping target
 * and a TCP listener on a third node's underlay address, which sees G's underlay address as
 * the source (masquerade). An instance of the same job on the default network (no NAT)
 * cannot; bob's instances cannot reach the NAT network's instances, even with an address
 * forced into its subnet; nothing connects in from the uplink side; an agent that lost its
 * gateway (port and table) while down puts it back; after release nothing of it is left.
 *
 * Probes run host tools inside each instance's network namespace (`nsenter -t <pid> -n`),
 * listeners inside the emulated nodes' namespaces (oc-<node>, the project's own).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { credentials, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InstanceServiceClient, InstanceState, NetworkServiceClient, type Instance } from '@oarcloud/api';
import { bearer, callUnary } from '@oarcloud/common';
import {
  instanceNetPid,
  AGENT_ADDRESSES,
  agentInstancesOf,
  CLUSTER_IMAGE,
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
const CLI = resolve('packages/cli/dist/main.js');
const NODES: Record<string, { netns: string; db: string; underlay: string }> = {
  localhost: { netns: 'oc-localhost', db: `unix:${STATE}/nodes/localhost/ovs/db.sock`, underlay: '192.168.240.10' },
  'node-1': { netns: 'oc-node-1', db: `unix:${STATE}/nodes/node-1/ovs/db.sock`, underlay: '192.168.240.11' },
  'node-2': { netns: 'oc-node-2', db: `unix:${STATE}/nodes/node-2/ovs/db.sock`, underlay: '192.168.240.12' },
};
const p = prerequisites('nat e2e', [
  needRoot,
  needPath(CLI),
  needPath(`${STATE}/controller.yaml`),
  needPath('/var/run/netns/oc-node-1'),
  needCommand('nft', '--version'),
  needCommand('nsenter', '--version'),
  needCommand('nc', '-h'),
  needCommand('ping', '-V'),
]);

const run = (cmd: string, args: string[], timeoutMs = 30_000) => spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs });
const inNet = (pid: number, script: string, timeoutMs = 30_000) => run('nsenter', ['-t', String(instanceNetPid(pid)), '-n', '--', 'sh', '-c', script], timeoutMs);
const inNode = (node: string, script: string) => run('ip', ['netns', 'exec', NODES[node]!.netns, 'sh', '-c', script]);
const pingOk = (pid: number, ip: string, count = 2): boolean => inNet(pid, `ping -c ${count} -W 1 -i 0.2 ${ip}`).status === 0;
const tcpOk = (pid: number, ip: string, port: number): boolean => inNet(pid, `nc -z -w 2 ${ip} ${port}`).status === 0;
const codeOf = (pr: Promise<unknown>): Promise<number> => pr.then(() => status.OK, (e: Error) => (e.cause as { code: number }).code);
const addr = (i: Instance, k = 0): string => i.spec!.networks[k]!.address.split('/')[0]!;

interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** What the kernel and OVS of a node hold of ours for a network (gateway port, device, nft table). */
function gatewayObjects(node: string, networkId: string): { port: boolean; device: boolean; table: boolean } {
  const name = `ocg${networkId.slice(2)}`;
  const ports = run('ovs-vsctl', [`--db=${NODES[node]!.db}`, '--timeout=5', '--format=json', '--data=json', '--columns=name,external_ids', 'list', 'Port']);
  const rows = (JSON.parse(ports.stdout || '{"data":[]}') as { data: Array<[string, ['map', Array<[string, string]>]]> }).data;
  const port = rows.some(([n, [, kv]]) => n === name || Object.fromEntries(kv)['oarcloud-network'] === networkId && Object.fromEntries(kv)['oarcloud-kind'] === 'gateway');
  const device = run('ip', ['-n', NODES[node]!.netns, 'link', 'show', 'dev', name]).status === 0;
  const table = inNode(node, 'nft list tables').stdout.includes(`oarcloud-nat-${networkId}`);
  return { port, device, table };
}
const uplinkForwarding = (node: string): string => inNode(node, 'cat /proc/sys/net/ipv4/conf/br-ul/forwarding').stdout.trim();

describe.skipIf(!p.ok)('nat e2e - outbound NAT of a network through one node of the job', () => {
  const c = credentials.createInsecure();
  const inst = new InstanceServiceClient(CONTROLLER_ADDRESS, c);
  const nets = new NetworkServiceClient(CONTROLLER_ADDRESS, c);
  let alice = '';
  let bob = '';
  const md = (token: string) => ({ metadata: bearer(token), timeoutMs: 30_000 });
  const jobs: Array<{ id: number; user: string }> = [];
  const listeners: ChildProcess[] = [];
  const routes: Array<{ node: string; del: string }> = [];

  /** `oarcloud …` with alice's token, as a user would run it. */
  const cli = (args: string[]): CliRun => {
    const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000, env: { PATH: process.env.PATH, HOME: '/nonexistent', OARCLOUD_CONTROLLER: CONTROLLER_ADDRESS, OARCLOUD_TOKEN: alice } });
    return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  };

  /** A TCP listener in a node's netns; `peer()` is the source address nc reports. */
  function listen(node: string, port: number, sink = '/dev/null'): { peer: () => string | undefined } {
    let err = '';
    const l = spawn('ip', ['netns', 'exec', NODES[node]!.netns, 'sh', '-c', `nc -n -v -l -p ${port} > ${sink}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    l.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    listeners.push(l);
    return { peer: () => /Connection received on (\S+)/.exec(err)?.[1] };
  }
  const listening = (node: string, port: number) =>
    waitFor(() => inNode(node, `ss -ltn | grep -q ":${port} "`).status === 0, { timeoutMs: 5000, intervalMs: 100, what: `listener ${node}:${port}` });

  async function runInstances(jobId: number, token: string, count: number, networks: string[], prefix: string): Promise<Instance[]> {
    const r = await waitFor(
      async () => {
        try {
          return await callUnary(inst.runInstances.bind(inst), { jobId, spec: { image: CLUSTER_IMAGE, count, vcpus: 1, memoryMib: 64, sshAuthorizedKeys: [], namePrefix: prefix }, networks, idempotencyKey: `nat-e2e-${jobId}-${prefix}` }, md(token));
        } catch {
          return undefined; // the job may not be seen Running by the controller yet
        }
      },
      { timeoutMs: 30_000, intervalMs: 300, what: 'RunInstances' },
    );
    const ids = new Set(r.instances.map((i) => i.spec!.id));
    return waitFor(
      async () => {
        const l = (await callUnary(inst.listInstances.bind(inst), { jobId, allUsers: false }, md(token))).instances.filter((i) => ids.has(i.spec!.id));
        return l.length === count && l.every((i) => i.state === InstanceState.INSTANCE_STATE_RUNNING) ? l : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 200, what: `instances ${prefix} RUNNING` },
    );
  }
  const pidOf = async (jobId: number, id: string): Promise<number> => (await agentInstancesOf(jobId)).find((a) => a.spec!.id === id)!.initPid;

  let jobA = 0;
  let jobB = 0;
  let natId = '';
  let G = ''; // gateway node
  let N = ''; // the other node of job A
  let T = ''; // a third node: the target on the uplink side
  const forwardingBefore: Record<string, string> = {};
  let natInst: Instance[] = [];
  let defInst: Instance[] = [];
  let bobInst: Instance[] = [];

  beforeAll(async () => {
    await waitServing(CONTROLLER_ADDRESS);
    alice = await userToken('alice');
    bob = await userToken('bob');
    for (const node of Object.keys(NODES)) forwardingBefore[node] = uplinkForwarding(node);
    // Both at once (another job queued between them could hold the nodes): A takes both
    // cores of two hosts, B one core of the third.
    jobA = oarsub('alice', ['-t', 'cloud', '-l', 'host=2/core=2,walltime=0:15:00', 'sleep 900']);
    jobs.push({ id: jobA, user: 'alice' });
    jobB = oarsub('bob', ['-t', 'cloud', '-l', 'host=1/core=1,walltime=0:15:00', 'sleep 900']);
    jobs.push({ id: jobB, user: 'bob' });
  });

  afterAll(() => {
    for (const l of listeners) l.kill('SIGKILL');
    for (const r of routes) inNode(r.node, r.del);
    for (const j of jobs) spawnSync('su', ['-', j.user, '-c', `oardel ${j.id}`], { timeout: 20_000 });
    inst.close();
    nets.close();
  });

  it('cli - network create --nat (human and --json), ls shows the NAT node; a bad subnet exits 2 with a clear message and creates nothing', async () => {
    await waitFor(() => oarJob(jobA).state === 'Running', { timeoutMs: 180_000, intervalMs: 500, what: `job ${jobA} Running` });
    await waitFor(() => (cli(['network', 'ls', '--job', String(jobA), '--json']).code === 0 ? true : undefined), { timeoutMs: 30_000, intervalMs: 300, what: 'job known' });
    const bad = cli(['network', 'create', '--job', String(jobA), '--subnet', '10.90.0.300/24', 'bad']);
    expect(bad).toMatchObject({ code: 2, stdout: '' });
    expect(bad.stderr).toMatch(/^oarcloud: invalid --subnet "10\.90\.0\.300\/24": expected an IPv4 network in CIDR form/);
    const wide = cli(['network', 'create', '--job', String(jobA), '--subnet', '10.0.0.0/8', '--nat', 'bad']);
    expect(wide).toMatchObject({ code: 2, stdout: '', stderr: 'oarcloud: subnet prefix must be /16 to /29\n' });
    const hostBits = cli(['network', 'create', '--job', String(jobA), '--subnet', '172.31.9.1/24', 'bad']);
    expect(hostBits.code).toBe(2);
    expect(hostBits.stderr).toMatch(/not a network address/);
    expect(cli(['network', 'create', '--job', String(jobA), 'Bad_Name']).code).toBe(2);

    const t0 = Date.now();
    const created = cli(['network', 'create', '--job', String(jobA), '--nat', 'out', '--json']);
    expect(created.code, created.stderr).toBe(0);
    const n = JSON.parse(created.stdout) as { id: string; name: string; nat: boolean; gatewayNode: string; subnet: string; gateway: string; jobId: number };
    console.log(`nat e2e: network create --nat answered in ${Date.now() - t0} ms, gateway ${n.gateway} on ${n.gatewayNode}`);
    expect(n).toMatchObject({ name: 'out', nat: true, jobId: jobA });
    natId = n.id;
    G = n.gatewayNode;
    const hosts = oarJob(jobA).assigned_network_address;
    expect(hosts).toContain(G);
    N = hosts.find((h) => h !== G)!;
    T = Object.keys(NODES).find((x) => !hosts.includes(x))!;
    expect(N && T).toBeTruthy();
    // Only the gateway node has it, fully; the other nodes nothing.
    expect(gatewayObjects(G, natId)).toEqual({ port: true, device: true, table: true });
    for (const other of [N, T]) expect(gatewayObjects(other, natId)).toEqual({ port: false, device: false, table: false });
    const human = cli(['network', 'ls', '--job', String(jobA)]);
    expect(human.code).toBe(0);
    expect(human.stdout.split('\n')[0]).toMatch(/^ID\s+NAME\s+JOB\s+SUBNET\s+GATEWAY\s+NAT\s+VNI\s+MTU$/);
    expect(human.stdout).toMatch(new RegExp(`${natId}\\s+out\\s+${jobA}\\s+${n.subnet.replaceAll('.', '\\.')}\\s+${n.gateway.replaceAll('.', '\\.')}\\s+via ${G}\\s`));
    expect(human.stdout).toMatch(/\sdefault\s.*\s-\s/);
    const list = JSON.parse(cli(['network', 'ls', '--job', String(jobA), '--json']).stdout) as Array<{ name: string; nat: boolean }>;
    expect(list.map((x) => [x.name, x.nat]).sort()).toEqual([
      ['default', false],
      ['out', true],
    ]);
    // The default network has no gateway anywhere.
    const def = (await callUnary(nets.listNetworks.bind(nets), { jobId: jobA }, md(alice))).networks.find((x) => x.name === 'default')!;
    for (const node of Object.keys(NODES)) expect(gatewayObjects(node, def.id).table || gatewayObjects(node, def.id).port).toBe(false);
  }, 300_000);

  it('nat - an instance on the non-gateway node reaches a third node over the uplink, masqueraded behind the gateway node; TCP moves data', async () => {
    natInst = await runInstances(jobA, alice, 2, ['out'], 'nat');
    expect(new Set(natInst.map((i) => i.node))).toEqual(new Set([G, N]));
    const onN = natInst.find((i) => i.node === N)!;
    const pN = await pidOf(jobA, onN.spec!.id);
    const gw = onN.spec!.networks[0]!.gateway;
    await waitFor(() => pingOk(pN, gw, 1), { timeoutMs: 15_000, intervalMs: 300, what: 'gateway answers ping' });
    expect(uplinkForwarding(G)).toBe('1');
    const target = NODES[T]!.underlay;
    const ping = inNet(pN, `ping -c 10 -i 0.2 -W 1 ${target}`);
    expect(ping.status, ping.stdout).toBe(0);
    console.log(`nat e2e: ${N} instance -> tunnel -> ${G} NAT -> ${T} underlay: ping ${/rtt [^\n]*/.exec(ping.stdout)?.[0]}`);
    // TCP: the listener on the third node sees the gateway node's underlay address.
    const sink = `/tmp/oc-nat-e2e-${process.pid}.recv`;
    rmSync(sink, { force: true });
    const l = listen(T, 7301, sink);
    await listening(T, 7301);
    const file = `/tmp/oc-nat-e2e-${process.pid}.bin`;
    const data = randomBytes(4 * 1024 * 1024);
    writeFileSync(file, data);
    const t0 = performance.now();
    const send = inNet(pN, `nc -N -w 20 ${target} 7301 < ${file}`, 60_000);
    const ms = performance.now() - t0;
    expect(send.status, send.stderr).toBe(0);
    expect(await waitFor(() => l.peer(), { timeoutMs: 5000, intervalMs: 100, what: 'peer address' })).toBe(NODES[G]!.underlay);
    const md5 = (buf: Buffer) => createHash('md5').update(buf).digest('hex');
    const got = await waitFor(() => {
      const r = run('md5sum', [sink]).stdout.split(' ')[0];
      return r === md5(data) ? r : undefined;
    }, { timeoutMs: 10_000, intervalMs: 200, what: 'md5 of the received data' });
    expect(got).toBe(md5(data));
    console.log(`nat e2e: TCP 4 MiB through NAT in ${ms.toFixed(0)} ms = ${((4 / ms) * 1000).toFixed(1)} MiB/s, source seen ${NODES[G]!.underlay}, md5 ok`);
    rmSync(file, { force: true });
    rmSync(sink, { force: true });
    // The instance on the gateway node itself goes out the same way, and both resolve the
    // gateway to the gateway port (never to a port the node's own stack answered on).
    const pG = await pidOf(jobA, natInst.find((i) => i.node === G)!.spec!.id);
    const gwMac = /link\/ether (\S+)/.exec(run('ip', ['-n', NODES[G]!.netns, 'link', 'show', 'dev', `ocg${natId.slice(2)}`]).stdout)?.[1];
    expect(gwMac).toMatch(/^[0-9a-f:]{17}$/);
    for (let round = 0; round < 3; round++) {
      for (const pid of [pG, pN]) {
        inNet(pid, 'ip neigh flush all');
        expect(pingOk(pid, target), `round ${round}`).toBe(true);
        expect(inNet(pid, `ip neigh show ${gw}`).stdout).toContain(gwMac!);
      }
    }
    // Instance ports are plain switch ports for the node's stack.
    const port = `oc${natInst.find((i) => i.node === G)!.spec!.id.slice(2)}0`;
    expect(inNode(G, `cat /proc/sys/net/ipv4/conf/${port}/arp_ignore /proc/sys/net/ipv6/conf/${port}/disable_ipv6`).stdout.split('\n').slice(0, 2)).toEqual(['8', '1']);
  }, 240_000);

  it('nat - nothing else: no NAT for the default network, nothing in from the uplink, nothing of the gateway node but ping', async () => {
    defInst = await runInstances(jobA, alice, 2, [], 'plain');
    const target = NODES[T]!.underlay;
    listen(T, 7302);
    await listening(T, 7302);
    for (const i of defInst) {
      const pid = await pidOf(jobA, i.spec!.id);
      expect(pingOk(pid, target)).toBe(false);
      expect(tcpOk(pid, target, 7302)).toBe(false);
      expect(pingOk(pid, i.spec!.networks[0]!.gateway)).toBe(false); // nothing answers a non-NAT gateway address
    }
    // Not even its own node, addressed on-link: the node's stack does not answer on instance ports.
    const d0 = defInst[0]!;
    const pd = await pidOf(jobA, d0.spec!.id);
    listen(d0.node, 7304);
    await listening(d0.node, 7304);
    expect(inNet(pd, `ip route add ${NODES[d0.node]!.underlay}/32 dev eth0`).status).toBe(0);
    expect(pingOk(pd, NODES[d0.node]!.underlay)).toBe(false);
    expect(tcpOk(pd, NODES[d0.node]!.underlay, 7304)).toBe(false);
    expect(inNet(pd, `ip neigh show ${NODES[d0.node]!.underlay}`).stdout).not.toContain('lladdr'); // nobody answered its ARP
    inNet(pd, `ip route del ${NODES[d0.node]!.underlay}/32 dev eth0`);
    const onN = natInst.find((i) => i.node === N)!;
    const pN = await pidOf(jobA, onN.spec!.id);
    expect(tcpOk(pN, target, 7302)).toBe(true); // sanity: the listener is reachable the NAT way
    // The gateway node's own services: neither by the gateway address nor by its underlay one.
    listen(G, 7303);
    await listening(G, 7303);
    expect(tcpOk(pN, onN.spec!.networks[0]!.gateway, 7303)).toBe(false);
    expect(tcpOk(pN, NODES[G]!.underlay, 7303)).toBe(false);
    // From the uplink side, even routed at the gateway node: no new flow gets in.
    const subnet = (await callUnary(nets.listNetworks.bind(nets), { jobId: jobA }, md(alice))).networks.find((x) => x.id === natId)!.subnet;
    expect(inNode(T, `ip route add ${subnet} via ${NODES[G]!.underlay}`).status).toBe(0);
    routes.push({ node: T, del: `ip route del ${subnet} via ${NODES[G]!.underlay}` });
    expect(run('ip', ['netns', 'exec', NODES[T]!.netns, 'ping', '-c', '2', '-W', '1', '-i', '0.2', addr(onN)]).status).not.toBe(0);
    expect(run('ip', ['netns', 'exec', NODES[T]!.netns, 'nc', '-z', '-w', '2', addr(onN), '22']).status).not.toBe(0);
    inNode(T, routes.pop()!.del);
  }, 240_000);

  it('nat - bob cannot reach the NAT network, even with an address in its subnet and the gateway as route', async () => {
    await waitFor(() => oarJob(jobB).state === 'Running', { timeoutMs: 180_000, intervalMs: 500, what: `job ${jobB} Running` });
    bobInst = await runInstances(jobB, bob, 1, [], 'bob');
    const pb = await pidOf(jobB, bobInst[0]!.spec!.id);
    const natNet = natInst[0]!.spec!.networks[0]!;
    for (const a of natInst) {
      expect(pingOk(pb, addr(a))).toBe(false);
      expect(tcpOk(pb, addr(a), 22)).toBe(false);
      expect(tcpOk(await pidOf(jobA, a.spec!.id), addr(bobInst[0]!), 22)).toBe(false);
    }
    const prefix = natNet.address.split('.').slice(0, 3).join('.');
    expect(inNet(pb, `ip addr add ${prefix}.250/24 dev eth0 && ip route replace default via ${natNet.gateway}`).status).toBe(0);
    for (const a of natInst) {
      expect(pingOk(pb, addr(a))).toBe(false);
      expect(tcpOk(pb, addr(a), 22)).toBe(false);
    }
    expect(pingOk(pb, natNet.gateway)).toBe(false);
    expect(pingOk(pb, NODES[T]!.underlay)).toBe(false);
    inNet(pb, `ip addr del ${prefix}.250/24 dev eth0`);
    // bob does not see alice's network, through the CLI either.
    expect(await codeOf(callUnary(nets.deleteNetwork.bind(nets), { id: natId }, md(bob)))).toBe(status.NOT_FOUND);
    const bobLs = spawnSync(process.execPath, [CLI, 'network', 'ls', '--json'], { encoding: 'utf8', env: { PATH: process.env.PATH, HOME: '/nonexistent', OARCLOUD_CONTROLLER: CONTROLLER_ADDRESS, OARCLOUD_TOKEN: bob } });
    expect((JSON.parse(bobLs.stdout) as Array<{ id: string }>).some((x) => x.id === natId)).toBe(false);
  }, 240_000);

  it('nat - the gateway node\'s agent, restarted after its gateway port and table vanished, puts both back; a stale table of ours goes', async () => {
    const pN = await pidOf(jobA, natInst.find((i) => i.node === N)!.spec!.id);
    const target = NODES[T]!.underlay;
    killDaemon(`agent-${G}`);
    run('ovs-vsctl', [`--db=${NODES[G]!.db}`, '--timeout=5', 'del-port', `ocg${natId.slice(2)}`]);
    inNode(G, `nft delete table ip oarcloud-nat-${natId}`);
    inNode(G, 'nft add table ip oarcloud-nat-n-00000000dead');
    expect(pingOk(pN, target)).toBe(false);
    const t0 = Date.now();
    clusterUp();
    await waitServing(AGENT_ADDRESSES[G]!);
    await waitFor(() => pingOk(pN, target, 1), { timeoutMs: 30_000, intervalMs: 300, what: 'NAT back after the agent restart' });
    await waitFor(() => !inNode(G, 'nft list tables').stdout.includes('oarcloud-nat-n-00000000dead'), { timeoutMs: 30_000, intervalMs: 500, what: 'stale table removed' });
    console.log(`nat e2e: agent restart -> gateway back and stale table gone in ${Date.now() - t0} ms`);
    expect(gatewayObjects(G, natId)).toEqual({ port: true, device: true, table: true });
  }, 120_000);

  it('nat - after release nothing of the gateway is left: no port, device or table on any node, uplink forwarding as before; network rm via the CLI too', async () => {
    // A second NAT network, removed with the CLI while the job runs.
    const extra = cli(['network', 'create', '--job', String(jobA), '--nat', 'extra']);
    expect(extra.code, extra.stderr).toBe(0);
    expect(extra.stdout).toMatch(new RegExp(`^created network extra \\(n-[0-9a-f]{12}\\) in job ${jobA}: [\\d./]+, gateway [\\d.]+, NAT via ${G}\\n$`));
    const extraId = /\((n-[0-9a-f]{12})\)/.exec(extra.stdout)![1]!;
    expect(gatewayObjects(G, extraId).table).toBe(true);
    expect(cli(['network', 'rm', '--job', String(jobA), 'extra'])).toMatchObject({ code: 0, stdout: `removed network extra (${extraId})\n` });
    expect(gatewayObjects(G, extraId)).toEqual({ port: false, device: false, table: false });
    expect(cli(['network', 'rm', '--job', String(jobA), 'extra']).code).toBe(3);
    // In use: refused, exit 5.
    expect(cli(['network', 'rm', '--job', String(jobA), 'out']).code).toBe(5);

    for (const j of jobs.splice(0)) sh('oardel', [String(j.id)], j.user);
    const t0 = Date.now();
    await waitFor(async () => (await Promise.all([jobA, jobB].map((id) => agentInstancesOf(id)))).every((l) => l.length === 0), { timeoutMs: 90_000, intervalMs: 300, what: 'agents empty' });
    await waitFor(
      () => Object.keys(NODES).every((node) => {
        const o = gatewayObjects(node, natId);
        return !o.port && !o.device && !o.table;
      }),
      { timeoutMs: 30_000, intervalMs: 300, what: 'no gateway left' },
    );
    console.log(`nat e2e: release -> gateway gone in ${Date.now() - t0} ms`);
    for (const node of Object.keys(NODES)) {
      const tables = inNode(node, 'nft list tables').stdout;
      expect(tables).not.toContain(natId);
      expect(tables).not.toContain(extraId);
      // The shared cluster may run someone else's NAT network meanwhile: then the uplink rightly forwards.
      if (!tables.includes('oarcloud-nat-')) expect(uplinkForwarding(node), node).toBe(forwardingBefore[node]);
      expect(inNode(node, 'cat /proc/sys/net/ipv4/ip_forward').stdout.trim()).toBe('0');
    }
    await waitFor(async () => (await callUnary(nets.listNetworks.bind(nets), { jobId: jobA }, md(alice))).networks.length === 0, { timeoutMs: 30_000, intervalMs: 300, what: 'networks released' });
  }, 180_000);
});
