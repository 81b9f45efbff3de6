/**
 * Network benchmarks (issue: networks). One run measures, on the local cluster:
 * - net.rtt_same_host_ms / net.rtt_cross_host_ms: ping between two instances of one job on
 *   one emulated node (OVS bridge, VLAN) and on two (OVS + userspace VXLAN between the
 *   nodes' namespaces); baseline: a bare veth pair between two namespaces;
 * - net.tcp_same_host_mbps / net.tcp_cross_host_mbps: iperf3 TCP throughput on the same
 *   paths; baseline: two namespaces joined by a Linux bridge (the kernel's own switch);
 * - net.start_with_port_ms: agent CreateInstance → RUNNING with one network port; baseline:
 *   the same instance without a port (what the port costs).
 * Probes run inside each instance's network namespace (nsenter -t <init pid> -n): the path
 * measured is the instance's own eth0. Baseline namespaces are created here and removed.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { credentials } from '@grpc/grpc-js';
import { InstanceServiceClient, InstanceState, type Instance } from '@oarcloud/api';
import { bearer, callUnary, nullLogger } from '@oarcloud/common';
import { agentInstancesOf, CLUSTER_IMAGE, CONTROLLER_ADDRESS, oarJob, oarsub, sh, tinyImage, userToken, waitFor } from '@oarcloud/testkit';
import { DirLayerStore } from '../../packages/agent/src/index.js';
import type { BenchContext } from './agent.js';
import { benchIdPrefix, startBenchAgent } from './bench-agent.js';
import { median, round } from './results.js';

const run = promisify(execFile);

/** Where a probe runs: an instance's network namespace (by init pid) or a named netns. */
type Place = { pid: number } | { netns: string };
const inPlace = (p: Place, cmd: string[]): string[] => ('pid' in p ? ['nsenter', '-t', String(p.pid), '-n', '--', ...cmd] : ['ip', 'netns', 'exec', p.netns, ...cmd]);

/** Per-packet round trip times (ms) of `count` pings from `from` to `ip`. */
async function pingTimes(from: Place, ip: string, count: number): Promise<number[]> {
  const [cmd, ...args] = inPlace(from, ['ping', '-n', '-c', String(count), '-i', '0.02', '-W', '1', ip]);
  const { stdout } = await run(cmd!, args, { encoding: 'utf8', timeout: 60_000 });
  const times = [...stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  if (times.length < count * 0.9) throw new Error(`ping ${ip}: only ${times.length}/${count} replies`);
  return times;
}

/** iperf3 TCP throughput (Mbit/s, receiver side) from `client` to `server` listening on `ip`. */
async function iperf(server: Place, client: Place, ip: string, seconds: number): Promise<number> {
  let last = '';
  // A run can end without a result (the one-shot server was still busy, a reset): run again.
  for (let attempt = 1; attempt <= 3; attempt++) {
    const [scmd, ...sargs] = inPlace(server, ['iperf3', '-s', '-1', '-p', '5201']);
    const srv = spawn(scmd!, sargs, { stdio: 'ignore' });
    try {
      const [ccmd, ...cargs] = inPlace(client, ['iperf3', '-c', ip, '-p', '5201', '-t', String(seconds), '-J']);
      const out = await waitFor(
        async () => {
          try {
            return (await run(ccmd!, cargs, { encoding: 'utf8', timeout: (seconds + 20) * 1000 })).stdout;
          } catch (err) {
            last = String((err as { stdout?: string }).stdout ?? err).slice(0, 300);
            return undefined; // the server may not listen yet
          }
        },
        { timeoutMs: 10_000 + seconds * 1000, intervalMs: 100, what: `iperf3 to ${ip}` },
      );
      const res = JSON.parse(out) as { end?: { sum_received?: { bits_per_second: number } }; error?: string };
      if (res.end?.sum_received) return res.end.sum_received.bits_per_second / 1e6;
      last = res.error ?? out.slice(0, 300);
    } finally {
      srv.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new Error(`iperf3 to ${ip} gave no result: ${last}`);
}

function ensureIperf3(): void {
  try {
    execFileSync('iperf3', ['--version'], { stdio: 'ignore' });
  } catch {
    console.log('bench net: installing iperf3 (Debian package)');
    execFileSync('bash', ['-c', 'apt-get install -y -qq --no-install-recommends iperf3 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends iperf3)'], {
      stdio: 'inherit',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
  }
}

/** Baseline namespaces: a bare veth pair (a <-> b) and a Linux bridge joining c and d. */
function makeBaselines(tag: string): { veth: [Place, Place, string]; bridge: [Place, Place, string]; remove: () => void } {
  const ns = (n: string) => `ocb${tag}-${n}`;
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'ignore' });
  const all = ['a', 'b', 'c', 'd', 'br'].map(ns);
  const remove = () => {
    for (const n of all) {
      try {
        ip('netns', 'del', n);
      } catch {
        // not there
      }
    }
  };
  remove();
  for (const n of all) {
    ip('netns', 'add', n);
    ip('-n', n, 'link', 'set', 'lo', 'up');
  }
  ip('-n', ns('a'), 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v0', 'netns', ns('b'));
  ip('-n', ns('a'), 'addr', 'add', '10.255.0.1/24', 'dev', 'v0');
  ip('-n', ns('b'), 'addr', 'add', '10.255.0.2/24', 'dev', 'v0');
  ip('-n', ns('a'), 'link', 'set', 'v0', 'up');
  ip('-n', ns('b'), 'link', 'set', 'v0', 'up');
  ip('-n', ns('br'), 'link', 'add', 'br0', 'type', 'bridge');
  ip('-n', ns('br'), 'link', 'set', 'br0', 'up');
  for (const [n, addr] of [['c', '10.255.1.1/24'], ['d', '10.255.1.2/24']] as const) {
    ip('-n', ns(n), 'link', 'add', 'e0', 'type', 'veth', 'peer', 'name', `p${n}`, 'netns', ns('br'));
    ip('-n', ns('br'), 'link', 'set', `p${n}`, 'master', 'br0', 'up');
    ip('-n', ns(n), 'addr', 'add', addr, 'dev', 'e0');
    ip('-n', ns(n), 'link', 'set', 'e0', 'up');
  }
  return { veth: [{ netns: ns('a') }, { netns: ns('b') }, '10.255.0.2'], bridge: [{ netns: ns('c') }, { netns: ns('d') }, '10.255.1.2'], remove };
}

/** A job of `cores` cores on each of 2 hosts with `count` instances, all RUNNING. */
async function jobWithInstances(token: string, count: number): Promise<{ id: number; instances: Instance[]; pids: Map<string, number> }> {
  const id = oarsub('alice', ['-t', 'cloud', '-l', 'host=2/core=2,walltime=0:20:00', 'sleep 1200']);
  await waitFor(() => oarJob(id).state === 'Running', { timeoutMs: 180_000, intervalMs: 500, what: `job ${id} Running` });
  const inst = new InstanceServiceClient(CONTROLLER_ADDRESS, credentials.createInsecure());
  const md = { metadata: bearer(token), timeoutMs: 30_000 };
  try {
    await waitFor(
      async () => {
        try {
          return await callUnary(inst.runInstances.bind(inst), { jobId: id, spec: { image: CLUSTER_IMAGE, count, vcpus: 1, memoryMib: 128, sshAuthorizedKeys: [], namePrefix: 'net' }, networks: [], idempotencyKey: `bench-net-${id}` }, md);
        } catch {
          return undefined; // the controller may not have seen the job Running yet
        }
      },
      { timeoutMs: 30_000, intervalMs: 300, what: 'RunInstances' },
    );
    const instances = await waitFor(
      async () => {
        const l = (await callUnary(inst.listInstances.bind(inst), { jobId: id, allUsers: false }, md)).instances;
        return l.length === count && l.every((i) => i.state === InstanceState.INSTANCE_STATE_RUNNING) ? l : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 200, what: `instances of job ${id} RUNNING` },
    );
    const pids = new Map<string, number>();
    for (const a of await agentInstancesOf(id)) pids.set(a.spec!.id, a.initPid);
    return { id, instances, pids };
  } finally {
    inst.close();
  }
}

const addrOf = (i: Instance): string => i.spec!.networks[0]!.address.split('/')[0]!;

/** Instance start with and without a network port, on a private agent plugging into the host's OVS. */
async function startWithPort(n: number): Promise<{ withPort: number[]; without: number[] }> {
  const image = tinyImage();
  const agent = await startBenchAgent({ prefix: 'bench-net', jobBase: 980_000, config: { ovsdb: 'unix:/var/run/openvswitch/db.sock', bridge: 'br-int' } });
  const net = `n-${benchIdPrefix.slice(2)}be0c0000`;
  const withPort: number[] = [];
  const without: number[] = [];
  try {
    await new DirLayerStore({ root: join(agent.dir, 'state', 'layers'), idmapBase: 100_000, log: nullLogger }).importLayer(image.layers[0]!, image.layerTar);
    for (let i = 0; i < n; i++) {
      for (const port of [true, false]) {
        const k = 2 * i + (port ? 0 : 1) + 1;
        const hex = (x: number) => (x & 0xff).toString(16).padStart(2, '0');
        const s = agent.spec(image, {
          networks: port ? [{ networkId: net, vni: 4_090_000, interface: 'eth0', mac: `02:0c:be:${hex(k >> 16)}:${hex(k >> 8)}:${hex(k)}`, address: `10.254.${(k >> 8) & 0xff}.${(k & 0xff) + 2}/16`, gateway: '10.254.0.1', mtu: 1446 }] : [],
        });
        const t = performance.now();
        await agent.create(s);
        (port ? withPort : without).push(performance.now() - t);
        await agent.destroy(s.id);
      }
    }
  } finally {
    await agent.close();
  }
  return { withPort, without };
}

export async function benchNet(ctx: BenchContext): Promise<void> {
  ensureIperf3();
  const pings = ctx.quick ? 50 : 200;
  const runs = ctx.quick ? 2 : 5;
  const seconds = ctx.quick ? 2 : 4;
  const r = ctx.results;
  const rate = (key: string, what: string, xs: number[], base: { what: string; xs: number[] }, note: string) =>
    r.set(key, { value: round(median(xs)), unit: 'Mbit/s', stat: 'median', n: xs.length, better: 'higher', what, baseline: { what: base.what, value: round(median(base.xs)) }, note, ...ctx.meta });

  const { withPort, without } = await startWithPort(ctx.quick ? 5 : 15);
  r.time('net.start_with_port_ms', ctx.meta, 'agent CreateInstance → RUNNING with one OVS network port (tiny image)', withPort, { what: 'the same instance without a network port', xs: without });

  const base = makeBaselines(String(process.pid % 10_000));
  const token = await userToken('alice');
  let jobId = 0;
  try {
    const job = await jobWithInstances(token, 3);
    jobId = job.id;
    const byNode = new Map<string, Instance[]>();
    for (const i of job.instances) byNode.set(i.node, [...(byNode.get(i.node) ?? []), i]);
    const pair = [...byNode.values()].find((l) => l.length >= 2);
    const lone = [...byNode.values()].find((l) => l.length === 1);
    if (!pair || !lone) throw new Error(`bench net: wanted 2 instances on one host and 1 on another, got ${job.instances.map((i) => i.node).join(', ')}`);
    const place = (i: Instance): Place => ({ pid: job.pids.get(i.spec!.id)! });
    const [a, b] = pair as [Instance, Instance];
    const c = lone[0]!;
    console.log(`bench net: job ${jobId}: same host ${a.node} (${addrOf(a)} ↔ ${addrOf(b)}), cross host ${a.node} → ${c.node} (${addrOf(c)})`);

    const mtuNote = `instances: OVS ${a.spec!.networks[0]!.mtu}-byte MTU (VXLAN headroom); baselines: 1500`;
    await pingTimes(place(a), addrOf(b), 3);
    await pingTimes(place(a), addrOf(c), 3);
    const vethRtt = await pingTimes(base.veth[0], base.veth[2], pings);
    r.time('net.rtt_same_host_ms', ctx.meta, 'ping between two instances of a job on one node (OVS bridge, VLAN tag)', await pingTimes(place(a), addrOf(b), pings), { what: 'bare veth pair between two netns', xs: vethRtt }, mtuNote);
    r.time('net.rtt_cross_host_ms', ctx.meta, 'ping between two instances of a job on two nodes (OVS + userspace VXLAN between the nodes’ netns)', await pingTimes(place(a), addrOf(c), pings), { what: 'bare veth pair between two netns', xs: vethRtt }, mtuNote);

    const bridgeTcp: number[] = [];
    const same: number[] = [];
    const cross: number[] = [];
    for (let i = 0; i < runs; i++) {
      bridgeTcp.push(await iperf(base.bridge[1], base.bridge[0], base.bridge[2], seconds));
      same.push(await iperf(place(b), place(a), addrOf(b), seconds));
      cross.push(await iperf(place(c), place(a), addrOf(c), seconds));
    }
    const baseline = { what: 'two netns on a Linux bridge (iperf3)', xs: bridgeTcp };
    const dpNote = `${mtuNote}; this machine has no OVS kernel module, so every packet crosses ovs-vswitchd's userspace datapath (AF_PACKET on veths), which bounds throughput far below the kernel bridge`;
    rate('net.tcp_same_host_mbps', `iperf3 TCP, ${seconds} s, between two instances on one node (OVS userspace datapath)`, same, baseline, dpNote);
    rate('net.tcp_cross_host_mbps', `iperf3 TCP, ${seconds} s, between two instances on two nodes through the VXLAN tunnel`, cross, baseline, dpNote);
  } finally {
    if (jobId) {
      try {
        sh('oardel', [String(jobId)], 'alice');
        await waitFor(async () => (await agentInstancesOf(jobId)).length === 0, { timeoutMs: 60_000, intervalMs: 300, what: `job ${jobId} clean` });
      } catch (err) {
        console.error(`bench net: cleanup of job ${jobId}: ${(err as Error).message}`);
      }
    }
    base.remove();
  }
}
