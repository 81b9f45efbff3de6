/**
 * The local cluster (infra/local) is really up: every part answers, for real.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { agentCredentials, clusterPkiDir, grpcHealth, grpcListServices, localStateDir, needCommand, needRoot, prerequisites, waitFor } from '@oarcloud/testkit';

const CONTROLLER = '127.0.0.1:17000';
const AGENTS = { localhost: '127.0.0.1:17110', 'node-1': '127.0.0.1:17101', 'node-2': '127.0.0.1:17102' };
const NATS = 'nats://127.0.0.1:14222';

const p = prerequisites('local cluster', [needRoot, needCommand('bash', 'infra/local/status.sh')]);

function sh(cmd: string, args: string[], opts: { user?: string; timeoutMs?: number } = {}): string {
  const full = opts.user ? ['su', '-', opts.user, '-c', [cmd, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')] : [cmd, ...args];
  return execFileSync(full[0]!, full.slice(1), { encoding: 'utf8', timeout: opts.timeoutMs ?? 30_000 });
}

describe.skipIf(!p.ok)('local cluster - every part is up', () => {
  it.each(['node-1', 'node-2'])('OAR runs a job of type cloud on the emulated node %s, inside its job cpuset', async (node) => {
    const out = sh('oarsub', ['-t', 'cloud', '-p', `network_address='${node}'`, '-l', 'host=1/core=1,walltime=0:05:00', 'cat /proc/self/cpuset > ~/cluster-it.$OAR_JOB_ID'], { user: 'alice' });
    const id = Number(/OAR_JOB_ID=(\d+)/.exec(out)?.[1]);
    expect(id).toBeGreaterThan(0);
    const job = await waitFor(
      () => {
        const j = JSON.parse(sh('oarstat', ['-fj', String(id), '-J']))[String(id)];
        return ['Terminated', 'Error'].includes(j.state) ? j : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 500, what: `job ${id} to end` },
    );
    expect(job.state).toBe('Terminated');
    expect(job.types).toContain('cloud');
    expect(job.assigned_network_address).toEqual([node]);
    // The command ran in the cgroup OAR made for the job.
    expect(sh('bash', ['-c', `cat ~alice/cluster-it.${id}; rm -f ~alice/cluster-it.${id}`]).trim()).toBe(`/oar/alice_${id}`);
  });

  it('the cloud=<spec> job type is admitted and a foreign type is refused', () => {
    const out = sh('oarsub', ['-t', 'cloud=s-0123456789ab', '-l', 'host=1/core=1,walltime=0:01:00', 'true'], { user: 'alice' });
    const id = Number(/OAR_JOB_ID=(\d+)/.exec(out)?.[1]);
    expect(id).toBeGreaterThan(0);
    sh('oardel', [String(id)], { user: 'alice' });
    expect(() => sh('oarsub', ['-t', 'nosuchtype', '-l', 'host=1,walltime=0:01:00', 'true'], { user: 'alice' })).toThrow();
  });

  it('libvirt creates and destroys an LXC domain', () => {
    const dir = mkdtempSync(join(tmpdir(), 'oc-it-'));
    try {
      const xml = join(dir, 'd.xml');
      const name = `oc-it-${process.pid}`;
      writeFileSync(
        xml,
        `<domain type='lxc'><name>${name}</name><memory unit='MiB'>64</memory>
         <os><type>exe</type><init>/bin/sh</init></os><features><privnet/></features>
         <devices><console type='pty'/></devices></domain>`,
      );
      sh('virsh', ['-c', 'lxc:///system', 'create', xml]);
      expect(sh('virsh', ['-c', 'lxc:///system', 'domstate', name]).trim()).toBe('running');
      sh('virsh', ['-c', 'lxc:///system', 'destroy', name]);
      expect(sh('virsh', ['-c', 'lxc:///system', 'list', '--all', '--name'])).not.toContain(name);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('Open vSwitch has the integration bridge on the datapath this kernel allows (netdev without the openvswitch module)', () => {
    const datapath = sh('ovs-vsctl', ['get', 'bridge', 'br-int', 'datapath_type']).trim();
    expect(datapath).toBe(existsSync('/sys/module/openvswitch') ? 'system' : 'netdev');
    expect(sh('ovs-vsctl', ['get', 'bridge', 'br-int', 'external_ids:oarcloud-managed']).trim()).toBe('"true"');
  });

  it('a JetStream stream accepts and stores a message', async () => {
    const nc = await connect({ servers: NATS, timeout: 3000 });
    try {
      const jsm = await jetstreamManager(nc);
      const stream = `OC_IT_${process.pid}`;
      await jsm.streams.add({ name: stream, subjects: [`oc-it.${process.pid}.>`] });
      try {
        const ack = await jetstream(nc).publish(`oc-it.${process.pid}.hello`, 'hi');
        expect(ack.stream).toBe(stream);
        expect((await jsm.streams.info(stream)).state.messages).toBe(1);
      } finally {
        await jsm.streams.delete(stream);
      }
    } finally {
      await nc.close();
    }
  });

  it('the controller answers gRPC health and lists its services by reflection', async () => {
    expect(await grpcHealth(CONTROLLER)).toBe('SERVING');
    const services = await grpcListServices(CONTROLLER);
    expect(services).toEqual(expect.arrayContaining(['grpc.health.v1.Health', 'oarcloud.v1.JobService', 'oarcloud.v1.InstanceService', 'oarcloud.v1.HookService']));
    expect(services).not.toContain('oarcloud.v1.AgentService');
  });

  it.each(Object.entries(AGENTS))('agent %s answers gRPC health and reflection, to the controller certificate only', async (node, address) => {
    // up.sh made a PKI and put `tls:` in every daemon's config.
    expect(statSync(join(clusterPkiDir(), `agent-${node}.key`)).mode & 0o777).toBe(0o600);
    const creds = agentCredentials(node);
    expect(await grpcHealth(address, '', 3000, creds)).toBe('SERVING');
    expect(await grpcHealth(address, 'oarcloud.v1.AgentService', 3000, creds)).toBe('SERVING');
    expect(await grpcListServices(address, 3000, creds)).toEqual(['grpc.health.v1.Health', 'oarcloud.v1.AgentService']);
    await expect(grpcHealth(address)).rejects.toMatchObject({ code: 14 }); // plaintext: UNAVAILABLE
  });

  it('the controller and every agent serve Prometheus metrics and /healthz', async () => {
    for (const port of [19100, 19110, 19101, 19102]) {
      const metrics = await fetch(`http://127.0.0.1:${port}/metrics`);
      expect(metrics.status).toBe(200);
      expect(metrics.headers.get('content-type')).toMatch(/^text\/plain/);
      expect(await metrics.text()).toMatch(/^oarcloud_process_cpu_user_seconds_total\{component="(controller|agent)"\} \d/m);
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    }
  });

  it('up on a live cluster changes nothing; down stops every part it started and removes what it made; up brings it all back, twice', () => {
    const status = (): { up: boolean; components: Array<{ name: string; state: string; pid: number | null }> } => {
      try {
        return JSON.parse(sh('bash', ['infra/local/status.sh', '--json']));
      } catch (err) {
        return JSON.parse((err as { stdout: string }).stdout); // exit 3: something is down
      }
    };
    const again = sh('bash', ['infra/local/up.sh'], { timeoutMs: 120_000 });
    // A daemon is restarted only when its build is newer than its start (a developer rebuilt meanwhile).
    const changed = again.split('\n').filter((l) => /\b(started|created|launched|added|installed|rewritten|restarted \(config)/.test(l) && !/already|unchanged/.test(l));
    expect(changed, again).toEqual([]);
    expect(Number(/up: done in ([\d.]+)s/.exec(again)?.[1])).toBeLessThan(10);
    for (let round = 1; round <= 2; round++) {
      const before = status();
      expect(before.up).toBe(true);
      const pids = before.components.filter((c) => c.pid && c.name !== 'postgresql').map((c) => c.pid!);
      sh('bash', ['infra/local/down.sh'], { timeoutMs: 120_000 });
      const down = status();
      expect(down.up).toBe(false);
      expect(down.components.filter((c) => c.state === 'running' && c.name !== 'postgresql')).toEqual([]);
      for (const pid of pids) expect(existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')), `pid ${pid}`).toBe(false);
      expect(sh('ip', ['netns', 'list']).split('\n').filter((l) => l.startsWith('oc-'))).toEqual([]);
      expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(join(localStateDir(), 'instances'));
      sh('bash', ['infra/local/up.sh'], { timeoutMs: 180_000 });
      expect(status().up).toBe(true);
    }
  });
});
